"""UpConv2d must be nn.ConvTranspose2d with other CPU kernels: same outputs, gradients and state dict."""

import pytest
import torch
from ood_bench.models import layers
from ood_bench.models.layers import PHASE_MAX_OUT_CHANNELS, PHASE_MIN_ROWS, UpConv2d
from torch import nn
from torch.func import functional_call, grad, vmap


@pytest.fixture
def phase_calls(monkeypatch):
    """How many times the phase kernel ran (so a test knows it did not silently use the fallback)."""
    calls = []
    original = layers.phase_conv_transpose

    def counted(*args):
        calls.append(args[0].shape[0])
        return original(*args)

    monkeypatch.setattr(layers, "phase_conv_transpose", counted)
    return calls


def _pair(cin: int, cout: int, bias: bool = True, **kw) -> tuple[nn.ConvTranspose2d, UpConv2d]:
    torch.manual_seed(0)
    native = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias, **kw).double()
    fast = UpConv2d(cin, cout, 4, stride=2, padding=1, bias=bias, **kw).double()
    fast.load_state_dict(native.state_dict())
    return native, fast


@pytest.mark.parametrize(("cin", "cout", "side", "bias"), [
    (16, 1, 14, True), (8, PHASE_MAX_OUT_CHANNELS, (4, 6), False),  # phase convolution
    (8, PHASE_MAX_OUT_CHANNELS + 1, (4, 6), True), (8, 16, 5, False),  # PyTorch's kernel, channels-last input
])
def test_forward_and_gradients_equal_conv_transpose(cin, cout, side, bias, phase_calls):
    native, fast = _pair(cin, cout, bias)
    h, w = (side, side) if isinstance(side, int) else side
    x = torch.randn(PHASE_MIN_ROWS, cin, h, w, dtype=torch.float64, requires_grad=True)
    out_native, out_fast = native(x), fast(x)
    assert phase_calls == ([PHASE_MIN_ROWS] if cout <= PHASE_MAX_OUT_CHANNELS else [])
    assert out_fast.shape == (PHASE_MIN_ROWS, cout, 2 * h, 2 * w)
    torch.testing.assert_close(out_fast, out_native, rtol=0, atol=1e-12)
    g = torch.randn_like(out_native)
    wrt_native = torch.autograd.grad((out_native * g).sum(), [x, *native.parameters()])
    wrt_fast = torch.autograd.grad((out_fast * g).sum(), [x, *fast.parameters()])
    for a, b in zip(wrt_fast, wrt_native, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_vmap_grad_with_shared_and_per_example_weights(phase_calls):
    native, fast = _pair(3, 2)
    groups = torch.randn(2, PHASE_MIN_ROWS, 3, 5, 5, dtype=torch.float64)

    def group_grads(module: nn.Module) -> torch.Tensor:
        return vmap(grad(lambda xi: module(xi).pow(2).sum()))(groups)

    torch.testing.assert_close(group_grads(fast), group_grads(native), rtol=0, atol=1e-12)
    assert phase_calls == [2 * PHASE_MIN_ROWS]  # the vmapped axis was folded into one batch
    # Per-group weights (as regret's per-example encoder copies): the vmap rule hands them to PyTorch's kernel.
    stacked = {k: v.detach().expand(len(groups), *v.shape) + 0.01 * torch.randn(len(groups), *v.shape,
                                                                                dtype=torch.float64)
               for k, v in native.named_parameters()}

    def weight_grads(module: nn.Module) -> dict[str, torch.Tensor]:
        loss = lambda p, xi: functional_call(module, p, (xi,)).pow(2).sum()  # noqa: E731
        return vmap(grad(loss))(stacked, groups)

    fast_grads, native_grads = weight_grads(fast), weight_grads(native)
    for name in native_grads:
        torch.testing.assert_close(fast_grads[name], native_grads[name], rtol=0, atol=1e-12)
    assert phase_calls == [2 * PHASE_MIN_ROWS]


@pytest.mark.parametrize("rows", [1, PHASE_MIN_ROWS])
def test_vmap_grad_on_the_channels_last_path(rows, phase_calls):
    # Wider than the phase path: PyTorch's kernel on channels-last input, whose backward runs under vmap here.
    native, fast = _pair(3, PHASE_MAX_OUT_CHANNELS + 4)
    groups = torch.randn(3, rows, 3, 5, 5, dtype=torch.float64)

    def group_grads(module: nn.Module) -> torch.Tensor:
        return vmap(grad(lambda xi: module(xi).pow(2).sum()))(groups)

    torch.testing.assert_close(group_grads(fast), group_grads(native), rtol=0, atol=1e-12)
    assert phase_calls == []


def test_float32_rows_do_not_depend_on_batch_mates():
    _, fast = _pair(16, 1)
    fast = fast.float()
    x = torch.randn(3 * PHASE_MIN_ROWS, 16, 14, 14)
    with torch.no_grad():
        whole = fast(x)
        in_thirds = torch.cat([fast(part) for part in x.split(PHASE_MIN_ROWS)])
    torch.testing.assert_close(in_thirds, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kw", "rows", "cout", "exact"), [
    ({"output_padding": 1}, PHASE_MIN_ROWS, 3, True),  # another configuration: nn.ConvTranspose2d's forward
    ({}, PHASE_MIN_ROWS - 1, 3, False), ({}, 1, 3, False),  # small batches: PyTorch's kernel, channels-last input
])
def test_other_configurations_and_small_batches_skip_the_phase_convolution(kw, rows, cout, exact, phase_calls):
    native, fast = _pair(4, cout, **kw)
    x = torch.randn(rows, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    out = fast(x)
    torch.testing.assert_close(out, native(x), rtol=0, atol=0 if exact else 1e-12)
    assert out.is_contiguous() and phase_calls == []
    grad_fast, grad_native = (torch.autograd.grad(m(x).pow(2).sum(), x)[0] for m in (fast, native))
    torch.testing.assert_close(grad_fast, grad_native, rtol=0, atol=0 if exact else 1e-12)


def test_backbones_build_every_transposed_convolution_as_upconv():
    from ood_bench.models.hvae import HierarchicalVAE
    from ood_bench.models.vae import ConvVAE

    vae = ConvVAE.from_params({"channels": [4, 8], "hidden": 16, "latent_dim": 2}, (1, 28, 28))
    hvae = HierarchicalVAE.from_params({"channels": 4, "blocks_per_stage": 0, "dense_width": 8}, (1, 28, 28))
    for model in (vae, hvae):
        transposed = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert transposed and all(isinstance(m, UpConv2d) for m in transposed)


def test_channels_last_output_is_the_same_map_in_another_layout(phase_calls):
    native, _ = _pair(8, 4)
    fast = UpConv2d(8, 4, 4, stride=2, padding=1, channels_last_output=True).double()
    fast.load_state_dict(native.state_dict())
    x = torch.randn(PHASE_MIN_ROWS, 8, 6, 6, dtype=torch.float64)
    out = fast(x)
    assert phase_calls == [PHASE_MIN_ROWS]
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, native(x), rtol=0, atol=1e-12)


def test_the_vae_keeps_channels_last_only_between_transposed_convolutions():
    from ood_bench.models.vae import ConvVAE

    gray = ConvVAE.from_params({"channels": [4, 8], "hidden": 16, "latent_dim": 2}, (1, 28, 28))
    assert [m.channels_last_output for m in gray.decoder if isinstance(m, UpConv2d)] == [True, False]
    colour = ConvVAE.from_params({"channels": [8, 16, 32], "hidden": 16, "latent_dim": 2}, (3, 32, 32))
    # 32 -> 16 -> 8 channels, then the logistic-mixture head's layer, whose output the head reads NCHW
    assert [m.channels_last_output for m in colour.decoder if isinstance(m, UpConv2d)] == [True, True, False]


def test_feature_map_linear_is_linear_then_unflatten_with_a_channels_last_output():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 3 * 4 * 5), nn.Unflatten(1, (3, 4, 5))).double()
    fast = layers.FeatureMapLinear(6, (3, 4, 5)).double()
    fast.load_state_dict(plain[0].state_dict())  # the same parameters under the same names
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    out = fast(x)
    assert out.shape == (7, 3, 4, 5) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, plain(x), rtol=0, atol=1e-12)
    g = torch.randn(7, 3, 4, 5, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((out * g).sum(), [x, *fast.parameters()]),
                    torch.autograd.grad((plain(x) * g).sum(), [x, *plain.parameters()]), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # Frozen, the permuted weight is cached; an in-place update (an optimiser step, a checkpoint load) renews it.
    with torch.no_grad():
        fast(x)
        fast.weight.mul_(2.0)
        plain[0].weight.mul_(2.0)
        torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=1e-12)
    # A cache filled in inference mode (scoring) still serves a frozen layer under autograd (likelihood regret).
    frozen = layers.FeatureMapLinear(6, (3, 4, 5)).double().requires_grad_(False)
    frozen.load_state_dict(plain[0].state_dict())
    with torch.inference_mode():
        frozen(x)
    (grad_x,) = torch.autograd.grad((frozen(x) * g).sum(), x)
    torch.testing.assert_close(grad_x, torch.autograd.grad((plain(x) * g).sum(), x)[0], rtol=0, atol=1e-12)


def test_the_vae_state_dict_keys_are_those_of_linear_and_unflatten():
    from ood_bench.models.vae import ConvVAE

    vae = ConvVAE.from_params({"channels": [4, 8], "hidden": 16, "latent_dim": 2}, (1, 28, 28))
    assert [k for k in vae.state_dict() if k.startswith("decoder.")] == [
        "decoder.0.weight", "decoder.0.bias", "decoder.2.weight", "decoder.2.bias",
        "decoder.5.weight", "decoder.5.bias", "decoder.7.weight", "decoder.7.bias"]
