"""``ood-bench report``: figures and a static page of a finished run, from its cache and checkpoints.

Scores come from ``scores.h5`` alone (ROC curves, densities, the leaderboard). Reconstruction grids and
per-layer KL need the scored backbone and some images: the backbone is loaded from its checkpoint (never
trained) and the images from the suite's data (never downloaded). When either is unavailable the page
says so and everything else is still written.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from ood_bench.detectors.base import Batch
from ood_bench.errors import UserError
from ood_bench.files import write_text_atomic
from ood_bench.hashing import hash_file
from ood_bench.metrics import METRIC_INFO, balanced_pair
from ood_bench.models.training import TrainedBackbone
from ood_bench.report import figures
from ood_bench.report.leaderboard import AUX_MARK, _metric_view, _metrics_of, leaderboard_table
from ood_bench.report.page import (
    Block,
    Bullets,
    Collapsible,
    Heading,
    Image,
    TableBlock,
    Text,
    render_html,
    render_markdown,
)
from ood_bench.suite.results import read_plan, records_from_cache, score_pairs

FIGURES = "figures"
RECON_EXAMPLES = 8
KL_EXAMPLES = 256


def slug(text: str) -> str:
    """A file-name-safe version of ``text``: lower case, runs of other characters become one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


@dataclass
class _Names:
    """Deterministic, unique figure file names (a clash after sanitising gets a numeric suffix)."""

    used: set[str] = field(default_factory=set)

    def __call__(self, *parts: str) -> str:
        stem = "-".join(slug(p) for p in parts)
        name, i = f"{stem}.png", 2
        while name in self.used:
            name, i = f"{stem}-{i}.png", i + 1
        self.used.add(name)
        return name


def write_report(
    run_dir: Path, out_dir: Path | None = None, suite_path: Path | None = None,
    checkpoint_dir: Path | None = None, console: Console | None = None,
) -> Path:
    """Write ``index.html``, ``report.md`` and ``figures/*.png`` for ``run_dir``; returns the folder."""
    console = console or Console()
    run_dir = Path(run_dir)
    plan = read_plan(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    fig_dir = out / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):
        stale.unlink()
    names = _Names()
    seed = plan["seeds"][0]
    title = f"ood-bench report: {plan['suite']} ({plan['profile']} profile)"

    def step(text: str) -> None:
        console.print(f"report: {text}", highlight=False)

    step(f"metrics of {len(plan['evaluations'])} evaluations from the cache")
    records = records_from_cache(run_dir)
    blocks: list[Block] = [*_protocol(plan), *_headline(records, plan)]
    scores = _first_seed_scores(run_dir, plan, seed)
    step("ROC curves and score densities")
    blocks += _roc_section(plan, scores, seed, fig_dir, names)
    blocks += _density_section(plan, scores, seed, fig_dir, names)
    step("reconstructions and per-layer KL of every backbone (loads the checkpoints and a few images)")
    blocks += _backbone_sections(plan, run_dir, seed, suite_path, checkpoint_dir, fig_dir, names, console)
    blocks += _leaderboard(records, plan)
    blocks.append(Collapsible("Provenance: code, data, checkpoints and the cost of every step",
                              _provenance(plan)))

    write_text_atomic(out / "report.md", render_markdown(title, blocks))
    write_text_atomic(out / "index.html", render_html(title, blocks))
    step(f"wrote {out / 'index.html'}, report.md and {len(list(fig_dir.glob('*.png')))} figures")
    return out


# ------------------------------------------------------------------------------------ tables
HEADLINE_METRIC = "auroc"


def _protocol(plan: dict[str, Any]) -> list[Block]:
    """One line per backbone: kind, pixels and head, objective, training budget, seeds."""
    lines = []
    seeds = ", ".join(map(str, plan["seeds"]))
    for key, entry in plan.get("backbones", {}).items():
        label, _, seed = key.rpartition("/seed")
        if seed != str(plan["seeds"][0]):
            continue
        meta = entry.get("metadata", {})
        params, train = meta.get("params", {}), meta.get("train_config", {})
        head = params.get("likelihood")
        pixels = {"bernoulli": "dynamically binarised pixels, Bernoulli head",
                  "dlm": "8-bit pixels, discretised logistic mixture head",
                  "categorical": "8-bit pixels, 256-way categorical head"}.get(head, f"{head} head")
        objective = params.get("objective", "elbo")
        aux = meta.get("aux_data", {}).get("name")
        lines.append(f"{label}: {meta.get('kind', '?')}, {pixels}, objective {objective}"
                     f"{f' with auxiliary {aux}' if aux else ''}, {train.get('epochs', '?')} epochs x batch "
                     f"{train.get('batch_size', '?')}, seeds {seeds}")
    return [Text(f"Suite {plan['suite']}, profile {plan['profile']}, in-distribution {plan['id_set']}; "
                 f"{len(plan['seeds'])} seed(s); scores are higher = more OOD."), Bullets(lines)]


def _headline(records, plan: dict[str, Any]) -> list[Block]:
    """AUROC (OOD positive) of every detector output, grouped by backbone, best cell of each set in bold."""
    metric = HEADLINE_METRIC if HEADLINE_METRIC in plan["metrics"] else plan["metrics"][0]
    table = leaderboard_table(records, [metric], missing=plan.get("missing"))
    headers, rows, n_labels = _metric_view(table, metric)
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1], i))  # grouped by backbone, suite order inside
    rows = [rows[i] for i in order]
    strong = set()
    for j in range(n_labels, len(headers)):
        if str(headers[j]).endswith("(sanity)"):
            continue  # 0.5 is the target there, not the maximum
        means = [(float(str(r[j]).split()[0]), i) for i, r in enumerate(rows) if _is_number(str(r[j]).split()[0])]
        if means:
            best = max(m for m, _ in means)
            strong |= {(i, j) for m, i in means if m == best}
    notes = _paper_cells(rows, headers, n_labels, plan.get("papers") or {}) if metric == "auroc" else []
    return [Heading(f"Headline: {metric} ({METRIC_INFO.get(metric, '').split(';')[0]})"),
            TableBlock([str(h) for h in headers], [[str(c) for c in row] for row in rows], frozenset(strong)),
            Bullets(["Bold: the best mean of each OOD set (the sanity column's target is 0.5). Mean ± sample std "
                     "over seeds.", *notes, *table.attrs.get("footnotes", [])])]


def _paper_cells(rows: list[list], headers: list, n_labels: int, papers: dict[str, Any]) -> list[str]:
    """Append "paper v" to the cells that have a published value (run.json's ``papers``); their footnotes."""
    notes, numbered = [], {}
    for row in rows:
        label = str(row[0]).removesuffix(f" {AUX_MARK}")
        entry = papers.get(label, {})
        paper = entry.get("outputs", {}).get(str(row[2]))
        if not paper:
            continue
        for j in range(n_labels, len(headers)):
            value = paper["auroc"].get(str(headers[j]))
            if value is not None:
                row[j] = f"{row[j]} · paper {value:.3f}"
        sources = sorted(set(paper["source"].values()))
        if label not in numbered:
            numbered[label] = len(numbered) + 1
        mark = f"[p{numbered[label]}]"
        row[0] = f"{row[0]} {mark}" if mark not in str(row[0]) else row[0]
        cited = "; ".join(sources) or "no value for these sets"
        notes.append(f"{mark} {label} / {row[2]}: the paper's '{paper['score']}' ({cited})"
                     + (f"; protocol differs: {entry['differs']}" if entry.get("differs") else ""))
    return notes


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _step_times(plan: dict[str, Any]) -> list[list[str]]:
    """Each step's wall time from the run that computed it (the latest one that took time), not a cached rerun."""
    history = plan.get("history") or [{"wall_s_parts": plan.get("provenance", {}).get("wall_s", {}),
                                        "date": plan.get("provenance", {}).get("date", "")}]
    latest = history[-1].get("wall_s_parts", {})
    rows = []
    for step in dict.fromkeys(k for run in history for k in run.get("wall_s_parts", {})):
        computed = [run for run in history if run.get("wall_s_parts", {}).get(step, 0.0) >= CACHED_S]
        if not computed:
            rows.append([step, f"{latest.get(step, 0.0):.1f} s", "cached in every recorded run"])
            continue
        run = computed[-1]
        note = "this run" if run is history[-1] else f"computed by the run of {run.get('date', '?')}; cached since"
        rows.append([step, f"{run['wall_s_parts'][step]:.1f} s", note])
    return rows


CACHED_S = 0.5
"""A step that took less than this was loaded from the caches (checkpoint loads and cache reads take ~0.1 s)."""


def _provenance(plan: dict[str, Any]) -> list[Block]:
    prov = plan.get("provenance", {})
    rows = [["suite", f"{plan['suite']} ({plan.get('suite_file', '')})"],
            ["suite sha256", plan.get("suite_sha256", "")],
            ["git revision", str(prov.get("git_revision"))],
            ["ood-bench / torch", f"{prov.get('ood_bench_version', '')} / {prov.get('torch', '')}"],
            ["profile", plan["profile"]], ["device", plan.get("device", "")],
            ["numerics", str(prov.get("compute", ""))], ["executor", str(prov.get("executor", "local"))],
            ["overrides", str(plan.get("overrides") or "none")], ["machine", prov.get("machine", "")],
            ["date", prov.get("date", "")], ["seeds", ", ".join(map(str, plan["seeds"]))],
            ["balanced", "yes" if plan.get("balanced") else "no"]]
    sets = [[label, info["role"], str(info["n"]), info["fingerprint"]] for label, info in plan["sets"].items()]
    sets += [[m["ood_set"], "missing", "", m.get("fetch_command", "")] for m in plan.get("missing", [])]
    backbones = [[key, Path(b["checkpoint"]).name, b.get("weights_sha256") or b.get("sha256", "")]
                 for key, b in plan.get("backbones", {}).items()]
    return [TableBlock(["field", "value"], rows),
            Text("Wall time of every step, from the run that computed it:"),
            TableBlock(["step", "wall time", "computed"], _step_times(plan)),
            Text("Evaluation sets (fingerprint: the data checksum every cache key includes):"),
            TableBlock(["set", "role", "examples", "fingerprint / how to fetch"], sets),
            Text("Backbones:"), TableBlock(["backbone/seed", "checkpoint", "weights sha256"], backbones)]


def _leaderboard(records, plan: dict[str, Any]) -> list[Block]:
    table = leaderboard_table(records, plan["metrics"], missing=plan.get("missing"))
    blocks: list[Block] = [Heading("Every metric"),
                           Text("The same numbers as `ood-bench show`: mean ± sample std over seeds; scores are "
                                "higher = more OOD.")]
    for metric in _metrics_of(table):
        headers, rows, _ = _metric_view(table, metric)
        blocks += [Heading(metric, 3), Text(METRIC_INFO.get(metric, "custom metric")),
                   TableBlock([str(h) for h in headers], [[str(c) for c in row] for row in rows])]
    if table.attrs.get("footnotes"):
        blocks.append(Bullets(table.attrs["footnotes"]))
    return blocks


# ------------------------------------------------------------------------------------ score figures
def _first_seed_scores(run_dir: Path, plan: dict[str, Any], seed: int) -> dict[tuple[str, str], dict]:
    """(detector, output) -> {set label: (ID scores, set scores)} for ``seed``, balanced like the leaderboard."""
    out: dict[tuple[str, str], dict] = {}
    for ev, set_label, id_scores, ood_scores, _ in score_pairs(run_dir):
        if ev["seed"] != seed:
            continue
        for output in ood_scores:
            s_id, s_ood = id_scores[output], ood_scores[output]
            if plan["balanced"]:
                s_id, s_ood = balanced_pair(s_id, s_ood, seed)
            out.setdefault((ev["detector"], output), {})[set_label] = (s_id, s_ood)
    return out


def _roc_section(plan: dict[str, Any], scores: dict, seed: int, fig_dir: Path, names: _Names) -> list[Block]:
    blocks: list[Block] = [
        Heading("ROC curves"),
        Text(f"One panel per OOD set, one line per detector output (seed {seed}); OOD is the positive class, so "
             "the x-axis is the fraction of ID test examples flagged OOD and the y-axis the fraction of OOD "
             "examples caught. The legend gives each line's AUROC; the diagonal is chance. Line style "
             "distinguishes detectors.")]
    sets = list(dict.fromkeys(s for per_set in scores.values() for s in per_set))
    for set_label in sets:
        curves = [(f"{det}/{output}", *per_set[set_label]) for (det, output), per_set in scores.items()
                  if set_label in per_set]
        name = names("roc", set_label)
        figures.roc_figure(curves, f"{plan['id_set']} (ID) vs {set_label}", fig_dir / name)
        blocks.append(Image(f"{FIGURES}/{name}", f"ROC curves, {set_label}"))
    return blocks


def _density_section(plan: dict[str, Any], scores: dict, seed: int, fig_dir: Path, names: _Names) -> list[Block]:
    blocks: list[Block] = [
        Heading("Score densities"),
        Text(f"Histograms of each detector output on the ID test set (grey) and on each other set (red), seed "
             f"{seed}, scaled as densities: a histogram's area is the fraction of its set inside the axis. All "
             "panels of one output share the x-axis: the 0.5-99.5% quantiles of every set, but at most three "
             "widths of the ID range beyond it on either side, so that one far-off set cannot squeeze the "
             "others; a panel says how much of its set lies beyond the axis. Outputs in bits/dim (the negative "
             "likelihood bound per dimension; further right = less likely) use a logarithmic axis when it "
             "spans a decade or more, as seed 001 Fig. 5 does. "
             "Separated histograms mean a good detector; overlapping ones a poor one.")]
    for (det, output), per_set in scores.items():
        id_scores = next(iter(per_set.values()))[0]
        others = {label: s_ood for label, (_, s_ood) in per_set.items()}
        log = output.endswith("_bpd") and all((v > 0).all() for v in [id_scores, *others.values()])
        xlabel = "bits/dim" if output.endswith("_bpd") else "score"
        name = names("density", det, output)
        figures.density_figure(plan["id_set"], id_scores, others, xlabel, f"{det} / {output}", fig_dir / name,
                               log=log)
        blocks.append(Image(f"{FIGURES}/{name}", f"score densities, {det}/{output}"))
    return blocks


# ------------------------------------------------------------------------------------ backbone figures
def _find_checkpoint(entry: dict[str, Any], run_dir: Path, checkpoint_dir: Path | None, backbone_cls: type,
                     ) -> tuple[TrainedBackbone | None, str]:
    """The recorded checkpoint, or the same file in a checkpoint cache, loaded, if its weights are the run's.

    Runs record the weights digest (``weights_sha256``); runs before it recorded the file's sha256.
    """
    from ood_bench.models.checkpoints import weights_digest
    from ood_bench.models.training import load_trained

    recorded = Path(entry["checkpoint"])
    candidates = [recorded]
    for folder in (checkpoint_dir, os.environ.get("OOD_BENCH_CHECKPOINTS"), run_dir.parent / "checkpoints"):
        if folder:
            candidates.append(Path(folder) / recorded.name)
    expected = entry.get("weights_sha256") or entry.get("sha256", "")
    mismatched, unreadable = [], []
    for path in dict.fromkeys(candidates):
        if not path.is_file():
            continue
        if "weights_sha256" not in entry and hash_file(path) != expected:
            mismatched.append(str(path))
            continue
        try:
            trained = load_trained(path, backbone_cls)
        except (UserError, ValueError, RuntimeError, KeyError, OSError, pickle.UnpicklingError) as exc:
            unreadable.append(f"checkpoint {path.name} cannot be loaded by this version of ood-bench: {exc}")
            continue
        if "weights_sha256" in entry and weights_digest(trained.model) != expected:
            mismatched.append(str(path))
            continue
        return trained, ""
    if unreadable:
        return None, unreadable[0]
    if mismatched:
        return None, (f"checkpoint {', '.join(mismatched)} differs from the one the run scored with "
                      f"(sha256 {expected[:16]}...)")
    folders = ", ".join(map(str, dict.fromkeys(c.parent for c in candidates)))
    return None, f"checkpoint file {recorded.name} not found in {folders}; run the suite again or pass --checkpoints"


def _load_images(plan: dict[str, Any], suite_path: Path | None) -> tuple[dict | None, str]:
    """The run's evaluation sets whose fingerprints still match (label -> ImageSet), or a reason."""
    from ood_bench.suite.datasets import resolve
    from ood_bench.suite.load import load_suite

    path = Path(suite_path or plan.get("suite_file", ""))
    try:
        subset = plan.get("subset") or {}
        suite, _ = load_suite(path, plan["profile"], plan.get("overrides"), subset.get("detectors"),
                              subset.get("ood"))
        data = resolve(suite, strict=False, download=False)
    except (UserError, OSError, ValueError) as exc:
        return None, f"could not load the suite's images ({str(exc).splitlines()[0]}); pass --suite"
    sets = {label: images for label, images in data.eval_sets.items()
            if label in plan["sets"] and plan["sets"][label]["fingerprint"] == images.fingerprint}
    if plan["id_set"] not in sets:
        return None, "the ID test images on this machine differ from the run's (fingerprint changed)"
    return sets, ""


def _backbone_sections(
    plan: dict[str, Any], run_dir: Path, seed: int, suite_path: Path | None, checkpoint_dir: Path | None,
    fig_dir: Path, names: _Names, console: Console,
) -> list[Block]:
    from ood_bench.registry import registry

    recon: list[Block] = [
        Heading("Reconstructions from the upper latents"),
        Text("Each panel shows inputs (top row) and the mean of p(x | z>k) below them, for k = 0 (the "
             "ordinary reconstruction) up to L-1: z>k are the posterior means and z<=k the conditional-prior "
             "means. The larger k, the less of the input the model keeps; OOD inputs drift towards "
             "in-distribution-looking images while ID inputs stay recognisable (seed 000 Figs. 2, 5, 6; "
             "seed 001 Fig. 1). A row that no longer changes with k signals collapsed layers.")]
    kl: list[Block] = [
        Heading("Per-layer KL"),
        Text(f"Mean over up to {KL_EXAMPLES} examples per set of the single-sample KL term of each latent layer "
             "(log q(z_l|.) - log p(z_l|z_l+1), nats per example). A layer with KL near 0 on the ID data is "
             "collapsed: it carries no information and its L>k bounds and likelihood ratios are "
             "uninformative. Larger KL on an OOD set than on ID data is what the likelihood-ratio scores use.")]
    entries = {k: v for k, v in plan.get("backbones", {}).items() if k.endswith(f"/seed{seed}")}
    images, image_reason = (None, "")

    def unavailable(key: str, reason: str) -> None:
        console.print(f"[yellow]warning:[/] backbone {key}: {reason}; reconstructions and per-layer KL skipped")
        recon.append(Text(f"Backbone {key}: not available ({reason})."))
        kl.append(Text(f"Backbone {key}: not available ({reason})."))

    for key, entry in entries.items():
        label = key.rsplit("/", 1)[0]
        trained, reason = _find_checkpoint(entry, run_dir, checkpoint_dir,
                                           registry("backbones").get(entry["metadata"]["kind"]))
        if trained is None:
            unavailable(key, reason)
            continue
        if images is None and not image_reason:
            images, image_reason = _load_images(plan, suite_path)
        if images is None:
            unavailable(key, image_reason)
            continue
        recon += _reconstructions(trained.model, key, plan, images, seed, fig_dir, names(label, "reconstructions"))
        kl += _kl(trained.model, key, plan, images, seed, fig_dir, names(label, "kl"))
    if not entries:
        recon.append(Text("The run records no backbone."))
    return recon + kl


def _prepared(model: torch.nn.Module, images: Any, n: int, seed: int) -> tuple[Batch, torch.Tensor]:
    idx = np.arange(min(n, len(images)))
    batch = Batch(torch.from_numpy(images.images[idx]), idx, images.fingerprint, seed)
    return batch, model.prepare(batch.images.to(model.device), batch.generators("input"))


def _shown_sets(plan: dict[str, Any], images: dict) -> list[str]:
    return [label for label in plan["sets"] if label in images and plan["sets"][label]["role"] != "sanity"]


def _display(plan: dict[str, Any], label: str) -> str:
    return f"{label} (ID)" if label == plan["id_set"] else label


def _reconstructions(model, key: str, plan: dict, images: dict, seed: int, fig_dir: Path, name: str) -> list[Block]:
    panels = {}
    try:
        for label in _shown_sets(plan, images):
            batch, x = _prepared(model, images[label], RECON_EXAMPLES, seed)
            recons = [model.reconstruct(x, k).cpu().numpy() for k in range(model.num_latent_layers)]
            panels[_display(plan, label)] = (batch.images.numpy() / 255.0, recons)
    except NotImplementedError:
        return [Text(f"Backbone {key} ({type(model).__name__}) does not implement reconstruct(); "
                     "no reconstruction grid.")]
    figures.reconstruction_figure(panels, f"{key}: inputs and mean reconstructions from z>k", fig_dir / name)
    return [Image(f"{FIGURES}/{name}", f"reconstructions, {key}")]


@torch.inference_mode()
def _kl(model, key: str, plan: dict, images: dict, seed: int, fig_dir: Path, name: str) -> list[Block]:
    means = {}
    for label in _shown_sets(plan, images):
        batch, x = _prepared(model, images[label], KL_EXAMPLES, seed)
        terms = model.bound(x, model.draw_noise(batch.generators("report-kl"), 1), 0)
        means[_display(plan, label)] = np.array([float(t.double().mean()) for t in terms.kl])
    figures.kl_figure(means, f"{key}: KL per latent layer", fig_dir / name)
    layers = [f"z{l + 1}" for l in range(model.num_latent_layers)]
    rows = [[label, *[f"{v:.2f}" for v in values]] for label, values in means.items()]
    return [Image(f"{FIGURES}/{name}", f"per-layer KL, {key}"), TableBlock(["set", *layers], rows)]
