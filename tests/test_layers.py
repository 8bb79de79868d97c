"""UpConv2d must be nn.ConvTranspose2d with another forward kernel: same outputs, gradients and state dict."""

import pytest
import torch
from ood_bench.models.layers import UpConv2d
from torch import nn
from torch.func import functional_call, grad, vmap


def _pair(cin: int, cout: int, bias: bool = True, **kw) -> tuple[nn.ConvTranspose2d, UpConv2d]:
    torch.manual_seed(0)
    native = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias, **kw).double()
    fast = UpConv2d(cin, cout, 4, stride=2, padding=1, bias=bias, **kw).double()
    fast.load_state_dict(native.state_dict())
    return native, fast


@pytest.mark.parametrize(("cin", "cout", "side", "bias"), [(32, 16, 7, True), (16, 1, 14, True), (3, 5, (4, 6), False)])
def test_forward_and_gradients_equal_conv_transpose(cin, cout, side, bias):
    native, fast = _pair(cin, cout, bias)
    h, w = (side, side) if isinstance(side, int) else side
    x = torch.randn(3, cin, h, w, dtype=torch.float64, requires_grad=True)
    assert fast._phase_path(x)
    out_native, out_fast = native(x), fast(x)
    assert out_fast.shape == (3, cout, 2 * h, 2 * w)
    torch.testing.assert_close(out_fast, out_native, rtol=0, atol=1e-12)
    g = torch.randn_like(out_native)
    wrt_native = torch.autograd.grad((out_native * g).sum(), [x, *native.parameters()])
    wrt_fast = torch.autograd.grad((out_fast * g).sum(), [x, *fast.parameters()])
    for a, b in zip(wrt_fast, wrt_native, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_float32_rows_do_not_depend_on_batch_mates():
    _, fast = _pair(16, 1)
    fast = fast.float()
    x = torch.randn(64, 16, 14, 14)
    with torch.no_grad():
        whole = fast(x)
        in_sevens = torch.cat([fast(x[i : i + 7]) for i in range(0, 64, 7)])
    torch.testing.assert_close(in_sevens, whole, rtol=1e-5, atol=1e-5)


def test_vmap_grad_with_shared_and_per_example_weights():
    native, fast = _pair(3, 2)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)

    def input_grads(module: nn.Module) -> torch.Tensor:
        return vmap(grad(lambda xi: module(xi.unsqueeze(0)).pow(2).sum()))(x)

    torch.testing.assert_close(input_grads(fast), input_grads(native), rtol=0, atol=1e-12)
    stacked = {k: v.detach().expand(4, *v.shape) + 0.01 * torch.randn(4, *v.shape, dtype=torch.float64)
               for k, v in native.named_parameters()}

    def weight_grads(module: nn.Module) -> dict[str, torch.Tensor]:
        loss = lambda p, xi: functional_call(module, p, (xi.unsqueeze(0),)).pow(2).sum()  # noqa: E731
        return vmap(grad(loss))(stacked, x)

    fast_grads, native_grads = weight_grads(fast), weight_grads(native)
    for name in native_grads:
        torch.testing.assert_close(fast_grads[name], native_grads[name], rtol=0, atol=1e-12)


def test_other_configurations_fall_back_to_conv_transpose():
    native, fast = _pair(4, 3, output_padding=1)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert not fast._phase_path(x)
    torch.testing.assert_close(fast(x), native(x), rtol=0, atol=0)
