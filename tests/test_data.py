"""Data layer tests: real mirror data where it matters, small hand-built files for formats not mirrored.

Tests that read real data skip when OOD_BENCH_MIRROR is unset or FashionMNIST's Debian files are absent.
Every test runs with OOD_BENCH_DATA pointed at a temporary directory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import sys
import tarfile
import zipfile
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
from ood_bench import registry
from ood_bench.data import (
    TRANSFORMS,
    CorruptFileWarning,
    ImageSet,
    apply_transforms,
    available_datasets,
    complement,
    conform,
    data_status,
    fetch,
    get_dataset,
    load_split,
    plugin_errors,
    split_validation,
    subset,
    verify,
)
from ood_bench.data.formats import decode_image, read_cifar10_python, read_idx, read_smallnorb_images, read_svhn_mat
from ood_bench.data.transforms import grayscale, resize
from ood_bench.errors import DatasetMissing, UserError
from ood_bench.registry import GROUPS
from PIL import Image

MIRROR = os.environ.get("OOD_BENCH_MIRROR")
needs_mirror = pytest.mark.skipif(not MIRROR or not Path(MIRROR).is_dir(),
                                  reason="OOD_BENCH_MIRROR is not set")
_FASHION_COPIES = [Path(p) for split in ("train", "test")
                   for f in get_dataset("fashionmnist").remote_files(split) for p in f.system_paths]
needs_fashion = pytest.mark.skipif(not all(p.is_file() for p in _FASHION_COPIES),
                                   reason="FashionMNIST Debian files (dataset-fashion-mnist) are absent")


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ood-bench-data")


@pytest.fixture(autouse=True)
def isolated_data_dir(shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One data dir (and decoded cache) per session, never the user's ~/.cache."""
    monkeypatch.setenv("OOD_BENCH_DATA", str(shared_data_dir))
    return shared_data_dir


def _indexed_set(n: int = 1000) -> ImageSet:
    """Images whose first two pixels spell their index, so selections can be traced back."""
    images = np.zeros((n, 1, 4, 4), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) // 256
    images[:, 0, 0, 1] = np.arange(n) % 256
    return ImageSet("indexed", images, "f" * 64)


def _indices(images: ImageSet) -> set[int]:
    return set((images.images[:, 0, 0, 0].astype(int) * 256 + images.images[:, 0, 0, 1]).tolist())


# --- real data ------------------------------------------------------------------------------------------
@needs_mirror
def test_idx_reader_on_mnist_test():
    images = read_idx(Path(MIRROR) / "mnist/t10k-images-idx3-ubyte.gz")
    labels = read_idx(Path(MIRROR) / "mnist/t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert labels[:3].tolist() == [7, 2, 1]

    loaded = load_split("mnist", "test")
    assert loaded.name == "mnist/test" and loaded.shape == (1, 28, 28)
    assert np.array_equal(loaded.images[:, 0], images)
    assert len(loaded.fingerprint) == 64 and load_split("mnist", "test").fingerprint == loaded.fingerprint


@needs_mirror
def test_omniglot_is_deduplicated_and_white_background():
    names = set()
    for part in ("images_background_small1.zip", "images_background_small2.zip"):
        with zipfile.ZipFile(Path(MIRROR) / "omniglot" / part) as archive:
            names.update(n.split("/", 1)[1] for n in archive.namelist() if n.endswith(".png"))
    omniglot = load_split("omniglot", "test")
    train = load_split("omniglot", "train")  # disjoint alphabets, the auxiliary-data split
    assert len(names) == 4840
    assert len(omniglot) + len(train) == 4840 and len(train) == 1720
    assert omniglot.images.shape == (3120, 1, 28, 28) and omniglot.images.dtype == np.uint8
    assert omniglot.images.mean() > 200  # black strokes on a white background, not inverted
    assert np.median(omniglot.images[:, 0, 0, 0]) == 255
    inverted = apply_transforms(omniglot, [{"name": "invert"}])
    assert inverted.images.mean() < 55 and inverted.name == "omniglot/test+invert"


@needs_mirror
def test_cifar10_test_from_jpeg_zip_and_conform():
    cifar = load_split("cifar10", "test")
    assert cifar.images.shape == (10000, 3, 32, 32)
    assert 100 < cifar.images.mean() < 140
    status = {s.name: s for s in data_status()}["cifar10"]
    assert "JPEG" in status.sources["test"]  # the official tarball is not offline; the mirror format is used

    gray = conform(cifar, (1, 28, 28))
    assert gray.images.shape == (10000, 1, 28, 28)
    assert gray.fingerprint != cifar.fingerprint and gray.name == "cifar10/test+grayscale+resize=28x28"
    assert np.array_equal(gray.images, resize(grayscale(cifar.images), (28, 28)))
    assert conform(gray, (1, 28, 28)) is gray
    rgb = conform(gray, (3, 32, 32))
    assert rgb.images.shape == (10000, 3, 32, 32)
    assert np.array_equal(rgb.images[:, 0], rgb.images[:, 2])


@needs_mirror
def test_corrupt_copy_is_reported_and_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OOD_BENCH_DATA", str(tmp_path))
    original = Path(MIRROR) / "mnist/t10k-images-idx3-ubyte.gz"
    local = tmp_path / "mnist" / original.name
    local.parent.mkdir()
    corrupt = bytearray(original.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    local.write_bytes(corrupt)

    report = {r.origin: r for r in verify("mnist") if r.filename == original.name}
    assert report["data dir"].status == "corrupt" and report["mirror"].status == "ok"

    with pytest.warns(CorruptFileWarning, match="corrupt"):
        mnist = load_split("mnist", "test")
    assert np.array_equal(mnist.images[:, 0], read_idx(original))  # read from the verified mirror copy
    assert not local.exists() and local.with_name(local.name + ".corrupt").exists()

    # Without the mirror, the corrupt copy is still never used.
    shutil.rmtree(tmp_path / "cache")
    local.write_bytes(corrupt)
    monkeypatch.delenv("OOD_BENCH_MIRROR")
    with pytest.warns(CorruptFileWarning), pytest.raises(DatasetMissing, match="corrupt"):
        load_split("mnist", "test")


@needs_mirror
def test_kmnist_offline_is_missing_with_fetch_command():
    with pytest.raises(DatasetMissing) as caught:
        load_split("kmnist", "test")
    message = str(caught.value)
    assert "ood-bench data fetch kmnist" in message and "t10k-images-idx3-ubyte.gz" in message
    with pytest.raises(DatasetMissing):
        fetch("kmnist", allow_download=False)
    kmnist_status = {s.name: s for s in data_status()}["kmnist"]
    assert kmnist_status.available is False and kmnist_status.where == "missing"
    assert {r.status for r in verify("kmnist")} == {"missing"}


@needs_mirror
def test_fetch_uses_verified_local_copies():
    paths = fetch("omniglot", allow_download=False)
    assert sorted(p.name for p in paths) == ["images_background_small1.zip", "images_background_small2.zip"]
    with pytest.raises(DatasetMissing, match="train-images"):  # MNIST train is not in the mirror
        fetch("mnist", allow_download=False)


@needs_fashion
def test_fashionmnist_from_debian_copy_and_validation_split():
    train = load_split("fashionmnist", "train")
    assert train.images.shape == (60000, 1, 28, 28)
    assert {s.name: s for s in data_status()}["fashionmnist"].available
    assert all(r.status == "ok" for r in verify("fashionmnist"))  # recompressed, same decompressed bytes

    rest, val = split_validation(train, 5000, seed=3)
    again_rest, again_val = split_validation(train, 5000, seed=3)
    assert len(rest) == 55000 and len(val) == 5000
    assert np.array_equal(val.images, again_val.images) and val.fingerprint == again_val.fingerprint
    assert rest.fingerprint == again_rest.fingerprint != val.fingerprint
    assert split_validation(train, 5000, seed=4)[1].fingerprint != val.fingerprint


@needs_mirror
@needs_fashion
def test_second_load_of_fashionmnist_suite_comes_from_the_decoded_cache():
    def load_suite() -> list[ImageSet]:
        sets = [load_split("fashionmnist", split) for split in ("train", "test")]
        sets += [load_split(name) for name in ("mnist", "notmnist", "omniglot")]
        sets += [load_split(name, params={"n": 2000}) for name in ("noise", "constant")]
        return sets + [apply_transforms(sets[4], [{"name": "invert"}])]

    first = load_suite()
    status = {st.name: st.sources for st in data_status()}
    assert status["fashionmnist"] == {"train": "decoded cache", "test": "decoded cache"}
    assert status["notmnist"] == {"test": "decoded cache"}
    assert status["omniglot"]["test"] == "decoded cache"  # its 'train' split (auxiliary data) is listed too
    second = load_suite()
    assert [s.fingerprint for s in first] == [s.fingerprint for s in second]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.images, b.images)


# --- transforms -----------------------------------------------------------------------------------------
def test_invert_and_brightness_round_half_up_and_clip():
    pixels = np.array([0, 1, 2, 3, 5, 100, 255], dtype=np.uint8).reshape(1, 1, 1, 7)
    assert TRANSFORMS["invert"](pixels).ravel().tolist() == [255, 254, 253, 252, 250, 155, 0]
    assert TRANSFORMS["brightness"](pixels, 0.5).ravel().tolist() == [0, 1, 1, 2, 3, 50, 128]
    assert TRANSFORMS["brightness"](pixels, 2.0).ravel().tolist() == [0, 2, 4, 6, 10, 200, 255]
    assert TRANSFORMS["brightness"](pixels, 0.2).ravel().tolist() == [0, 0, 0, 1, 1, 20, 51]


def test_grayscale_of_constant_images_uses_601_luma():
    rgb = np.empty((2, 3, 5, 5), dtype=np.uint8)
    rgb[0] = np.array([10, 200, 30], dtype=np.uint8)[:, None, None]
    rgb[1] = np.array([255, 255, 255], dtype=np.uint8)[:, None, None]
    gray = TRANSFORMS["grayscale"](rgb)
    assert gray.shape == (2, 1, 5, 5)
    assert np.all(gray[0] == 124) and np.all(gray[1] == 255)  # 0.299*10 + 0.587*200 + 0.114*30 = 123.81
    levels = np.repeat(np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1), 3, axis=1)
    assert np.array_equal(TRANSFORMS["grayscale"](levels)[:, 0, 0, 0], np.arange(256))
    assert np.array_equal(TRANSFORMS["to_rgb"](gray)[:, 2], gray[:, 0])


def test_resize_keeps_constant_images_exact():
    levels = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1), (256, 1, 105, 105)).copy()
    small = TRANSFORMS["resize"](levels, (28, 28))
    assert small.shape == (256, 1, 28, 28)
    assert np.array_equal(small.min(axis=(1, 2, 3)), np.arange(256))  # a truncating conversion loses 1 level
    assert np.array_equal(small.max(axis=(1, 2, 3)), np.arange(256))


def test_apply_transforms_updates_name_and_fingerprint_and_rejects_bad_specs():
    images = _indexed_set(10)
    steps = [{"name": "brightness", "factor": 0.2}, {"name": "resize", "size": [8, 6]}]
    darker = apply_transforms(images, steps)
    assert darker.name == "indexed+brightness=0.2+resize=8x6" and darker.shape == (1, 8, 6)
    assert darker.fingerprint != images.fingerprint
    assert darker.fingerprint == apply_transforms(images, steps).fingerprint
    with pytest.raises(UserError, match="Allowed transforms:.*invert.*brightness.*resize"):
        apply_transforms(images, [{"name": "blur"}])
    with pytest.raises(UserError, match="factor"):
        apply_transforms(images, [{"name": "brightness"}])
    with pytest.raises(UserError, match="size"):
        apply_transforms(images, [{"name": "resize", "size": [0, 4]}])
    with pytest.raises(UserError):
        apply_transforms(images, [{"name": "invert", "amount": 1}])


# --- seeded selections ----------------------------------------------------------------------------------
def test_split_validation_is_deterministic_and_disjoint():
    images = _indexed_set(1000)
    rest, val = split_validation(images, 100, seed=7)
    assert len(rest) == 900 and len(val) == 100
    assert _indices(rest).isdisjoint(_indices(val)) and _indices(rest) | _indices(val) == set(range(1000))
    rest2, val2 = split_validation(images, 100, seed=7)
    assert np.array_equal(val.images, val2.images) and (rest.fingerprint, val.fingerprint) == (
        rest2.fingerprint, val2.fingerprint)
    assert _indices(split_validation(images, 100, seed=8)[1]) != _indices(val)
    with pytest.raises(UserError):
        split_validation(images, 1000, seed=0)


def test_subset_is_seeded_and_returns_itself_when_large_enough():
    images = _indexed_set(1000)
    a, b, c = subset(images, 50, seed=1), subset(images, 50, seed=1), subset(images, 50, seed=2)
    assert len(a) == 50 and np.array_equal(a.images, b.images) and a.fingerprint == b.fingerprint
    assert _indices(a) != _indices(c) and a.fingerprint != c.fingerprint
    assert len(_indices(a)) == 50 and _indices(a) <= set(range(1000))
    assert subset(images, 1000, seed=1) is images and subset(images, 5000, seed=1) is images


def test_complement_is_what_subset_leaves_out_and_nested_subsets_are_why_it_exists():
    images = _indexed_set(1000)
    kept, rest = subset(images, 200, seed=0), complement(images, 200, seed=0)
    assert _indices(kept).isdisjoint(_indices(rest)) and _indices(kept) | _indices(rest) == set(range(1000))
    assert rest.fingerprint != images.fingerprint and len(complement(images, 1000, seed=0)) == 0
    # the trap complement avoids: with one seed, a smaller subset is a prefix of the larger one
    assert _indices(subset(images, 50, seed=0)) <= _indices(kept)
    assert _indices(subset(rest, 50, seed=0)).isdisjoint(_indices(kept))


# --- names, splits, parameters --------------------------------------------------------------------------
def test_unknown_dataset_split_and_params_name_the_allowed_values():
    with pytest.raises(UserError, match="Allowed datasets:.*fashionmnist.*omniglot"):
        load_split("imagenet")
    with pytest.raises(UserError, match="Allowed splits: test"):
        load_split("notmnist", "train")
    with pytest.raises(UserError, match="Allowed parameters: none"):
        load_split("mnist", "test", params={"n": 5})
    with pytest.raises(UserError, match="Allowed parameters: n .*shape .*seed"):
        load_split("noise", params={"size": 5})
    with pytest.raises(UserError, match="shape"):
        load_split("noise", params={"shape": [2, 28, 28]})
    assert get_dataset("FashionMNIST").name == "fashionmnist"


def test_noise_and_constant_are_deterministic_by_seed():
    params = {"n": 64, "shape": [3, 8, 8], "seed": 5}
    noise, again = load_split("noise", params=params), load_split("noise", params=params)
    other = load_split("noise", params={**params, "seed": 6})
    assert noise.images.shape == (64, 3, 8, 8) and np.array_equal(noise.images, again.images)
    assert noise.fingerprint == again.fingerprint != other.fingerprint
    assert not np.array_equal(noise.images, other.images)
    assert noise.images.min() < 10 and noise.images.max() > 245

    constant = load_split("constant", params=params)
    flat = constant.images.reshape(64, -1)
    assert np.all(flat.min(axis=1) == flat.max(axis=1)) and len(np.unique(flat[:, 0])) > 30
    assert np.array_equal(constant.images, load_split("constant", params=params).images)
    assert load_split("constant", params={**params, "seed": 6}).fingerprint != constant.fingerprint
    assert load_split("noise").images.shape == (10000, 1, 28, 28)


def test_image_folder_reads_dirs_and_zips_and_tracks_content(tmp_path: Path):
    folder = tmp_path / "mine"
    (folder / "class_a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / "class_a" / f"{i}.png")
    Image.fromarray(np.full((8, 8, 3), (255, 0, 0), dtype=np.uint8)).save(folder / "red.png")
    loaded = load_split("image_folder", params={"path": str(folder)})
    assert loaded.images.shape == (4, 3, 8, 8)  # one colour image makes the whole set RGB
    assert loaded.images[:3, :, 0, 0].tolist() == [[0, 0, 0], [40, 40, 40], [80, 80, 80]]
    small = load_split("image_folder", params={"path": str(folder), "shape": [1, 4, 4]})
    assert small.images.shape == (4, 1, 4, 4) and small.fingerprint != loaded.fingerprint

    archive = tmp_path / "mine.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted(folder.rglob("*.png")):
            z.write(file, file.relative_to(folder).as_posix())
    assert np.array_equal(load_split("image_folder", params={"path": str(archive)}).images, loaded.images)

    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(folder / "class_a" / "0.png")
    changed = load_split("image_folder", params={"path": str(folder)})
    assert changed.fingerprint != loaded.fingerprint and changed.images[0, 0, 0, 0] == 7  # cache not stale

    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(folder / "odd.png")
    mixed = load_split("image_folder", params={"path": str(folder)})  # resized to the most common size
    assert mixed.images.shape == (5, 3, 8, 8)
    with pytest.raises(UserError, match="does not exist"):
        load_split("image_folder", params={"path": str(tmp_path / "nowhere")})


# --- registry and plugins -------------------------------------------------------------------------------
def test_every_dataset_in_pyproject_is_registered():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert set(available_datasets()) == set(pyproject["project"]["entry-points"][GROUPS["datasets"]])


def _idx_bytes(images: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", *images.shape) + images.tobytes()


@pytest.fixture
def toy_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A plugin module with downloadable toy datasets (file:// URLs), a broken and a wrong entry point.

    The built-in entry points stay registered beside them.
    """
    served = tmp_path / "served"
    served.mkdir()
    toy = np.arange(3 * 16, dtype=np.uint8).reshape(3, 4, 4)
    (served / "good").write_bytes(_idx_bytes(toy))
    (served / "bad").write_bytes(_idx_bytes(toy[::-1].copy()))
    sha = hashlib.sha256((served / "good").read_bytes()).hexdigest()
    module = tmp_path / "plugins" / "toy_data_plugin.py"
    module.parent.mkdir()
    module.write_text(f'''
from ood_bench.data import DatasetDef, RemoteFile, SourceFormat
from ood_bench.data.formats import read_idx_images

GOOD = RemoteFile("toy-idx", ("{(served / 'bad').as_uri()}", "{(served / 'good').as_uri()}"), sha256="{sha}")
LOOSE = RemoteFile("loose-idx", ("{(served / 'good').as_uri()}",))
TOY = DatasetDef("toy", "toy", ("test",), (1, 4, 4),
                 sources={{"test": (SourceFormat("official", (GOOD,),
                                                 lambda f: read_idx_images(f["toy-idx"])),)}})
LOOSE_TOY = DatasetDef("loose", "no checksum", ("test",), (1, 4, 4),
                       sources={{"test": (SourceFormat("official", (LOOSE,),
                                                       lambda f: read_idx_images(f["loose-idx"])),)}})
NOT_A_DATASET = 42
''')
    monkeypatch.syspath_prepend(str(module.parent))
    monkeypatch.setenv("OOD_BENCH_DATA", str(tmp_path / "data"))
    group = GROUPS["datasets"]
    fake = [*registry.entry_points(group=group),
            EntryPoint("toy", "toy_data_plugin:TOY", group),
            EntryPoint("loose", "toy_data_plugin:LOOSE_TOY", group),
            EntryPoint("broken", "no_such_module_for_ood_bench:THING", group),
            EntryPoint("wrong", "toy_data_plugin:NOT_A_DATASET", group)]
    monkeypatch.setattr(registry, "entry_points", lambda group: fake)
    registry.reload()
    yield toy
    registry.reload()
    sys.modules.pop("toy_data_plugin", None)


def test_plugins_load_by_entry_point_and_failures_are_isolated(toy_plugins):
    with pytest.warns(registry.PluginLoadWarning) as caught:
        names = set(available_datasets())
    assert sorted(str(w.message).split("'")[1] for w in caught) == ["broken", "wrong"]
    assert {"toy", "loose", "fashionmnist", "mnist"} <= names and not {"broken", "wrong"} & names
    errors = plugin_errors()
    assert set(errors) == {"broken", "wrong"} and "no_such_module_for_ood_bench" in errors["broken"]
    with pytest.raises(UserError, match="failed to load"):
        get_dataset("broken")
    status = {s.name: s for s in data_status()}
    assert status["broken"].available is False and "ModuleNotFoundError" in status["broken"].notes


@pytest.mark.filterwarnings("ignore::ood_bench.registry.PluginLoadWarning")
def test_download_verifies_and_skips_corrupt_source(toy_plugins):
    with pytest.raises(DatasetMissing, match="ood-bench data fetch toy"):
        load_split("toy", download=False)
    with pytest.warns(CorruptFileWarning, match="discarded"):  # the first URL serves different bytes
        toy = load_split("toy", download=True)
    assert np.array_equal(toy.images[:, 0], toy_plugins)
    assert [r.status for r in verify("toy")] == ["ok"]


@pytest.mark.filterwarnings("ignore::ood_bench.registry.PluginLoadWarning")
def test_unverified_download_needs_explicit_flag(toy_plugins):
    with pytest.raises(DatasetMissing, match="allow_unverified"):
        fetch("loose")
    (path,) = fetch("loose", allow_unverified=True)
    assert np.array_equal(load_split("loose").images[:, 0], toy_plugins)
    assert [r.status for r in verify("loose")] == ["ok"]  # pinned sha256 from the first download
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    assert [r.status for r in verify("loose")] == ["corrupt"]


# --- readers for formats that are not in the mirror -----------------------------------------------------
def test_smallnorb_reader_flattens_stereo_pairs(tmp_path: Path):
    pairs = np.arange(3 * 2 * 5 * 5, dtype=np.uint8).reshape(3, 2, 5, 5)
    header = struct.pack("<iI", 0x1E3D4C55, 4) + struct.pack("<4i", *pairs.shape)
    path = tmp_path / "tiny-dat.mat.gz"
    path.write_bytes(gzip.compress(header + pairs.tobytes()))
    images = read_smallnorb_images(path)
    assert images.shape == (6, 1, 5, 5)
    assert np.array_equal(images[1, 0], pairs[0, 1]) and np.array_equal(images[4, 0], pairs[2, 0])


def test_cifar10_pickle_reader_keeps_batch_order(tmp_path: Path):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
            data = pickle.dumps({b"data": np.full((2, 3072), i, dtype=np.uint8), b"labels": [0, 1]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    train = read_cifar10_python(path, "train")
    assert train.shape == (10, 3, 32, 32) and train[::2, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert read_cifar10_python(path, "test").shape == (2, 3, 32, 32)


def test_svhn_reader_transposes_to_nchw(tmp_path: Path):
    scipy_io = pytest.importorskip("scipy.io")
    x = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.ones((4, 1))})
    images = read_svhn_mat(tmp_path / "test_32x32.mat")
    assert images.shape == (4, 3, 32, 32) and np.array_equal(images[2, 1], x[:, :, 1, 2])


def test_archive_readers_of_celeba_gtsrb_and_lsun(tmp_path: Path):
    def encoded(size: tuple[int, int], value: int, fmt: str) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(buffer, format=fmt)
        return buffer.getvalue()

    faces = tmp_path / "img_align_celeba.zip"
    with zipfile.ZipFile(faces, "w") as z:
        for i in range(1, 4):
            z.writestr(f"img_align_celeba/{i:06d}.jpg", encoded((178, 218), 50 * i, "JPEG"))
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text("000001.jpg 0\n000002.jpg 2\n000003.jpg 2\n")
    celeba = get_dataset("celeba").sources["test"][0]
    images = celeba.reader({"img_align_celeba.zip": faces, "list_eval_partition.txt": partition})
    assert images.shape == (2, 3, 32, 32) and abs(int(np.median(images[0])) - 100) <= 2  # test partition only

    signs = tmp_path / "GTSRB_Final_Test_Images.zip"
    with zipfile.ZipFile(signs, "w") as z:
        z.writestr("GTSRB/Final_Test/Images/00000.ppm", encoded((40, 45), 10, "PPM"))
        z.writestr("GTSRB/Final_Test/Images/00001.ppm", encoded((61, 58), 20, "PPM"))
        z.writestr("GTSRB/Final_Test/Images/GT-final_test.test.csv", "Filename;Width\n")
    gtsrb = get_dataset("gtsrb").sources["test"][0].reader({"GTSRB_Final_Test_Images.zip": signs})
    assert gtsrb.shape == (2, 3, 32, 32) and gtsrb[:, 0, 0, 0].tolist() == [10, 20]

    scenes = tmp_path / "LSUN_resize.tar.gz"
    with tarfile.open(scenes, "w:gz") as tar:
        for i in (1, 0):
            data = encoded((32, 32), 100 + i, "PNG")
            info = tarfile.TarInfo(f"LSUN_resize/{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    lsun = get_dataset("lsun").sources["test"][0].reader({"LSUN_resize.tar.gz": scenes})
    assert lsun.shape == (2, 3, 32, 32) and lsun[:, 0, 0, 0].tolist() == [100, 101]  # sorted by path


def test_16_bit_grey_images_are_rescaled_not_clipped_and_32_bit_ones_refused():
    from PIL import Image

    wide = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    png = io.BytesIO()
    Image.fromarray(wide).save(png, format="PNG")
    assert decode_image(png.getvalue()).tolist() == [[[0, 1, 128, 255]]]
    assert decode_image(png.getvalue(), "RGB")[:, 0, 2].tolist() == [128, 128, 128]
    tiff = io.BytesIO()
    Image.fromarray(np.array([[1.5, 2.0]], dtype=np.float32)).save(tiff, format="TIFF")
    with pytest.raises(ValueError, match="no fixed pixel range"):
        decode_image(tiff.getvalue())


def test_a_decoded_cache_with_flipped_pixels_is_not_used(tmp_path: Path, caplog):
    from ood_bench.data import data_dir

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((6, 6), 50 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    cache_dir = data_dir() / "cache" / "image_folder"
    before = set(cache_dir.glob("*.npy")) if cache_dir.exists() else set()
    first = load_split("image_folder", params={"path": str(folder)})
    (cache,) = set(cache_dir.glob("*.npy")) - before  # this folder's decoded cache
    assert cache.with_name(cache.name + ".sha256").is_file()
    raw = bytearray(cache.read_bytes())
    raw[-1] ^= 0xFF  # one pixel of the last image
    cache.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        again = load_split("image_folder", params={"path": str(folder)})
    assert np.array_equal(again.images, first.images)  # decoded from the source files, not the damaged cache
    assert "damaged cache" in caplog.text


def test_array_dataset_reads_npy_and_npz_in_every_layout(tmp_path: Path):
    nhwc = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    np.savez(tmp_path / "x.npz", imgs=nhwc)
    got = load_split("array", params={"path": str(tmp_path / "x.npz")})
    assert got.images.shape == (2, 3, 4, 4) and np.array_equal(got.images, nhwc.transpose(0, 3, 1, 2))
    np.save(tmp_path / "g.npy", nhwc[..., 0])
    assert load_split("array", params={"path": str(tmp_path / "g.npy")}).images.shape == (2, 1, 4, 4)
    np.savez(tmp_path / "two.npz", a=nhwc, b=nhwc)
    with pytest.raises(UserError, match="pass the parameter key"):
        load_split("array", params={"path": str(tmp_path / "two.npz")})
    assert load_split("array", params={"path": str(tmp_path / "two.npz"), "key": "b"}).images.shape == (2, 3, 4, 4)
    np.save(tmp_path / "f.npy", nhwc.astype(np.float32))
    with pytest.raises(UserError, match="not uint8"):
        load_split("array", params={"path": str(tmp_path / "f.npy")})


def test_a_download_shows_its_size_and_progress_and_retries_a_server_error(tmp_path, monkeypatch, capsys):
    import http.server
    import threading

    from ood_bench.data import sources

    payload = bytes(range(256)) * 8192  # 2 MiB
    calls = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            calls.append(self.path)
            if len(calls) == 1:
                self.send_error(503, "try again")  # transient: retried after a backoff
                return
            if self.path == "/gone":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OOD_BENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("OOD_BENCH_PROGRESS_EVERY", "0")
    monkeypatch.setattr(sources, "BACKOFF_S", 0.01)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        remote = sources.RemoteFile("blob.bin", urls=(f"{url}/blob.bin",), sha256=hashlib.sha256(payload).hexdigest())
        problems: list[str] = []
        path = sources.download("demo", remote, problems)
        assert path is not None and path.read_bytes() == payload and problems == []
        assert calls == ["/blob.bin", "/blob.bin"]  # the 503 was retried once
        err = capsys.readouterr().err
        assert "downloading demo/blob.bin: 2.0 MiB from" in err and "2048/2048 (100%)" in err
        # a missing file is not retried, and the failure says what happened
        calls.clear()
        calls.append("-")  # the next request is not the first: no 503
        gone = sources.RemoteFile("gone.bin", urls=(f"{url}/gone",), sha256="0" * 64)
        assert sources.download("demo", gone, problems) is None
        assert calls == ["-", "/gone"] and "404" in problems[0]
    finally:
        server.shutdown()
