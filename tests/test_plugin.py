"""A third-party package adds a detector through an entry point, with no change to ood-bench."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"


@pytest.fixture(scope="module")
def installed_plugin():
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(PLUGIN)], check=True)
    yield
    subprocess.run([*pip, "uninstall", "-y", "ood-bench-example-plugin"], check=True)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ood_bench", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def test_plugin_is_listed(installed_plugin):
    proc = cli("list", "detectors")
    assert proc.returncode == 0, proc.stderr
    assert "latent_kl" in proc.stdout and "ood_bench_example_plugin" in proc.stdout
    assert "likelihood" in proc.stdout and "llr" in proc.stdout


@pytest.mark.skipif(
    not os.environ.get("OOD_BENCH_MIRROR") or not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs OOD_BENCH_MIRROR and the Debian dataset-fashion-mnist package",
)
def test_plugin_detector_runs_inside_a_suite(installed_plugin, tmp_path):
    suite = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())
    suite["name"] = "tiny-plugin"
    suite["ood"] = ["mnist"]
    suite["evaluation"]["max_examples"] = 100
    suite["detectors"] = {"latent_kl": {"backbone": "hvae"}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    proc = cli("run", path, "--results", tmp_path / "results", "--checkpoints", tmp_path / "ckpt")
    assert proc.returncode == 0, proc.stderr
    board = (tmp_path / "results" / "tiny-plugin" / "leaderboard.md").read_text()
    assert "latent_kl" in board and "kl_total" in board
