"""The building blocks of the hierarchical VAE's stages: residual blocks, Gaussian heads, resolution levels,
and the data-dependent initialisation hook of weight-normalised layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ood_bench.models.layers import UpConv2d
from ood_bench.numerics import LN2

_MIN_STD = 1e-4


# ------------------------------------------------------------------------------------ layers
def wnorm(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` with weight normalisation when ``enabled`` (the output dimension of a transposed conv)."""
    if not enabled:
        return module
    return weight_norm(module, dim=1 if isinstance(module, nn.ConvTranspose2d) else 0)


def conv_layer(cin: int, cout: int, kernel: int, wn: bool, stride: int = 1) -> nn.Module:
    return wnorm(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2), wn)


def strided_layer(cin: int, cout: int, wn: bool, up: bool) -> nn.Module:
    """A 4x4 convolution that halves the resolution, or a transposed one that doubles it (an
    :class:`UpConv2d`, faster on CPU: see models/layers.py)."""
    conv = UpConv2d if up else nn.Conv2d
    return wnorm(conv(cin, cout, 4, stride=2, padding=1), wn)


class ResBlock(nn.Module):
    """Pre-activation residual block ``y = conv2(relu(conv1(relu(x)))) + skip(x)``.

    conv1 keeps the resolution; conv2 halves it (``resample=-1``), doubles it with a transposed
    convolution (``resample=1``) or keeps it (0). The skip path average-pools or repeats pixels.
    """

    def __init__(self, channels: int, kernel: int, resample: int, wn: bool):
        super().__init__()
        self.resample = resample
        self.conv1 = conv_layer(channels, channels, kernel, wn)
        if resample == 1:
            conv2 = nn.ConvTranspose2d(channels, channels, kernel, stride=2, padding=kernel // 2,
                                       output_padding=1)
            self.conv2 = wnorm(conv2, wn)
        else:
            self.conv2 = conv_layer(channels, channels, kernel, wn, stride=2 if resample == -1 else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        if self.resample == -1:
            x = F.avg_pool2d(x, 2, ceil_mode=True)
        elif self.resample == 1:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return h + x


class DenseResBlock(nn.Module):
    """Pre-activation residual block on vectors."""

    def __init__(self, width: int, wn: bool):
        super().__init__()
        self.fc1 = wnorm(nn.Linear(width, width), wn)
        self.fc2 = wnorm(nn.Linear(width, width), wn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(F.relu(x))))


def map_blocks(
    channels: int, kernel: int, blocks: int, steps: int, resample: int, wn: bool
) -> nn.Sequential:
    """``max(blocks, steps)`` residual blocks, the last ``steps`` of them resampling."""
    n = max(blocks, steps)
    return nn.Sequential(
        *[ResBlock(channels, kernel, resample if i >= n - steps else 0, wn) for i in range(n)]
    )


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Unflatten(nn.Module):
    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class GaussianHead(nn.Module):
    """Mean and standard deviation of a diagonal Gaussian over a latent of ``shape``.

    std = softplus with beta = ln 2 (softplus(0) = 1, seed 001 App. B) plus a small floor.
    """

    def __init__(self, in_features: int, shape: tuple[int, ...], kernel: int, wn: bool):
        super().__init__()
        self.shape = shape
        if len(shape) == 3:
            self.proj = conv_layer(in_features, 2 * shape[0], kernel, wn)
        else:
            self.proj = wnorm(nn.Linear(in_features, 2 * shape[0]), wn)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.proj(F.relu(h)).chunk(2, dim=1)
        return mean, F.softplus(raw, beta=LN2) + _MIN_STD


# ------------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class Level:
    """What one level of the hierarchy looks like: a map (channels, H, W) or a vector (features,)."""

    latent: tuple[int, ...]

    @property
    def is_map(self) -> bool:
        return len(self.latent) == 3

    @property
    def side(self) -> tuple[int, int]:
        return self.latent[1], self.latent[2]


def halvings(big: tuple[int, int], small: tuple[int, int]) -> int:
    """m with big = small * 2^m on both axes, or ValueError."""
    for m in range(8):
        if big[0] == small[0] * 2**m and big[1] == small[1] * 2**m:
            return m
    raise ValueError(f"hvae latent side {small} does not divide the side {big} below it by a power of two")


def normalise_output(module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
    dims = [0] + list(range(2, out.dim()))
    mean = out.mean(dim=dims)
    std = out.std(dim=dims) + 1e-6
    gain = module.parametrizations.weight.original0
    shape = [-1] + [1] * (gain.dim() - 1)
    if isinstance(module, nn.ConvTranspose2d):
        shape = [1, -1] + [1] * (gain.dim() - 2)
    gain.data /= std.view(shape)
    module.bias.data = (module.bias.data - mean) / std
    view = [1, -1] + [1] * (out.dim() - 2)
    return (out - mean.view(view)) / std.view(view)
