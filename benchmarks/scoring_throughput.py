"""Scoring throughput of the likelihood-family detectors on a suite's backbone (docs/performance.md).

Usage: python benchmarks/scoring_throughput.py suites/fmnist.yaml [--profile cpu] [--n 2048]
       [--batch-size 256] [--repeats 3] [--backbone LABEL]

Loads (or trains) the suite's backbone through the checkpoint cache exactly as `ood-bench run` does,
then times on the first N examples of the in-distribution test set:
  * one plain forward pass of the backbone (inference + generative pass, one posterior sample);
  * each detector's `score`, with its memo cleared so it pays for every estimate it needs;
  * `llr` right after `likelihood`, as inside a suite that runs both (shared ELBO and IWAE).
Reports examples/s (best of --repeats) and each detector's cost as a multiple of the forward pass.
``--backbone`` times the detectors of that suite backbone (default: the first detector's). A backbone
trained on auxiliary data gets it here as in `ood-bench run` (same checkpoint).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from ood_bench.detectors import Batch, estimators
from ood_bench.models.training import train_or_load
from ood_bench.registry import registry
from ood_bench.suite.datasets import resolve
from ood_bench.suite.load import build_detector, load_suite


def batches(images, batch_size, seed=0):
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        yield Batch(torch.from_numpy(images.images[idx]), idx, images.fingerprint, seed)


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", type=Path, default=Path("results/checkpoints"))
    parser.add_argument("--backbone", default=None, help="suite backbone label (default: the first detector's)")
    args = parser.parse_args()

    suite, _ = load_suite(args.suite, args.profile)
    data = resolve(suite, download=False)
    images = data.eval_sets[data.id_label]
    images = type(images)(images.name, images.images[: args.n], images.fingerprint)
    spec_by_detector = {label: spec for label, spec in suite.detectors.items()}
    backbone_label = args.backbone or next(iter(spec_by_detector.values())).backbone
    bspec = suite.backbones[backbone_label]
    trained = train_or_load(bspec.kind, registry("backbones").get(bspec.kind), bspec.params, bspec.train,
                            data.train, data.val, seed=suite.seeds[0], compute="cpu",
                            checkpoint_dir=args.checkpoints, aux_set=data.auxiliary.get(backbone_label))
    model = trained.model

    @torch.inference_mode()
    def forward():
        for b in batches(images, args.batch_size):
            x = model.prepare(b.images, b.generators("input"))
            model.bound(x, model.draw_noise(b.generators("elbo"), 1), k=0)

    detectors = {}
    for label, spec in spec_by_detector.items():
        if spec.backbone != backbone_label:
            continue
        cls = registry("detectors").get(spec.detector or label)
        detector = build_detector(cls, spec.params, label)
        if detector.seed_variants() > 1:
            print(f"(not timed: `{label}` is an ensemble of {detector.seed_variants()} seed variants)")
            continue
        detectors[label] = detector.fit(model, data.train)

    def score(det, clear=True):
        def run():
            if clear:
                estimators.forget(model)
            for b in batches(images, args.batch_size):
                det.score(b)
        return run

    t_fwd = best_time(forward, args.repeats)
    rows = [("plain forward pass (1 sample)", t_fwd)]
    for label, det in detectors.items():
        rows.append((f"`{label}` ({det.get_params()})", best_time(score(det), args.repeats)))
    if "likelihood" in detectors and "llr" in detectors:
        def both():
            estimators.forget(model)
            for b in batches(images, args.batch_size):
                detectors["likelihood"].score(b)
                detectors["llr"].score(b)
        rows.append(("`likelihood` + `llr` together (shared estimates)", best_time(both, args.repeats)))

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"Backbone `{backbone_label}` ({bspec.kind}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"weights {trained.weights_hash[:12]}), {len(images)} examples of `{data.id_label}`, batch "
          f"{args.batch_size}, best of {args.repeats}; {platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads; commit {rev}.")
    print()
    print("| what | examples/s | cost vs one forward pass |")
    print("|---|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {len(images) / t:,.0f} | {t / t_fwd:.1f}x |")


if __name__ == "__main__":
    main()
