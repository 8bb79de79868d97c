"""The Ray executor: a plan's units as Ray tasks on a local or an existing cluster (``ood-bench[ray]``).

Train units run first, in parallel (the per-checkpoint lock still holds, so a concurrent run never trains the
same backbone twice); then fit units, then score units, each score task waiting for the fits it needs.
Workers receive only the image sets of their unit (through Ray's object store), load the backbone
checkpoints from the shared checkpoint folder, apply the run's numerics policy (its torch thread count
included: a task reserves that many CPUs), and return their scores: only the driver writes the store. A
task whose worker dies is retried (``max_retries``); a failed task stops the run with its own error;
finished jobs stay cached.

Checkpoints and the results folder must be on a file system every node sees (as on a Slurm cluster).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ood_bench.compute import Compute
from ood_bench.data.imageset import ImageSet
from ood_bench.detectors import estimators
from ood_bench.errors import UserError
from ood_bench.execution import work
from ood_bench.execution.executor import Chunk, OnDone, RunContext, ScoreJob, TrainRecord
from ood_bench.execution.plan import FitUnit, TrainUnit
from ood_bench.suite.schema import Suite

MAX_RETRIES = 3


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UserError("--executor ray needs Ray, which is not installed in this environment: install the "
                        "extra with `pip install 'ood-bench[ray]'` (or `pip install ray`), or run without "
                        "--executor ray.") from exc
    return ray


def _worker_setup(compute: Compute) -> Compute:
    """The run's numerics (thread count included) in a worker; Ray exposes a task's GPU as cuda:0."""
    if compute.device_type == "cuda":
        compute = dataclasses.replace(compute, device="cuda")
    compute.apply()
    return compute


def _train_task(unit: TrainUnit, suite: Suite, train: ImageSet, val: ImageSet, aux: ImageSet | None,
                compute: Compute, checkpoint_dir: Path) -> TrainRecord:
    compute = _worker_setup(compute)
    t0 = time.perf_counter()
    result = work.train(unit, suite, work.TrainInputs(train, val, aux), compute, checkpoint_dir,
                        Console(stderr=True, width=120))
    return TrainRecord.of(result, time.perf_counter() - t0)


def _fit_task(unit: FitUnit, suite: Suite, members: list[TrainUnit], fit_data: ImageSet, compute: Compute,
              fit_cache_dir: Path) -> str:
    compute = _worker_setup(compute)
    models = [work.load_member(suite, m, compute).model for m in members]
    work.fit(unit, suite, models, fit_data, fit_cache_dir)
    return unit.id


def _score_task(job: ScoreJob, suite: Suite, members: list[TrainUnit], images: ImageSet, fit_data: ImageSet,
                batch_size: int, compute: Compute, fit_cache_dir: Path,
                *fits_done: str) -> tuple[dict[str, list[str]], list[Chunk], dict[str, float]]:
    compute = _worker_setup(compute)
    models = [work.load_member(suite, m, compute).model for m in members]
    chunks: list[Chunk] = []
    outputs, seconds = work.score(job.unit, suite, models, images, fit_data, job.todo, batch_size, compute,
                                  fit_cache_dir, lambda label, idx, scores: chunks.append((label, idx, scores)))
    for model in models:
        estimators.forget(model)
    return outputs, chunks, seconds


class RayExecutor:
    """Runs a plan's units as Ray tasks."""

    name = "ray"

    def __init__(self, address: str | None = None, gpus_per_task: float | None = None):
        self.ray = _import_ray()
        self.address, self.gpus_per_task = address, gpus_per_task
        self._owns_cluster = False

    # ---------------------------------------------------------------------------------- cluster
    def _connect(self, console: Console) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.address:
            ray.init(address=self.address, include_dashboard=False, logging_level="warning")
        else:
            ray.init(include_dashboard=False, logging_level="warning")
            self._owns_cluster = True
        res = ray.cluster_resources()
        console.print(f"ray: {'cluster at ' + self.address if self.address else 'local cluster'}, "
                      f"{res.get('CPU', 0):.0f} CPUs, {res.get('GPU', 0):.0f} GPUs")

    def _options(self, compute: Compute) -> dict[str, Any]:
        gpus = self.gpus_per_task if self.gpus_per_task is not None else (1 if compute.device_type == "cuda" else 0)
        if compute.device_type != "cuda" and gpus:
            raise UserError("--gpus-per-task needs --device cuda (the run computes on CPU otherwise).")
        # a task gets as many CPUs as the torch threads it computes with (the run's --threads)
        return {"num_cpus": compute.threads, "num_gpus": gpus, "max_retries": MAX_RETRIES}

    def _remote(self, fn: Any, compute: Compute) -> Any:
        return self.ray.remote(fn).options(**self._options(compute))

    def _get(self, ref: Any) -> Any:
        """``ray.get`` that re-raises a task's own exception (a UserError stays a UserError)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    # ---------------------------------------------------------------------------------- units
    def train(self, units: list[TrainUnit], ctx: RunContext) -> dict[str, TrainRecord]:
        suite, compute = ctx.plan.suite, ctx.compute
        task = self._remote(_train_task, compute)
        if not all(unit.cached for unit in units):
            self._connect(ctx.console)
            train, val = self.ray.put(ctx.data.train), self.ray.put(ctx.data.val)
        aux_refs: dict[str, Any] = {}
        refs, records = {}, {}
        for unit in units:
            if unit.cached:  # loading and verifying a finished checkpoint is no work for a worker
                t0 = time.perf_counter()
                result = work.train(unit, suite, ctx.train_inputs(unit), compute, ctx.checkpoint_dir, ctx.console)
                records[unit.id] = TrainRecord.of(result, time.perf_counter() - t0)
                continue
            aux = ctx.data.auxiliary.get(unit.backbone)
            if aux is not None and unit.backbone not in aux_refs:
                aux_refs[unit.backbone] = self.ray.put(aux)
            refs[unit.id] = task.remote(unit, suite, train, val, aux_refs.get(unit.backbone), compute,
                                        ctx.checkpoint_dir)
        for unit_id, ref in refs.items():
            records[unit_id] = self._get(ref)
            if records[unit_id].steps_this_call:
                ctx.console.print(f"trained {unit_id} on a Ray worker ({records[unit_id].seconds:.0f} s)")
                unit = ctx.plan.train[unit_id]
                for record in records[unit_id].metadata.get("history", []):  # the worker's validations, in order
                    ctx.logger.validation(unit.backbone, unit.seed, record)
        return records

    def run(self, fits: list[FitUnit], jobs: list[ScoreJob], ctx: RunContext, on_done: OnDone) -> None:
        if not fits and not jobs:
            return  # a fully cached run needs no cluster
        self._connect(ctx.console)
        ray, suite, compute, plan = self.ray, ctx.plan.suite, ctx.compute, ctx.plan
        fit_data = ray.put(ctx.fit_data)
        fit_task, score_task = self._remote(_fit_task, compute), self._remote(_score_task, compute)
        fit_refs = {unit.id: fit_task.remote(unit, suite, [plan.train[m] for m in unit.members], fit_data, compute,
                                             ctx.fit_cache_dir) for unit in fits}
        sets: dict[str, Any] = {}
        pending: dict[Any, ScoreJob] = {}
        for job in jobs:
            unit = job.unit
            if unit.set_label not in sets:
                sets[unit.set_label] = ray.put(ctx.data.eval_sets[unit.set_label])
            deps = [fit_refs[f] for f in unit.fits if f in fit_refs]
            ref = score_task.remote(job, suite, [plan.train[m] for m in unit.members], sets[unit.set_label],
                                    fit_data, plan.batch_size, compute, ctx.fit_cache_dir, *deps)
            pending[ref] = job
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            outputs, chunks, seconds = self._get(ready[0])
            done += 1
            ctx.console.print(f"[{done}/{len(jobs)}] {job.unit.id}: {job.examples} scores in "
                              f"{sum(seconds.values()):.1f} s")
            on_done(job, outputs, chunks, seconds)
        for ref in fit_refs.values():
            self._get(ref)  # surfaces a failed fit whose score jobs were all cached

    def close(self) -> None:
        if self._owns_cluster and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_cluster = False
