"""The plan of a run: its units of work, their keys and dependencies, built without training or scoring.

* :class:`TrainUnit`: one backbone at one seed, de-duplicated by checkpoint key (a WAIC ensemble's members
  s, s+1, ... are ordinary train units, shared with any other detector that uses them).
* :class:`FitUnit`: the fit of a detector whose fit is a computation of its own (``Detector.fit_is_costly``,
  e.g. ROSE's Fisher statistics, cached in ``<checkpoints>/fits``); its score units depend on it.
* :class:`ScoreUnit`: the detectors that use exactly the same backbone checkpoint(s), in suite order, on one
  evaluation set at one seed, over a range of examples on the run's batch grid. Detectors sharing a backbone
  share a unit so their shared estimates (the IWAE memo) are computed once, as in one process.

Every executor runs the same plan; the scores of a unit do not depend on which executor ran it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ood_bench.cache.keys import score_key
from ood_bench.compute import Compute
from ood_bench.detectors.base import Detector
from ood_bench.hashing import digest
from ood_bench.models.training import checkpoint_identity
from ood_bench.registry import registry
from ood_bench.suite.datasets import SuiteData
from ood_bench.suite.load import build_detector
from ood_bench.suite.schema import Suite


@dataclass(frozen=True)
class TrainUnit:
    """Train (or load) suite backbone ``backbone`` at ``seed``."""

    backbone: str
    seed: int
    key: str
    path: Path

    @property
    def id(self) -> str:
        return f"train {self.backbone} seed {self.seed}"

    @property
    def cached(self) -> bool:
        return self.path.exists()

    @property
    def weights_hash(self) -> str | None:
        """The recorded weights digest of a finished checkpoint (its sidecar), or None before training."""
        sidecar = self.path.with_suffix(".json")
        if not (self.path.exists() and sidecar.exists()):
            return None
        try:
            return json.loads(sidecar.read_text()).get("weights_sha256")
        except (OSError, ValueError):
            return None


@dataclass(frozen=True)
class FitUnit:
    """Fit detector ``detector`` (a suite label) on its backbone(s) at ``seed``."""

    detector: str
    seed: int
    members: tuple[str, ...]  # TrainUnit ids

    @property
    def id(self) -> str:
        return f"fit {self.detector} seed {self.seed}"


@dataclass(frozen=True)
class ScoreUnit:
    """Score examples ``[start, stop)`` of evaluation set ``set_label`` with ``detectors`` at ``seed``."""

    detectors: tuple[str, ...]
    seed: int
    set_label: str
    start: int
    stop: int
    members: tuple[str, ...]  # TrainUnit ids, the backbone checkpoints every detector of the unit uses
    fits: tuple[str, ...] = ()  # FitUnit ids it waits for

    @property
    def id(self) -> str:
        return f"score {','.join(self.detectors)} seed {self.seed} {self.set_label} [{self.start}:{self.stop})"

    @property
    def depends(self) -> tuple[str, ...]:
        return self.members + self.fits


@dataclass
class Plan:
    """Every unit of a run, in the order a single process runs them."""

    suite: Suite
    compute: Compute
    batch_size: int
    train: dict[str, TrainUnit] = field(default_factory=dict)
    fits: dict[str, FitUnit] = field(default_factory=dict)
    scores: list[ScoreUnit] = field(default_factory=list)
    members: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    """(detector label, seed) -> the TrainUnit ids of its backbone checkpoint(s)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite.name, "compute": self.compute.key_fields(), "batch_size": self.batch_size,
            "train": [{"id": u.id, "backbone": u.backbone, "seed": u.seed, "checkpoint_key": u.key,
                       "checkpoint": str(u.path), "cached": u.cached} for u in self.train.values()],
            "fit": [{"id": u.id, "detector": u.detector, "seed": u.seed, "depends": list(u.members)}
                    for u in self.fits.values()],
            "score": [{"id": u.id, "detectors": list(u.detectors), "seed": u.seed, "set": u.set_label,
                       "start": u.start, "stop": u.stop, "depends": list(u.depends)} for u in self.scores],
        }


def build_detector_instance(suite: Suite, label: str) -> Detector:
    """The detector of suite entry ``label``, constructed from its parameters (validated)."""
    spec = suite.detectors[label]
    cls = registry("detectors").get(spec.detector or label)
    return build_detector(cls, spec.params, f"detectors.{label}.params")


def score_keys(plan: Plan, data: SuiteData, weights: dict[str, str]) -> dict[tuple[str, int, str], tuple[str, dict]]:
    """(detector label, seed, set label) -> (score key, its fields) of every evaluation whose backbone weights
    are known (``weights``: TrainUnit id -> weights digest); the others are left out."""
    keys = {}
    for (label, seed), members in plan.members.items():
        if not all(m in weights for m in members):
            continue
        hashes = [weights[m] for m in members]
        backbone_hash = hashes[0] if len(hashes) == 1 else digest(hashes)
        spec = plan.suite.detectors[label]
        detector = build_detector_instance(plan.suite, label)
        for set_label, images in data.eval_sets.items():
            keys[(label, seed, set_label)] = score_key(
                backbone_hash=backbone_hash, detector=spec.detector or label, params=detector.get_params(),
                detector_version=type(detector).version, dataset=images.fingerprint, seed=seed,
                compute=plan.compute.key_fields())
    return keys


def build_plan(
    suite: Suite, data: SuiteData, compute: Compute, checkpoint_dir: Path, batch_size: int | None = None,
    examples_per_unit: int | None = None,
) -> Plan:
    """The plan of ``suite`` on ``data``: no model is trained, no example scored.

    ``examples_per_unit`` splits each set into ranges of that many examples (rounded up to whole batches) so
    that many workers can share one large set; None keeps one unit per (detectors, seed, set).
    """
    batch_size = batch_size or suite.evaluation.batch_size
    plan = Plan(suite, compute, batch_size)
    for seed in suite.seeds:
        groups: dict[tuple[str, ...], list[str]] = {}
        for label, spec in suite.detectors.items():
            detector = build_detector_instance(suite, label)
            members = tuple(_train_unit(plan, suite, data, spec.backbone, seed + i, checkpoint_dir).id
                            for i in range(detector.seed_variants()))
            plan.members[(label, seed)] = members
            groups.setdefault(members, []).append(label)
            if type(detector).fit_is_costly:
                unit = FitUnit(label, seed, members)
                plan.fits[unit.id] = unit
        for members, labels in groups.items():
            fits = tuple(FitUnit(label, seed, members).id for label in labels
                         if FitUnit(label, seed, members).id in plan.fits)
            for set_label, images in data.eval_sets.items():
                for start, stop in _ranges(len(images), batch_size, examples_per_unit):
                    plan.scores.append(ScoreUnit(tuple(labels), seed, set_label, start, stop, members, fits))
    return plan


def _train_unit(plan: Plan, suite: Suite, data: SuiteData, backbone: str, seed: int, checkpoint_dir: Path) -> TrainUnit:
    spec = suite.backbones[backbone]
    key, path = checkpoint_identity(
        spec.kind, registry("backbones").get(spec.kind), spec.params, spec.train, data.train, data.val, seed,
        plan.compute, checkpoint_dir, aux_set=data.auxiliary.get(backbone))
    unit = TrainUnit(backbone, seed, key, path)
    for existing in plan.train.values():
        if existing.key == key:  # two suite entries with identical training share one checkpoint
            return existing
    plan.train[unit.id] = unit
    return unit


def _ranges(n: int, batch_size: int, per_unit: int | None) -> list[tuple[int, int]]:
    """[start, stop) ranges covering ``n`` examples, each a whole number of batches (the last may be short)."""
    if per_unit is None or per_unit >= n:
        return [(0, n)]
    step = max(1, -(-per_unit // batch_size)) * batch_size
    return [(start, min(start + step, n)) for start in range(0, n, step)]
