"""Cost of one training step with the informative objective vs the plain ELBO (docs/performance.md).

Usage: python benchmarks/training_step_cost.py suites/fmnist.yaml [--profile cpu] [--steps 20] [--repeats 3]
       [--plain hvae] [--informative hvae_informative]

Builds the two suite backbones (untrained, data-dependent init on the first batch, as training does) and
times ``training_loss`` + backward + Adam step on real training batches of the suite's batch size, same
batches for both, best of --repeats. Prints seconds per step, images/s and the ratio informative / ELBO.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
from ood_bench.registry import registry
from ood_bench.suite.datasets import resolve
from ood_bench.suite.load import load_suite


def step_time(model, batches, repeats: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def one(x):
        loss, _ = model.training_loss(x, 1.0, 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    one(batches[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in batches:
            one(x)
        best = min(best, (time.perf_counter() - t0) / len(batches))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain", default="hvae")
    parser.add_argument("--informative", default="hvae_informative")
    args = parser.parse_args()

    suite, _ = load_suite(args.suite, args.profile)
    data = resolve(suite, download=False)
    rows = []
    for label in (args.plain, args.informative):
        spec = suite.backbones[label]
        bs = int(spec.train.get("batch_size", 128))
        torch.manual_seed(0)
        model = registry("backbones").get(spec.kind).from_params(spec.params, data.train.shape)
        images = torch.from_numpy(data.train.images[: bs * args.steps])
        batches = [model.prepare(images[i : i + bs], None) for i in range(0, len(images), bs)]
        model.data_dependent_init(batches[0])
        rows.append((label, spec.params, bs, step_time(model, batches, args.repeats)))

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"suite {args.suite} profile {args.profile}, {args.steps} steps x best of {args.repeats}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} thread(s); commit {rev}")
    print()
    print("| backbone | objective | s / step | img/s |")
    print("|---|---|---:|---:|")
    for label, params, bs, t in rows:
        print(f"| `{label}` | {params.get('objective', 'elbo')} | {t:.3f} | {bs / t:,.0f} |")
    print()
    print(f"ratio informative / ELBO: {rows[1][3] / rows[0][3]:.2f}x")


if __name__ == "__main__":
    main()
