"""Log-likelihood estimators shared by the likelihood-based detectors (spec §1.4, §2, §4).

Every estimate uses one random stream per example (``Batch.generators``), so an example's value never
depends on its batch-mates. Results are in nats, float64, one value per example.

Estimates are memoised per model object and (set, seed, estimator): when ``likelihood``, ``llr``,
``llr_ada`` and ``waic`` need the IWAE bound or an L^{>k} pass of the same examples under the same backbone,
it is computed once. Detectors go through :func:`bound_terms` and :func:`iwae_bound`, which fix the memo
names (and hence the random streams) every detector shares.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ood_bench.detectors.base import Batch
from ood_bench.numerics import log_mean_exp

_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def memoised(
    model: torch.nn.Module,
    batch: Batch,
    name: str,
    compute: Callable[[np.ndarray, Sequence[torch.Generator]], torch.Tensor],
) -> np.ndarray:
    """Per-example values of one estimator for ``batch``, computing only those not seen before.

    ``compute(rows, generators)`` estimates the examples at positions ``rows`` of the batch, with one
    generator each, as shape (n,) or (n, c) (c quantities from the same draws). ``name`` identifies the
    estimator and its parameters (e.g. ``"iwae16"``): it is both the memo key and the random-stream
    purpose, so a memoised value equals a recomputed one. Returns float64 of shape (B,) or (B, c).
    """
    memo = _MEMO.setdefault(model, {}).setdefault((name, batch.set_fingerprint, batch.seed), {})
    wanted = batch.indices.tolist()
    rows = np.array([j for j, i in enumerate(wanted) if i not in memo], dtype=np.int64)
    if rows.size:
        generators = batch.generators(name)
        values = compute(rows, [generators[j] for j in rows]).double().cpu().numpy()
        for j, v in zip(rows.tolist(), values, strict=True):
            memo[wanted[j]] = v
    return np.array([memo[i] for i in wanted], dtype=np.float64)


def bound_terms(model: torch.nn.Module, batch: Batch, x: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Memoised ``(L^{>k}, LL^{>k})`` of ``batch`` (prepared input ``x``) from one pass, in nats.

    k = 0 is the single-sample ELBO and its reconstruction term log p(x|z_1), z_1 ~ q (memo name
    ``elbo``); k >= 1 uses conditional-prior means for z_{<=k} (memo name ``lk{k}``).
    """
    name = "elbo" if k == 0 else f"lk{k}"
    values = memoised(model, batch, name, lambda r, g: torch.stack(bound_above(model, x[r], g, k), dim=1))
    return values[:, 0], values[:, 1]


def iwae_bound(model: torch.nn.Module, batch: Batch, x: torch.Tensor, samples: int) -> np.ndarray:
    """Memoised S-sample IWAE bound L_S of ``batch`` in nats (memo name ``iwae{S}``)."""
    return memoised(model, batch, f"iwae{samples}", lambda r, g: iwae(model, x[r], g, samples))


def forget(model: torch.nn.Module) -> None:
    """Drop every memoised estimate of ``model`` (tests use it to force recomputation)."""
    _MEMO.pop(model, None)


def log_likelihood(model: torch.nn.Module, batch: Batch, x: torch.Tensor, samples: int) -> np.ndarray:
    """Memoised per-example log-likelihood estimate in nats: the single-sample ELBO of :func:`bound_terms`
    for ``samples == 1`` (the ``likelihood`` detector's ``elbo_bpd``), else :func:`iwae_bound`, so detectors
    that need the same estimate share one computation."""
    if samples == 1:
        return bound_terms(model, batch, x, 0)[0]
    return iwae_bound(model, batch, x, samples)
