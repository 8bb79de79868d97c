"""An example third-party detector: the KL divergence of each latent layer from its prior.

``kl_total(x) = sum_l [log q(z_l|.) - log p(z_l|z_{l+1})]`` at one posterior sample, in nats, and the
same per layer as ``kl_z{l}``. Higher = the posterior moved further from the prior = more OOD. It
is also the collapse diagnostic of a hierarchical VAE, seen per example.
"""

from __future__ import annotations

import numpy as np
import torch
from ood_bench.detectors import Batch, Detector


class LatentKL(Detector):
    """Per-example KL of every latent layer (single-sample estimate, nats)."""

    name = "latent_kl"
    version = "1"

    def __init__(self) -> None:
        pass

    def outputs(self) -> list[str]:
        layers = range(1, self.backbone_.num_latent_layers + 1)
        return ["kl_total"] + [f"kl_z{l}" for l in layers]

    @torch.inference_mode()
    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        model = self.backbone_
        x = self._model_input(batch)
        terms = model.bound(x, model.draw_noise(batch.generators("elbo"), 1), k=0)
        per_layer = [kl.double().cpu().numpy() for kl in terms.kl]
        out = {f"kl_z{i + 1}": v for i, v in enumerate(per_layer)}
        out["kl_total"] = np.sum(per_layer, axis=0)
        return out
