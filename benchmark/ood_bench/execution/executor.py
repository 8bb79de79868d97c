"""What an executor is given and must do; :func:`make_executor` picks one by name.

An executor runs a plan's units: every train unit, then the fit units and score jobs that have work left.
It reports each finished score job to the driver (``on_done``); the driver alone writes the score store
(the local executor writes chunks through the driver's store object in the same process).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console

from ood_bench.cache.store import ScoreStore
from ood_bench.compute import Compute
from ood_bench.errors import UserError
from ood_bench.execution.plan import FitUnit, Plan, ScoreUnit, TrainUnit
from ood_bench.execution.work import TrainInputs
from ood_bench.loggers import RunLogger
from ood_bench.models.training import TrainedBackbone
from ood_bench.suite.datasets import SuiteData

EXECUTORS = ("local", "ray")


@dataclass
class RunContext:
    """Everything a unit may need, shared by the driver and the executor."""

    plan: Plan
    data: SuiteData
    store: ScoreStore
    checkpoint_dir: Path
    console: Console
    keys: dict[tuple[str, int, str], tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """(detector label, seed, set label) -> (score key, its fields); known once the backbones are trained."""
    logger: RunLogger = field(default_factory=RunLogger)

    def key(self, detector: str, seed: int, set_label: str) -> str:
        return self.keys[(detector, seed, set_label)][0]

    @property
    def compute(self) -> Compute:
        return self.plan.compute

    @property
    def fit_cache_dir(self) -> Path:
        return self.checkpoint_dir / "fits"

    @property
    def fit_data(self):
        data = self.data
        return data.detector_fit if data.detector_fit is not None and len(data.detector_fit) else data.train

    def train_inputs(self, unit: TrainUnit) -> TrainInputs:
        return TrainInputs(self.data.train, self.data.val, self.data.auxiliary.get(unit.backbone))


@dataclass(frozen=True)
class TrainRecord:
    """What the driver keeps of a finished train unit."""

    path: Path
    weights_hash: str
    metadata: dict[str, Any]
    steps_this_call: int
    seconds: float

    @classmethod
    def of(cls, result: TrainedBackbone, seconds: float) -> TrainRecord:
        return cls(result.path, result.weights_hash, result.metadata, result.steps_this_call, seconds)


@dataclass
class ScoreJob:
    """A score unit with what is left to do: per detector label, the example indices still unscored."""

    unit: ScoreUnit
    todo: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def examples(self) -> int:
        return int(sum(len(v) for v in self.todo.values()))


Chunk = tuple[str, np.ndarray, dict[str, np.ndarray]]
OnDone = Callable[[ScoreJob, dict[str, list[str]], list[Chunk], dict[str, float]], None]
"""``on_done(job, outputs by detector, chunks not yet written to the store, seconds by detector)``."""


class Executor(Protocol):
    """Runs train units, then fit units and score jobs."""

    name: str

    def train(self, units: list[TrainUnit], ctx: RunContext) -> dict[str, TrainRecord]: ...

    def run(self, fits: list[FitUnit], jobs: list[ScoreJob], ctx: RunContext, on_done: OnDone) -> None: ...

    def close(self) -> None: ...


def make_executor(name: str, *, address: str | None = None, gpus_per_task: float | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``) with its options; a UserError for bad values."""
    if name not in EXECUTORS:
        raise UserError(f"Unknown executor '{name}'. Allowed values: {', '.join(EXECUTORS)} "
                        f"(local, the default, runs everything in this process).")
    if name == "local":
        if address is not None or gpus_per_task is not None:
            raise UserError("--address and --gpus-per-task apply to --executor ray only; drop them or add "
                            "--executor ray.")
        from ood_bench.execution.local import LocalExecutor

        return LocalExecutor()
    if gpus_per_task is not None and gpus_per_task <= 0:
        raise UserError(f"--gpus-per-task must be a positive number (e.g. 1, or 0.5 to put two tasks on a GPU), "
                        f"got {gpus_per_task}.")
    from ood_bench.execution.ray_executor import RayExecutor

    return RayExecutor(address=address, gpus_per_task=gpus_per_task)
