"""GPU-hour estimate of a suite's `paper` profile by FLOP count (docs/scaling.md).

Usage: python benchmarks/paper_budget.py suites/fmnist.yaml [--profile paper] [--tflops 67] [--utilisation 0.3]

For every train unit of the plan, torch's FlopCounterMode counts one training step (loss + backward, auxiliary
batch included) of the profile's network at batch 8, scaled to the profile's batch size, times the number of
steps (epochs x batches per epoch). For every evaluation, it counts one forward pass of the bound per example
and multiplies by the passes the detector makes (table PASSES: S importance samples per bound, L bounds for
the L>k family, regret's optimisation steps at ~3 passes each, ROSE's backward at ~3 passes). Optimiser
updates, data movement and Python overhead are not counted. GPU-hours = FLOPs / (peak x utilisation); the
defaults are an H200's fp32 (non-tensor-core) peak of 67 TFLOP/s at 30 % utilisation, an assumption for these
small convolutional networks, not a measurement.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from ood_bench.compute import resolve_compute
from ood_bench.data import data_status
from ood_bench.execution.plan import build_detector_instance, build_plan
from ood_bench.models.train_config import TrainConfig
from ood_bench.numerics import example_generators
from ood_bench.registry import registry
from ood_bench.suite.datasets import resolve
from ood_bench.suite.load import load_suite
from ood_bench.suite.schema import DatasetRef
from torch.utils.flop_counter import FlopCounterMode

PROBE = 8


def passes(detector, layers: int) -> float:
    """Forward passes of the bound per example a detector makes (its shared estimates counted once)."""
    p = detector.get_params()
    s = p.get("iwae_samples", 1)
    name = detector.name
    if name in ("llr", "llr_ada"):
        return s * layers
    if name == "waic":
        return s * p["members"]
    if name == "likelihood_regret":
        return 3 * p["steps"] + s
    if name == "rose":
        return 3.0
    return float(s)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--tflops", type=float, default=67.0)
    parser.add_argument("--utilisation", type=float, default=0.3)
    args = parser.parse_args()
    suite, _ = load_suite(args.suite, args.profile)
    available = {st.name: st.available for st in data_status()}
    for name, spec in suite.backbones.items():
        if spec.auxiliary is not None and not available.get(spec.auxiliary.dataset, False):
            # FLOPs depend on the auxiliary batch's shape only, which is the training shape whatever the set
            print(f"note: {name}'s auxiliary set {spec.auxiliary.dataset} is not on this machine; counting its "
                  f"steps with omniglot 'train' images (same shape after conversion, same FLOPs)")
            spec.auxiliary = DatasetRef(dataset="omniglot", split="train")
    data = resolve(suite, download=False)
    plan = build_plan(suite, data, resolve_compute("cpu"), Path("/nonexistent"))
    x_u8 = torch.from_numpy(data.train.images[:PROBE])
    gens = example_generators(0, data.train.fingerprint, range(PROBE), "input")
    models, train_total, rows = {}, 0.0, []
    for unit in plan.train.values():
        spec = suite.backbones[unit.backbone]
        cls = registry("backbones").get(spec.kind)
        torch.manual_seed(0)
        model = cls.from_params(spec.params, data.train.shape)
        x = model.prepare(x_u8, gens)
        model.train()
        model.data_dependent_init(x)
        aux = data.auxiliary.get(unit.backbone)
        kwargs = {"aux": model.prepare(torch.from_numpy(aux.images[:PROBE]), None)} if aux is not None else {}
        step = flops(lambda m=model, x=x, kw=kwargs: m.training_loss(x, 1.0, 0.0, **kw)[0].backward())
        config = TrainConfig.validate(spec.train)
        steps = config.epochs * math.ceil(len(data.train) / config.batch_size)
        total = step / PROBE * config.batch_size * steps
        train_total += total
        models[unit.id] = model.eval()
        rows.append((unit.id, step / PROBE, steps, total))
    score_total = 0.0
    examples = sum(len(s) for s in data.eval_sets.values())
    for (label, _seed), members in plan.members.items():
        model = models[members[0]]
        x = model.prepare(x_u8, gens)
        with torch.no_grad():
            fwd = flops(lambda m=model, x=x: m.bound(x, m.draw_noise(example_generators(0, "p", range(PROBE),
                                                                                          "n"), 1), 0))
        detector = build_detector_instance(suite, label)
        n = passes(detector, getattr(model, "num_latent_layers", 1))
        score_total += fwd / PROBE * n * examples
    rate = args.tflops * 1e12 * args.utilisation
    print(f"suite {suite.name}, profile {args.profile}: {len(plan.train)} train units, {len(plan.members)} "
          f"evaluations over {examples} examples")
    print("| train unit | GFLOP per example-step | steps | PFLOP |")
    print("|---|---|---|---|")
    for uid, per_example, steps, total in rows:
        print(f"| {uid} | {per_example / 1e9:.3f} | {steps:,} | {total / 1e15:.1f} |")
    print(f"training: {train_total / 1e15:.0f} PFLOP = {train_total / rate / 3600:.1f} GPU-hours; "
          f"scoring: {score_total / 1e15:.0f} PFLOP = {score_total / rate / 3600:.1f} GPU-hours "
          f"(at {args.tflops:g} TFLOP/s x {args.utilisation:g})")


if __name__ == "__main__":
    main()
