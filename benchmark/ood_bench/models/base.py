"""The contract every backbone meets, so detectors can score any VAE the same way.

A backbone is a (hierarchical) VAE with L latent layers. Detectors only use ``prepare``,
``draw_noise`` and ``bound``; training only uses ``training_loss`` (and ``data_dependent_init``).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ood_bench.compute import to_device


@dataclass
class BoundTerms:
    """The terms of one evidence bound, per example, in nats.

    ``kl[l-1]`` is ``log q(z_l|.) - log p(z_l|z_{l+1})`` at the sampled z_l (a Monte Carlo term, not the
    analytic KL); it is exactly zero for layers that carry no density term (l <= k in ``bound``).
    """

    log_px: torch.Tensor
    kl: list[torch.Tensor]

    @property
    def bound(self) -> torch.Tensor:
        """``log p(x|z_1) - sum_l kl_l``, shape (B,)."""
        total = self.log_px
        for term in self.kl:
            total = total - term
        return total


@contextmanager
def frozen(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Parameters that receive no gradient from what is computed inside (inputs still do)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Backbone(nn.Module, abc.ABC):
    """A VAE with ``num_latent_layers`` stochastic layers over images of ``input_shape`` (C, H, W).

    Subclasses define a ``Config`` dataclass (its fields are the backbone's parameters) and bump
    ``MODEL_VERSION`` whenever a change alters what training produces: it is part of the checkpoint key.
    """

    MODEL_VERSION: ClassVar[str] = "1"
    Config: ClassVar[type]
    input_shape: tuple[int, int, int]
    num_latent_layers: int

    # ------------------------------------------------------------------------------ abstract part
    @abc.abstractmethod
    def prepare(self, images: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
        """uint8 (B, C, H, W) images -> model input on the same device.

        With ``generators`` any randomness of example i comes from ``generators[i]`` only; without them
        (training) the global RNG is used.
        """

    @abc.abstractmethod
    def latent_shapes(self) -> list[tuple[int, ...]]:
        """Shape of one example's latent, per layer, z_1 first."""

    @abc.abstractmethod
    def bound(self, x: torch.Tensor, noise: list[torch.Tensor], k: int = 0) -> BoundTerms:
        """The bound L^{>k} (spec §1.4) for prepared input ``x`` and standard-normal ``noise``.

        k = 0 is the ordinary single-sample ELBO with Monte Carlo KL terms.
        """

    @abc.abstractmethod
    def training_loss(
        self, x: torch.Tensor, beta: float, free_bits: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss to minimise and per-batch logs (``loss``, ``elbo``, ``kl_z1``... in nats/example).

        Logs are detached 0-dim tensors (or floats): the loop converts them only when it writes a log line, so
        a training step never waits for the GPU."""

    @classmethod
    @abc.abstractmethod
    def from_params(cls, params: dict[str, Any], input_shape: tuple[int, int, int]) -> Backbone:
        """Build an untrained model from suite parameters (validated) for images of ``input_shape``."""

    @classmethod
    @abc.abstractmethod
    def validate_params(cls, params: dict[str, Any]) -> None:
        """Raise ValueError naming any bad key or value, and the allowed keys."""

    @classmethod
    def auxiliary_use(cls, params: dict[str, Any]) -> str:
        """Whether training with ``params`` takes auxiliary data: ``"required"``, ``"optional"`` or
        ``"unused"`` (the default). Backbones that use it accept ``training_loss(..., aux=batch)``."""
        return "unused"

    # ------------------------------------------------------------------------------ shared part
    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device

    def resolved_params(self) -> dict[str, Any] | None:
        """The full parameter set this model was built with, defaults filled in (JSON-friendly).

        Checkpoint keys hash it, so ``{}`` and the spelled-out defaults share one checkpoint.
        None (the default) makes the key use the parameters as given.
        """
        return None

    def reconstruct(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Mean of p(x | z_{>k}) for prepared input ``x``, as images in [0, 1] of shape (B, C, H, W).

        z_{>k} are the posterior means and z_{<=k} the conditional-prior means (seed 000 Fig. 2, seed 001
        Fig. 1): how much of an input the upper layers alone keep. Default: not available.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement reconstruct()")

    def data_dependent_init(self, x: torch.Tensor) -> None:
        """Initialise from a batch of prepared training data before the first step (default: nothing)."""

    def draw_noise(self, generators: Sequence[torch.Generator], n_samples: int) -> list[torch.Tensor]:
        """Standard-normal noise for every latent layer, per layer ``(n_samples * B, *shape)``, sample-major.

        Row ``s * B + i`` is sample s of example i and is drawn from ``generators[i]`` only, one sample at
        a time and all layers at once, so an example's noise never depends on its batch-mates nor on how
        a caller splits its samples into calls.
        """
        shapes = self.latent_shapes()
        sizes = [math.prod(s) for s in shapes]
        total = sum(sizes)
        per_example = [
            torch.stack([torch.randn(total, generator=g) for _ in range(n_samples)]) for g in generators
        ]
        flat = torch.stack(per_example, dim=1).reshape(n_samples * len(generators), total)
        flat = to_device(flat, self.device)
        parts = flat.split(sizes, dim=1)
        return [part.reshape(-1, *shape) for part, shape in zip(parts, shapes, strict=True)]
