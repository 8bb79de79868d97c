"""The parameters of the hierarchical VAE (the ``params`` of a ``kind: hvae`` backbone), validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ood_bench.params import STRICT, Flag, NonNegativeInt, PositiveInt, PositiveNumber

INFORMATIVE_PRIORS = ("sample", "mean")


@dataclass
class HVAEConfig:
    """Parameters of :class:`HierarchicalVAE` (the ``params`` of a suite backbone entry).

    Defaults are seed 001's sizes; ``None`` fields are derived from the input shape.
    """

    __pydantic_config__ = STRICT

    latent_shapes: list[list[PositiveInt]] | None = None
    """z_1 first; [C, H, W] is convolutional, [D] dense. Default: grayscale [[8, H/2, W/2], [16], [8]],
    colour [[8, H/2, W/2], [16, H/4, W/4], [32, H/8, W/8]]."""
    channels: PositiveInt = 64
    blocks_per_stage: NonNegativeInt = 3
    """Residual blocks per deterministic stage. 0 builds compact plain stages instead: a 4x4 stride-2
    convolution per halving (transposed going down) and one ``kernel`` convolution per map stage, a
    two-layer MLP per dense stage, and the last upsampling of the decoder as its output layer (the
    cpu-budget prototype of ``cpu-hvae-notes.md``, whose LLR>k beats the residual stages at equal budget)."""
    kernel_sizes: list[PositiveInt] | None = None
    """Odd kernel size per stage, bottom first. Default [5, 3, 3, ...]."""
    dense_width: PositiveInt = 256
    likelihood: Literal["bernoulli", "dlm", "categorical"] | None = None
    """``bernoulli`` (binarised images), ``dlm`` (discretised logistic mixture) or ``categorical`` (256-way
    softmax per sub-pixel). Default: bernoulli for one channel, dlm otherwise."""
    dlm_components: PositiveInt = 10
    weight_norm: Flag = True
    """Weight normalisation with data-dependent initialisation (Salimans & Kingma 2016)."""
    kl_estimator: Literal["analytic", "mc"] = "analytic"
    """KL terms of the training loss: ``analytic`` or ``mc`` (single sample). Scores are always MC."""
    free_bits_per: Literal["position", "element", "layer"] = "position"
    """How a layer's free-bits budget lambda is applied in training (a floor under which KL is not
    penalised). ``position``: lambda / channels (units) on each latent element of each example, i.e.
    lambda per spatial position of a conv latent and lambda for a dense one. This is hvae-oodd's FreeNats
    (it divides lambda over the channel axis only and floors each element), and the CPU configuration
    measured to avoid collapse. ``element``: lambda / (number of elements) on each element of each example,
    i.e. lambda for the whole layer (not hvae-oodd's rule). ``layer``: lambda on the batch-averaged KL of
    the whole layer (Kingma et al. 2016)."""
    objective: Literal["elbo", "informative"] = "elbo"
    """Training objective. ``elbo``: the evidence lower bound. ``informative``: seed 000 eq. 10,
    ``ELBO - LL^{>0} + mean_{k=0..L-1} LL^{>k}`` with ``LL^{>k} = log p(x|z_1)`` for z_{>k} from the posterior
    and z_{<=k} from the conditional priors (spec §1.3). Scores never depend on it: every bound is the same."""
    informative_prior: Literal["sample", "mean"] = "sample"
    """How the informative objective sets z_{<=k}: ``sample`` (reparameterised draws from p(z_l|z_{l+1}), seed
    000 eq. 10) or ``mean`` (the conditional-prior means, the construction L^{>k} uses at evaluation)."""
    informative_weight: PositiveNumber = 1.0
    """lambda in ``ELBO + lambda * (mean_k LL^{>k} - LL^{>0})``: 1 is seed 000's objective; smaller values keep
    more weight on the ordinary reconstruction term (see docs/informative-hvae.md on collapse)."""

    def __post_init__(self) -> None:
        """What the field types cannot say."""
        _check(self.informative_weight <= 1, "informative_weight", "a number in (0, 1]")
        if self.latent_shapes is not None:
            ok = len(self.latent_shapes) >= 1 and all(len(s) in (1, 3) for s in self.latent_shapes)
            _check(ok, "latent_shapes", "a list of [C, H, W] or [D] shapes of positive integers")
            self.latent_shapes = [list(s) for s in self.latent_shapes]
        if self.kernel_sizes is not None:
            _check(all(k % 2 == 1 for k in self.kernel_sizes), "kernel_sizes",
                   "a list of odd positive integers, one per stage")
            self.kernel_sizes = list(self.kernel_sizes)


def _check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ValueError(f"hvae parameter {name!r} must be {expected}")


def default_latents(input_shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
    c, h, w = input_shape
    if c == 1:
        return [(8, h // 2, w // 2), (16,), (8,)]
    return [(8, h // 2, w // 2), (16, h // 4, w // 4), (32, h // 8, w // 8)]
