"""Likelihood heads p(x|z): the network outputs parameters, the head turns them into log p(x|z) in nats.

* ``BernoulliHead``: one logit per sub-pixel, for binarised grayscale images in {0, 1}.
* ``DiscretizedLogisticMixtureHead``: the PixelCNN++ likelihood (Salimans et al. 2017) over the 256
  integer values of each sub-pixel, rescaled to [-1, 1]. The log-probability of every bin is computed
  exactly and stably (no pdf fallback), so the 256 bin probabilities of a sub-pixel sum to one.
* ``CategoricalHead``: a free 256-way softmax per sub-pixel (C * 256 logits per pixel), trained with
  cross-entropy on the integer pixel values: the "DCGAN_VAE_pixel" head of the likelihood-regret / ROSE
  reference code (XavierXiao/Likelihood-Regret). It sees the same [-1, 1] levels as the mixture head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ood_bench.compute import to_device
from ood_bench.numerics import stacked_uniform

BIN_HALF_WIDTH = 1.0 / 255.0  # half the distance between neighbouring levels in [-1, 1]
_EDGE = 1.0 - BIN_HALF_WIDTH  # values beyond +-_EDGE are the lowest / highest level
_LOG_SCALE_RANGE = (-7.0, 7.0)


class BernoulliHead:
    """Independent Bernoulli sub-pixels; ``params`` are logits of shape (B, C, H, W)."""

    is_probability_mass = True
    """log p(x|.) is the log of a probability mass, so strictly negative (scores such as LLR^ada rely on it)."""

    def __init__(self, channels: int):
        self.channels = channels

    @property
    def num_params(self) -> int:
        """Network output channels the head needs."""
        return self.channels

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """Expected image in [0, 1]: the probability of each sub-pixel being on."""
        return torch.sigmoid(params)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Sum over sub-pixels of log Bernoulli(x | sigmoid(params)), shape (B,)."""
        ll = -F.binary_cross_entropy_with_logits(params, x, reduction="none")
        return ll.flatten(1).sum(1)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(-d))`` for d > 0, accurate for small and large d (Maechler 2012)."""
    small = d.clamp(max=math.log(2.0))
    large = d.clamp(min=math.log(2.0))
    return torch.where(d < math.log(2.0), torch.log(-torch.expm1(-small)), torch.log1p(-torch.exp(-large)))


class DiscretizedLogisticMixtureHead:
    """Mixture of ``components`` discretised logistics with channel-autoregressive means.

    Per component the network gives a mixture logit, C means, C log-scales and C(C-1)/2 coefficients
    (tanh-squashed): the mean of channel c is shifted by ``sum_{j<c} coeff_cj * x_j`` as in PixelCNN++.
    ``params`` has shape (B, components * (1 + 2C + C(C-1)/2), H, W); ``x`` holds levels in [-1, 1].
    """

    is_probability_mass = True
    """log p(x|.) is the log of a probability mass over 256 levels, so strictly negative."""

    def __init__(self, channels: int, components: int):
        self.channels = channels
        self.components = components

    @property
    def num_coeffs(self) -> int:
        return self.channels * (self.channels - 1) // 2

    @property
    def num_params(self) -> int:
        """Network output channels the head needs."""
        return self.components * (1 + 2 * self.channels + self.num_coeffs)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b, _, h, w = params.shape
        m, c = self.components, self.channels
        logits = params[:, :m]
        rest = params[:, m:].reshape(b, m, 2 * c + self.num_coeffs, h, w)
        means = rest[:, :, :c]
        log_scales = rest[:, :, c : 2 * c].clamp(*_LOG_SCALE_RANGE)
        coeffs = torch.tanh(rest[:, :, 2 * c :])
        return logits, means, log_scales, coeffs

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """Expected image in [0, 1] (from levels in [-1, 1]), ignoring the clipping at the two edge bins.

        A logistic is symmetric, so within a component E[x_c] = mu_c + sum_{j<c} coeff_cj E[x_j].
        """
        logits, means, _, coeffs = self._split(params)
        expected = [means[:, :, 0]]
        pair = 0
        for ch in range(1, self.channels):
            mean = means[:, :, ch]
            for prev in range(ch):
                mean = mean + coeffs[:, :, pair] * expected[prev]
                pair += 1
            expected.append(mean)
        weights = torch.softmax(logits, dim=1).unsqueeze(2)  # (B, M, 1, H, W)
        levels = (weights * torch.stack(expected, dim=2)).sum(dim=1)
        return ((levels.clamp(-1.0, 1.0) + 1.0) / 2.0)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact log-probability of the integer image ``x`` (levels in [-1, 1]), summed per example."""
        logits, means, log_scales, coeffs = self._split(params)
        xs = x.unsqueeze(1)  # (B, 1, C, H, W), broadcast over components
        shifted = [means[:, :, 0]]
        pair = 0
        for ch in range(1, self.channels):
            mean = means[:, :, ch]
            for prev in range(ch):
                mean = mean + coeffs[:, :, pair] * xs[:, :, prev]
                pair += 1
            shifted.append(mean)
        mu = torch.stack(shifted, dim=2)
        inv_scale = torch.exp(-log_scales)
        upper = inv_scale * (xs - mu + BIN_HALF_WIDTH)
        lower = inv_scale * (xs - mu - BIN_HALF_WIDTH)
        log_cdf_upper = F.logsigmoid(upper)  # log P(X <= x + half bin)
        log_sf_lower = F.logsigmoid(-lower)  # log P(X > x - half bin)
        # sigmoid(u) - sigmoid(l) = sigmoid(u) * sigmoid(-l) * (1 - exp(l - u))
        log_bin = log_cdf_upper + log_sf_lower + _log1mexp(2 * BIN_HALF_WIDTH * inv_scale)
        log_bin = torch.where(xs < -_EDGE, log_cdf_upper, torch.where(xs > _EDGE, log_sf_lower, log_bin))
        per_component = log_bin.sum(dim=2) + F.log_softmax(logits, dim=1)
        return torch.logsumexp(per_component, dim=1).flatten(1).sum(1)


NUM_LEVELS = 256  # values of an 8-bit sub-pixel


def levels_from_unit_interval(x: torch.Tensor) -> torch.Tensor:
    """Integer levels 0..255 (int64) of sub-pixels given as ``level * 2/255 - 1`` in [-1, 1] (``head_input``).

    Rounding to the nearest level undoes the float error of the rescaling (under 1e-4 of a level in float32);
    values outside [-1, 1] are clamped to the lowest / highest level.
    """
    return torch.round((x + 1.0) * ((NUM_LEVELS - 1) / 2.0)).clamp(0, NUM_LEVELS - 1).long()


class CategoricalHead:
    """Independent 256-way categorical sub-pixels, one free softmax per sub-pixel.

    ``params`` has shape (B, C * 256, H, W), grouped channel-major as in the reference decoder
    (``view(B, C, 256, H, W)``): output channel ``c * 256 + k`` is the logit of level k for image channel c.
    ``x`` holds levels in [-1, 1] (``level * 2/255 - 1``, as for ``dlm``); ``log_prob`` recovers the integer
    level by rounding (:func:`levels_from_unit_interval`), so -log_prob is the reference code's summed
    cross-entropy on ``x * 255``.
    """

    is_probability_mass = True
    """log p(x|.) is the log of a probability mass over 256 levels, so strictly negative."""

    def __init__(self, channels: int):
        self.channels = channels

    @property
    def num_params(self) -> int:
        """Network output channels the head needs."""
        return self.channels * NUM_LEVELS

    def _logits(self, params: torch.Tensor) -> torch.Tensor:
        """(B, C, 256, H, W) logits; a view of ``params`` (also for channels-last memory)."""
        b, _, h, w = params.shape
        return params.view(b, self.channels, NUM_LEVELS, h, w)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """Expected image in [0, 1]: sum_k softmax_k * k / 255 per sub-pixel, shape (B, C, H, W)."""
        probs = torch.softmax(self._logits(params), dim=2)
        values = torch.arange(NUM_LEVELS, dtype=probs.dtype, device=probs.device) / (NUM_LEVELS - 1)
        return (probs * values.view(1, 1, -1, 1, 1)).sum(2).clamp(0.0, 1.0)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Sum over sub-pixels of log softmax(logits)[observed level], shape (B,), in nats."""
        log_p = F.log_softmax(self._logits(params), dim=2)
        index = levels_from_unit_interval(x).unsqueeze(2)  # (B, C, 1, H, W)
        return log_p.gather(2, index).flatten(1).sum(1)


def make_head(
    likelihood: str, channels: int, components: int
) -> BernoulliHead | DiscretizedLogisticMixtureHead | CategoricalHead:
    """The head named by a backbone config (``bernoulli``, ``dlm`` or ``categorical``)."""
    if likelihood == "bernoulli":
        return BernoulliHead(channels)
    if likelihood == "dlm":
        return DiscretizedLogisticMixtureHead(channels, components)
    if likelihood == "categorical":
        return CategoricalHead(channels)
    raise ValueError(f"unknown likelihood {likelihood!r}; allowed: bernoulli, dlm, categorical")


def head_input(
    images: torch.Tensor, input_shape: tuple[int, ...], likelihood: str,
    generators: Sequence[torch.Generator] | None,
) -> torch.Tensor:
    """uint8 (B, C, H, W) images as a head models them: binarised with probability x/255 for ``bernoulli``
    (per-example draws from ``generators``, or the global RNG in training), rescaled to [-1, 1]
    (``level * 2/255 - 1``) for the 8-bit heads ``dlm`` and ``categorical``."""
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != tuple(input_shape):
        raise ValueError(f"expected uint8 images of shape (B, {tuple(input_shape)}), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if likelihood in ("dlm", "categorical"):
        return images.float() * (2.0 / 255.0) - 1.0
    if generators is None:
        u = torch.rand(images.shape, device=images.device)
    else:
        if len(generators) != images.shape[0]:
            raise ValueError(f"{len(generators)} generators for {images.shape[0]} images")
        u = to_device(stacked_uniform(generators, tuple(input_shape)), images.device)
    return (u < images.float() / 255.0).float()
