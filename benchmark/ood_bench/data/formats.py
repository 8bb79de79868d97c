"""Small pure readers for the file formats the datasets ship in.

Each reader takes a local path and returns numpy arrays at the source's native resolution; resizing and
cropping happen elsewhere. torchvision cannot be used in this project, so the IDX (MNIST family, also
inside EMNIST's zip) and NORB binary-matrix readers are written out here; both formats are a short header
followed by raw data.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as f:
        is_gzip = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if is_gzip else open(path, "rb")


# --- IDX (MNIST, FashionMNIST, KMNIST, notMNIST) ---------------------------------------------------------
# Header: two zero bytes, a type code, the number of dimensions, then one big-endian int32 per dimension.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, where: str = "data") -> np.ndarray:
    """Decode the (uncompressed) bytes of an IDX file; ``where`` names the source in error messages."""
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_TYPES:
        raise ValueError(f"{where} is not an IDX file (header {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=_IDX_TYPES[type_code], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{where}: header says {shape} but holds {array.size} values")
    return array.reshape(shape).astype(array.dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of its declared shape and type."""
    with _open_maybe_gzip(path) as f:
        return parse_idx(f.read(), str(path))


def _idx_images(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 (N, H, W) images, got {images.dtype} {images.shape}")
    return images[:, None]


def read_idx_images(path: Path) -> np.ndarray:
    """An IDX image file (N, H, W) as uint8 (N, 1, H, W)."""
    return _idx_images(read_idx(path), str(path))


def read_zipped_idx(zip_path: Path, member: str) -> np.ndarray:
    """One gzipped IDX member of a zip, decompressed as a stream in memory (nothing is extracted to disk)."""
    with zipfile.ZipFile(zip_path) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise ValueError(f"{zip_path} has no member {member!r}") from None
        with archive.open(info) as stream, gzip.GzipFile(fileobj=stream) as f:
            return parse_idx(f.read(), f"{zip_path}:{member}")


# --- EMNIST (IDX files inside NIST's gzip.zip) ----------------------------------------------------------
def emnist_member(split_name: str, part: str, kind: str = "images") -> str:
    """The path inside NIST's ``gzip.zip`` of one EMNIST file, e.g. ("letters", "train") ->
    ``gzip/emnist-letters-train-images-idx3-ubyte.gz``; ``kind`` "labels" names the idx1 label file."""
    suffix = "images-idx3-ubyte.gz" if kind == "images" else "labels-idx1-ubyte.gz"
    return f"gzip/emnist-{split_name}-{part}-{suffix}"


def read_emnist_images(zip_path: Path, split_name: str, part: str) -> np.ndarray:
    """EMNIST images of one split ("letters", "digits", ...) and part ("train"/"test") as uint8 (N, 1, H, W).

    EMNIST stores each image transposed (column-major) relative to MNIST; the images are transposed back so
    that characters stand upright, white strokes on black like MNIST digits.
    """
    member = emnist_member(split_name, part)
    images = _idx_images(read_zipped_idx(zip_path, member), f"{zip_path}:{member}")
    return np.ascontiguousarray(images.transpose(0, 1, 3, 2))


# --- NORB binary matrix (SmallNORB "*.mat", which is not a MATLAB file) -----------------------------------
# Header: little-endian int32 magic (element type), int32 ndim, then max(ndim, 3) int32 dimensions.
_NORB_TYPES = {0x1E3D4C51: "<f4", 0x1E3D4C53: "<f8", 0x1E3D4C54: "<i4", 0x1E3D4C55: "u1", 0x1E3D4C56: "<i2"}


def read_norb_matrix(path: Path) -> np.ndarray:
    """Read a NORB binary matrix (optionally gzipped) into an array of its declared shape."""
    with _open_maybe_gzip(path) as f:
        data = f.read()
    magic, ndim = struct.unpack("<iI", data[:8])
    if magic not in _NORB_TYPES:
        raise ValueError(f"{path} is not a NORB binary matrix (magic {magic:#x})")
    n_dims_stored = max(ndim, 3)
    shape = struct.unpack(f"<{n_dims_stored}i", data[8:8 + 4 * n_dims_stored])[:ndim]
    array = np.frombuffer(data, dtype=_NORB_TYPES[magic], offset=8 + 4 * n_dims_stored)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {array.size} values")
    return array.reshape(shape).astype(array.dtype.newbyteorder("="))


def read_smallnorb_images(path: Path) -> np.ndarray:
    """SmallNORB ``*-dat.mat(.gz)``: (pairs, 2 cameras, 96, 96) flattened to uint8 (2 * pairs, 1, 96, 96)."""
    images = read_norb_matrix(path)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 (N, 2, H, W) stereo pairs, got {images.dtype} "
                         f"{images.shape}")
    return images.reshape(-1, 1, *images.shape[2:])


# --- CIFAR-10 python pickles and SVHN MATLAB files -------------------------------------------------------
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_cifar10_python(tar_path: Path, split: str) -> np.ndarray:
    """Images of one split from ``cifar-10-python.tar.gz`` as uint8 (N, 3, 32, 32), batches in order.

    The batches are Python pickles; unpickling is safe here only because the archive's checksum was verified.
    """
    wanted = CIFAR10_BATCHES[split]
    found: dict[str, np.ndarray] = {}
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in wanted:
                batch = pickle.load(tar.extractfile(member), encoding="bytes")
                found[name] = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ValueError(f"{tar_path} lacks CIFAR-10 batches {missing}")
    return np.concatenate([found[name] for name in wanted])


def read_svhn_mat(path: Path) -> np.ndarray:
    """SVHN ``*_32x32.mat`` (MATLAB v5, X of shape (32, 32, 3, N)) as uint8 (N, 3, 32, 32)."""
    import scipy.io  # imported here: scipy is slow to import and only SVHN needs it

    x = scipy.io.loadmat(str(path), variable_names=["X"])["X"]
    return np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(3, 2, 0, 1))


# --- image folders, zips and tars ------------------------------------------------------------------------
def is_wanted_member(name: str, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> bool:
    """True for a file path with one of ``suffixes`` that is not hidden or macOS archive clutter."""
    parts = name.split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return name.lower().endswith(tuple(s.lower() for s in suffixes))


def archive_members(path: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[tuple[str, bytes]]:
    """All files with one of ``suffixes`` in a directory, zip or tar(.gz), as (relative path, bytes).

    Sorted by path, so the order is the same whichever container holds the files.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    path = Path(path)
    members: list[tuple[str, bytes]] = []
    if path.is_dir():
        for file in path.rglob("*"):
            name = file.relative_to(path).as_posix()
            if file.is_file() and is_wanted_member(name, suffixes):
                members.append((name, file.read_bytes()))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir() and is_wanted_member(info.filename, suffixes):
                    members.append((info.filename, archive.read(info)))
    elif tarfile.is_tarfile(path):
        # Read in stream order (random access into a .tar.gz is slow), then sort.
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile() and is_wanted_member(member.name, suffixes):
                    members.append((member.name, archive.extractfile(member).read()))
    else:
        raise ValueError(f"{path} is neither a directory, a zip nor a tar archive")
    return sorted(members)


def decode_image(data: bytes, mode: str | None = None) -> np.ndarray:
    """Decode one encoded image to uint8 (C, H, W).

    ``mode`` "L" gives one channel, "RGB" three; None keeps grey images grey and makes everything else RGB.
    16-bit grey images (PNG and TIFF ``I;16*``) are rescaled from their full range to 8 bits
    (round(v * 255 / 65535)), not clipped at 255 as Pillow's ``convert("L")`` does. 32-bit integer and float
    images (``I``, ``F``) have no fixed range and are refused.
    """
    with Image.open(io.BytesIO(data)) as image:
        if mode is None:
            mode = "L" if image.mode in _GRAY_MODES else "RGB"
        if image.mode in ("I", "F"):
            raise ValueError(f"a {'32-bit integer' if image.mode == 'I' else 'floating-point'} image (Pillow mode "
                             f"{image.mode!r}) has no fixed pixel range to map to 8 bits; save it as an 8- or "
                             f"16-bit PNG")
        if image.mode.startswith("I;16"):
            grey = np.round(np.asarray(image, dtype=np.float64) * (255 / 65535)).astype(np.uint8)
            pixels = grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)
        else:
            pixels = np.asarray(image.convert(mode), dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def read_celeba_partition(path: Path) -> dict[str, int]:
    """CelebA ``list_eval_partition.txt``: image file name -> 0 (train), 1 (valid) or 2 (test)."""
    partition = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            name, part = line.split()
            partition[name] = int(part)
    return partition
