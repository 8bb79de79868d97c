"""Forward time of the decoders' transposed convolutions: PyTorch's kernel vs UpConv2d's faster CPU paths.

Usage: python benchmarks/upconv_speed.py [suites/fmnist.yaml ...] [--profile cpu] [--rows 1 16 32 256]

For every backbone of each suite (built untrained, with the suite's input shape), finds each 4x4 / stride-2
transposed convolution (an ``UpConv2d``, models/layers.py) and its input shape, then
times its forward pass at each row count, median of --repeats, three ways: ``F.conv_transpose2d`` (PyTorch's
CPU kernel) on NCHW input, the same on channels-last input, and ``phase_conv_transpose`` (one 2x2 convolution +
interleave). Then one whole forward pass (``bound``, one sample) of each backbone at --model-rows rows, as built
and with its UpConv2d and FeatureMapLinear layers switched back to plain PyTorch layers. Each pair is timed
alternately; outputs are checked equal (float32 tolerance).
Prints Markdown for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from detector_speed import paired_timings
from ood_bench.models.layers import (
    PHASE_MAX_OUT_CHANNELS,
    PHASE_MIN_ROWS,
    FeatureMapLinear,
    UpConv2d,
    phase_conv_transpose,
)
from ood_bench.registry import registry
from ood_bench.suite.datasets import resolve
from ood_bench.suite.load import load_suite
from torch import nn


def paired_ms(first, second, repeats: int) -> tuple[float, float, float]:
    """Median ms of ``first`` and of ``second`` (one warm-up call each, then timed alternately) and the median of
    the per-repeat ratios first / second."""
    first(), second()
    *_, t_first, t_second = paired_timings(first, second, repeats)
    ratios = [a / b for a, b in zip(t_first, t_second, strict=True)]
    return 1000 * statistics.median(t_first), 1000 * statistics.median(t_second), statistics.median(ratios)


@contextmanager
def pytorch_kernel(model: nn.Module):
    """Inside, every UpConv2d of ``model`` runs nn.ConvTranspose2d's forward and every FeatureMapLinear runs
    nn.Linear + nn.Unflatten (NCHW): the model as plain PyTorch layers would compute it."""
    layers = [m for m in model.modules() if isinstance(m, UpConv2d)]
    dense = [m for m in model.modules() if isinstance(m, FeatureMapLinear)]
    for m in layers:
        m.__class__ = nn.ConvTranspose2d
    for m in dense:
        m.forward = lambda x, m=m: F.linear(x, m.weight, m.bias).view(x.shape[0], *m.shape)
    try:
        yield
    finally:
        for m in layers:
            m.__class__ = UpConv2d
        for m in dense:
            del m.forward


def transposed_convs(model: nn.Module, x: torch.Tensor,
                     noise: list[torch.Tensor]) -> list[tuple[str, nn.Module, tuple]]:
    """(name, layer, input shape without the batch axis) of every 4x4 / stride-2 transposed convolution that one
    forward pass runs, UpConv2d or not."""
    found: list[tuple[str, nn.Module, tuple]] = []
    hooks = [m.register_forward_hook(lambda m, i, _o, n=n: found.append((n, m, tuple(i[0].shape[1:]))))
             for n, m in model.named_modules()
             if isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (4, 4) and m.stride == (2, 2)]
    with torch.no_grad():
        model.bound(x, noise)
    for h in hooks:
        h.remove()
    return found


@torch.no_grad()
def time_layer(layer: nn.Module, in_shape: tuple, rows: int, repeats: int) -> tuple[float, ...]:
    """Forward ms of one layer on ``rows`` random inputs: PyTorch's kernel on NCHW input, PyTorch's kernel on
    channels-last input, the phase convolution; then the speed-ups of the last two over the first."""
    x = torch.randn(rows, *in_shape)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    native = lambda: F.conv_transpose2d(x, layer.weight, layer.bias, stride=2, padding=1)  # noqa: E731
    native_cl = lambda: F.conv_transpose2d(x_cl, layer.weight, layer.bias, stride=2, padding=1)  # noqa: E731
    phase = lambda: phase_conv_transpose(x_cl, layer.weight, layer.bias)  # noqa: E731
    torch.testing.assert_close(phase(), native(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(native_cl(), native(), rtol=1e-4, atol=1e-4)
    t_native, t_cl, cl_ratio = paired_ms(native, native_cl, repeats)
    _, t_phase, phase_ratio = paired_ms(native, phase, repeats)
    return t_native, t_cl, t_phase, cl_ratio, phase_ratio


@torch.no_grad()
def time_model(model: nn.Module, x: torch.Tensor, noise: list[torch.Tensor],
               repeats: int) -> tuple[float, float, float]:
    """(ms with every UpConv2d on PyTorch's kernel, ms as built, speed-up) of one ``bound`` pass."""
    def on_pytorch_kernel():
        with pytorch_kernel(model):
            return model.bound(x, noise)

    torch.testing.assert_close(on_pytorch_kernel().bound, model.bound(x, noise).bound, rtol=1e-4, atol=1e-2)
    return paired_ms(on_pytorch_kernel, lambda: model.bound(x, noise), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", type=Path, nargs="*",
                        default=[Path("suites/fmnist.yaml"), Path("suites/cifar10.yaml")])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 32, 256])
    parser.add_argument("--model-rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--narrow", type=int, nargs="*", default=[2, 4, 8],
                        help="also time synthetic 16 -> N channel layers at 14x14 (where the phase path stops paying)")
    args = parser.parse_args()
    torch.manual_seed(0)

    layer_rows, model_rows, seen = [], [], set()
    for cout in args.narrow:
        layer = UpConv2d(16, cout, 4, stride=2, padding=1)
        for rows in args.rows:
            layer_rows.append((f"synthetic (phase convolution up to {PHASE_MAX_OUT_CHANNELS} channels)",
                               f"16->{cout}, 14x14 -> 28x28", rows,
                               *time_layer(layer, (16, 14, 14), rows, args.repeats)))
    for path in args.suites:
        suite, _ = load_suite(path, args.profile)
        shape = resolve(suite, download=False).train.shape
        for label, spec in suite.backbones.items():
            model = registry("backbones").get(spec.kind).from_params(spec.params, shape).eval()
            x = torch.rand(args.model_rows, *shape)
            noise = [torch.randn(args.model_rows, *s) for s in model.latent_shapes()]
            for name, layer, in_shape in transposed_convs(model, x[:2], [n[:2] for n in noise]):
                key = (layer.in_channels, layer.out_channels, in_shape)
                if key in seen:
                    continue
                seen.add(key)
                phase = (isinstance(layer, UpConv2d) and layer.fast_capable
                         and layer.out_channels <= PHASE_MAX_OUT_CHANNELS)
                role = (f"phase convolution at >= {PHASE_MIN_ROWS} rows" if phase
                        else "PyTorch's kernel, channels-last input")
                for rows in args.rows:
                    layer_rows.append((f"{path.stem} `{label}` {name} ({role})",
                                       f"{layer.in_channels}->{layer.out_channels}, {in_shape[1]}x{in_shape[2]} -> "
                                       f"{2 * in_shape[1]}x{2 * in_shape[2]}", rows,
                                       *time_layer(layer, in_shape, rows, args.repeats)))
            if any(isinstance(m, UpConv2d) for m in model.modules()):
                model_rows.append((f"{path.stem} `{label}` ({spec.kind})", args.model_rows,
                                   *time_model(model, x, noise, args.repeats)))

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
          f"thread(s); profile `{args.profile}`; each pair timed alternately {args.repeats} times, medians (the "
          f"speed-up is the median of the per-repeat ratios); commit {rev}.")
    print()
    print("| layer | shape | rows | PyTorch kernel ms | same, channels-last input ms | phase convolution ms "
          "| speed-up channels-last | speed-up phase |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for where, shape, rows, t_native, t_cl, t_phase, cl_ratio, phase_ratio in layer_rows:
        print(f"| {where} | {shape} | {rows} | {t_native:.3f} | {t_cl:.3f} | {t_phase:.3f} | {cl_ratio:.2f}x "
              f"| {phase_ratio:.2f}x |")
    print()
    print("| one forward pass (`bound`, 1 sample) | rows | plain PyTorch layers, ms | as built, ms "
          "| speed-up |")
    print("|---|---:|---:|---:|---:|")
    for where, rows, t_native, t_phase, ratio in model_rows:
        print(f"| {where} | {rows} | {t_native:.1f} | {t_phase:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
