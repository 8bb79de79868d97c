"""Run a suite: plan its units, have an executor train and score them, cache the scores, record the run.

The run directory ``<results>/<suite name>/`` holds ``scores.h5`` (the per-example score cache),
``run.json`` (what was evaluated, under which cache keys, with provenance and wall times); the CLI then
writes the leaderboard files from them. Re-running a finished suite computes nothing: every key is cached.
The driver (this module) is the only writer of the store: it finalizes finished keys in batches.
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

import ood_bench
from ood_bench.cache.store import Finished, ScoreStore
from ood_bench.compute import resolve_compute
from ood_bench.errors import UserError
from ood_bench.execution.executor import Chunk, Executor, RunContext, ScoreJob, TrainRecord, make_executor
from ood_bench.execution.plan import Plan, build_detector_instance, build_plan, score_keys
from ood_bench.loggers import RunLogger, check_logger, make_logger
from ood_bench.suite import marks, results
from ood_bench.suite.datasets import SuiteData, resolve
from ood_bench.suite.load import SuiteSource, check_detector_backbones, load_suite
from ood_bench.suite.papers import paper_values
from ood_bench.suite.schema import Suite

FINALIZE_EVERY_S = 30.0
"""Finished keys are merged into scores.h5 at most this often (and at the end), one file copy per batch."""


@dataclass
class RunStats:
    """What a run actually computed; a fully cached run trains and scores nothing."""

    trained_backbones: int = 0
    scored_examples: int = 0
    wall_s: dict[str, float] = field(default_factory=dict)


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


def default_checkpoint_dir(results_root: Path) -> Path:
    """``$OOD_BENCH_CHECKPOINTS`` or ``<results>/checkpoints``."""
    return Path(os.environ.get("OOD_BENCH_CHECKPOINTS") or Path(results_root) / "checkpoints")


def prepare(suite_path: SuiteSource, *, profile: str = "cpu", overrides: dict[str, Any] | None = None,
            detectors: list[str] | None = None, ood: list[str] | None = None, device: str = "cpu",
            precision: str = "fp32", threads: int | None = None, results_root: Path = Path("results"),
            strict: bool = False, download: bool = True, batch_size: int | None = None,
            checkpoint_dir: Path | None = None, examples_per_unit: int | None = None,
            console: Console | None = None) -> tuple[Suite, str, SuiteData, Plan, Path]:
    """Validate and load a suite, resolve its data and build its plan: (suite, suite hash, data, plan,
    checkpoint folder). Trains and scores nothing; ``ood-bench plan`` stops here."""
    suite, suite_hash = load_suite(suite_path, profile, overrides, detectors, ood)
    for flag, folder in (("--results", Path(results_root)), ("--checkpoints", checkpoint_dir)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise UserError(f"{flag} {folder} is a file, not a folder; pass a folder (it is created if absent).")
    compute = resolve_compute(device, precision, threads)
    checkpoint_dir = Path(checkpoint_dir or default_checkpoint_dir(results_root))
    data = resolve(suite, strict=strict, download=download, console=console)
    check_detector_backbones(suite, data.train.shape, str(suite_path) if isinstance(suite_path, (str, Path))
                             else f"suite '{suite.name}'")
    plan = build_plan(suite, data, compute, checkpoint_dir, batch_size, examples_per_unit)
    return suite, suite_hash, data, plan, checkpoint_dir


def run_suite(
    suite_path: SuiteSource,
    *,
    profile: str = "cpu",
    overrides: dict[str, Any] | None = None,
    detectors: list[str] | None = None,
    ood: list[str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    executor: str | Executor = "local",
    results_root: Path = Path("results"),
    strict: bool = False,
    download: bool = True,
    batch_size: int | None = None,
    checkpoint_dir: Path | None = None,
    examples_per_unit: int | None = None,
    console: Console | None = None,
    logger: str | RunLogger = "none",
) -> tuple[Path, RunStats]:
    """Run a suite (a file, a mapping or a :class:`Suite`) end to end; returns the run directory and what was
    computed. ``overrides``, ``detectors`` and ``ood``: see :func:`ood_bench.suite.load.load_suite`.

    ``executor``: ``local`` (this process), ``ray`` (a local Ray cluster), or an executor object from
    :func:`ood_bench.execution.executor.make_executor` (e.g. Ray at an address). The scores do not depend on it.
    ``logger``: ``none``, ``tensorboard`` (events in ``<run dir>/tensorboard``) or a :class:`RunLogger`.
    """
    console = console or Console()
    started = time.perf_counter()
    revision = git_revision()  # read before the work: a commit made during a long run is not what ran
    if isinstance(logger, str):
        check_logger(logger)
    t0 = time.perf_counter()
    suite, suite_hash, data, plan, checkpoint_dir = prepare(
        suite_path, profile=profile, overrides=overrides, detectors=detectors, ood=ood, device=device,
        precision=precision, threads=threads,
        results_root=results_root, strict=strict,
        download=download, batch_size=batch_size, checkpoint_dir=checkpoint_dir,
        examples_per_unit=examples_per_unit, console=console)
    stats = RunStats()
    stats.wall_s["load_data"] = time.perf_counter() - t0
    compute = plan.compute
    compute.apply()
    runner = make_executor(executor) if isinstance(executor, str) else executor
    console.print(f"[bold]ood-bench[/] suite [cyan]{suite.name}[/] profile [cyan]{profile}[/] device "
                  f"[cyan]{compute.device}[/] precision [cyan]{compute.precision}[/] executor [cyan]{runner.name}[/]")
    for m in data.missing:
        console.print(f"[yellow]skipping {m['ood_set']}[/]: not available offline - `{m['fetch_command']}`")
    run_dir = Path(results_root) / suite.name
    store = ScoreStore(run_dir)
    for problem in store.repair():  # damaged scores are recomputed, never used
        console.print(f"[yellow]warning:[/] {problem}")
    run_logger = make_logger(logger, run_dir) if isinstance(logger, str) else logger
    ctx = RunContext(plan, data, store, checkpoint_dir, console, logger=run_logger)
    try:
        records = runner.train(list(plan.train.values()), ctx)
        for unit_id, record in records.items():
            unit = plan.train[unit_id]
            stats.wall_s[f"backbone {unit.backbone} seed {unit.seed}"] = record.seconds
            stats.trained_backbones += int(record.steps_this_call > 0)
        _score(plan, ctx, records, runner, stats)
    finally:
        runner.close()
        run_logger.close()
    evaluations = [_evaluation(suite, label, seed, data, ctx, records)
                   for seed in suite.seeds for label in suite.detectors]
    run_record = {
        "suite": suite.name,
        "suite_file": str(suite_path) if isinstance(suite_path, (str, Path)) else None,
        "suite_sha256": suite_hash,
        "profile": profile,
        "overrides": overrides or {},
        "subset": {"detectors": detectors, "ood": ood},
        "device": compute.device,
        "compute": compute.key_fields(),
        "executor": runner.name,
        "seeds": suite.seeds,
        "metrics": suite.metrics,
        "balanced": suite.evaluation.balanced,
        "papers": paper_values(suite, f"suite '{suite.name}'"),
        "id_set": data.id_label,
        "sets": {
            label: {"role": data.roles[label], "n": len(s), "fingerprint": s.fingerprint}
            for label, s in data.eval_sets.items()
        },
        "missing": data.missing,
        "evaluations": evaluations,
        "backbones": {
            f"{unit.backbone}/seed{unit.seed}": {"checkpoint": str(records[uid].path),
                                                 "weights_sha256": records[uid].weights_hash,
                                                 "metadata": records[uid].metadata}
            for uid, unit in plan.train.items()
        },
    }
    stats.wall_s["total"] = time.perf_counter() - started
    provenance = {
        "ood_bench_version": ood_bench.__version__,
        "git_revision": revision,
        "suite_sha256": suite_hash,
        "profile": profile,
        "overrides": overrides or {},
        "subset": {"detectors": detectors, "ood": ood},
        "device": compute.device,
        "compute": compute.key_fields(),
        "executor": runner.name,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data_fingerprints": {label: s.fingerprint for label, s in data.eval_sets.items()},
        "train_fingerprint": data.train.fingerprint,
        "wall_s": {k: round(v, 2) for k, v in stats.wall_s.items()},
        "trained_backbones": stats.trained_backbones,
        "scored_examples": stats.scored_examples,
    }
    run_record["provenance"] = provenance
    run_record["history"] = results.previous_runs(run_dir) + [{
        k: provenance[k] for k in ("date", "git_revision", "profile", "device", "trained_backbones",
                                   "scored_examples", "executor")
    } | {"wall_s": round(stats.wall_s["total"], 2), "wall_s_parts": provenance["wall_s"]}]
    store.set_attrs({"provenance": provenance})
    results.write_plan(run_dir, run_record)
    console.print(f"run directory: {run_dir}  ({stats.wall_s['total']:.1f} s, "
                  f"{stats.trained_backbones} backbone(s) trained, {stats.scored_examples} examples scored)")
    return run_dir, stats


def _score(plan: Plan, ctx: RunContext, records: dict[str, TrainRecord], runner: Executor, stats: RunStats) -> None:
    """Work out what is left to score, have ``runner`` score it, and finalize keys in batches."""
    data, store = ctx.data, ctx.store
    ctx.keys.update(score_keys(plan, data, {uid: r.weights_hash for uid, r in records.items()}))
    stored = set(store.keys())
    masks: dict[str, np.ndarray] = {}
    jobs: list[ScoreJob] = []
    remaining: dict[str, int] = {}  # key -> jobs still to finish before it can be finalized
    for unit in plan.scores:
        job = ScoreJob(unit)
        for label in unit.detectors:
            key = ctx.key(label, unit.seed, unit.set_label)
            if key in stored:
                continue
            n = len(data.eval_sets[unit.set_label])
            if key not in masks:
                masks[key] = store.done_mask(key, n)
            todo = unit.start + np.flatnonzero(~masks[key][unit.start:unit.stop])
            remaining.setdefault(key, 0)
            if todo.size:
                job.todo[label] = todo
                remaining[key] += 1
        if job.todo:
            jobs.append(job)
    finished: list[Finished] = []
    last_flush = [time.perf_counter()]

    fields_of = {key: {**fields, "detector_label": label, "set": set_label}
                 for (label, _, set_label), (key, fields) in ctx.keys.items()}

    def finish(key: str) -> None:
        finished.append(Finished(key, fields_of[key], len(data.eval_sets[fields_of[key]["set"]])))

    tell_logger = type(ctx.logger).scores is not RunLogger.scores  # reading arrays back only when someone listens

    def flush() -> None:
        store.finalize_many(finished)
        if tell_logger:
            for item in finished:
                for output, values in (store.get(item.key) or {}).items():
                    ctx.logger.scores(item.fields["detector_label"], item.fields["seed"], item.fields["set"],
                                      output, values)
        finished.clear()
        last_flush[0] = time.perf_counter()

    for key, count in remaining.items():
        if count == 0:  # every example already in pending chunks (a run killed before it finalized)
            finish(key)

    def on_done(job: ScoreJob, outputs: dict[str, list[str]], chunks: list[Chunk],
                seconds: dict[str, float]) -> None:
        unit = job.unit
        for label, idx, scores in chunks:
            store.write_chunk(ctx.key(label, unit.seed, unit.set_label), idx, scores)
        for label, todo in job.todo.items():
            stats.scored_examples += len(todo)
            key = ctx.key(label, unit.seed, unit.set_label)
            remaining[key] -= 1
            if remaining[key] == 0:
                finish(key)
        for label, s in seconds.items():
            name = f"score {label} seed {unit.seed}"
            stats.wall_s[name] = stats.wall_s.get(name, 0.0) + s
        if time.perf_counter() - last_flush[0] >= FINALIZE_EVERY_S:
            flush()

    fits = [plan.fits[f] for f in dict.fromkeys(f for job in jobs for f in job.unit.fits)]
    try:
        runner.run(fits, jobs, ctx, on_done)
    finally:
        flush()  # what finished is kept even when a later unit fails


def _evaluation(suite: Suite, label: str, seed: int, data: SuiteData, ctx: RunContext,
                records: dict[str, TrainRecord]) -> dict[str, Any]:
    """The run.json entry of one detector at one seed: its parameters, cache keys and cell marks."""
    spec = suite.detectors[label]
    detector = build_detector_instance(suite, label)
    params = detector.get_params()
    members = ctx.plan.members[(label, seed)]
    entry: dict[str, Any] = {
        "detector": label,
        "detector_kind": spec.detector or label,
        "backbone": spec.backbone,
        "params": params,
        "params_str": ", ".join(f"{k}={v}" for k, v in params.items()),
        # labelled when the detector itself or its backbone's training used data beyond the ID train set
        "uses_auxiliary_data": (bool(type(detector).uses_auxiliary_data)
                                or suite.backbones[spec.backbone].auxiliary is not None),
        "seed": seed,
        "backbone_checkpoint": ctx.keys[(label, seed, data.id_label)][1]["backbone_checkpoint"],
        "keys": {set_label: ctx.key(label, seed, set_label) for set_label in data.eval_sets},
        "marks": _cell_marks(suite, spec.backbone, data, records[members[0]].metadata["params"].get("likelihood")),
    }
    if len(members) > 1:
        entry["member_checkpoints"] = [records[m].weights_hash for m in members]
    entry["outputs"] = ctx.store.outputs(next(iter(entry["keys"].values())))
    return entry


def _cell_marks(suite: Suite, backbone: str, data: SuiteData, likelihood: str | None) -> dict[str, list[str]]:
    """The caveats of this evaluation's cells (:mod:`ood_bench.suite.marks`), by evaluation-set label."""
    ref = suite.in_distribution
    datasets = {label: ref.dataset for label, role in data.roles.items() if role in ("id", "sanity")}
    datasets |= {ood.display_name: ood.dataset for ood in suite.ood if ood.display_name in data.eval_sets}
    aux = suite.backbones[backbone].auxiliary
    return marks.cell_marks(datasets, aux.dataset if aux is not None else None, likelihood)


