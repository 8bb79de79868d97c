"""WAIC ensemble of Choi, Jang & Alemi 2018 ("WAIC, but why?"; spec §3).

M backbones that differ only by their training seed; for each, ℓ_m(x) is the S-sample IWAE bound in nats.

``waic = -(mean_m ℓ_m(x) - Var_m ℓ_m(x))`` (population variance, ddof = 0, as in the authors' code
hschoi1/rich_latent), higher = more OOD. The variance is taken in nats on the summed log-likelihood: in
bits/dim the mean/variance trade-off would change.

Every member uses the same per-example noise streams (the ``iwae{S}`` estimate the ``likelihood`` detector
memoises), so Var_m measures disagreement between the models, not between random draws, and member m = 0
(seed s) shares its estimate with ``likelihood``/``llr``/``llr_ada`` on the same backbone and seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ood_bench.data.imageset import ImageSet
from ood_bench.detectors import estimators
from ood_bench.detectors.base import Batch, Detector
from ood_bench.params import PositiveInt, checked


class WAIC(Detector):
    """Negative WAIC of an ensemble of seed variants of one backbone.

    Parameters
    ----------
    members:
        M, the number of backbones (seeds s, s+1, ..., s+M-1; the reference uses 5).
    iwae_samples:
        S, importance samples per member (16 in the reference code).
    """

    name = "waic"
    version = "1"

    @checked
    def __init__(self, members: PositiveInt = 5, iwae_samples: PositiveInt = 16):
        self.members, self.iwae_samples = members, iwae_samples

    def seed_variants(self) -> int:
        return self.members

    def fit(self, backbone: torch.nn.Module | Sequence[torch.nn.Module], id_train: ImageSet) -> WAIC:
        models = list(backbone) if isinstance(backbone, (list, tuple)) else [backbone]
        if len(models) != self.members:
            raise ValueError(f"waic with members={self.members} needs {self.members} backbones, got {len(models)}")
        shapes = {tuple(m.input_shape) for m in models}
        if len(shapes) != 1:
            raise ValueError(f"waic members must share one input shape, got {sorted(shapes)}")
        self.members_ = models
        self.backbone_ = models[0]
        return self

    def outputs(self) -> list[str]:
        return ["waic"]

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        x = self._model_input(batch)  # member 0 prepares; every member has the same input (same binarisation)
        ll = np.stack([estimators.iwae_bound(m, batch, x, self.iwae_samples) for m in self.members_])
        return {"waic": -(ll.mean(axis=0) - ll.var(axis=0))}
