"""End to end on real data: the CLI runs a tiny suite, resumes after kill -9, and recomputes nothing.

Needs FashionMNIST (Debian package) and the offline mirror (OOD_BENCH_MIRROR); skipped otherwise.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ood_bench.cache.store import ScoreStore
from ood_bench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "suites" / "tiny.yaml"

pytestmark = pytest.mark.skipif(
    not os.environ.get("OOD_BENCH_MIRROR") or not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs OOD_BENCH_MIRROR and the Debian dataset-fashion-mnist package",
)


def cli(*args, **kwargs):
    env = {**os.environ, "COLUMNS": "250"}  # rich fits tables to the terminal; give it room to print them whole
    return subprocess.run([sys.executable, "-m", "ood_bench", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, **kwargs)


def all_scores(run_dir: Path) -> dict:
    store = ScoreStore(run_dir)
    return {(f["detector_label"], f["set"]): store.get(k) for k, f in store.keys().items()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    proc = cli("run", TINY, "--results", base / "results", "--checkpoints", base / "ckpt")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return base, base / "results" / "tiny", proc


def test_first_run_writes_leaderboard_with_real_numbers(first_run):
    _, run_dir, proc = first_run
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "run.json", "scores.h5"):
        assert (run_dir / name).is_file(), name
    plan = json.loads((run_dir / "run.json").read_text())
    assert plan["provenance"]["trained_backbones"] == 1
    assert [m["ood_set"] for m in plan["missing"]] == ["kmnist"]
    md = (run_dir / "leaderboard.md").read_text()
    assert "ood-bench data fetch kmnist" in md
    summary = pd.read_csv(run_dir / "leaderboard.csv")
    auroc = summary[summary["metric"] == "auroc"].set_index(["detector", "output", "ood_set"])["mean"]
    # Orientation: uniform noise is far off the data manifold, so the likelihood score must flag it.
    assert auroc[("likelihood", "elbo_bpd", "uniform-noise")] > 0.9
    # Sanity pair: training vs test images of the same distribution are indistinguishable.
    assert abs(auroc[("likelihood", "elbo_bpd", "fashionmnist-train (sanity)")] - 0.5) < 0.1
    scores = all_scores(run_dir)
    assert scores[("llr", "mnist")]["lk0_bpd"].dtype == np.float64
    # k = 0 of llr and the ELBO of likelihood share one estimator and one random stream.
    np.testing.assert_array_equal(scores[("llr", "mnist")]["lk0_bpd"], scores[("likelihood", "mnist")]["elbo_bpd"])


def test_second_run_recomputes_nothing(first_run):
    base, run_dir, _ = first_run
    before = all_scores(run_dir)
    proc = cli("run", TINY, "--results", base / "results", "--checkpoints", base / "ckpt")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads((run_dir / "run.json").read_text())
    prov = plan["provenance"]
    assert prov["trained_backbones"] == 0 and prov["scored_examples"] == 0
    # the history keeps the first run's cost breakdown, which the cached run's provenance no longer has
    first = plan["history"][0]
    assert first["scored_examples"] > 0 and first["wall_s_parts"]["score llr seed 0"] > 0
    after = all_scores(run_dir)
    assert before.keys() == after.keys()
    for key in before:
        for output in before[key]:
            np.testing.assert_array_equal(before[key][output], after[key][output])


def test_show_prints_the_cached_leaderboard(first_run):
    _, run_dir, _ = first_run
    proc = cli("show", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert "llr_k1" in proc.stdout and "uniform-noise" in proc.stdout


def test_export_and_filtered_compare(first_run, tmp_path):
    base, run_dir, _ = first_run
    proc = cli("export", run_dir, "--out", tmp_path / "scores.csv")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "scores.csv")
    scores = all_scores(run_dir)
    assert len(table) == sum(len(v) for arrays in scores.values() for v in arrays.values())
    row = table[(table["detector"] == "llr") & (table["output"] == "llr_k1") & (table["set"] == "mnist")]
    np.testing.assert_array_equal(row.sort_values("index")["score"].to_numpy(), scores[("llr", "mnist")]["llr_k1"])
    assert set(table["role"]) == {"id", "ood", "sanity"}
    import importlib.util

    parquet = cli("export", run_dir, "--format", "parquet", "--out", tmp_path / "scores.parquet")
    if importlib.util.find_spec("pyarrow") is None:
        assert parquet.returncode == 2 and "pip install pyarrow" in parquet.stderr
    else:
        assert parquet.returncode == 0 and len(pd.read_parquet(tmp_path / "scores.parquet")) == len(table)
    out = tmp_path / "deltas.csv"
    copy = tmp_path / "copy" / "tiny"
    import shutil

    shutil.copytree(run_dir, copy)
    proc = cli("compare", run_dir, copy, "--metric", "auroc", "--ood", "mnist", "--out", out)
    assert proc.returncode == 0, proc.stderr
    deltas = pd.read_csv(out)
    assert set(deltas["ood_set"]) == {"mnist"} and set(deltas["metric"]) == {"auroc"}
    assert (deltas.filter(like="delta") == 0).all().all()


def test_scores_do_not_depend_on_batch_size(first_run):
    base, run_dir, _ = first_run
    proc = cli("run", TINY, "--results", base / "bs7", "--checkpoints", base / "ckpt", "--batch-size", "7")
    assert proc.returncode == 0, proc.stderr
    ref, other = all_scores(run_dir), all_scores(base / "bs7" / "tiny")
    assert ref.keys() == other.keys()
    for key in ref:
        for output in ref[key]:
            # float32 network: a batch of another size rounds the ~200-nat bounds differently by up to
            # ~1e-4 nats, which shows in differences of two bounds (LLR); anything larger is a real dependence.
            np.testing.assert_allclose(other[key][output], ref[key][output], rtol=1e-5, atol=1e-3)
    compared = cli("compare", run_dir, base / "bs7" / "tiny")
    assert compared.returncode == 0, compared.stderr
    assert "delta" in compared.stdout and "llr_k1" in compared.stdout


def test_a_damaged_score_is_refused_by_show_and_recomputed_by_run(first_run):
    import shutil

    import h5py

    base, run_dir, _ = first_run
    copy = base / "damaged" / "tiny"
    shutil.copytree(run_dir, copy)
    store = ScoreStore(copy)
    key = next(k for k, f in store.keys().items() if f["detector_label"] == "llr" and f["set"] == "mnist")
    with h5py.File(copy / "scores.h5", "a") as f:
        f[f"scores/{key}/llr_k1"][0] += 1.0  # one flipped value: silently different leaderboards before
    shown = cli("show", copy)
    assert shown.returncode == 2 and "damaged" in shown.stderr and "Traceback" not in shown.stderr
    rerun = cli("run", TINY, "--results", base / "damaged", "--checkpoints", base / "ckpt")
    assert rerun.returncode == 0, rerun.stderr
    assert "failed its checksum" in rerun.stdout
    prov = json.loads((copy / "run.json").read_text())["provenance"]
    assert prov["scored_examples"] == json.loads((copy / "run.json").read_text())["sets"]["mnist"]["n"]
    ref, got = all_scores(run_dir), all_scores(copy)
    for k in ref:
        for output in ref[k]:
            np.testing.assert_array_equal(got[k][output], ref[k][output])


@pytest.mark.parametrize("damage", ["truncated", "not utf-8", "wrong shape"])
def test_a_damaged_run_record_is_refused_by_show_and_rebuilt_by_run(first_run, damage):
    import shutil

    base, run_dir, _ = first_run
    root = base / f"record-{damage.replace(' ', '-')}"
    copy = root / "tiny"
    shutil.copytree(run_dir, copy)
    text = (copy / "run.json").read_bytes()
    (copy / "run.json").write_bytes({"truncated": text[: len(text) // 2], "not utf-8": b"\xff\xfe" + text,
                                     "wrong shape": b'{"suite": "tiny", "evaluations": {}}'}[damage])
    shown = cli("show", copy)
    assert shown.returncode == 2 and "run.json is damaged" in shown.stderr and "Traceback" not in shown.stderr
    rerun = cli("run", TINY, "--results", root, "--checkpoints", base / "ckpt")
    assert rerun.returncode == 0, rerun.stderr
    prov = json.loads((copy / "run.json").read_text())["provenance"]
    assert prov["trained_backbones"] == 0 and prov["scored_examples"] == 0  # rebuilt from the cache alone
    assert cli("show", copy).returncode == 0


def test_kill_9_during_scoring_resumes_to_identical_scores(first_run):
    base, run_dir, _ = first_run
    results = base / "killed"
    pending = results / "tiny" / ".pending"
    proc = subprocess.Popen([sys.executable, "-m", "ood_bench", "run", str(TINY), "--results", str(results),
                             "--checkpoints", str(base / "ckpt")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(pending.glob("*/*.npz")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(pending.glob("*/*.npz")), "the run was killed before it wrote any chunk"
    done_before = sum(1 for _ in pending.glob("*/*.npz"))
    resumed = cli("run", TINY, "--results", results, "--checkpoints", base / "ckpt")
    assert resumed.returncode == 0, resumed.stderr
    prov = json.loads((results / "tiny" / "run.json").read_text())["provenance"]
    total = sum(s["n"] for s in json.loads((run_dir / "run.json").read_text())["sets"].values()) * 2
    assert prov["scored_examples"] < total, f"resume recomputed everything ({done_before} chunks were cached)"
    ref, got = all_scores(run_dir), all_scores(results / "tiny")
    assert ref.keys() == got.keys()
    for key in ref:
        for output in ref[key]:
            np.testing.assert_array_equal(got[key][output], ref[key][output])


def test_detectors_fit_on_train_minus_the_sanity_set():
    from ood_bench.suite.datasets import resolve
    from ood_bench.suite.load import load_suite

    suite, _ = load_suite(TINY)
    data = resolve(suite, download=False)
    sanity = data.eval_sets["fashionmnist-train (sanity)"]
    as_rows = lambda s: {im.tobytes() for im in s.images}  # noqa: E731
    assert as_rows(data.detector_fit).isdisjoint(as_rows(sanity))
    assert len(data.detector_fit) + len(sanity) == len(data.train)


def test_run_records_the_git_revision_read_before_any_work(monkeypatch, tmp_path):
    from ood_bench.suite import runner

    calls = []
    monkeypatch.setattr(runner, "git_revision", lambda: calls.append("rev") or "rev")

    def stop(*_a, **_k):
        raise RuntimeError(f"resolve reached after {len(calls)} revision read(s)")

    monkeypatch.setattr(runner, "resolve", stop)
    with pytest.raises(RuntimeError, match="after 1 revision"):
        runner.run_suite(TINY, results_root=tmp_path)



def _nan_detector(dtype=np.float64):
    """A plugin-like detector whose score is NaN on every tenth example (or float32 when asked)."""
    from ood_bench.detectors.likelihood import Likelihood

    class NaNLikelihood(Likelihood):
        name = "nan_likelihood"

        def score(self, batch):
            out = super().score(batch)
            for values in out.values():
                values[batch.indices % 10 == 0] = np.nan
            return {k: v.astype(dtype) for k, v in out.items()}

    return NaNLikelihood


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_scores_are_stored_counted_and_every_command_works(tmp_path, monkeypatch, dtype):
    import ood_bench as ob
    from ood_bench.registry import registry

    monkeypatch.setitem(registry("detectors").entries, "nan_likelihood", _nan_detector(dtype))
    options = dict(overrides={"evaluation.max_examples": 100, "detectors": {"nan": {
        "detector": "nan_likelihood", "backbone": "hvae", "params": {"iwae_samples": 1}}}},
        detectors=["nan"], ood=["mnist"], results=tmp_path / "results", checkpoints=tmp_path / "ck")
    if dtype == np.float32:
        with pytest.raises(UserError, match=r"detector 'nan' \(NaNLikelihood from package '.*'\) output 'elbo_bpd' "
                                            r"must be a float64"):
            ob.run_suite(TINY, **options)
        return
    run = ob.run_suite(TINY, **options)
    stored = run.scores("nan", "mnist")["elbo_bpd"]
    assert np.isnan(stored[::10]).all() and np.isfinite(stored[1::10]).all()  # stored as returned
    board = run.leaderboard()
    cell = board[(board["ood_set"] == "mnist") & (board["metric"] == "auroc") & (board["output"] == "elbo_bpd")]
    assert cell["nonfinite"].item() == 20  # 10 ID + 10 OOD of 100 each
    md = (run.run_dir / "leaderboard.md").read_text()
    assert "(20 NaN/inf)" in md and "ranks NaN and +inf as the most OOD" in md
    import shutil

    shutil.copytree(run.run_dir, tmp_path / "copy" / "tiny")
    for args in (("show", run.run_dir), ("compare", run.run_dir, tmp_path / "copy" / "tiny", "--bootstrap", "20"),
                 ("report", run.run_dir)):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ one random byte in each kind of file
def _zip_payload(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of the stored bytes of every member of a zip file (npz chunks, torch checkpoints)."""
    import struct
    import zipfile

    raw = path.read_bytes()
    regions = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
            if info.compress_size:
                regions.append((info.header_offset + 30 + name_len + extra_len, info.compress_size))
    return regions


def _flip(path: Path, rng, regions: list[tuple[int, int]] | None = None) -> int:
    """Flip one bit of one byte chosen at random among ``regions`` (default: the whole file); its offset."""
    raw = bytearray(path.read_bytes())
    start, size = (regions or [(0, len(raw))])[rng.integers(len(regions or [0]))]
    offset = start + int(rng.integers(size))
    raw[offset] ^= 1 << int(rng.integers(8))
    path.write_bytes(bytes(raw))
    return offset


@pytest.mark.parametrize("kind", ["scores", "chunk", "checkpoint", "run record"])
@pytest.mark.parametrize("trial", [0, 1])
def test_one_random_byte_flipped_in_a_cached_file_is_detected_and_a_rerun_restores_the_results(
        first_run, kind, trial):
    """The data-cache case is tests/test_data.py::test_a_decoded_cache_with_flipped_pixels_is_not_used."""
    import shutil

    import h5py

    rng = np.random.default_rng([trial, len(kind)])
    base, run_dir, _ = first_run
    root = base / f"flip-{kind.replace(' ', '-')}-{trial}"
    shutil.copytree(run_dir, root / "tiny")
    shutil.copytree(base / "ckpt", root / "ckpt")
    store = ScoreStore(root / "tiny")
    keys = sorted(store.keys())
    if kind == "scores":  # a bit of one stored float64 of one array
        key = keys[rng.integers(len(keys))]
        with h5py.File(store.path, "a") as f:
            names = sorted(f[f"scores/{key}"])
            ds = f[f"scores/{key}/{names[rng.integers(len(names))]}"]
            values = ds[()]
            as_bytes = values.view(np.uint8)
            as_bytes[rng.integers(as_bytes.size)] ^= 1 << int(rng.integers(8))
            ds[...] = values
        shown = cli("show", root / "tiny")
        assert shown.returncode == 2 and "damaged" in shown.stderr and "Traceback" not in shown.stderr
    elif kind == "chunk":  # a finished key taken back to one pending chunk of half its examples
        key = keys[rng.integers(len(keys))]
        arrays = store.get(key)
        n = len(next(iter(arrays.values())))
        with h5py.File(store.path, "a") as f:
            del f[f"scores/{key}"]
        store.write_chunk(key, np.arange(n // 2), {k: v[: n // 2] for k, v in arrays.items()})
        (chunk,) = (root / "tiny" / ".pending" / key).glob("*.npz")
        _flip(chunk, rng, _zip_payload(chunk))
    elif kind == "checkpoint":
        (checkpoint,) = (root / "ckpt").glob("*.pt")
        _flip(checkpoint, rng, _zip_payload(checkpoint))
    else:
        _flip(root / "tiny" / "run.json", rng)
        shown = cli("show", root / "tiny")
        assert shown.returncode == 2 and "run.json is damaged" in shown.stderr and "Traceback" not in shown.stderr
    rerun = cli("run", TINY, "--results", root, "--checkpoints", root / "ckpt")
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    prov = json.loads((root / "tiny" / "run.json").read_text())["provenance"]
    if kind == "checkpoint":
        assert "is damaged" in rerun.stdout and prov["trained_backbones"] == 1
    if kind in ("scores", "chunk"):
        assert prov["scored_examples"] > 0  # the damaged key was recomputed, not served
    ref, got = all_scores(run_dir), all_scores(root / "tiny")
    assert ref.keys() == got.keys()
    for k in ref:
        for output in ref[k]:
            np.testing.assert_array_equal(got[k][output], ref[k][output])


def test_run_with_the_tensorboard_logger_writes_score_histograms(first_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base, _, _ = first_run
    results = base / "tensorboard-run"
    proc = cli("run", TINY, "--results", results, "--checkpoints", base / "ckpt", "--detectors", "likelihood",
               "--ood", "mnist", "--logger", "tensorboard")
    assert proc.returncode == 0, proc.stderr
    events = EventAccumulator(str(results / "tiny" / "tensorboard")).Reload()
    assert {"scores/likelihood/iwae_bpd/mnist", "scores/likelihood/elbo_bpd/mnist"} <= set(events.Tags()["histograms"])
