"""The detector contract: parameters in ``__init__``, ``fit`` on in-distribution data, per-example ``score``.

Follows scikit-learn and pytorch-ood in spirit. Every score is float64, one value per example,
**higher = more OOD**. A detector may return several named outputs (e.g. ``llr_k1``, ``llr_k2``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ood_bench.data.imageset import ImageSet
from ood_bench.errors import UserError
from ood_bench.numerics import example_generators


def hierarchy_problem(backbone: Any) -> str | None:
    """Why ``backbone`` cannot serve the L^{>k} family (it needs k >= 1, so two or more latent layers)."""
    layers = getattr(backbone, "num_latent_layers", 1)
    if layers < 2:
        return (f"it needs a hierarchical backbone with at least 2 latent layers (kind: hvae), and this one has "
                f"{layers}; point the detector's 'backbone' at an hvae entry")
    return None


@dataclass(frozen=True)
class Batch:
    """A slice of one evaluation set, with what a detector needs to seed per-example randomness."""

    images: torch.Tensor  # uint8 (B, C, H, W), CPU
    indices: np.ndarray  # positions of these examples in their set
    set_fingerprint: str
    seed: int

    def generators(self, purpose: str) -> list[torch.Generator]:
        """One generator per example; the same example always gets the same stream for a purpose."""
        return example_generators(self.seed, self.set_fingerprint, self.indices.tolist(), purpose)


class Detector:
    """Base class for detectors. Subclasses set ``name`` and implement ``outputs`` and ``score``.

    Bump ``version`` whenever a change alters the scores: it is part of the cache key.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    uses_auxiliary_data: ClassVar[bool] = False
    fit_is_costly: ClassVar[bool] = False
    """True when ``fit`` is a computation worth a unit of work of its own (a plan's FitUnit, run once before the
    scoring units that need it); such a fit must persist what it learned in ``fit_cache_dir``."""
    fit_cache_dir: Path | None = None
    """A folder where ``fit`` may keep what it learned across runs, keyed by the detector itself. The runner
    sets it to ``<checkpoint cache>/fits``; None (the default outside a run) keeps fits in memory only."""

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters and their current values (hashed into the cache key)."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    def seed_variants(self) -> int:
        """How many copies of its backbone, differing only by training seed, the detector needs.

        1 (the default): ``fit`` receives one backbone. n > 1 (ensembles such as ``waic``): ``fit`` receives a
        list of n backbones, trained (or loaded from the checkpoint cache) with seeds s, s+1, ..., s+n-1.
        """
        return 1

    @classmethod
    def backbone_problem(cls, backbone: torch.nn.Module) -> str | None:
        """Why this detector cannot score ``backbone`` (None when it can): what it needs from its backbone.

        A suite is checked with it before any training, on untrained models built from each backbone entry,
        and ``fit`` checks it again (:meth:`check_backbone`). Default: any backbone.
        """
        return None

    def check_backbone(self, backbone: torch.nn.Module | list[torch.nn.Module]) -> None:
        """A UserError naming the detector unless it can score ``backbone`` (every member of an ensemble)."""
        for model in backbone if isinstance(backbone, (list, tuple)) else [backbone]:
            problem = type(self).backbone_problem(model)
            if problem is not None:
                raise UserError(f"Detector '{self.name}' cannot score a {type(model).__name__} backbone: {problem}.")

    def fit(self, backbone: torch.nn.Module, id_train: ImageSet) -> Detector:
        """Learn whatever the score needs from in-distribution training data. Default: keep the backbone."""
        self.check_backbone(backbone)
        self.backbone_ = backbone
        return self

    def outputs(self) -> list[str]:
        """Names of the per-example scores this detector returns (known after ``fit``)."""
        raise NotImplementedError

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        """Per-example float64 scores for every output, higher = more OOD."""
        raise NotImplementedError

    def _model_input(self, batch: Batch) -> torch.Tensor:
        """The batch as the backbone sees it; Bernoulli backbones binarise with a fixed per-example draw."""
        model = self.backbone_
        device = next(model.parameters()).device
        return model.prepare(batch.images.to(device), batch.generators("input"))
