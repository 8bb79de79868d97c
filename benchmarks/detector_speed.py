"""Speed of the VAE-family detectors and of their vectorisation (docs/performance.md, issue 4).

Usage: python benchmarks/detector_speed.py [suites/fmnist.yaml] [--profile cpu] [--n 512] [--loop-n 32] [--repeats 3]

Loads (or trains) the suite's `vae` backbone through the checkpoint cache exactly as `ood-bench run`
does, then, in this one process on the first N in-distribution test images:
  * examples/s of every suite detector on that backbone (`score` in batches, median of --repeats; ROSE's fit
    timed apart, once);
  * likelihood regret, batched vs the one-example-at-a-time loop (deep copy + torch.optim.Adam, batch 1)
    on the first --loop-n images with the same noise: time ratio and max |difference| (asserted small),
    for the suite's settings and for the reference's encoder-copy target;
  * ROSE, per-example gradients by vmap(grad) vs one backward pass per example, each followed by the
    same scoring: time ratio and max |difference| of the scores;
  * the arithmetic of the batched regret (FLOPs per example, achieved GFLOP/s) against a dense matrix
    product's GFLOP/s: the ceiling of any batching of the loop on this machine; with --profile-regret,
    torch.profiler's operator table of one batched regret score.
Run it under the CPU lock with OMP_NUM_THREADS=1; it prints Markdown for docs/performance.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from ood_bench.detectors import Batch, estimators
from ood_bench.detectors import rose as rose_module
from ood_bench.detectors.regret import LikelihoodRegret, regret_reference_loop
from ood_bench.models.training import train_or_load
from ood_bench.registry import registry
from ood_bench.suite.datasets import resolve
from ood_bench.suite.load import build_detector, load_suite

REGRET_TOLERANCE = 1e-2
"""Nats. Batched and looped regret agree exactly in float64 (tests/test_vae_detectors.py); here both run in
float32, where the convolutions of a vmapped and a plain pass round differently on bounds of ~250 nats."""


def batches(images: np.ndarray, fingerprint: str, batch_size: int, seed: int = 0):
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        yield Batch(torch.from_numpy(images[idx]), idx, fingerprint, seed)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def paired_timings(fast, slow, repeats: int):
    """Run ``fast`` and ``slow`` alternately ``repeats`` times: (fast output, slow output, fast s, slow s).

    Times are lists, one per repeat; alternating spreads the machine's drifts over both paths alike.
    """
    t_fast, t_slow = [], []
    for _ in range(repeats):
        out_fast, t = timed(fast)
        t_fast.append(t)
        out_slow, t = timed(slow)
        t_slow.append(t)
    return out_fast, out_slow, t_fast, t_slow


def regret_comparison(det: LikelihoodRegret, batch: Batch, repeats: int):
    """(batched seconds, loop seconds, max |difference|) of the regret of one batch; seconds per repeat."""
    step_noise, iwae_noise = det.noise(batch)
    x = det._model_input(batch)
    batched, loop, t_batched, t_loop = paired_timings(
        lambda: det.score(batch)["regret"],
        lambda: regret_reference_loop(det.backbone_, x, step_noise, iwae_noise, det.target, det.lr,
                                      det.weight_decay).numpy(), repeats)
    return t_batched, t_loop, float(np.abs(batched - loop).max())


def multiply_adds(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of ``module`` on one example ``x`` (batch of 1) in its dense, conv and
    transposed-conv layers: the nominal arithmetic, whatever kernel computes it."""
    total = 0

    def count(m, inputs, out):
        nonlocal total
        if isinstance(m, torch.nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, torch.nn.ConvTranspose2d):
            total += inputs[0].numel() * m.out_channels // m.groups * math.prod(m.kernel_size)
        elif isinstance(m, torch.nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * math.prod(m.kernel_size)

    hooks = [m.register_forward_hook(count) for m in module.modules()]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return total


def matmul_gflops() -> float:
    """Float32 GFLOP/s of a 2048 x 2048 matrix product on this machine and thread count (best of 5)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b))[1] for _ in range(5))
    return 2 * 2048**3 / best / 1e9


def regret_arithmetic(det: LikelihoodRegret, x: torch.Tensor) -> float:
    """FLOPs per example of posterior-target regret: 2 encoder passes, then per decoder row 2S forward passes
    (the two IWAE bounds) and T forward + T input-gradient passes (a backward pass to z costs what the forward
    does: no weight gradients)."""
    model = det.backbone_
    enc = multiply_adds(model.encoder, x[:1])
    dec = multiply_adds(model.decoder, torch.zeros(1, model.latent_dim))
    return 2.0 * (2 * enc + dec * (2 * det.iwae_samples + 2 * det.steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, nargs="?", default=Path("suites/fmnist.yaml"))
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--backbone", default="vae")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--loop-n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--profile-regret", action="store_true",
                        help="also print torch.profiler's operator table of one batched regret score")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timings of each vectorised/loop pair, alternated; the table gives their median")
    parser.add_argument("--checkpoints", type=Path,
                        default=Path(os.environ.get("OOD_BENCH_CHECKPOINTS") or "results/checkpoints"))
    args = parser.parse_args()

    suite, _ = load_suite(args.suite, args.profile)
    data = resolve(suite, download=False)
    test = data.eval_sets[data.id_label]
    images, fp = test.images[: args.n], test.fingerprint
    bspec = suite.backbones[args.backbone]
    trained = train_or_load(bspec.kind, registry("backbones").get(bspec.kind), bspec.params, bspec.train,
                            data.train, data.val, seed=suite.seeds[0], compute="cpu",
                            checkpoint_dir=args.checkpoints)
    model = trained.model
    os.environ.pop("OOD_BENCH_CHECKPOINTS", None)  # time ROSE's fit itself, not a load from the fit cache

    rows: list[tuple[str, str]] = []
    detectors = {}
    for label, spec in suite.detectors.items():
        if spec.backbone != args.backbone:
            continue
        det = build_detector(registry("detectors").get(spec.detector or label), spec.params, label)
        if isinstance(det, rose_module.Rose):
            rose_module._MEMORY.clear()
            computed = rose_module.FITS_COMPUTED
            _, t_fit = timed(lambda det=det: det.fit(model, data.train))
            how = "computed" if computed < rose_module.FITS_COMPUTED else "loaded from the fit cache"
            rows.append((f"`{label}` fit on {det.n_fit} ID training images ({how})", f"{t_fit:.1f} s"))
        else:
            det.fit(model, data.train)
        detectors[label] = det

        def run(det=det):
            estimators.forget(model)
            for b in batches(images, fp, args.batch_size):
                det.score(b)
        t = statistics.median(timed(run)[1] for _ in range(args.repeats))
        rows.append((f"`{label}` ({det.get_params()})", f"{len(images) / t:,.1f} examples/s"))

    first = next(batches(images[: args.loop_n], fp, args.loop_n))
    ratios: list[tuple[str, float, float, float]] = []
    suite_regret = next(d for d in detectors.values() if isinstance(d, LikelihoodRegret))
    t_b, t_l, diff = regret_comparison(suite_regret, first, args.repeats)
    assert diff < REGRET_TOLERANCE, f"batched and looped regret differ by {diff}"
    ratios.append((f"likelihood regret, suite settings ({suite_regret.get_params()})", t_l, t_b, diff))
    profile_table = None
    if args.profile_regret:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            suite_regret.score(first)
        profile_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    bound = None
    if suite_regret.target == "posterior":
        flops = regret_arithmetic(suite_regret, suite_regret._model_input(first)) * args.loop_n
        peak = matmul_gflops()
        bound = (flops / 1e6 / args.loop_n, flops / statistics.median(t_b) / 1e9, peak,
                 statistics.median(t_l) / (flops / peak / 1e9))
    enc = LikelihoodRegret(steps=20, iwae_samples=16, target="encoder").fit(model, None)
    small = next(batches(images[: min(args.loop_n, 16)], fp, args.loop_n))
    t_b, t_l, diff = regret_comparison(enc, small, args.repeats)
    assert diff < REGRET_TOLERANCE, f"batched and looped regret (encoder) differ by {diff}"
    ratios.append((f"likelihood regret, encoder copy ({enc.get_params()}), {len(small.indices)} examples",
                   t_l, t_b, diff))

    rose_det = next(d for d in detectors.values() if isinstance(d, rose_module.Rose))
    x = model.prepare(torch.from_numpy(images), [g for b in batches(images, fp, len(images))
                                                 for g in b.generators("input")])

    def rose_scores(gradients):
        raw = rose_det._layer_scores(rose_det.stats_, gradients(model, x))
        return ((raw - rose_det.stats_["mu"]) / rose_det.stats_["sd"]).max(1).values.numpy()

    vmapped, looped = rose_module.per_example_gradients, rose_module.per_example_gradients_loop
    *_, t_grad_fast, t_grad_slow = paired_timings(lambda: vmapped(model, x), lambda: looped(model, x), args.repeats)
    fast, slow, t_fast, t_slow = paired_timings(lambda: rose_scores(vmapped), lambda: rose_scores(looped), args.repeats)
    diff = float(np.abs(fast - slow).max())
    assert diff < 1e-3 * max(1.0, float(np.abs(slow).max())), f"vmap and loop ROSE scores differ by {diff}"
    ratios.append((f"ROSE per-example encoder-conv gradients only, vmap(grad) vs backward loop, {len(images)} "
                   "examples", t_grad_slow, t_grad_fast, float("nan")))
    ratios.append((f"ROSE `{rose_det.preconditioner}` scores (gradients + preconditioned norms), vmap(grad) vs "
                   f"backward loop, {len(images)} examples", t_slow, t_fast, diff))

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"Backbone `{args.backbone}` ({bspec.kind}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"weights {trained.weights_hash[:12]}), first {len(images)} images of `{data.id_label}` test, "
          f"batch {args.batch_size}; {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} thread(s); commit {rev}.")
    print()
    print("| what | speed |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    print(f"Each pair timed {args.repeats} times, alternately; seconds and speed-up are medians, the range is the "
          "lowest and highest of the per-repeat speed-ups.")
    print()
    print("| comparison | loop s | vectorised s | speed-up (median) | range | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t_loop, t_vec, diff in ratios:
        each = [slow / fast for slow, fast in zip(t_loop, t_vec, strict=True)]
        print(f"| {name} | {statistics.median(t_loop):.2f} | {statistics.median(t_vec):.2f} | "
              f"{statistics.median(each):.1f}x | {min(each):.1f}-{max(each):.1f}x | {diff:.1e} |")
    if bound is not None:
        per_example, achieved, peak, ceiling = bound
        print()
        print(f"Arithmetic of the suite-settings regret: {per_example:.1f} MFLOP per example (multiply-adds of 2 "
              "encoder passes and, per decoder row, 2S forward passes plus T forward and T input-gradient passes). The "
              f"batched path ran at {achieved:.0f} GFLOP/s; a 2048x2048 float32 matrix product runs at {peak:.0f} "
              f"GFLOP/s on the same threads. Even at that rate the batched path would be at most {ceiling:.0f}x "
              "faster than this loop.")
    if profile_table is not None:
        print()
        print(f"Operators of one batched regret score ({args.loop_n} examples), by self CPU time:")
        print()
        print("```")
        print(profile_table.rstrip())
        print("```")


if __name__ == "__main__":
    main()
