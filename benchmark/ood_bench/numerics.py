"""Shared numerics: log-mean-exp, bits/dim and per-example seeding.

Every detector imports these; none re-implements them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch

LN2 = math.log(2.0)


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log(mean(exp(values)))`` along ``dim``, computed stably in float64."""
    v = values.to(torch.float64)
    top = v.max(dim=dim, keepdim=True).values
    out = top + torch.log(torch.exp(v - top).mean(dim=dim, keepdim=True))
    return out.squeeze(dim)


def bits_per_dim(log_likelihood_nats: torch.Tensor | np.ndarray, dims: int) -> np.ndarray:
    """Convert a per-example log-likelihood in nats to bits per dimension (positive = cost)."""
    ll = log_likelihood_nats.double().cpu().numpy() if torch.is_tensor(log_likelihood_nats) else np.asarray(
        log_likelihood_nats, dtype=np.float64
    )
    return -ll / (dims * LN2)


def example_seed(seed: int, dataset_fingerprint: str, index: int, purpose: str) -> int:
    """A 63-bit seed for one example, independent of batch size, batch order and worker count."""
    text = f"{seed}|{dataset_fingerprint}|{index}|{purpose}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def example_generators(
    seed: int, dataset_fingerprint: str, indices: Sequence[int], purpose: str
) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per example, seeded by :func:`example_seed`."""
    gens = []
    for i in indices:
        g = torch.Generator()
        g.manual_seed(example_seed(seed, dataset_fingerprint, int(i), purpose))
        gens.append(g)
    return gens


def stacked_normal(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise of ``(len(generators), *shape)``, row i drawn from generator i (CPU)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def stacked_uniform(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """Uniform [0, 1) noise of ``(len(generators), *shape)``, row i drawn from generator i (CPU)."""
    return torch.stack([torch.rand(tuple(shape), generator=g) for g in generators])
