"""A faster CPU forward pass for the decoders' 4x4 / stride-2 / padding-1 transposed convolutions.

Both backbones upsample with ``ConvTranspose2d(cin, cout, 4, stride=2, padding=1)``. On CPU, PyTorch's oneDNN
transposed-convolution kernel runs the narrow ones, above all the grayscale output layer (16 or 32 -> 1
channel at 28x28), about 2x slower than an ordinary convolution doing the same arithmetic. :class:`UpConv2d`
is a drop-in replacement with the same parameters and state dict that computes the same map as one
ordinary convolution:

    output pixel (2m + a, 2n + c) only sees input pixels m - 1 + a .. m + a and n - 1 + c .. n + c,
    through kernel taps 3 - a - 2i and 3 - c - 2j (i, j in {0, 1}).

So a 2x2 convolution of the input padded by 1, with the four phases (a, c) stacked as 4 * cout output
channels, gives every output pixel; one strided copy interleaves the phases. The backward pass is
PyTorch's own transposed-convolution backward (``aten.convolution_backward``), so gradients are exactly
those of ``nn.ConvTranspose2d``; under ``torch.func.vmap`` the vmapped dimension is folded into the batch.

Where it pays was measured, not assumed (``benchmarks/upconv_speed.py``, docs/performance.md): the phase
path wins for narrow outputs from about 16-32 rows on, and loses below that (a few extra small ops per
call) and on wide outputs (the 64/128/256-channel inner layers and the 50-channel colour heads). So it is
taken from ``PHASE_MIN_ROWS`` rows and up to ``PHASE_MAX_OUT_CHANNELS`` output channels; other shapes,
configurations and devices, and ``output_size`` calls, use ``nn.ConvTranspose2d``'s forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PHASE_MIN_ROWS = 32
"""Smallest batch that takes the phase path (below it PyTorch's kernel is faster)."""
PHASE_MAX_OUT_CHANNELS = 16
"""Widest output that takes the phase path (wider ones are faster on PyTorch's kernel)."""
_TAPS = torch.tensor([[3, 1], [2, 0]])
"""_TAPS[a, i]: the kernel tap that window position i uses for output phase a (3 - a - 2i)."""


def phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """Transposed-conv weight (cin, cout, 4, 4) -> 2x2 conv weight (4 * cout, cin, 2, 2), phases (a, c) major."""
    cin, cout = weight.shape[:2]
    taps = _TAPS.to(weight.device)
    w = weight.transpose(0, 1)[:, :, taps[:, None, :, None], taps[None, :, None, :]]  # cout, cin, a, c, i, j
    return w.permute(2, 3, 0, 1, 4, 5).reshape(4 * cout, cin, 2, 2)


def phase_conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         channels_last: bool = False) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2, padding=1)`` as one 2x2 convolution + interleave.

    The result is NCHW-contiguous, or channels-last (no extra copy) when ``channels_last``: cheaper when the
    next layer is another phase convolution, slower when it reaches element-wise heads.
    """
    batch, _, h, w = x.shape
    cout = weight.shape[1]
    # channels-last makes the interleaving copy move whole channel vectors
    cl = torch.channels_last
    y = F.conv2d(x.contiguous(memory_format=cl), phase_weight(weight).contiguous(memory_format=cl),
                 None if bias is None else bias.repeat(4), padding=1)
    y = y.permute(0, 2, 3, 1).contiguous()  # (B, h + 1, w + 1, 4 * cout); free when y is channels-last
    sb, sr, sc, _ = y.stride()
    # phase (a, c) of output row m, column n sits at y[:, m + a, n + c, (2a + c) * cout + channel]
    phases = y.as_strided((batch, h, 2, w, 2, cout), (sb, sr, sr + 2 * cout, sc, sc + cout, 1), y.storage_offset())
    out = torch.empty((batch, 2 * h, 2 * w, cout), dtype=y.dtype, device=y.device)
    out.view(batch, h, 2, w, 2, cout).copy_(phases)
    out = out.permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


class _PhaseConvTranspose(torch.autograd.Function):
    """Forward by :func:`phase_conv_transpose`, backward by PyTorch's transposed-convolution backward."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, channels_last: bool) -> torch.Tensor:
        return phase_conv_transpose(x, weight, bias, channels_last)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, _ = inputs
        ctx.save_for_backward(x, weight)
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 ctx.bias_sizes is not None and ctx.needs_input_grad[2]]
        return *torch.ops.aten.convolution_backward(grad, x, weight, ctx.bias_sizes, [2, 2], [1, 1], [1, 1], True,
                                                    [0, 0], 1, needs), None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             channels_last: bool) -> tuple[torch.Tensor, int]:
        x_dim, w_dim, b_dim, _ = in_dims
        if w_dim is None and b_dim is None:  # shared weights: the vmapped axis is just more batch rows
            xs = x.movedim(x_dim, 0) if x_dim is not None else x.expand(info.batch_size, *x.shape)
            out = _PhaseConvTranspose.apply(xs.reshape(-1, *xs.shape[2:]), weight, bias, channels_last)
            return out.reshape(*xs.shape[:2], *out.shape[1:]), 0
        native = torch.vmap(lambda xi, wi, bi: F.conv_transpose2d(xi, wi, bi, stride=2, padding=1), in_dims=in_dims[:3])
        return native(x, weight, bias), 0


class UpConv2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose 4x4 / stride-2 / padding-1 CPU forward on >= PHASE_MIN_ROWS rows (per vmapped
    call) is a phase convolution (see the module docstring).

    ``channels_last_output``: the phase path leaves its output channels-last, saving two layout copies when the
    next layer is another UpConv2d on the phase path (see :func:`chain_channels_last`; the state dict is unaffected).
    """

    def __init__(self, *args: Any, channels_last_output: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.channels_last_output = channels_last_output

    @property
    def phase_capable(self) -> bool:
        """Whether this layer's configuration takes the phase path (on CPU, from PHASE_MIN_ROWS rows)."""
        return (self.kernel_size == (4, 4) and self.stride == (2, 2) and self.padding == (1, 1)
                and self.output_padding == (0, 0) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros" and self.out_channels <= PHASE_MAX_OUT_CHANNELS)

    def _phase_path(self, x: torch.Tensor) -> bool:
        if x.dim() != 4 or x.shape[0] < PHASE_MIN_ROWS or x.device.type != "cpu":  # the per-call part first
            return False
        return self.phase_capable

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and self._phase_path(x):
            return _PhaseConvTranspose.apply(x, self.weight, self.bias, self.channels_last_output)
        return super().forward(x, output_size)


def chain_channels_last(layers: list[nn.Module]) -> None:
    """Let each UpConv2d that feeds another phase-capable UpConv2d (through element-wise layers only) leave its
    output channels-last; ``layers`` is a sequential stack."""
    ups = [m for m in layers if isinstance(m, nn.ConvTranspose2d)]
    for layer, after in zip(ups, ups[1:], strict=False):
        if isinstance(layer, UpConv2d):
            layer.channels_last_output = layer.phase_capable and isinstance(after, UpConv2d) and after.phase_capable
