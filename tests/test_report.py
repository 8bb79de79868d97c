"""`ood-bench report` and `compare --bootstrap`.

The report tests run the tiny suite on real data (skipped without FashionMNIST and the mirror); the
bootstrap tests build small run directories from synthetic scores, so they always run.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from ood_bench.cache.store import ScoreStore
from ood_bench.cli.main import main
from ood_bench.metrics.bootstrap import bootstrap_metrics, resample_counts
from ood_bench.metrics.ood import METRICS
from ood_bench.models.heads import BernoulliHead, DiscretizedLogisticMixtureHead
from ood_bench.models.hvae import HierarchicalVAE
from ood_bench.report.build import _backbone_sections, _Names, write_report
from ood_bench.report.compare import bootstrap_deltas
from ood_bench.report.page import Text
from ood_bench.suite.results import write_plan
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "suites" / "tiny.yaml"
HAVE_DATA = bool(os.environ.get("OOD_BENCH_MIRROR")) and Path("/usr/share/datasets/fashion-mnist").is_dir()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="needs OOD_BENCH_MIRROR and dataset-fashion-mnist")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    from ood_bench.suite.runner import run_suite

    base = tmp_path_factory.mktemp("report")
    quiet = Console(quiet=True)
    run_dir, _ = run_suite(TINY, results_root=base / "results", checkpoint_dir=base / "ckpt", download=False,
                           console=quiet)
    out = write_report(run_dir, console=quiet)
    return run_dir, out


def _image_links(out: Path) -> tuple[list[str], list[str]]:
    html_links = re.findall(r'<img src="([^"]+)"', (out / "index.html").read_text())
    md_links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    return html_links, md_links


@needs_data
def test_report_has_every_figure_type_and_every_link_resolves(tiny_report):
    run_dir, out = tiny_report
    plan = json.loads((run_dir / "run.json").read_text())
    names = {p.name for p in (out / "figures").glob("*.png")}
    for label in ("mnist", "omniglot-inverted", "uniform-noise", "fashionmnist-train-sanity"):
        assert f"roc-{label}.png" in names
    outputs = plan["evaluations"][1]["outputs"]
    for output in outputs:
        assert f"density-llr-{output.replace('_', '-')}.png" in names
    assert {"hvae-reconstructions.png", "hvae-kl.png"} <= names
    html_links, md_links = _image_links(out)
    assert html_links == md_links  # the same content in the same order
    assert {Path(link).name for link in html_links} == names
    for link in html_links:
        assert not link.startswith(("/", "http")) and (out / link).is_file(), link
    page = (out / "index.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # static, no CDN
    assert "0.5" in page and "iwae_samples=4" in page  # the leaderboard is on the page
    # every figure is a real picture, not an empty canvas
    from PIL import Image
    for name in names:
        pixels = np.asarray(Image.open(out / "figures" / name).convert("L"), dtype=float)
        assert pixels.std() > 5, name


@needs_data
def test_missing_checkpoint_is_stated_not_trained(tiny_report, tmp_path, monkeypatch):
    run_dir, _ = tiny_report
    plan = json.loads((run_dir / "run.json").read_text())
    for entry in plan["backbones"].values():
        entry["checkpoint"] = str(tmp_path / "gone" / Path(entry["checkpoint"]).name)
    monkeypatch.delenv("OOD_BENCH_CHECKPOINTS", raising=False)
    console = Console(record=True, width=300)
    blocks = _backbone_sections(plan, tmp_path / "run", 0, None, None, tmp_path, _Names(), console)
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "gone").exists()
    notes = [b.text for b in blocks if isinstance(b, Text) and "not available" in b.text]
    assert len(notes) == 2 and "checkpoint file hvae-" in notes[0]  # reconstructions and KL both say so
    assert console.export_text().count("warning:") == 1


@needs_data
def test_unloadable_checkpoint_is_stated(tiny_report, tmp_path):
    from ood_bench.hashing import hash_file
    from ood_bench.models.training import FINAL_FORMAT

    run_dir, _ = tiny_report
    plan = json.loads((run_dir / "run.json").read_text())
    bad = tmp_path / "hvae-made-by-another-version.pt"  # parameters this version rejects
    torch.save({"format": FINAL_FORMAT, "model": {}, "metadata": {"kind": "hvae", "params": {"blocks_per_stage": -1},
                                                                 "input_shape": [1, 28, 28]}}, bad)
    plan["backbones"] = {"hvae/seed0": {"checkpoint": str(bad), "sha256": hash_file(bad), "metadata": {"kind": "hvae"}}}
    blocks = _backbone_sections(plan, run_dir, 0, None, None, tmp_path, _Names(), Console(quiet=True))
    notes = [b.text for b in blocks if isinstance(b, Text) and "cannot be loaded" in b.text]
    assert len(notes) == 2 and "blocks_per_stage" in notes[0]


@needs_data
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`)")
def test_report_renders_in_headless_chromium(tiny_report, tmp_path):
    from PIL import Image

    _, out = tiny_report
    shot = tmp_path / "shot.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", f"--screenshot={shot}", "--window-size=1200,3000",
                           (out / "index.html").resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # text, tables and figures, not a blank page
    assert (pixels < 128).mean() > 0.01


def test_reconstruct_is_a_mean_image_in_unit_range():
    torch.manual_seed(0)
    model = HierarchicalVAE.from_params({"channels": 4, "blocks_per_stage": 1, "dense_width": 8}, (1, 28, 28)).eval()
    x = model.prepare(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8), None)
    for k in range(model.num_latent_layers):
        r = model.reconstruct(x, k)
        assert r.shape == x.shape and float(r.min()) >= 0 and float(r.max()) <= 1
    assert not torch.equal(model.reconstruct(x, 0), model.reconstruct(x, 2))
    from ood_bench.models.vae import ConvVAE  # a one-layer VAE reconstructs from z (k = 0) with any head

    for likelihood in ("bernoulli", "dlm", "categorical"):
        vae = ConvVAE.from_params({"channels": [4, 8], "hidden": 8, "latent_dim": 3, "likelihood": likelihood},
                                  (1, 28, 28)).eval()
        xv = vae.prepare(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8), None)
        r = vae.reconstruct(xv, 0)
        assert r.shape == (3, 1, 28, 28) and float(r.min()) >= 0 and float(r.max()) <= 1, likelihood
        assert not r.requires_grad  # the report turns it into an array
    assert torch.allclose(BernoulliHead(1).mean(torch.zeros(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 0.5))
    head = DiscretizedLogisticMixtureHead(channels=3, components=1)
    params = torch.zeros(1, head.num_params, 1, 1)
    params[:, 1:4] = torch.tensor([0.2, -0.4, 0.6]).view(1, 3, 1, 1)  # the means; coefficients tanh(0) = 0
    assert torch.allclose(head.mean(params).flatten(), torch.tensor([0.6, 0.3, 0.8]))


# ------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_metrics_equal_the_metrics_of_each_resample():
    rng = np.random.default_rng(0)
    s_id, s_ood = np.round(rng.normal(0, 1, 150), 1), np.round(rng.normal(0.8, 1, 90), 1)  # many ties
    c_id, c_ood = resample_counts(rng, s_id.size, 12), resample_counts(rng, s_ood.size, 12)
    values = bootstrap_metrics(s_id, s_ood, c_id, c_ood, list(METRICS))
    for r in range(12):
        a, b = np.repeat(s_id, c_id[r]), np.repeat(s_ood, c_ood[r])
        for name, metric in METRICS.items():
            assert values[name][r] == pytest.approx(metric(a, b), abs=1e-12), name


def _fake_run(path: Path, s_id: np.ndarray, s_ood: np.ndarray, fingerprints=("fid", "food")) -> Path:
    """A run directory holding one detector output on one ID and one OOD set."""
    store = ScoreStore(path)
    keys = {}
    for label, scores, fp in (("id", s_id, fingerprints[0]), ("ood", s_ood, fingerprints[1])):
        key = f"{label}-{fp}"
        store.write_chunk(key, np.arange(scores.size), {"score": scores})
        store.finalize(key, {"set": label}, scores.size)
        keys[label] = key
    write_plan(path, {
        "suite": "fake", "profile": "cpu", "seeds": [0], "metrics": ["auroc", "fpr80_ood_pos"], "balanced": False,
        "id_set": "id", "missing": [],
        "sets": {"id": {"role": "id", "n": s_id.size, "fingerprint": fingerprints[0]},
                 "ood": {"role": "ood", "n": s_ood.size, "fingerprint": fingerprints[1]}},
        "evaluations": [{"detector": "det", "backbone": "bb", "params_str": "", "uses_auxiliary_data": False,
                         "seed": 0, "keys": keys, "outputs": ["score"]}],
    })
    return path


@pytest.fixture()
def fake_runs(tmp_path):
    rng = np.random.default_rng(1)
    s_id, s_ood = rng.normal(0, 1, 400), rng.normal(0.5, 1, 300)
    return {
        "a": _fake_run(tmp_path / "a", s_id, s_ood),
        "same": _fake_run(tmp_path / "same", s_id, s_ood),
        "better": _fake_run(tmp_path / "better", s_id, s_ood + 1.5),
        "other_examples": _fake_run(tmp_path / "other", s_id, s_ood, fingerprints=("fid", "elsewhere")),
    }


def test_bootstrap_interval_includes_zero_for_identical_runs_and_excludes_it_for_different(fake_runs):
    runs = [fake_runs["a"], fake_runs["same"], fake_runs["better"]]
    ci = bootstrap_deltas(runs, resamples=300, seed=0).set_index(["run", "metric"])
    same = ci.loc[(f"delta {runs[1]} - {runs[0]}", "auroc")]
    better = ci.loc[(f"delta {runs[2]} - {runs[0]}", "auroc")]
    assert same.low == 0 and same.high == 0 and same.paired
    assert better.low > 0.1 and better.paired
    again = bootstrap_deltas(runs, resamples=300, seed=0).set_index(["run", "metric"])
    assert again.equals(ci)  # seeded: the same intervals every time
    other = bootstrap_deltas(runs, resamples=300, seed=1).set_index(["run", "metric"])
    assert other.loc[(f"delta {runs[2]} - {runs[0]}", "auroc")].low != better.low


def test_bootstrap_of_different_examples_is_unpaired(fake_runs):
    ci = bootstrap_deltas([fake_runs["a"], fake_runs["other_examples"]], resamples=200)
    assert not ci["paired"].any()
    assert (ci["low"] < 0).all() and (ci["high"] > 0).all()  # same scores, independent resamples


def test_compare_cli_prints_intervals(fake_runs, capsys):
    assert main(["compare", str(fake_runs["a"]), str(fake_runs["better"]), str(fake_runs["other_examples"]),
                 "--bootstrap", "200"]) == 0
    text = capsys.readouterr().out
    assert "95% CI" in text and "*" in text and "(unpaired)" in text


def test_report_of_a_directory_without_a_run_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an ood-bench run directory" in " ".join(capsys.readouterr().err.split())


@needs_data
@needs_data
def test_the_headline_shows_the_papers_values_beside_ours_with_the_protocol_difference(tiny_report):
    _, out = tiny_report
    text = (out / "report.md").read_text()
    headline = text[text.index("## Headline"): text.index("## ROC curves")]
    # seed 001 Table 7: LLR>1 on MNIST 0.986, on inverted Omniglot 0.954; uniform noise has no published value
    table = [[c.strip() for c in line.strip("|").split("|")] for line in headline.splitlines() if line.startswith("|")]
    header = table[0]
    (row,) = [r for r in table if r[0] == "llr [p1]" and r[2] == "llr_k1"]
    cells = dict(zip(header, row, strict=True))
    assert cells["mnist"].endswith("· paper 0.986") and "· paper 0.954" in cells["omniglot-inverted"], headline
    assert cells["kmnist"] == "missing · paper 0.974" and "paper" not in cells["uniform-noise"]
    assert "[p1] llr / llr_k1: the paper's 'LLR>1' (seed001_table7_fmnist)" in headline
    assert "protocol differs: a tiny HVAE, 1 epoch, S = 4" in headline
    assert "· paper" not in text[text.index("## Every metric"):]  # only the headline carries them


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`)")
@needs_data
def test_the_headline_table_is_on_the_first_screen_and_no_table_overflows(tiny_report, tmp_path):
    """Layout at 1400x900, measured by the browser: a copy of the page with a probe script (the report itself
    has no script) writes the measurements into the DOM, which headless Chromium dumps."""
    _, out = tiny_report
    probe = ("<script>window.addEventListener('load', () => {const t = document.querySelectorAll('table');"
             "const head = t[0].getBoundingClientRect();"
             "const wide = Array.from(t).filter(x => x.getBoundingClientRect().right > window.innerWidth + 1).length;"
             "document.body.setAttribute('data-probe', [head.top, head.bottom, wide, window.innerWidth].join(','));"
             "});</script></body>")
    page = (out / "index.html").read_text().replace("</body>", probe)
    copy = out / "probe.html"
    copy.write_text(page)
    try:
        proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--window-size=1400,900",
                               "--virtual-time-budget=5000", "--dump-dom", copy.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    finally:
        copy.unlink()
    found = re.search(r'data-probe="([^"]+)"', proc.stdout)
    assert found, proc.stderr[-2000:]
    top, bottom, overflowing, width = (float(v) for v in found.group(1).split(","))
    assert width >= 1300 and 0 < top < 900, found.group(1)  # the headline table starts on the first screen
    assert overflowing == 0  # every table fits the page or scrolls inside its own box
    text = (out / "report.md").read_text()
    assert text.index("## Headline") < text.index("## ROC curves") < text.index("## Every metric")

    assert text.index("<details><summary>Provenance") > text.index("## Every metric")


def test_provenance_shows_each_steps_time_from_the_run_that_computed_it():
    from ood_bench.report.build import _step_times

    plan = {"history": [
        {"date": "first", "wall_s_parts": {"backbone hvae seed 0": 120.0, "score llr seed 0": 30.0}},
        {"date": "second", "wall_s_parts": {"backbone hvae seed 0": 0.1, "score llr seed 0": 0.0,
                                            "score new seed 0": 5.0}},
    ]}
    rows = {r[0]: r[1:] for r in _step_times(plan)}
    assert rows["backbone hvae seed 0"] == ["120.0 s", "computed by the run of first; cached since"]
    assert rows["score llr seed 0"][0] == "30.0 s"
    assert rows["score new seed 0"] == ["5.0 s", "this run"]
