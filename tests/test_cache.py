"""The score store: chunked writes, resume, finalize, atomic replacement and locking."""

import json
import multiprocessing as mp

import h5py
import numpy as np
import pytest
from ood_bench.cache.keys import score_key
from ood_bench.cache.store import Finished, ScoreStore
from ood_bench.errors import DamagedStore
from ood_bench.files import write_json_atomic
from ood_bench.hashing import digest


def test_key_is_stable_and_sensitive_to_every_field():
    base = dict(backbone_hash="b", detector="llr", params={"iwae_samples": 16}, detector_version="1",
                dataset="d", seed=0, compute={"device": "cpu", "precision": "fp32", "deterministic": True})
    k0, fields = score_key(**base)
    assert k0 == score_key(**base)[0]
    assert fields["params"] == {"iwae_samples": 16}
    for name, other in [("backbone_hash", "c"), ("detector", "likelihood"), ("params", {"iwae_samples": 1}),
                        ("detector_version", "2"), ("dataset", "e"), ("seed", 1),
                        ("compute", {"device": "cuda", "precision": "fp32", "deterministic": True})]:
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


def test_finalize_many_merges_keys_in_one_copy_and_tolerates_a_key_finished_elsewhere(tmp_path, monkeypatch):
    store = ScoreStore(tmp_path)
    for key in ("a", "b", "c"):
        store.write_chunk(key, np.arange(2), {"s": np.full(2, float(ord(key)))})
    copies = []
    original = store._update
    monkeypatch.setattr(store, "_update", lambda write: (copies.append(1), original(write)))
    store.finalize_many([Finished(k, {"k": k}, 2) for k in ("a", "b", "c")])
    assert len(copies) == 1 and sorted(store.keys()) == ["a", "b", "c"]
    # another run finalized "d" and removed its chunks while this one still had a partial view of them
    other = ScoreStore(tmp_path)
    other.write_chunk("d", np.arange(2), {"s": np.ones(2)})
    other.finalize("d", {}, 2)
    store.write_chunk("d", np.arange(1), {"s": np.ones(1)})
    store.finalize_many([Finished("d", {}, 2)])  # would be "1 of 2 examples unscored" without the stored copy
    assert store.get("d")["s"].tolist() == [1.0, 1.0]
    assert not (tmp_path / ".pending" / "d").exists()


def _json_writer(args):
    path, worker = args
    for j in range(50):
        write_json_atomic(path, {"worker": worker, "j": j, "pad": "x" * 20000})


def test_concurrent_json_writes_never_leave_a_torn_file(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"worker": -1})
    with mp.get_context("fork").Pool(4) as pool:
        result = pool.map_async(_json_writer, [(path, w) for w in range(4)])
        reads = 0
        while not result.ready():
            assert "worker" in json.loads(path.read_text())  # a reader always sees one whole document
            reads += 1
        result.get()
    assert reads > 0 and not list(tmp_path.glob(".run.json.*.tmp"))


def _stored(tmp_path):
    store = ScoreStore(tmp_path)
    for key in ("a", "b"):
        store.write_chunk(key, np.arange(4), {"s": np.arange(4.0) + ord(key)})
    store.finalize_many([Finished(k, {"k": k}, 4) for k in ("a", "b")])
    return store


@pytest.mark.parametrize("damage", ["flipped value", "shortened"])
def test_a_damaged_key_is_refused_to_readers_and_dropped_by_repair(tmp_path, damage):
    store = _stored(tmp_path)
    with h5py.File(store.path, "a") as f:
        ds = f["scores/a/s"]
        if damage == "flipped value":
            ds[1] = ds[1] + 1e-9
        else:
            attrs = dict(ds.attrs)
            del f["scores/a/s"]
            short = f["scores/a"].create_dataset("s", data=np.arange(3.0))
            short.attrs.update(attrs)
    with pytest.raises(DamagedStore, match="key a"):
        store.get("a")
    assert store.get("b")["s"].tolist() == [98.0, 99.0, 100.0, 101.0]  # the others are still served
    problems = store.repair()
    assert len(problems) == 1 and "key a" in problems[0]
    assert store.get("a") is None and sorted(store.keys()) == ["b"]


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "not hdf5"])
def test_an_unreadable_store_is_refused_and_moved_aside_by_repair(tmp_path, damage):
    store = _stored(tmp_path)
    data = store.path.read_bytes()
    store.path.write_bytes({"truncated": data[: len(data) // 3], "zeroed": bytes(len(data)),
                            "not hdf5": b"{}\n"}[damage])
    with pytest.raises(DamagedStore, match="not a readable HDF5 file"):
        store.keys()
    assert "moved to scores.h5.damaged" in store.repair()[0]
    assert store.keys() == {} and (tmp_path / "scores.h5.damaged").exists()


def test_a_damaged_pending_chunk_is_deleted_and_rescored(tmp_path):
    store = ScoreStore(tmp_path)
    store.write_chunk("k", np.arange(2), {"s": np.ones(2)})
    chunk = next((tmp_path / ".pending" / "k").glob("*.npz"))
    chunk.write_bytes(chunk.read_bytes()[:-20])
    assert not store.done_mask("k", 2).any() and not chunk.exists()
