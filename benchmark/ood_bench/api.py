"""The Python API: what the command line does, callable from a notebook (docs/api.md).

The CLI is a thin layer over these functions, so a run started here and one started from the shell compute
the same thing; :func:`score` goes through the same batch loop as a suite run, so with the suite's batch
size it returns the suite's scores bit for bit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from ood_bench.compute import resolve_compute
from ood_bench.data.imageset import ImageSet
from ood_bench.detectors.base import Detector
from ood_bench.errors import UserError
from ood_bench.execution.work import score_range
from ood_bench.hashing import digest
from ood_bench.models.base import Backbone
from ood_bench.suite.datasets import SuiteData, resolve
from ood_bench.suite.load import SuiteSource, load_suite
from ood_bench.suite.runner import RunStats, default_checkpoint_dir
from ood_bench.suite.runner import run_suite as _run_suite


def as_image_set(images: ImageSet | np.ndarray | torch.Tensor, name: str = "images") -> ImageSet:
    """``images`` as an :class:`ImageSet`: uint8 of shape (N, C, H, W), or (N, H, W) for grey.

    The fingerprint (which seeds each example's random draws) is the digest of the pixels, so the same array
    always gets the same scores.
    """
    if isinstance(images, ImageSet):
        return images
    array = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    if array.ndim == 3:
        array = array[:, None]
    if array.dtype != np.uint8 or array.ndim != 4:
        raise UserError(f"images must be uint8 pixels of shape (N, C, H, W) or (N, H, W), got {array.dtype} "
                        f"{array.shape}; convert floats in [0, 1] with (x * 255).round().astype(np.uint8).")
    array = np.ascontiguousarray(array)
    return ImageSet(name, array, digest("array", list(array.shape), hashlib.sha256(array.tobytes()).hexdigest()))


def load_backbone(path: Path | str, device: str = "cpu") -> Backbone:
    """The trained backbone of an ood-bench checkpoint (``<checkpoints>/<kind>-<key>.pt``), in eval mode."""
    from ood_bench.models.checkpoints import load_checkpoint
    from ood_bench.models.training import load_trained
    from ood_bench.registry import registry

    path = Path(path)
    if not path.is_file():
        raise UserError(f"No checkpoint at '{path}'. Pass a .pt file from a run's checkpoint folder "
                        f"(results/checkpoints by default; `run.checkpoint(name)` gives a run's).")
    try:
        kind = load_checkpoint(path).get("metadata", {}).get("kind")
    except Exception as exc:  # a damaged or foreign file fails in many ways inside torch.load
        raise UserError(f"'{path}' cannot be read as a checkpoint ({type(exc).__name__}: {exc}). Run the suite "
                        f"that trained it again: a damaged checkpoint is detected, moved aside and retrained."
                        ) from None
    if kind is None:
        raise UserError(f"'{path}' is not a backbone checkpoint written by ood-bench (no metadata.kind).")
    return load_trained(path, registry("backbones").get(kind), device).model


def score(detector: Detector, model: Backbone | list[Backbone], images: ImageSet | np.ndarray | torch.Tensor,
          *, seed: int = 0, fit_data: ImageSet | np.ndarray | None = None, batch_size: int = 256,
          device: str = "cpu") -> dict[str, np.ndarray]:
    """Fit ``detector`` on ``model`` and score ``images``: {output: float64 array}, higher = more OOD.

    ``fit_data``: in-distribution training images for detectors that learn from them (ROSE); others ignore it.
    ``batch_size``: the scoring batch; the suite's ``evaluation.batch_size`` gives the suite's exact bits.
    ``model``: a :class:`~ood_bench.models.base.Backbone` (``load_backbone``, or your own subclass), or a
    list of them for an ensemble detector (``waic``).
    """
    models = model if isinstance(model, (list, tuple)) else [model]
    for m in models:
        if not isinstance(m, Backbone):
            raise UserError(f"ob.score needs an ood-bench backbone, got a {type(m).__name__}. Load one with "
                            f"ob.load_backbone(path), or wrap your VAE in a subclass of ood_bench.models.Backbone "
                            f"implementing prepare, draw_noise and bound (docs/api.md, 'Your own model').")
    if not isinstance(detector, Detector):
        raise UserError(f"ob.score needs a detector instance, e.g. ob.detectors.get('llr')(iwae_samples=32), got "
                        f"{detector!r}.")
    if type(detector).fit_is_costly and fit_data is None:
        raise UserError(f"Detector '{detector.name}' learns from in-distribution training images: pass "
                        f"fit_data=<ImageSet or uint8 array> (e.g. the suite's data.detector_fit).")
    compute = resolve_compute(device)
    compute.apply()
    images = as_image_set(images)
    fit = as_image_set(fit_data, "fit") if fit_data is not None else images
    detector.fit(models[0] if len(models) == 1 else list(models), fit)
    out: dict[str, list[np.ndarray]] = {name: [] for name in detector.outputs()}

    def sink(_label: str, _idx: np.ndarray, scores: dict[str, np.ndarray]) -> None:
        for name, values in scores.items():
            out[name].append(values)

    score_range({detector.name: detector}, images, seed, 0, len(images), batch_size, compute, sink)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def suite_data(suite: SuiteSource, profile: str = "cpu", overrides: dict[str, Any] | None = None,
               download: bool = True) -> SuiteData:
    """A suite's training, validation and evaluation sets, exactly as a run loads them."""
    loaded, _ = load_suite(suite, profile, overrides)
    return resolve(loaded, download=download)


@dataclass
class Run:
    """A finished (or cached) run: its folder and what the call computed."""

    run_dir: Path
    stats: RunStats

    @property
    def record(self) -> dict[str, Any]:
        """run.json: what was evaluated under which keys, with provenance."""
        from ood_bench.suite.results import read_plan

        return read_plan(self.run_dir)

    def records(self) -> pd.DataFrame:
        """Tidy metric records: one row per detector output x seed x OOD set x metric."""
        from ood_bench.suite.results import records_from_cache

        return records_from_cache(self.run_dir)

    def leaderboard(self) -> pd.DataFrame:
        """Mean and standard deviation over seeds of every metric cell (leaderboard.csv as a DataFrame)."""
        from ood_bench.report.leaderboard import summarize_records

        return summarize_records(self.records(), self.record["metrics"])

    def scores(self, detector: str, set_label: str, seed: int = 0) -> dict[str, np.ndarray]:
        """The cached per-example scores of one detector entry on one set."""
        from ood_bench.cache.store import ScoreStore

        ev = next((e for e in self.record["evaluations"] if e["detector"] == detector and e["seed"] == seed), None)
        if ev is None or set_label not in ev["keys"]:
            raise UserError(f"The run has no scores of detector '{detector}' on '{set_label}' at seed {seed}.")
        found = ScoreStore(self.run_dir).get(ev["keys"][set_label])
        if found is None:
            raise UserError(f"Scores of {detector} on {set_label} are missing; run the suite again.")
        return found

    def checkpoint(self, backbone: str, seed: int = 0) -> Path:
        """The checkpoint file of suite backbone ``backbone`` at ``seed``."""
        backbones = self.record.get("backbones", {})
        entry = backbones.get(f"{backbone}/seed{seed}")
        if entry is None:
            raise UserError(f"The run has no backbone '{backbone}' at seed {seed}; it has "
                            f"{', '.join(backbones) or 'none recorded'}.")
        return Path(entry["checkpoint"])


def run_suite(suite: SuiteSource, *, profile: str = "cpu", overrides: dict[str, Any] | None = None,
              detectors: list[str] | None = None, ood: list[str] | None = None, results: Path | str = "results",
              checkpoints: Path | str | None = None, device: str = "cpu", precision: str = "fp32",
              threads: int | None = None, executor: Any = "local", batch_size: int | None = None,
              examples_per_unit: int | None = None, strict: bool = False, download: bool = True,
              console: Console | None = None, logger: Any = "none") -> Run:
    """Train or load a suite's backbones, score every set, write scores.h5, run.json and the leaderboard files.

    ``suite``: a YAML path, a mapping or a :class:`~ood_bench.suite.schema.Suite`; ``overrides``: {dotted field:
    value} applied before validation; ``detectors`` / ``ood``: run only these entries. ``console``: where
    progress and the leaderboard are printed (default: nowhere). ``logger``: ``"tensorboard"`` or a
    :class:`~ood_bench.loggers.RunLogger` told about each validation and each finished score array.
    """
    from ood_bench.report.leaderboard import write_leaderboard
    from ood_bench.suite.results import read_plan, records_from_cache

    console = console or Console(quiet=True)
    results = Path(results)
    run_dir, stats = _run_suite(
        suite, profile=profile, overrides=overrides, detectors=detectors, ood=ood, device=device,
        precision=precision, threads=threads, executor=executor, results_root=results,
        checkpoint_dir=Path(checkpoints) if checkpoints else default_checkpoint_dir(results), strict=strict,
        download=download, batch_size=batch_size, examples_per_unit=examples_per_unit, console=console,
        logger=logger)
    record = read_plan(run_dir)
    write_leaderboard(run_dir, records_from_cache(run_dir), record["missing"],
                      record["provenance"] | {"suite": record["suite"], "seeds": record["seeds"],
                                              "balanced": record["balanced"]},
                      metrics=record["metrics"], console=console)
    return Run(run_dir, stats)
