"""The score store: chunked writes, resume, finalize, atomic replacement and locking."""

import multiprocessing as mp

import h5py
import numpy as np
import pytest
from ood_bench.cache.keys import score_key
from ood_bench.cache.store import ScoreStore
from ood_bench.hashing import digest


def test_key_is_stable_and_sensitive_to_every_field():
    base = dict(backbone_hash="b", detector="llr", params={"iwae_samples": 16}, detector_version="1",
                dataset="d", seed=0)
    k0, fields = score_key(**base)
    assert k0 == score_key(**base)[0]
    assert fields["params"] == {"iwae_samples": 16}
    for name, other in [("backbone_hash", "c"), ("detector", "likelihood"), ("params", {"iwae_samples": 1}),
                        ("detector_version", "2"), ("dataset", "e"), ("seed", 1)]:
        assert score_key(**{**base, name: other})[0] != k0, name
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})


def test_chunks_resume_and_finalize(tmp_path):
    store = ScoreStore(tmp_path)
    n = 10
    assert store.get("k") is None
    assert not store.done_mask("k", n).any()
    store.write_chunk("k", np.arange(0, 4), {"a": np.arange(4.0), "b": -np.arange(4.0)})
    store.write_chunk("k", np.arange(7, 10), {"a": np.arange(7.0, 10.0), "b": -np.arange(7.0, 10.0)})
    mask = store.done_mask("k", n)
    assert mask.tolist() == [True] * 4 + [False] * 3 + [True] * 3
    with pytest.raises(RuntimeError, match="3 of 10 examples unscored"):
        store.finalize("k", {"x": 1}, n)
    store.write_chunk("k", np.arange(4, 7), {"a": np.arange(4.0, 7.0), "b": -np.arange(4.0, 7.0)})
    out = store.finalize("k", {"x": 1}, n)
    np.testing.assert_array_equal(out["a"], np.arange(10.0))
    got = store.get("k")
    assert got["b"].dtype == np.float64
    np.testing.assert_array_equal(got["b"], -np.arange(10.0))
    assert store.keys() == {"k": {"x": 1}}
    assert not (tmp_path / ".pending" / "k").exists()


def test_chunk_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match=r"\(3,\) scores for \(2,\) examples"):
        ScoreStore(tmp_path).write_chunk("k", np.arange(2), {"a": np.zeros(3)})


def test_attrs_roundtrip_and_no_temp_files_left(tmp_path):
    store = ScoreStore(tmp_path)
    store.set_attrs({"provenance": {"git": "abc", "n": 3}})
    store.write_chunk("k", np.arange(2), {"a": np.ones(2)})
    store.finalize("k", {}, 2)
    assert store.attrs()["provenance"] == {"git": "abc", "n": 3}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".scores")) == []


def test_stale_temp_file_from_killed_writer_is_ignored(tmp_path):
    store = ScoreStore(tmp_path)
    (tmp_path / ".scores.h5.deadbeef.tmp").write_bytes(b"half-written garbage")
    store.write_chunk("k", np.arange(3), {"a": np.ones(3)})
    store.finalize("k", {}, 3)
    with h5py.File(store.path, "r") as f:
        assert "scores/k/a" in f
    assert not (tmp_path / ".scores.h5.deadbeef.tmp").exists()


def _writer(args):
    run_dir, worker = args
    store = ScoreStore(run_dir)
    for j in range(5):
        key = f"w{worker}-{j}"
        store.write_chunk(key, np.arange(3), {"a": np.full(3, float(worker * 10 + j))})
        store.finalize(key, {"worker": worker}, 3)


def test_concurrent_writers_lose_nothing(tmp_path):
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(tmp_path, w) for w in range(4)])
    store = ScoreStore(tmp_path)
    keys = store.keys()
    assert len(keys) == 20
    assert store.get("w3-4")["a"].tolist() == [34.0] * 3
