"""Run a suite: train or load backbones, score every evaluation set with every detector, cache, report.

The run directory ``<results>/<suite name>/`` holds ``scores.h5`` (the per-example score cache),
``run.json`` (what was evaluated, under which cache keys, with provenance and wall times) and the
leaderboard files. Re-running a finished suite loads everything from the cache.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import ood_bench
from ood_bench.cache.keys import score_key
from ood_bench.cache.store import ScoreStore
from ood_bench.data import ImageSet
from ood_bench.detectors.base import Batch, Detector
from ood_bench.errors import UserError
from ood_bench.hashing import digest
from ood_bench.models.training import TrainedBackbone, train_or_load
from ood_bench.registry import registry
from ood_bench.report import marks
from ood_bench.report.leaderboard import write_leaderboard
from ood_bench.suite import results
from ood_bench.suite.datasets import SuiteData, resolve
from ood_bench.suite.load import build_detector, load_suite
from ood_bench.suite.schema import Suite


@dataclass
class RunStats:
    """What a run actually computed; a fully cached run trains and scores nothing."""

    trained_backbones: int = 0
    scored_examples: int = 0
    wall_s: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """'cpu', 'cuda' or 'auto' (cuda when available) -> a torch device string."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was requested but this machine has no usable CUDA GPU "
                        f"(torch {torch.__version__}). Use --device cpu, or install a CUDA build of torch.")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"Unknown device '{device}'. Allowed values: cpu, cuda, cuda:N, auto.")
    return device


def git_revision() -> str | None:
    """The git commit of the ood-bench source tree, with '-dirty' if modified; None outside git."""
    src = Path(ood_bench.__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_suite(
    suite_path: Path,
    *,
    profile: str = "cpu",
    device: str = "cpu",
    results_root: Path = Path("results"),
    strict: bool = False,
    download: bool = True,
    batch_size: int | None = None,
    checkpoint_dir: Path | None = None,
    console: Console | None = None,
) -> tuple[Path, RunStats]:
    """Run ``suite_path`` end to end; returns the run directory and what was computed."""
    console = console or Console()
    started = time.perf_counter()
    suite, suite_hash = load_suite(suite_path, profile)
    revision = git_revision()  # read before the work: a commit made during a long run is not what ran
    device = resolve_device(device)
    run_dir = Path(results_root) / suite.name
    default_checkpoints = os.environ.get("OOD_BENCH_CHECKPOINTS") or Path(results_root) / "checkpoints"
    checkpoint_dir = Path(checkpoint_dir or default_checkpoints)
    store = ScoreStore(run_dir)
    stats = RunStats()
    console.print(f"[bold]ood-bench[/] suite [cyan]{suite.name}[/] profile [cyan]{profile}[/] device [cyan]{device}[/]")

    t0 = time.perf_counter()
    data = resolve(suite, strict=strict, download=download)
    stats.wall_s["load_data"] = time.perf_counter() - t0
    for m in data.missing:
        console.print(f"[yellow]skipping {m['ood_set']}[/]: not available offline - `{m['fetch_command']}`")

    evaluations = []
    trained: dict[tuple[str, int], TrainedBackbone] = {}
    for seed in suite.seeds:
        for label, spec in suite.detectors.items():
            detector = _build_detector(suite, label)
            detector.fit_cache_dir = checkpoint_dir / "fits"
            # an ensemble detector needs seed variants s, s+1, ... of its backbone; each is an ordinary checkpoint
            members = [
                _backbone(suite, spec.backbone, seed + i, data, device, checkpoint_dir, trained, stats, console)
                for i in range(detector.seed_variants())
            ]
            evaluations.append(
                _evaluate(suite, label, seed, detector, members, data, store, batch_size, stats, console)
            )

    plan = {
        "suite": suite.name,
        "suite_file": str(suite_path),
        "suite_sha256": suite_hash,
        "profile": profile,
        "device": device,
        "seeds": suite.seeds,
        "metrics": suite.metrics,
        "balanced": suite.evaluation.balanced,
        "id_set": data.id_label,
        "sets": {
            label: {"role": data.roles[label], "n": len(s), "fingerprint": s.fingerprint}
            for label, s in data.eval_sets.items()
        },
        "missing": data.missing,
        "evaluations": evaluations,
        "backbones": {
            f"{b}/seed{s}": {"checkpoint": str(t.path), "sha256": t.checkpoint_hash, "metadata": t.metadata}
            for (b, s), t in trained.items()
        },
    }
    stats.wall_s["total"] = time.perf_counter() - started
    provenance = {
        "ood_bench_version": ood_bench.__version__,
        "git_revision": revision,
        "suite_sha256": suite_hash,
        "profile": profile,
        "device": device,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data_fingerprints": {label: s.fingerprint for label, s in data.eval_sets.items()},
        "train_fingerprint": data.train.fingerprint,
        "wall_s": {k: round(v, 2) for k, v in stats.wall_s.items()},
        "trained_backbones": stats.trained_backbones,
        "scored_examples": stats.scored_examples,
    }
    plan["provenance"] = provenance
    plan["history"] = results.previous_runs(run_dir) + [{
        k: provenance[k] for k in ("date", "git_revision", "profile", "device", "trained_backbones",
                                   "scored_examples")
    } | {"wall_s": round(stats.wall_s["total"], 2), "wall_s_parts": provenance["wall_s"]}]
    store.set_attrs({"provenance": provenance})
    results.write_plan(run_dir, plan)
    records = results.records_from_cache(run_dir)
    write_leaderboard(run_dir, records, data.missing, provenance | {"suite": suite.name, "seeds": suite.seeds,
                                                                     "balanced": suite.evaluation.balanced},
                      metrics=suite.metrics, console=console)
    console.print(f"run directory: {run_dir}  ({stats.wall_s['total']:.1f} s, "
                  f"{stats.trained_backbones} backbone(s) trained, {stats.scored_examples} examples scored)")
    return run_dir, stats


def _backbone(
    suite: Suite, label: str, seed: int, data: SuiteData, device: str, checkpoint_dir: Path,
    trained: dict[tuple[str, int], TrainedBackbone], stats: RunStats, console: Console,
) -> TrainedBackbone:
    """Train or load backbone ``label`` for ``seed`` once per run."""
    if (label, seed) not in trained:
        spec = suite.backbones[label]
        t0 = time.perf_counter()
        result = train_or_load(
            spec.kind, registry("backbones").get(spec.kind), spec.params, spec.train, data.train, data.val,
            seed=seed, device=device, checkpoint_dir=checkpoint_dir, console=console,
            aux_set=data.auxiliary.get(label),
        )
        stats.wall_s[f"backbone {label} seed {seed}"] = time.perf_counter() - t0
        stats.trained_backbones += int(result.steps_this_call > 0)
        trained[(label, seed)] = result
    return trained[(label, seed)]


def _build_detector(suite: Suite, label: str) -> Detector:
    spec = suite.detectors[label]
    cls = registry("detectors").get(spec.detector or label)
    return build_detector(cls, spec.params, f"detectors.{label}.params")


def _evaluate(
    suite: Suite, label: str, seed: int, detector: Detector, members: list[TrainedBackbone], data: SuiteData,
    store: ScoreStore, batch_size: int | None, stats: RunStats, console: Console,
) -> dict[str, Any]:
    """Score every evaluation set with one detector instance (on one backbone, or a list of seed variants
    when the detector asks for several), resuming from the cache."""
    spec = suite.detectors[label]
    kind = spec.detector or label
    cls = type(detector)
    params = detector.get_params()
    backbone = members[0]
    # the score depends on every member's weights
    backbone_hash = backbone.checkpoint_hash if len(members) == 1 else digest(
        [m.checkpoint_hash for m in members])
    batch_size = batch_size or suite.evaluation.batch_size
    entry: dict[str, Any] = {
        "detector": label,
        "detector_kind": kind,
        "backbone": spec.backbone,
        "params": params,
        "params_str": ", ".join(f"{k}={v}" for k, v in params.items()),
        # labelled when the detector itself or its backbone's training used data beyond the ID train set
        "uses_auxiliary_data": bool(cls.uses_auxiliary_data) or suite.backbones[spec.backbone].auxiliary is not None,
        "seed": seed,
        "backbone_checkpoint": backbone_hash,
        "keys": {},
        "marks": _cell_marks(suite, spec.backbone, data, getattr(backbone.model, "likelihood", None)),
    }
    if len(members) > 1:
        entry["member_checkpoints"] = [m.checkpoint_hash for m in members]
    fitted = False
    t0 = time.perf_counter()
    for set_label, images in data.eval_sets.items():
        key, fields = score_key(
            backbone_hash=backbone_hash, detector=kind, params=params,
            detector_version=cls.version, dataset=images.fingerprint, seed=seed,
        )
        entry["keys"][set_label] = key
        if store.get(key) is not None:
            continue
        todo = np.flatnonzero(~store.done_mask(key, len(images)))
        if todo.size:
            if not fitted:
                fit_data = data.detector_fit if data.detector_fit is not None and len(data.detector_fit) else data.train
                detector.fit(backbone.model if len(members) == 1 else [m.model for m in members], fit_data)
                fitted = True
            _score_missing(detector, f"{label}/{set_label}", images, todo, seed, key, store, batch_size, console)
            stats.scored_examples += int(todo.size)
        store.finalize(key, {**fields, "detector_label": label, "set": set_label}, len(images))
    stats.wall_s[f"score {label} seed {seed}"] = time.perf_counter() - t0
    entry["outputs"] = sorted(store.get(next(iter(entry["keys"].values()))) or {})
    return entry


def _cell_marks(suite: Suite, backbone: str, data: SuiteData, likelihood: str | None) -> dict[str, list[str]]:
    """The caveats of this evaluation's cells (:mod:`ood_bench.report.marks`), by evaluation-set label."""
    ref = suite.in_distribution
    datasets = {label: ref.dataset for label, role in data.roles.items() if role in ("id", "sanity")}
    datasets |= {ood.display_name: ood.dataset for ood in suite.ood if ood.display_name in data.eval_sets}
    aux = suite.backbones[backbone].auxiliary
    return marks.cell_marks(datasets, aux.dataset if aux is not None else None, likelihood)


def _score_missing(
    detector: Detector, title: str, images: ImageSet, todo: np.ndarray, seed: int, key: str,
    store: ScoreStore, batch_size: int, console: Console,
) -> None:
    """Score the examples ``todo`` of one set in batches, persisting each batch as a cache chunk."""
    expected = set(detector.outputs())
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[rate]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"score {title}", total=len(todo), rate="")
        t0 = time.perf_counter()
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            batch = Batch(torch.from_numpy(images.images[idx]), idx, images.fingerprint, seed)
            scores = detector.score(batch)
            _check_scores(detector, scores, expected, len(idx))
            store.write_chunk(key, idx, scores)
            done = start + len(idx)
            progress.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):.0f} ex/s")


def _check_scores(detector: Detector, scores: dict[str, np.ndarray], expected: set[str], n: int) -> None:
    if set(scores) != expected:
        raise RuntimeError(f"detector '{detector.name}' returned outputs {sorted(scores)}, "
                           f"but declared {sorted(expected)}")
    for name, values in scores.items():
        values = np.asarray(values)
        if values.shape != (n,) or values.dtype != np.float64:
            raise RuntimeError(f"detector '{detector.name}' output '{name}' must be float64 of shape ({n},), "
                               f"got {values.dtype} {values.shape}")
        if not np.isfinite(values).all():
            raise RuntimeError(f"detector '{detector.name}' output '{name}' has non-finite scores")
