"""Log-likelihood estimators shared by the likelihood-based detectors (spec §1.4, §2, §4).

Every function takes per-example generators so an example's estimate never depends on its batch-mates.
All results are in nats, float64, one value per example.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ood_bench.numerics import log_mean_exp


@torch.inference_mode()
def elbo(model: torch.nn.Module, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Single-sample ELBO, i.e. L^{>0} (MC KL terms at the posterior sample)."""
    return model.bound(x, model.draw_noise(generators, 1), k=0).bound.double()


@torch.inference_mode()
def iwae(
    model: torch.nn.Module,
    x: torch.Tensor,
    generators: Sequence[torch.Generator],
    samples: int,
    samples_per_pass: int = 16,
) -> torch.Tensor:
    """Importance-weighted bound L_S: log-mean-exp over S posterior samples of log p(x,z) - log q(z|x).

    Samples are drawn in passes of ``samples_per_pass``; each example's generator continues across
    passes, so the estimate does not depend on how the samples are chunked.
    """
    weights = []
    remaining = samples
    while remaining > 0:
        n = min(samples_per_pass, remaining)
        noise = model.draw_noise(generators, n)
        terms = model.bound(x.repeat(n, 1, 1, 1), noise, k=0)
        weights.append(terms.bound.double().view(n, x.shape[0]))
        remaining -= n
    return log_mean_exp(torch.cat(weights, dim=0), dim=0)


@torch.inference_mode()
def bound_above(
    model: torch.nn.Module, x: torch.Tensor, generators: Sequence[torch.Generator], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L^{>k}, LL^{>k})``: the bound with z_{<=k} at conditional-prior means, and its log p(x|z_1) term."""
    terms = model.bound(x, model.draw_noise(generators, 1), k=k)
    return terms.bound.double(), terms.log_px.double()
