"""The Python API and the CLI options built on it: the docs/api.md example runs and matches the suite's cell."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ood_bench.cache.store import ScoreStore
from ood_bench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "suites" / "tiny.yaml"

needs_data = pytest.mark.skipif(
    not os.environ.get("OOD_BENCH_MIRROR") or not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs OOD_BENCH_MIRROR and the Debian dataset-fashion-mnist package",
)


def cli(*args, cwd=ROOT, **env):
    return subprocess.run([sys.executable, "-m", "ood_bench", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200", **env})


@needs_data
def test_the_api_doc_example_runs_and_equals_the_suite_cell(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "api.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests" / "suites").mkdir(parents=True)
    (tmp_path / "tests" / "suites" / "tiny.yaml").write_text(TINY.read_text())
    (tmp_path / "benchmarks").mkdir()
    shutil.copytree(ROOT / "benchmarks" / "reference", tmp_path / "benchmarks" / "reference")  # its references
    namespace: dict = {}
    exec(compile(example, "docs/api.md", "exec"), namespace)  # the example asserts the equality itself
    assert 0.0 <= namespace["auroc"] <= 1.0 and len(namespace["cell"]) == 1
    assert (tmp_path / "results-api" / "tiny" / "leaderboard.csv").is_file()
    # the same detector through the suite: every per-example score is the suite's, not only the AUROC
    run = namespace["run"]
    np.testing.assert_array_equal(namespace["scores_ood"]["llr_k1"], run.scores("llr", "mnist")["llr_k1"])


def test_score_refuses_a_plain_torch_model_and_bad_images():
    import ood_bench as ob

    det = ob.detectors.get("likelihood")(iwae_samples=1)
    with pytest.raises(UserError, match="subclass of ood_bench.models.Backbone"):
        ob.score(det, torch.nn.Linear(2, 2), np.zeros((2, 1, 4, 4), dtype=np.uint8))
    with pytest.raises(UserError, match="uint8 pixels"):
        ob.as_image_set(np.zeros((2, 4, 4), dtype=np.float32))
    a = ob.as_image_set(np.zeros((2, 4, 4), dtype=np.uint8))
    b = ob.as_image_set(np.ones((2, 4, 4), dtype=np.uint8))
    assert a.shape == (1, 4, 4) and a.fingerprint != b.fingerprint


@needs_data
def test_cli_set_subsets_validate_and_show_formats(tmp_path):
    results = tmp_path / "results"
    proc = cli("run", TINY, "--results", results, "--checkpoints", tmp_path / "ck", "--set",
               "evaluation.max_examples=100", "--detectors", "likelihood", "--ood", "mnist",
               OOD_BENCH_PROGRESS_EVERY="0")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # not a terminal: plain progress lines, with loss and per-layer KL while training
    assert re.search(r"training \w+: \d+/\d+ \(\d+%\), [\d.]+ steps/s, ETA .*loss .* KL z1", proc.stdout), proc.stdout
    assert "score likelihood/mnist: 100/100 (100%)" in proc.stdout
    assert re.search(r"data: mnist \(mnist 'test'\): 10,000 images 1x28x28 in [\d.]+ s", proc.stdout), proc.stdout
    reported = cli("report", results / "tiny")
    assert reported.returncode == 0 and "report: ROC curves" in reported.stdout and "report: wrote" in reported.stdout
    record = json.loads((results / "tiny" / "run.json").read_text())
    assert {e["detector"] for e in record["evaluations"]} == {"likelihood"}
    assert set(record["sets"]) == {"fashionmnist", "mnist", "fashionmnist-train (sanity)"}
    assert record["provenance"]["overrides"] == {"evaluation.max_examples": 100}
    assert record["subset"] == {"detectors": ["likelihood"], "ood": ["mnist"]}
    assert all(s["n"] == 100 for s in record["sets"].values())

    bad = cli("run", TINY, "--set", "detectors.llr.params.iwae_samples=zero")
    assert bad.returncode == 2 and "detectors.llr.params" in bad.stderr and "Traceback" not in bad.stderr
    unknown = cli("run", TINY, "--detectors", "nope")
    assert unknown.returncode == 2 and "Detectors of this suite: likelihood, llr" in unknown.stderr
    ok = cli("validate", TINY, "--profile", "cpu")
    assert ok.returncode == 0 and "valid suite 'tiny'" in ok.stdout

    md = cli("show", results / "tiny")  # piped: whole cells in markdown
    assert md.returncode == 0 and md.stdout.startswith("# ood-bench leaderboard") and "…" not in md.stdout
    csv = cli("show", results / "tiny", "--format", "csv")
    assert csv.stdout.splitlines()[0].startswith("detector,backbone,output")
    rows = json.loads(cli("show", results / "tiny", "--format", "json").stdout)
    assert {r["detector"] for r in rows} == {"likelihood"}


@needs_data
def test_relative_dataset_paths_resolve_against_the_suite_file(tmp_path):
    from ood_bench.suite.load import load_suite

    (tmp_path / "suites").mkdir()
    text = TINY.read_text().replace("  - mnist\n", "  - mnist\n  - {dataset: image_folder, params: {path: ../imgs}, "
                                                   "label: mine}\n")
    text = text.replace("../../benchmarks", str(ROOT / "benchmarks"))  # the suite's reference files
    (tmp_path / "suites" / "s.yaml").write_text(text)
    suite, _ = load_suite(tmp_path / "suites" / "s.yaml")
    mine = next(r for r in suite.ood if r.display_name == "mine")
    assert mine.params["path"] == str((tmp_path / "imgs").resolve())


@needs_data
def test_a_logger_hears_every_validation_and_every_finished_score_array(tmp_path):
    import ood_bench as ob
    from ood_bench.loggers import TensorBoardLogger

    class Recording(TensorBoardLogger):
        def __init__(self, log_dir):
            super().__init__(log_dir)
            self.validations, self.arrays = [], {}

        def validation(self, backbone, seed, record):
            super().validation(backbone, seed, record)
            self.validations.append((backbone, seed, record["step"], len(record["val_kl"])))

        def scores(self, detector, seed, set_label, output, values):
            super().scores(detector, seed, set_label, output, values)
            self.arrays[(detector, seed, set_label, output)] = values

    logger = Recording(tmp_path / "tb")
    run = ob.run_suite(TINY, results=tmp_path / "results", logger=logger, ood=["mnist"], detectors=["likelihood"],
                       overrides={"in_distribution.max_train_examples": 640,
                                  "backbones.hvae.train.val_every_epochs": 0.5})
    # every half epoch and at the end, live, in order, with the KL of each of the three latent layers
    assert len(logger.validations) >= 2 and {v[:2] for v in logger.validations} == {("hvae", 0)}
    steps = [v[2] for v in logger.validations]
    assert steps == sorted(set(steps)) and all(v[3] == 3 for v in logger.validations)
    store = ScoreStore(run.run_dir)
    stored = {(f["detector_label"], f["seed"], f["set"]): store.get(k) for k, f in store.keys().items()}
    assert {k[:3] for k in logger.arrays} == set(stored) and len(stored) == 3  # mnist, the ID test set, sanity
    for (detector, seed, set_label, output), values in logger.arrays.items():
        np.testing.assert_array_equal(values, stored[(detector, seed, set_label)][output])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert {"hvae/seed0/val_elbo_nats", "hvae/seed0/val_kl_z1", "hvae/seed0/val_kl_z3"} <= set(events.Tags()["scalars"])
    assert "scores/likelihood/iwae_bpd/mnist" in events.Tags()["histograms"]


def test_an_unknown_or_unavailable_logger_is_refused_before_any_work(tmp_path, monkeypatch):
    from ood_bench.loggers import check_logger

    with pytest.raises(UserError, match="Allowed loggers: none, tensorboard"):
        check_logger("wandb")
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"ood-bench\[tensorboard\]"):
        check_logger("tensorboard")
