"""Faster CPU passes for the decoders' 4x4 / stride-2 / padding-1 transposed convolutions, and the dense layer
that feeds them a channels-last feature map (:class:`FeatureMapLinear`).

Both backbones upsample with ``ConvTranspose2d(cin, cout, 4, stride=2, padding=1)``. :class:`UpConv2d` is a
drop-in replacement with the same parameters and state dict that, on CPU, computes the same map one of two
faster ways, chosen by what ``benchmarks/upconv_speed.py`` measured (docs/performance.md):

* **Narrow outputs** (at most ``PHASE_MAX_OUT_CHANNELS`` channels, the grayscale output layers) on at least
  ``PHASE_MIN_ROWS`` rows: a *phase convolution*. Output pixel (2m + a, 2n + c) only sees input pixels
  m - 1 + a .. m + a and n - 1 + c .. n + c, through kernel taps 3 - a - 2i and 3 - c - 2j (i, j in {0, 1}).
  So a 2x2 convolution of the input padded by 1, with the four phases (a, c) stacked as 4 * cout output
  channels, gives every output pixel; one strided copy interleaves the phases. PyTorch's oneDNN kernel runs
  the one-channel output layers 1.3-3.4x slower from 16 rows on.
* **Everything else**: PyTorch's own kernel on channels-last input, faster than on NCHW input on every backbone
  layer but the widest (256 -> 128 channels at 4x4, about even), most on the colour heads' 50-channel layers.

The backward pass is PyTorch's ``aten.convolution_backward`` when weight gradients are needed (training), and
otherwise (frozen weights, as in likelihood regret) the transposed convolution's adjoint, an ordinary stride-2
convolution, computed in the input's layout so that the ReLU before it does not convert layouts: the gradients
of ``nn.ConvTranspose2d`` either way. Under ``torch.func.vmap`` with shared weights the vmapped dimension is
folded into the batch; per-example weights go to PyTorch's batching rule. Other configurations and devices,
and ``output_size`` calls, use ``nn.ConvTranspose2d``'s forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PHASE_MIN_ROWS = 16
"""Smallest batch that takes the phase path (below it PyTorch's kernel is faster)."""
PHASE_MAX_OUT_CHANNELS = 4
"""Widest output that takes the phase path (from 8 channels on, PyTorch's kernel on channels-last input is faster)."""
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
    next layer is another UpConv2d, slower when it reaches element-wise heads.
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


def _layout(t: torch.Tensor) -> torch.memory_format:
    """The memory format of ``t``: channels-last or, also where both describe it, NCHW."""
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() \
        else torch.contiguous_format


def fast_conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        channels_last: bool = False) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2, padding=1)`` on CPU by the faster of the two ways of the
    module docstring; the result is NCHW-contiguous, or channels-last when ``channels_last`` (cheaper when the
    next layer is another UpConv2d)."""
    if x.shape[0] >= PHASE_MIN_ROWS and weight.shape[1] <= PHASE_MAX_OUT_CHANNELS:
        return phase_conv_transpose(x, weight, bias, channels_last)
    out = F.conv_transpose2d(x.contiguous(memory_format=torch.channels_last), weight, bias, stride=2, padding=1)
    return out if channels_last else out.contiguous()


class _FastConvTranspose(torch.autograd.Function):
    """Forward by :func:`fast_conv_transpose`; backward by PyTorch's ``convolution_backward`` when weights train,
    else by the adjoint convolution (see the module docstring)."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, channels_last: bool) -> torch.Tensor:
        return fast_conv_transpose(x, weight, bias, channels_last)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, _ = inputs
        ctx.save_for_backward(x, weight)
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs_x, needs_w = ctx.needs_input_grad[:2]
        needs_b = ctx.bias_sizes is not None and ctx.needs_input_grad[2]
        if needs_w or needs_b:  # training: one call computes every gradient
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, ctx.bias_sizes, [2, 2], [1, 1], [1, 1], True, [0, 0], 1, [needs_x, needs_w, needs_b])
            return grad_x, grad_w, grad_b, None
        if not needs_x:
            return None, None, None, None
        # frozen weights (scoring): the adjoint convolution, in the input's layout
        grad_x = F.conv2d(grad, weight, stride=2, padding=1)
        if not torch._C._functorch.is_functorch_wrapped_tensor(grad_x):  # vmap cannot change layouts
            grad_x = grad_x.contiguous(memory_format=_layout(x))
        return grad_x, None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             channels_last: bool) -> tuple[torch.Tensor, int]:
        x_dim, w_dim, b_dim, _ = in_dims
        if w_dim is None and b_dim is None:  # shared weights: the vmapped axis is just more batch rows
            xs = x.movedim(x_dim, 0) if x_dim is not None else x.expand(info.batch_size, *x.shape)
            out = _FastConvTranspose.apply(xs.reshape(-1, *xs.shape[2:]), weight, bias, channels_last)
            return out.reshape(*xs.shape[:2], *out.shape[1:]), 0
        native = torch.vmap(lambda xi, wi, bi: F.conv_transpose2d(xi, wi, bi, stride=2, padding=1), in_dims=in_dims[:3])
        return native(x, weight, bias), 0


class UpConv2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose 4x4 / stride-2 / padding-1 CPU passes take the faster paths of the module
    docstring.

    ``channels_last_output``: leave the output channels-last, saving two layout copies when the next layer is
    another UpConv2d (see :func:`chain_channels_last`; the state dict is unaffected).
    """

    def __init__(self, *args: Any, channels_last_output: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.channels_last_output = channels_last_output

    @property
    def fast_capable(self) -> bool:
        """Whether this layer's configuration takes the faster CPU paths."""
        return (self.kernel_size == (4, 4) and self.stride == (2, 2) and self.padding == (1, 1)
                and self.output_padding == (0, 0) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros")

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and x.dim() == 4 and x.device.type == "cpu" and self.fast_capable:
            return _FastConvTranspose.apply(x, self.weight, self.bias, self.channels_last_output)
        return super().forward(x, output_size)


def chain_channels_last(layers: list[nn.Module]) -> None:
    """Let each UpConv2d that feeds another fast-capable UpConv2d (through element-wise layers only) leave its
    output channels-last; ``layers`` is a sequential stack."""
    ups = [m for m in layers if isinstance(m, nn.ConvTranspose2d)]
    for layer, after in zip(ups, ups[1:], strict=False):
        if isinstance(layer, UpConv2d):
            layer.channels_last_output = (layer.fast_capable and isinstance(after, UpConv2d)
                                          and after.fast_capable)


class FeatureMapLinear(nn.Linear):
    """``nn.Linear(in_features, C * H * W)`` followed by ``nn.Unflatten(1, (C, H, W))``, with a channels-last output.

    Weight and bias are those of the plain pair (rows in C, H, W order), so the state dict is the same. The
    forward multiplies by the rows permuted to H, W, C order, which makes the (B, C, H, W) result channels-last
    without a copy: the layout UpConv2d computes in, which would otherwise cost a layout copy forward and one
    backward. The permuted weight is cached while the layer is not being trained.
    """

    def __init__(self, in_features: int, shape: tuple[int, int, int], bias: bool = True):
        super().__init__(in_features, shape[0] * shape[1] * shape[2], bias=bias)
        self.shape = tuple(shape)
        self._cached: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    def _permuted(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        c, h, w = self.shape
        weight = self.weight.view(c, h * w, self.in_features).transpose(0, 1).reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.view(c, h * w).t().reshape(-1)
        return weight, bias

    def _hwc_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = [p for p in (self.weight, self.bias) if p is not None]
        training = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if training or any(torch._C._functorch.is_functorch_wrapped_tensor(p) for p in params):
            return self._permuted()  # in the autograd graph (training) or under a functorch transform
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if self._cached is None or self._cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # usable later by autograd as a constant
                self._cached = (key, *self._permuted())
        return self._cached[1], self._cached[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.shape
        weight, bias = self._hwc_parameters()
        return F.linear(x, weight, bias).view(x.shape[0], h, w, c).permute(0, 3, 1, 2)
