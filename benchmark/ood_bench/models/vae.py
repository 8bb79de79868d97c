"""Plain convolutional VAE with one Gaussian latent (spec §1.1): the backbone of likelihood regret and ROSE.

Encoder: ``len(channels)`` convolutions 4x4 / stride 2 / padding 1 with ReLU (28 -> 14 -> 7 for
FashionMNIST with channels [32, 64]; 32 -> 16 -> 8 -> 4 for CIFAR10 with [64, 128, 256]), flatten, a
dense layer of ``hidden`` units with ReLU, and a dense layer to the posterior mean and log-variance
of z in R^d. Decoder: the mirror image (dense layers, transposed 4x4 / stride-2 convolutions) ending
in the parameters of the likelihood head of :mod:`ood_bench.models.heads` (Bernoulli logits for
binarised grayscale images, a discretised logistic mixture for colour, or the reference code's 256-way
categorical per sub-pixel). p(z) = N(0, I).

No BatchNorm, unlike the DCGAN VAE of the likelihood-regret reference code: with BatchNorm an
example's training-mode output depends on its batch-mates, and likelihood regret and ROSE need every
forward pass to be a function of one example only (scores must not depend on the batch). Without it
there is no train/eval distinction to get wrong when the encoder is copied and optimised per example.

The ELBO is split into small methods (``encode``, ``decode``, ``log_px``, ``kl_analytic``) so that
detectors and training objectives built on this backbone (BPVAE, negative sampling) can reuse them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ood_bench.compute import pass_rows
from ood_bench.models import gaussian, objectives
from ood_bench.models.base import Backbone, BoundTerms
from ood_bench.models.heads import head_input, make_head
from ood_bench.models.layers import FeatureMapLinear, UpConv2d, chain_channels_last
from ood_bench.params import STRICT, NonNegativeInt, PositiveInt, config_from_params


@dataclass
class VAEConfig:
    """Parameters of :class:`ConvVAE` (the ``params`` of a suite backbone entry).

    ``None`` fields are derived from the input shape (grayscale / colour defaults of spec §1.1).
    """

    __pydantic_config__ = STRICT

    latent_dim: PositiveInt | None = None
    """d, the size of z. Default 16 for one channel (WAIC reference code), 100 for colour (seed 004)."""
    channels: list[PositiveInt] | None = None
    """Output channels of the stride-2 encoder convolutions. Default [32, 64] for one channel,
    [64, 128, 256] for colour."""
    hidden: NonNegativeInt = 256
    """Width of the dense layer between the convolutions and the latent (0: none)."""
    likelihood: Literal["bernoulli", "dlm", "categorical"] | None = None
    """``bernoulli`` (binarised images), ``dlm`` (discretised logistic mixture) or ``categorical`` (a 256-way
    softmax per sub-pixel, the likelihood-regret reference decoder). Default: bernoulli for one channel, dlm
    otherwise."""
    dlm_components: PositiveInt = 10
    free_bits_per: Literal["element", "layer"] = "element"
    """How the training free-bits budget lambda (nats) floors the KL: ``element`` = lambda / d on each latent
    dimension of each example; ``layer`` = lambda on the batch-averaged KL."""
    objective: Literal["elbo", "bpvae", "negative_sampling"] = "elbo"
    """Training objective: ``elbo``, ``bpvae`` or ``negative_sampling`` (:mod:`ood_bench.models.objectives`)."""
    objective_params: dict[str, Any] = field(default_factory=dict)
    """Settings of the objective (:class:`ood_bench.models.objectives.ObjectiveParams`)."""

    def __post_init__(self) -> None:
        """What the field types cannot say: the channel list is not empty, the objective's settings apply."""
        if self.channels is not None:
            _check(len(self.channels) >= 1, "channels", "a non-empty list of positive integers")
            self.channels = list(self.channels)
        objectives.validate(self.objective, self.objective_params)


def _check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ValueError(f"vae parameter {name!r} must be {expected}")


def _halved(side: int) -> int:
    """Output side of a 4x4 / stride-2 / padding-1 convolution."""
    return (side + 2 - 4) // 2 + 1


class ConvVAE(Backbone):
    """Single-latent convolutional VAE; see the module docstring."""

    MODEL_VERSION = "1"
    Config = VAEConfig
    num_latent_layers = 1

    def __init__(self, config: VAEConfig, input_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        self.input_shape = tuple(int(d) for d in input_shape)
        c_x, h, w = self.input_shape
        gray = c_x == 1
        self.latent_dim = config.latent_dim or (16 if gray else 100)
        self.channels = list(config.channels or ([32, 64] if gray else [64, 128, 256]))
        self.likelihood = config.likelihood or ("bernoulli" if gray else "dlm")
        self.head = make_head(self.likelihood, c_x, config.dlm_components)
        self.objective = config.objective
        self.objective_params = objectives.validate(config.objective, config.objective_params)
        objectives.check_likelihood(self.objective, self.objective_params, self.likelihood)

        sides = [(h, w)]
        for _ in self.channels:
            sides.append((_halved(sides[-1][0]), _halved(sides[-1][1])))
        if min(sides[-1]) < 1:
            raise ValueError(f"vae: {len(self.channels)} stride-2 convolutions shrink {h}x{w} images to nothing;"
                             " use fewer 'channels'")
        flat = self.channels[-1] * sides[-1][0] * sides[-1][1]
        d, hid = self.latent_dim, config.hidden

        enc: list[nn.Module] = []
        cin = c_x
        for cout in self.channels:
            enc += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU()]
            cin = cout
        enc.append(nn.Flatten())
        enc += [nn.Linear(flat, hid), nn.ReLU(), nn.Linear(hid, 2 * d)] if hid else [nn.Linear(flat, 2 * d)]
        self.encoder = nn.Sequential(*enc)

        to_map = FeatureMapLinear(hid or d, (self.channels[-1], *sides[-1]))  # Linear + Unflatten, channels-last
        dec: list[nn.Module] = [nn.Linear(d, hid), nn.ReLU(), to_map] if hid else [to_map]
        dec += [nn.ReLU(), nn.Identity()]  # the Identity holds the place of an earlier Unflatten: checkpoint keys
        outs = list(reversed(self.channels[:-1])) + [self.head.num_params]
        for i, cout in enumerate(outs):
            src, dst = sides[-1 - i], sides[-2 - i]
            pad = tuple(t - ((s - 1) * 2 - 2 + 4) for s, t in zip(src, dst, strict=True))
            dec.append(UpConv2d(cin, cout, 4, stride=2, padding=1, output_padding=pad))  # see models/layers.py
            if i < len(outs) - 1:
                dec.append(nn.ReLU())
            cin = cout
        chain_channels_last(dec)
        self.decoder = nn.Sequential(*dec)

    # -------------------------------------------------------------------- Backbone API
    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> None:
        config_from_params(VAEConfig, params, "vae")

    @classmethod
    def from_params(cls, params: dict[str, Any], input_shape: tuple[int, int, int]) -> ConvVAE:
        return cls(config_from_params(VAEConfig, params, "vae"), input_shape)

    @classmethod
    def auxiliary_use(cls, params: dict[str, Any]) -> str:
        config = config_from_params(VAEConfig, params, "vae")
        return objectives.auxiliary_use(config.objective, objectives.validate(config.objective,
                                                                              config.objective_params))

    def resolved_params(self) -> dict[str, Any]:
        out = asdict(self.config)
        out.update(latent_dim=self.latent_dim, channels=list(self.channels), likelihood=self.likelihood)
        if self.objective == "elbo":  # plain-ELBO checkpoint keys stay what they were before objectives existed
            del out["objective"], out["objective_params"]
        else:
            # only the objective's own fields: the others would be refused when the checkpoint is loaded back
            out["objective_params"] = objectives.own_params(self.objective, self.objective_params)
        return out

    def latent_shapes(self) -> list[tuple[int, ...]]:
        return [(self.latent_dim,)]

    def prepare(self, images: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
        return head_input(images, self.input_shape, self.likelihood, generators)

    # -------------------------------------------------------------------- the pieces of the ELBO
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (B, d)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z|x), each (B, d)."""
        mean, logvar = self.posterior(x)
        return mean, torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood-head parameters of p(x|z) for latents (B, d)."""
        return self.decoder(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Mean of p(x | z) at the posterior mean of z (the one-layer case, k = 0), images in [0, 1]."""
        if k != 0:
            raise ValueError(f"a one-layer VAE reconstructs from z itself (k = 0), got k = {k}")
        mean, _ = self.posterior(x)
        return self.head.mean(self.decode(mean))

    def log_px(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats per example from head parameters."""
        return self.head.log_prob(params, x)

    @staticmethod
    def kl_analytic(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, exp(logvar)) || N(0, I)) per latent dimension, (B, d)."""
        return gaussian.kl_normal(mean, logvar)

    def negative_elbo(self, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                      eps: torch.Tensor | None = None) -> torch.Tensor:
        """``-log p(x|z) + KL(q(z|x) || p(z))`` per example (B,), with the analytic KL of the posterior
        (mean, logvar) and z = mean + exp(logvar / 2) * eps, or z = mean when ``eps`` is None (a deterministic
        loss, as ROSE's gradients need). Any posterior can be passed, e.g. one optimised for a single example."""
        z = mean if eps is None else mean + torch.exp(0.5 * logvar) * eps
        return -self.log_px(self.decode(z), x) + self.kl_analytic(mean, logvar).sum(1)

    def weights(self, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> BoundTerms:
        """``log p(x|z)`` and the MC term ``log q(z|x) - log p(z)`` at z = mean + exp(logvar / 2) * eps.

        Any posterior parameters can be passed, e.g. those of an encoder optimised for one example.
        """
        z = mean + torch.exp(0.5 * logvar) * eps
        log_q = gaussian.log_normal_at_noise(eps, 0.5 * logvar).sum(1)
        log_p = gaussian.log_standard_normal(z).sum(1)
        return BoundTerms(log_px=self.log_px(self.decode(z), x), kl=[log_q - log_p])

    def bound(self, x: torch.Tensor, noise: list[torch.Tensor], k: int = 0) -> BoundTerms:
        if k != 0:
            raise ValueError(f"the vae has one latent layer, so only k = 0 is defined, got k = {k}")
        if len(noise) != 1:
            raise ValueError(f"expected noise for 1 layer, got {len(noise)}")
        rows, limit = x.shape[0], pass_rows(x.device, "vae")
        if rows > limit:
            parts = [self.bound(x[i : i + limit], [noise[0][i : i + limit]]) for i in range(0, rows, limit)]
            return BoundTerms(log_px=torch.cat([p.log_px for p in parts]),
                              kl=[torch.cat([p.kl[0] for p in parts])])
        mean, logvar = self.posterior(x)
        return self.weights(x, mean, logvar, noise[0])

    def elbo_terms(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(x|z) at one reparameterised sample (B,), analytic KL per dimension (B, d))``."""
        mean, logvar = self.posterior(x)
        z = mean + torch.exp(0.5 * logvar) * eps
        return self.log_px(self.decode(z), x), self.kl_analytic(mean, logvar)

    def kl_penalty(self, kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
        """The batch-mean KL term of the training loss, with the free-bits floor of ``free_bits_per``."""
        if free_bits <= 0:
            return kl_dims.sum(1).mean()
        if self.config.free_bits_per == "layer":
            return kl_dims.sum(1).mean().clamp(min=free_bits)
        return kl_dims.clamp(min=free_bits / kl_dims.shape[1]).sum(1).mean()

    def training_loss(
        self, x: torch.Tensor, beta: float, free_bits: float, aux: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.objective != "elbo":
            return objectives.training_loss(self, self.objective, self.objective_params, x, beta, free_bits, aux)
        eps = torch.randn(x.shape[0], self.latent_dim, device=x.device)
        log_px, kl_dims = self.elbo_terms(x, eps)
        loss = -log_px.mean() + beta * self.kl_penalty(kl_dims, free_bits)
        kl = kl_dims.sum(1)
        return loss, {"loss": loss.detach(), "elbo": (log_px - kl).detach().mean(),
                      "kl_z1": kl.detach().mean()}
