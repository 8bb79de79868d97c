"""What a unit of work does, wherever it runs: the one code path of the local and the Ray executors.

A unit's inputs are plain values (suite, image sets, checkpoint paths, the numerics policy); its scores are
returned through a ``sink`` (the local executor writes each batch to the store as it comes; a Ray worker
collects them and returns them to the driver, the only writer of the store).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from ood_bench.compute import Compute
from ood_bench.data.imageset import ImageSet
from ood_bench.detectors.base import Batch, Detector
from ood_bench.errors import UserError
from ood_bench.execution.plan import FitUnit, ScoreUnit, TrainUnit, build_detector_instance
from ood_bench.models.base import Backbone
from ood_bench.models.training import TrainedBackbone, load_trained, train_or_load
from ood_bench.registry import registry
from ood_bench.suite.schema import Suite

Sink = Callable[[str, np.ndarray, dict[str, np.ndarray]], None]
"""``sink(detector label, example indices, {output: float64 scores})``, called once per scored batch."""


@dataclass(frozen=True)
class TrainInputs:
    """The data one train unit needs (and nothing else: a worker receives only these sets)."""

    train: ImageSet
    val: ImageSet
    aux: ImageSet | None = None


def train(unit: TrainUnit, suite: Suite, inputs: TrainInputs, compute: Compute, checkpoint_dir: Path,
          console: Console, on_validation: Callable[[dict[str, Any]], None] | None = None) -> TrainedBackbone:
    """Train or load the unit's backbone (a per-key lock makes concurrent callers train it once)."""
    spec = suite.backbones[unit.backbone]
    return train_or_load(spec.kind, registry("backbones").get(spec.kind), spec.params, spec.train, inputs.train,
                         inputs.val, seed=unit.seed, compute=compute, checkpoint_dir=checkpoint_dir,
                         console=console, aux_set=inputs.aux, on_validation=on_validation)


def load_member(suite: Suite, unit: TrainUnit, compute: Compute) -> TrainedBackbone:
    """A finished backbone checkpoint, loaded for scoring on ``compute``'s device."""
    return load_trained(unit.path, registry("backbones").get(suite.backbones[unit.backbone].kind), compute.device)


def fitted_detector(suite: Suite, label: str, models: list[Backbone], fit_data: ImageSet,
                    fit_cache_dir: Path) -> Detector:
    """The detector of suite entry ``label`` fitted on its backbone (or ensemble members)."""
    detector = build_detector_instance(suite, label)
    detector.fit_cache_dir = fit_cache_dir
    detector.fit(models[0] if len(models) == 1 else models, fit_data)
    return detector


def fit(unit: FitUnit, suite: Suite, models: list[Backbone], fit_data: ImageSet, fit_cache_dir: Path) -> None:
    """Run a costly fit once so that its statistics are in ``fit_cache_dir`` before scoring needs them."""
    fitted_detector(suite, unit.detector, models, fit_data, fit_cache_dir)


def score(unit: ScoreUnit, suite: Suite, models: list[Backbone], images: ImageSet, fit_data: ImageSet,
          todo: dict[str, np.ndarray], batch_size: int, compute: Compute, fit_cache_dir: Path, sink: Sink,
          progress: Callable[[int], None] | None = None) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Fit the unit's detectors and score its range of ``images`` with each that has examples in ``todo``.

    Returns each detector's declared outputs and the seconds it took (fit included).
    """
    detectors: dict[str, Detector] = {}
    seconds: dict[str, float] = {}
    for label in unit.detectors:
        t0 = time.perf_counter()
        detectors[label] = fitted_detector(suite, label, models, fit_data, fit_cache_dir)
        seconds[label] = time.perf_counter() - t0
    pending = {label: np.zeros(len(images), dtype=bool) for label in unit.detectors}
    for label, idx in todo.items():
        pending[label][idx] = True
    timed = score_range(detectors, images, unit.seed, unit.start, unit.stop, batch_size, compute, sink,
                        wanted=lambda label, idx: bool(pending[label][idx].any()), progress=progress)
    return {label: list(d.outputs()) for label, d in detectors.items()}, {
        label: seconds[label] + timed[label] for label in detectors}


def score_range(detectors: dict[str, Detector], images: ImageSet, seed: int, start: int, stop: int,
                batch_size: int, compute: Compute, sink: Sink,
                wanted: Callable[[str, np.ndarray], bool] | None = None,
                progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Score examples ``[start, stop)`` with fitted detectors, batch by batch on the run's grid.

    Batches are ``[b, b + batch_size)`` for b a multiple of ``batch_size``, so a batch is the same wherever
    and in whatever unit it is scored (a suite run, a Ray task, :func:`ood_bench.api.score`): the same
    batch gives the same bits. ``wanted(label, indices)`` skips batches a detector already has. Returns the
    seconds each detector spent scoring.
    """
    seconds = dict.fromkeys(detectors, 0.0)
    expected = {label: set(d.outputs()) for label, d in detectors.items()}
    for b in range(start - start % batch_size, stop, batch_size):
        idx = np.arange(max(b, start), min(b + batch_size, stop))
        batch = Batch(torch.from_numpy(images.images[idx]), idx, images.fingerprint, seed)
        for label, detector in detectors.items():
            if wanted is not None and not wanted(label, idx):
                continue
            t0 = time.perf_counter()
            with compute.autocast():
                scores = detector.score(batch)
            seconds[label] += time.perf_counter() - t0
            check_scores(label, detector, scores, expected[label], len(idx))
            sink(label, idx, scores)
        if progress is not None:
            progress(len(idx))
    return seconds


def check_scores(label: str, detector: Detector, scores: Any, expected: set[str], n: int) -> None:
    """A UserError naming the detector, its package and the output unless ``scores`` has exactly the declared
    outputs, each float64 of shape (n,). Non-finite values are allowed: they are stored as returned and
    counted in the leaderboard (:func:`ood_bench.metrics.rank_nonfinite`)."""
    cls = type(detector)
    who = f"detector '{label}' ({cls.__name__} from package '{cls.__module__.split('.')[0]}')"
    if not isinstance(scores, dict) or set(scores) != expected:
        got = sorted(scores) if isinstance(scores, dict) else type(scores).__name__
        raise UserError(f"{who} returned outputs {got} from score(), but outputs() declared {sorted(expected)}. "
                        f"score() must return a dict with exactly the declared outputs; fix the detector.")
    for name, values in scores.items():
        shape, dtype = getattr(values, "shape", None), getattr(values, "dtype", type(values).__name__)
        if not isinstance(values, np.ndarray) or values.shape != (n,) or values.dtype != np.float64:
            raise UserError(f"{who} output '{name}' must be a float64 numpy array of shape ({n},), one score per "
                            f"example of the batch, but it is {dtype} of shape {shape}. Return "
                            f"np.asarray(scores, dtype=np.float64); scores already cached are kept.")
