"""The built-in datasets: official sources with checksums, mirror formats, and readers.

These objects are registered through the ``ood_bench.datasets`` entry points in pyproject.toml, exactly like a
third-party plugin. Checksums are the publishers' (or torchvision's widely used) md5s; sha256 values are
those of the byte-identical files in the offline mirror. See docs/data.md for where each value comes from.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ood_bench.data import formats, local_sets
from ood_bench.data.definitions import (
    DatasetDef,
    Param,
    Reader,
    SourceFormat,
    image_shape,
    optional_image_shape,
    seed_int,
    synthetic_count,
)
from ood_bench.data.sources import RemoteFile
from ood_bench.data.transforms import center_crop, resize, stack_conformed


def _files(base_urls: Sequence[str], names_and_md5: Mapping[str, str],
           extra: Mapping[str, dict] | None = None) -> dict[str, RemoteFile]:
    """RemoteFiles served under each of ``base_urls``; ``extra[name]`` adds fields such as sha256."""
    extra = extra or {}
    return {name: RemoteFile(name, tuple(base + name for base in base_urls), md5=md5, **extra.get(name, {}))
            for name, md5 in names_and_md5.items()}


def _idx_reader(filename: str) -> Reader:
    def read(files: Mapping[str, Path]) -> np.ndarray:
        return formats.read_idx_images(files[filename])
    return read


_IDX_IMAGES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}


def _idx_sources(files: Mapping[str, RemoteFile]) -> dict[str, tuple[SourceFormat, ...]]:
    """The official train/test sources of an MNIST-style dataset (IDX image files)."""
    return {split: (SourceFormat("official", (files[name],), _idx_reader(name)),)
            for split, name in _IDX_IMAGES.items()}


def _images_in(path: Path, shape: Sequence[int], prefix: str = "",
               suffixes: Sequence[str] = formats.IMAGE_SUFFIXES) -> np.ndarray:
    """Every image under ``prefix`` in a folder/zip/tar, decoded and conformed to ``shape``."""
    members = [(name, data) for name, data in formats.archive_members(path, suffixes)
               if name.startswith(prefix)]
    if not members:
        raise ValueError(f"no images under {prefix!r} in {path}")
    mode = "L" if shape[0] == 1 else "RGB"
    return stack_conformed([formats.decode_image(data, mode) for _, data in members], shape)


# --- MNIST family (IDX) ---------------------------------------------------------------------------------
_MNIST = _files(
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
     "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3"},
    {"t10k-images-idx3-ubyte.gz": {
        "sha256": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "mirror_path": "mnist/t10k-images-idx3-ubyte.gz"}},
)
MNIST = DatasetDef(
    name="mnist",
    description="MNIST handwritten digits, 28x28 grey (LeCun et al.).",
    splits=("train", "test"),
    shape=(1, 28, 28),
    sources=_idx_sources(_MNIST),
)

_FASHION_DEBIAN = "/usr/share/datasets/fashion-mnist/"  # Debian package dataset-fashion-mnist
_FASHION = _files(
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
     "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79"},
    # Debian recompressed the .gz files; their decompressed bytes match the published payload md5s.
    {"train-images-idx3-ubyte.gz": {"payload_md5": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                                    "system_paths": (_FASHION_DEBIAN + "train-images-idx3-ubyte.gz",)},
     "t10k-images-idx3-ubyte.gz": {"payload_md5": "8181f5470baa50b63fa0f6fddb340f0a",
                                   "system_paths": (_FASHION_DEBIAN + "t10k-images-idx3-ubyte.gz",)}},
)
FASHIONMNIST = DatasetDef(
    name="fashionmnist",
    description="FashionMNIST (Zalando) clothing images, 28x28 grey.",
    splits=("train", "test"),
    shape=(1, 28, 28),
    sources=_idx_sources(_FASHION),
)

_KMNIST = _files(
    ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", "https://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    {"train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
     "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7"},
)
KMNIST = DatasetDef(
    name="kmnist",
    description="Kuzushiji-MNIST cursive Japanese characters, 28x28 grey (ROIS-DS CODH).",
    splits=("train", "test"),
    shape=(1, 28, 28),
    sources=_idx_sources(_KMNIST),
)

_NOTMNIST_IMAGES = RemoteFile(
    "t10k-images-idx3-ubyte.gz",
    ("https://raw.githubusercontent.com/davidflanagan/notMNIST-to-MNIST/master/t10k-images-idx3-ubyte.gz",),
    sha256="70ae9e06201f2827e5b0a3781a3169d735dd2efc69996b9eeaee7f10ed4044d7",
    mirror_path="notmnist/t10k-images-idx3-ubyte.gz",
)
NOTMNIST = DatasetDef(
    name="notmnist",
    description="notMNIST letters A-J, 28x28 grey: the 10k random sample published in IDX format.",
    splits=("test",),
    shape=(1, 28, 28),
    sources={"test": (SourceFormat("official", (_NOTMNIST_IMAGES,),
                                   _idx_reader(_NOTMNIST_IMAGES.filename)),)},
    notes="Holds 196 exact duplicate images, as published.",
)


# --- EMNIST-Letters (IDX files inside NIST's gzip.zip) ---------------------------------------------------
# One zip (over 500 MB) holds all six EMNIST splits; only the letters members are read, as in-memory streams,
# never extracted. The md5 is torchvision's (pytorch/vision, torchvision/datasets/mnist.py, EMNIST.md5 at
# commits 1ec2509 and 01977a1), given there for the same file at its older address on www.itl.nist.gov
# (listed second here); no checksum published by NIST was found. The mirror path is "emnist/", not the
# dataset's name, because the one zip serves every EMNIST split.
_EMNIST_ZIP = RemoteFile(
    "gzip.zip",
    ("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
     "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/gzip.zip"),
    md5="58c8d27c78d21e728a6bc7b3cc06412e",
    mirror_path="emnist/gzip.zip",
)


def _emnist_reader(split_name: str, part: str) -> Reader:
    def read(files: Mapping[str, Path]) -> np.ndarray:
        return formats.read_emnist_images(files[_EMNIST_ZIP.filename], split_name, part)
    return read


EMNIST_LETTERS = DatasetDef(
    name="emnist_letters",
    description="EMNIST Letters (NIST): handwritten letters, upper and lower case in 26 classes, 28x28 grey, "
                "white strokes on black, transposed upright like MNIST. train 124,800, test 20,800.",
    splits=("train", "test"),
    shape=(1, 28, 28),
    sources={split: (SourceFormat("official", (_EMNIST_ZIP,), _emnist_reader("letters", split)),)
             for split in ("train", "test")},
)


# --- Omniglot -------------------------------------------------------------------------------------------
_OMNIGLOT_BASE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
_OMNIGLOT = (
    RemoteFile("images_background_small1.zip", (_OMNIGLOT_BASE + "images_background_small1.zip",),
               sha256="f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
               mirror_path="omniglot/images_background_small1.zip"),
    RemoteFile("images_background_small2.zip", (_OMNIGLOT_BASE + "images_background_small2.zip",),
               sha256="3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
               mirror_path="omniglot/images_background_small2.zip"),
)


# Alphabets found only in images_background_small1: the "train" split (auxiliary training data, e.g. BPVAE's
# simple set); every other alphabet of the two zips is the "test" split, so the two splits share no alphabet.
_OMNIGLOT_TRAIN_ALPHABETS = frozenset({"Balinese", "Early_Aramaic", "Korean"})


def _read_omniglot(files: Mapping[str, Path], split: str) -> np.ndarray:
    """Both small background zips, deduplicated by path below each zip's top folder (they share 1,000
    files), 105x105 black-on-white, resized bilinearly to 28x28 with the white background kept; the
    images of ``split``'s alphabets only."""
    unique: dict[str, bytes] = {}
    for remote in _OMNIGLOT:
        for name, data in formats.archive_members(files[remote.filename], (".png",)):
            key = name.split("/", 1)[1]
            if (key.split("/", 1)[0] in _OMNIGLOT_TRAIN_ALPHABETS) == (split == "train"):
                unique.setdefault(key, data)
    images = np.stack([formats.decode_image(unique[key], "L") for key in sorted(unique)])
    return resize(images, (28, 28))


OMNIGLOT = DatasetDef(
    name="omniglot",
    description="Omniglot handwritten characters (small background sets 1+2, 4,840 unique), 28x28 grey, "
                "black strokes on white as published (invert it explicitly for 'Omniglot-inverted'). Split by "
                "alphabet: 'train' = Balinese, Early_Aramaic, Korean (1,720); 'test' = the other 7 (3,120).",
    splits=("train", "test"),
    shape=(1, 28, 28),
    sources={split: (SourceFormat("official", _OMNIGLOT, functools.partial(_read_omniglot, split=split)),)
             for split in ("train", "test")},
    revision="2",  # 2: split by alphabet (revision 1's 'test' held all 4,840 images)
)


# --- SmallNORB ------------------------------------------------------------------------------------------
_NORB = _files(
    ("https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/",),
    {"smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat.gz": "66054832f9accfe74a0f4c36a75bc0a2",
     "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat.gz": "e4ad715691ed5a3a5f138751a4ceb071"},
)


def _norb_reader(filename: str) -> Reader:
    def read(files: Mapping[str, Path]) -> np.ndarray:
        return resize(formats.read_smallnorb_images(files[filename]), (28, 28))
    return read


SMALLNORB = DatasetDef(
    name="smallnorb",
    description="SmallNORB toy photographs, both cameras of every stereo pair (48,600 per split), 96x96 "
                "grey resized bilinearly to 28x28.",
    splits=("train", "test"),
    shape=(1, 28, 28),
    sources={split: (SourceFormat("official", (_NORB[name],), _norb_reader(name)),)
             for split, name in (("train", "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat.gz"),
                                 ("test", "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat.gz"))},
)


# --- CIFAR10 --------------------------------------------------------------------------------------------
_CIFAR_TAR = RemoteFile("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                        md5="c58f30108f718f92721af3b95e74349a")
_CIFAR_JPEG = {
    "train": RemoteFile("cifar10-jpeg-train.zip",
                        sha256="61f0ed7a244b7c4d7e3831b428b51dbe14bd5072098fb66a8dd20c9791077bb4",
                        mirror_path="cifar10/cifar10-jpeg-train.zip"),
    "test": RemoteFile("cifar10-jpeg-test.zip",
                       sha256="43e20546a36432e0550a680ff1709d90adb5c7f752724140b2315d0faf634d48",
                       mirror_path="cifar10/cifar10-jpeg-test.zip"),
}


def _cifar_official(split: str) -> Reader:
    def read(files: Mapping[str, Path]) -> np.ndarray:
        return formats.read_cifar10_python(files[_CIFAR_TAR.filename], split)
    return read


def _cifar_jpeg(split: str) -> Reader:
    def read(files: Mapping[str, Path]) -> np.ndarray:
        return _images_in(files[_CIFAR_JPEG[split].filename], (3, 32, 32), prefix=f"cifar10-jpeg/{split}/")
    return read


CIFAR10 = DatasetDef(
    name="cifar10",
    description="CIFAR-10 natural images, 32x32 RGB (Krizhevsky).",
    splits=("train", "test"),
    shape=(3, 32, 32),
    sources={split: (SourceFormat("official", (_CIFAR_TAR,), _cifar_official(split)),
                     SourceFormat("mirror format: JPEG re-encoding (lossy, quality ~75)",
                                  (_CIFAR_JPEG[split],), _cifar_jpeg(split),
                                  note="pixels differ from the official batches (PSNR ~28.5 dB)"))
             for split in ("train", "test")},
)


# --- SVHN -----------------------------------------------------------------------------------------------
_SVHN = _files(("http://ufldl.stanford.edu/housenumbers/",),
               {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
                "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"})


def _svhn_reader(filename: str) -> Reader:
    def read(files: Mapping[str, Path]) -> np.ndarray:
        return formats.read_svhn_mat(files[filename])
    return read


SVHN = DatasetDef(
    name="svhn",
    description="SVHN street-view house numbers (cropped digits), 32x32 RGB.",
    splits=("train", "test"),
    shape=(3, 32, 32),
    sources={split: (SourceFormat("official", (_SVHN[f"{split}_32x32.mat"],),
                                  _svhn_reader(f"{split}_32x32.mat")),)
             for split in ("train", "test")},
)


# --- CelebA ---------------------------------------------------------------------------------------------
def _drive(*file_ids: str) -> tuple[str, ...]:
    base = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="
    return tuple(base + file_id for file_id in file_ids)


_CELEBA_ZIP = RemoteFile("img_align_celeba.zip",
                         _drive("0B7EVK8r0v71pZjFTYXZWM3FlRnM", "1zmsC4yvw-e089uHXj5EdP0BSZ0AlDQRR"),
                         md5="00d2c5bc6d35e252742224ab0c1e8fcb")
_CELEBA_PARTITION = RemoteFile("list_eval_partition.txt",
                               _drive("0B7EVK8r0v71pY0NSMzRuSXJEVkk", "1ih_VMokoI774ErNWrb26lDeWlanUBpnX"),
                               md5="d32c9cbf5e040fd4025c592c306e6668")
_CELEBA_HALF = RemoteFile("celeba-aligned-half-10k.zip",
                          sha256="32fa800977aef3880eea98fa2f5a882722ebcc4b450185ed80d4bffdc18b3555",
                          mirror_path="celeba/celeba-aligned-half-10k.zip")
# Square centre crop of 140 px on the 178x218 aligned faces (scaled with the image), then resize to 32x32.
_CELEBA_CROP_FRACTION = 140 / 178


def _faces(blobs: Sequence[bytes], chunk: int = 1000) -> np.ndarray:
    out = []
    for start in range(0, len(blobs), chunk):
        images = np.stack([formats.decode_image(b, "RGB") for b in blobs[start:start + chunk]])
        side = round(min(images.shape[2:]) * _CELEBA_CROP_FRACTION)
        out.append(resize(center_crop(images, (side, side)), (32, 32)))
    return np.concatenate(out)


def _celeba_official(files: Mapping[str, Path]) -> np.ndarray:
    partition = formats.read_celeba_partition(files[_CELEBA_PARTITION.filename])
    names = sorted(name for name, part in partition.items() if part == 2)
    with zipfile.ZipFile(files[_CELEBA_ZIP.filename]) as archive:
        return _faces([archive.read(f"img_align_celeba/{name}") for name in names])


def _celeba_half(files: Mapping[str, Path]) -> np.ndarray:
    return _faces([data for _, data in formats.archive_members(files[_CELEBA_HALF.filename], (".jpg",))])


CELEBA = DatasetDef(
    name="celeba",
    description="CelebA aligned faces, square centre crop then 32x32 RGB; the official test partition "
                "(19,962 images).",
    splits=("test",),
    shape=(3, 32, 32),
    sources={"test": (
        SourceFormat("official", (_CELEBA_ZIP, _CELEBA_PARTITION), _celeba_official),
        SourceFormat("mirror format: first 10k train-partition images at half resolution (89x109 JPEG)",
                     (_CELEBA_HALF,), _celeba_half,
                     note="stands in for the test partition: other faces, lower resolution"),
    )},
)


# --- LSUN (resized OOD test set) and GTSRB --------------------------------------------------------------
_LSUN = RemoteFile("LSUN_resize.tar.gz", ("https://www.dropbox.com/s/moqh2wh8696c3yl/LSUN_resize.tar.gz?dl=1",),
                   md5="278b7b31c8cb7e804a1465a8ce03a2dc")


def _read_lsun(files: Mapping[str, Path]) -> np.ndarray:
    return _images_in(files[_LSUN.filename], (3, 32, 32))


LSUN = DatasetDef(
    name="lsun",
    description="LSUN (resize): 10,000 LSUN scene test images downsampled to 32x32 RGB, the OOD test set of "
                "Liang et al. (ODIN).",
    splits=("test",),
    shape=(3, 32, 32),
    sources={"test": (SourceFormat("official", (_LSUN,), _read_lsun),)},
)

_GTSRB = _files(("https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/",),
                {"GTSRB-Training_fixed.zip": "513f3c79a4c5141765e10e952eaa2478",
                 "GTSRB_Final_Test_Images.zip": "c7e4e6327067d32654124b0fe9e82185"})


def _gtsrb_reader(filename: str) -> Reader:
    def read(files: Mapping[str, Path]) -> np.ndarray:
        return _images_in(files[filename], (3, 32, 32), suffixes=(".ppm",))
    return read


GTSRB = DatasetDef(
    name="gtsrb",
    description="German Traffic Sign Recognition Benchmark photos (whole image, no ROI crop) resized to "
                "32x32 RGB.",
    splits=("train", "test"),
    shape=(3, 32, 32),
    sources={split: (SourceFormat("official", (_GTSRB[name],), _gtsrb_reader(name)),)
             for split, name in (("train", "GTSRB-Training_fixed.zip"),
                                 ("test", "GTSRB_Final_Test_Images.zip"))},
)


def _optional_name(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected an array name (a string) or null, got {value!r}")
    return value


# --- synthetic and user data ----------------------------------------------------------------------------
_SYNTHETIC_PARAMS = {
    "n": Param("number of images, a positive integer of at most 1,000,000", 10000, synthetic_count),
    "shape": Param("[C, H, W] with C 1 or 3", [1, 28, 28], image_shape),
    "seed": Param("an integer seed from 0 to 2**31 - 1", 0, seed_int),
}
NOISE = DatasetDef(
    name="noise",
    description="Synthetic: every pixel uniform over 0..255, seeded.",
    splits=("test",),
    shape=(1, 28, 28),
    synthetic=True,
    params=_SYNTHETIC_PARAMS,
    loader=local_sets.uniform_noise,
    cache=False,
)
CONSTANT = DatasetDef(
    name="constant",
    description="Synthetic: each image one constant value drawn uniformly from 0..255, seeded.",
    splits=("test",),
    shape=(1, 28, 28),
    synthetic=True,
    params=_SYNTHETIC_PARAMS,
    loader=local_sets.constant_images,
    cache=False,
)
def _user_files(name: str, description: str, path_help: str, extra: dict[str, Param], loader, identify) -> DatasetDef:
    """A dataset read from the user's own files at the parameter ``path``: every split reads the same images."""
    return DatasetDef(
        name=name, description=f"Your own images: {description}; every split reads the same images.",
        splits=("test", "train"), shape=(3, 32, 32),
        params={"path": Param(path_help, check=local_sets.existing_path, in_fingerprint=False), **extra},
        loader=loader, identify=identify)


IMAGE_FOLDER = _user_files(
    "image_folder", "a directory, zip or tar of image files (sorted by path)",
    "path to a directory, zip or tar of images",
    {"shape": Param("optional [C, H, W] every image is converted to", None, optional_image_shape)},
    local_sets.load_image_folder, local_sets.image_folder_identity)
ARRAY = _user_files(
    "array", "a NumPy file, .npy or one array of a .npz (uint8 NCHW, NHWC or NHW)", "path to a .npy or .npz file",
    {"key": Param("the array's name inside a .npz (needed when it holds several)", None, _optional_name)},
    local_sets.load_array, local_sets.array_identity)
