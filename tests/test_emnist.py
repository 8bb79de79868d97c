"""EMNIST-Letters: the reader on a tiny zip built here in NIST's ``gzip.zip`` layout, and the mirror path.

The real zip (over 500 MB) is not offline; these tests build one with the official member names and IDX
headers, images stored transposed as EMNIST stores them, and run it through the catalog's reader.
Every test runs with OOD_BENCH_DATA and OOD_BENCH_MIRROR pointed at temporary directories.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ood_bench.data import CorruptFileWarning, data_status, get_dataset, load_split, sources, verify
from ood_bench.data.formats import emnist_member, read_zipped_idx
from ood_bench.errors import DatasetMissing

N_TRAIN, N_TEST = 5, 3


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data dir and an empty mirror per test, never the user's or CI's."""
    monkeypatch.setenv("OOD_BENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("OOD_BENCH_MIRROR", str(tmp_path / "mirror"))
    return tmp_path


def _idx(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array: magic 0x0000080<ndim>, big-endian dimensions, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _upright(n: int, offset: int) -> np.ndarray:
    """Asymmetric 28x28 images as they should look: a bar along the top row, a dot at (row 20, col 3)
    holding the image's index, so transposition, order and split can all be read back."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, :] = 255
    images[:, 20, 3] = offset + np.arange(n)
    return images


def _emnist_zip(path: Path) -> dict[str, np.ndarray]:
    """A zip in NIST's layout (``gzip/emnist-<split>-<part>-...gz``), images stored transposed as in EMNIST;
    returns the upright images expected per part. A digits member with other pixels is a decoy."""
    expected = {"train": _upright(N_TRAIN, 1), "test": _upright(N_TEST, 101)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for part, images in expected.items():
            stored = np.ascontiguousarray(images.transpose(0, 2, 1))  # EMNIST keeps images column-major
            archive.writestr(emnist_member("letters", part), gzip.compress(_idx(stored)))
            labels = np.arange(1, len(images) + 1, dtype=np.uint8)
            archive.writestr(emnist_member("letters", part, "labels"), gzip.compress(_idx(labels)))
        decoy = np.full((2, 28, 28), 7, dtype=np.uint8)
        archive.writestr(emnist_member("digits", "train"), gzip.compress(_idx(decoy)))
    return expected


def test_reader_transposes_upright_and_selects_the_split(tmp_path: Path):
    archive = tmp_path / "gzip.zip"
    expected = _emnist_zip(archive)
    with zipfile.ZipFile(archive) as z:
        assert "gzip/emnist-letters-train-images-idx3-ubyte.gz" in z.namelist()
        stored = np.frombuffer(gzip.decompress(z.read(emnist_member("letters", "train")))[16:], np.uint8)
    assert stored.reshape(N_TRAIN, 28, 28)[0, :, 0].tolist() == [255] * 28  # the bar is a column on disk

    definition = get_dataset("emnist_letters")
    assert definition.splits == ("train", "test") and definition.shape == (1, 28, 28)
    for part, n in (("train", N_TRAIN), ("test", N_TEST)):
        (source,) = definition.sources[part]
        assert source.official and [f.filename for f in source.files] == ["gzip.zip"]
        images = source.reader({"gzip.zip": archive})
        assert images.shape == (n, 1, 28, 28) and images.dtype == np.uint8 and images.flags.c_contiguous
        assert np.array_equal(images[:, 0], expected[part])
        assert np.all(images[:, 0, 0, :] == 255) and np.all(images[:, 0, 1:, 0] == 0)  # bar on top, upright
        assert images[:, 0, 20, 3].tolist() == expected[part][:, 20, 3].tolist()  # not at (3, 20)
        assert np.all(images[:, 0, 3, 20] == 0)
    labels = read_zipped_idx(archive, emnist_member("letters", "test", "labels"))
    assert labels.tolist() == [1, 2, 3]


def test_missing_member_is_named(tmp_path: Path):
    archive = tmp_path / "gzip.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(emnist_member("digits", "test"), gzip.compress(_idx(np.zeros((1, 28, 28), np.uint8))))
    with pytest.raises(ValueError, match="emnist-letters-test-images-idx3-ubyte.gz"):
        get_dataset("emnist_letters").sources["test"][0].reader({"gzip.zip": archive})


def test_loads_from_the_mirror_layout_when_the_checksum_passes(isolated_dirs: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    """The whole load path from ``<mirror>/emnist/gzip.zip``, bypassing only the md5 of the real zip."""
    copy = isolated_dirs / "mirror" / "emnist" / "gzip.zip"
    copy.parent.mkdir(parents=True)
    expected = _emnist_zip(copy)
    real_check = sources.check_file

    def check_file(path: Path, remote: sources.RemoteFile) -> sources.FileCheck:
        if path == copy:
            return sources.FileCheck(path, "ok", "test zip (checksum bypassed)")
        return real_check(path, remote)

    monkeypatch.setattr(sources, "check_file", check_file)
    status = {s.name: s for s in data_status()}["emnist_letters"]
    assert status.available and status.sources == {"train": "mirror", "test": "mirror"}
    train, test = load_split("emnist_letters", "train"), load_split("emnist_letters", "test")
    assert train.name == "emnist_letters/train" and len(train) == N_TRAIN and len(test) == N_TEST
    assert np.array_equal(train.images[:, 0], expected["train"])
    assert np.array_equal(test.images[:, 0], expected["test"])
    assert train.fingerprint != test.fingerprint


def test_unverified_mirror_copy_is_refused_with_fetch_command(isolated_dirs: Path):
    copy = isolated_dirs / "mirror" / "emnist" / "gzip.zip"
    copy.parent.mkdir(parents=True)
    _emnist_zip(copy)  # not the published file: its md5 differs
    assert [(r.origin, r.status) for r in verify("emnist_letters")] == [("mirror", "corrupt")]
    with pytest.warns(CorruptFileWarning, match="emnist"), pytest.raises(DatasetMissing) as caught:
        load_split("emnist_letters", "test")
    assert "ood-bench data fetch emnist_letters" in str(caught.value) and "gzip.zip" in str(caught.value)
