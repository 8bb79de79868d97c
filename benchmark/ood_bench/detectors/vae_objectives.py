"""Detectors whose work is done by a training objective of the plain VAE (:mod:`ood_bench.models.objectives`).

* ``bpvae`` (seed 002; spec §8): the VAE trained with bigeminal priors, scored by its bits/dim under the
  basic prior, ``bpd = -L_S(x) / (D ln 2)`` (IWAE bound with S = ``iwae_samples``; S = 1 is the
  single-sample ELBO, the seeds' score and the default). Always uses auxiliary data.
* ``negative_sampling`` (seed 004; spec §9): the VAE trained with negatives pushed to ``N(c·1, I)``, scored
  by ``bpd`` as above ("AUC-BPD") and by ``kl = KL(q(z|x) || N(0, I))`` in nats, the analytic divergence
  of the posterior from the positive prior ("AUC-KL"). Uses auxiliary data when trained with
  ``negatives: aux`` (the run then labels it; uniform and generated negatives need none).

Higher = more OOD for every output. The ELBO / IWAE bound is the estimate the ``likelihood`` detector memoises.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ood_bench.detectors import estimators
from ood_bench.detectors.base import Batch, Detector
from ood_bench.numerics import bits_per_dim
from ood_bench.params import PositiveInt, checked


class _ObjectiveDetector(Detector):
    objective = ""

    @checked
    def __init__(self, iwae_samples: PositiveInt = 1):
        self.iwae_samples = iwae_samples

    @classmethod
    def backbone_problem(cls, backbone: torch.nn.Module) -> str | None:
        if getattr(backbone, "objective", None) != cls.objective:
            return (f"it scores a 'vae' backbone trained with objective '{cls.objective}', and this one was "
                    f"trained with objective '{getattr(backbone, 'objective', 'elbo')}'; give the detector a "
                    f"backbone entry with kind: vae and params: {{objective: {cls.objective}}}")
        return None

    def _bpd(self, batch: Batch, x: torch.Tensor) -> np.ndarray:
        model = self.backbone_
        ll = estimators.log_likelihood(model, batch, x, self.iwae_samples)
        return bits_per_dim(ll, math.prod(model.input_shape))


class BPVAE(_ObjectiveDetector):
    """Bits/dim (IWAE, ``iwae_samples``) under the basic prior of a BPVAE-trained VAE; output ``bpd``."""

    name = "bpvae"
    version = "1"
    uses_auxiliary_data = True
    objective = "bpvae"

    def outputs(self) -> list[str]:
        return ["bpd"]

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        return {"bpd": self._bpd(batch, self._model_input(batch))}


class NegativeSampling(_ObjectiveDetector):
    """Bits/dim (IWAE) and KL of the posterior to the positive prior; outputs ``bpd`` and ``kl``."""

    name = "negative_sampling"
    version = "1"
    objective = "negative_sampling"

    def outputs(self) -> list[str]:
        return ["bpd", "kl"]

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        model = self.backbone_
        x = self._model_input(batch)
        with torch.inference_mode():
            mean, log_var = model.posterior(x)
            kl = model.kl_analytic(mean.double(), log_var.double())
        return {"bpd": self._bpd(batch, x), "kl": kl.sum(1).cpu().numpy()}
