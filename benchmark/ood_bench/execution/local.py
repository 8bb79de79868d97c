"""The default executor: every unit in this process, in plan order, models kept in memory between units.

Each scored batch is written to the store as a chunk at once, so a killed run loses at most one batch.
"""

from __future__ import annotations

import time

from ood_bench.execution import work
from ood_bench.execution.executor import OnDone, RunContext, ScoreJob, TrainRecord
from ood_bench.execution.plan import FitUnit, TrainUnit
from ood_bench.models.base import Backbone
from ood_bench.models.training import TrainedBackbone
from ood_bench.progress import track


class LocalExecutor:
    """Runs a plan in the calling process."""

    name = "local"

    def __init__(self) -> None:
        self._trained: dict[str, TrainedBackbone] = {}

    def train(self, units: list[TrainUnit], ctx: RunContext) -> dict[str, TrainRecord]:
        records = {}
        for unit in units:
            t0 = time.perf_counter()
            result = work.train(unit, ctx.plan.suite, ctx.train_inputs(unit), ctx.compute, ctx.checkpoint_dir,
                                ctx.console, lambda record, u=unit: ctx.logger.validation(u.backbone, u.seed, record))
            self._trained[unit.id] = result
            records[unit.id] = TrainRecord.of(result, time.perf_counter() - t0)
        return records

    def _models(self, ids: tuple[str, ...], ctx: RunContext) -> list[Backbone]:
        for i in ids:
            if i not in self._trained:
                self._trained[i] = work.load_member(ctx.plan.suite, ctx.plan.train[i], ctx.compute)
        return [self._trained[i].model for i in ids]

    def run(self, fits: list[FitUnit], jobs: list[ScoreJob], ctx: RunContext, on_done: OnDone) -> None:
        suite = ctx.plan.suite
        for unit in fits:
            work.fit(unit, suite, self._models(unit.members, ctx), ctx.fit_data, ctx.fit_cache_dir)
        for job in jobs:
            unit = job.unit
            with track(ctx.console, f"score {','.join(unit.detectors)}/{unit.set_label}", unit.stop - unit.start,
                       ) as progress:

                def sink(label: str, idx, scores, unit=unit) -> None:
                    ctx.store.write_chunk(ctx.key(label, unit.seed, unit.set_label), idx, scores)

                outputs, seconds = work.score(unit, suite, self._models(unit.members, ctx),
                                              ctx.data.eval_sets[unit.set_label], ctx.fit_data, job.todo,
                                              ctx.plan.batch_size, ctx.compute, ctx.fit_cache_dir, sink,
                                              progress.advance)
            on_done(job, outputs, [], seconds)

    def close(self) -> None:
        self._trained.clear()
