"""Plans, executors and concurrent runs: Ray gives local's bits; three runs at once train each backbone once.

The suite is ``tests/suites/micro.yaml`` on real data (FashionMNIST from Debian, MNIST from the mirror).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ood_bench.cache.store import ScoreStore
from ood_bench.compute import resolve_compute
from ood_bench.errors import UserError
from ood_bench.execution.plan import build_plan
from ood_bench.suite.datasets import resolve
from ood_bench.suite.load import load_suite

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests" / "suites" / "micro.yaml"

pytestmark = pytest.mark.skipif(
    not os.environ.get("OOD_BENCH_MIRROR") or not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs OOD_BENCH_MIRROR and the Debian dataset-fashion-mnist package",
)


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "ood_bench", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def cli(*args) -> tuple[int, str]:
    proc = start(*args)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def scores(run_dir: Path) -> dict:
    store = ScoreStore(run_dir)
    return {(f["detector_label"], f["set"]): store.get(k) for k, f in store.keys().items()}


def assert_same_scores(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        for output in a[key]:
            np.testing.assert_array_equal(a[key][output], b[key][output], err_msg=f"{key} {output}")


def trained_count(output: str) -> int:
    tail = [line for line in output.splitlines() if "backbone(s) trained" in line]
    assert tail, output[-2000:]
    return int(tail[-1].split("backbone(s) trained")[0].rsplit(",", 1)[1])


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("local")
    code, out = cli("run", MICRO, "--results", base / "results", "--checkpoints", base / "ckpt")
    assert code == 0, out
    return base, scores(base / "results" / "micro")


def test_plan_is_pure_and_reports_the_cache(local_run, tmp_path):
    suite, _ = load_suite(MICRO)
    data = resolve(suite, download=False)
    plan = build_plan(suite, data, resolve_compute("cpu"), tmp_path / "ckpt")
    # waic's members are hvae seeds 0 and 1; seed 0 is shared with likelihood and llr: two train units
    assert [(u.backbone, u.seed) for u in plan.train.values()] == [("hvae", 0), ("hvae", 1)]
    groups = {u.detectors for u in plan.scores}
    assert groups == {("likelihood", "llr"), ("waic",)}  # detectors on the same checkpoint share a unit
    assert len(plan.scores) == 2 * len(data.eval_sets)
    assert all(u.start == 0 and u.stop == len(data.eval_sets[u.set_label]) for u in plan.scores)
    split = build_plan(suite, data, resolve_compute("cpu"), tmp_path / "ckpt", batch_size=32, examples_per_unit=40)
    ranges = [(u.start, u.stop) for u in split.scores if u.set_label == "mnist" and u.detectors == ("waic",)]
    assert ranges == [(0, 64), (64, 100)]  # whole batches of 32
    assert not (tmp_path / "ckpt").exists()

    base, _ = local_run
    code, out = cli("plan", MICRO, "--results", base / "results", "--checkpoints", base / "ckpt", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert all(e["status"] == "cached" for e in status["train"])
    assert status["summary"]["scores_cached"] == status["summary"]["scores"] > 0
    code, out = cli("plan", MICRO, "--results", tmp_path / "fresh", "--checkpoints", tmp_path / "ckpt2", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert {e["status"] for e in status["train"]} == {"to train"}
    assert {s for e in status["score"] for s in e["status"].values()} == {"after training"}
    assert not (tmp_path / "ckpt2").exists() and not (tmp_path / "fresh").exists()


def test_ray_executor_gives_the_local_bits_and_a_rerun_computes_nothing(local_run, tmp_path):
    pytest.importorskip("ray")
    base, local = local_run
    ckpt = tmp_path / "ckpt"  # a fresh checkpoint folder: the Ray workers train the backbones themselves
    code, out = cli("run", MICRO, "--results", tmp_path / "results", "--checkpoints", ckpt, "--executor", "ray",
                    "--examples-per-unit", "64")
    assert code == 0, out
    assert trained_count(out) == 2
    assert_same_scores(scores(tmp_path / "results" / "micro"), local)
    code, out = cli("run", MICRO, "--results", tmp_path / "results", "--checkpoints", ckpt, "--executor", "ray")
    assert code == 0, out
    prov = json.loads((tmp_path / "results" / "micro" / "run.json").read_text())["provenance"]
    assert prov["trained_backbones"] == 0 and prov["scored_examples"] == 0 and prov["executor"] == "ray"


def test_three_concurrent_runs_train_each_backbone_once_and_agree(local_run, tmp_path):
    _, local = local_run
    args = ("run", MICRO, "--results", tmp_path / "results", "--checkpoints", tmp_path / "ckpt")
    procs = [start(*args) for _ in range(3)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n\n".join(outs)
    assert sum(trained_count(o) for o in outs) == 2  # two backbones, each trained by exactly one process
    assert_same_scores(scores(tmp_path / "results" / "micro"), local)
    assert not list((tmp_path / "results" / "micro").glob(".scores.h5.*.tmp"))


def test_a_killed_concurrent_run_does_not_stop_the_others_and_a_rerun_completes(local_run, tmp_path):
    _, local = local_run
    args = ("run", MICRO, "--results", tmp_path / "results", "--checkpoints", tmp_path / "ckpt")
    victim, *others = [start(*args) for _ in range(3)]
    time.sleep(4)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    outs = [p.communicate(timeout=600)[0] for p in others]
    assert [p.returncode for p in others] == [0, 0], "\n\n".join(outs)
    code, out = cli(*args)
    assert code == 0, out
    assert trained_count(out) == 0
    assert_same_scores(scores(tmp_path / "results" / "micro"), local)


def test_bad_executor_options_are_one_paragraph_errors():
    code, out = cli("run", MICRO, "--address", "auto")
    assert code == 2 and "--executor ray" in out and "Traceback" not in out
    with pytest.raises(UserError, match="tf32 needs a CUDA device"):
        resolve_compute("cpu", "tf32")
    with pytest.raises(UserError, match="Unknown precision"):
        resolve_compute("cpu", "fp16")


def test_cpu_and_other_numerics_never_share_a_checkpoint(tmp_path):
    suite, _ = load_suite(MICRO)
    data = resolve(suite, download=False)
    fp32 = build_plan(suite, data, resolve_compute("cpu"), tmp_path)
    bf16 = build_plan(suite, data, resolve_compute("cpu", "bf16"), tmp_path)
    assert {u.path for u in fp32.train.values()}.isdisjoint(u.path for u in bf16.train.values())
