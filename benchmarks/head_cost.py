"""Training-step and forward cost of the VAE's likelihood heads at the cpu-profile width of suites/fmnist.yaml.

Usage: python benchmarks/head_cost.py [--batch 256] [--steps 5] [--repeats 3]

Prints, per head (bernoulli, dlm with 10 and with 5 components, categorical), the median seconds of one
Adam step and of one forward bound over ``--repeats`` alternated rounds, and each as a ratio to the DLM
head's (measured in the same rounds, so the machine's drift cancels). This is why the cpu profile's 8-bit
VAE uses the 5-component DLM head for its NLL, regret and IC rows and trains the categorical head (ROSE's
backbone) for one epoch only; the paper profile uses the categorical head throughout (docs/reproduction.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from ood_bench.models.vae import ConvVAE

HEADS = {"bernoulli": {"likelihood": "bernoulli"}, "dlm": {"likelihood": "dlm"},
         "dlm5": {"likelihood": "dlm", "dlm_components": 5}, "categorical": {"likelihood": "categorical"}}
PARAMS = {"channels": [16, 32], "hidden": 128, "latent_dim": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 1, 28, 28), dtype=torch.uint8)
    models = {h: ConvVAE.from_params({**PARAMS, **extra}, (1, 28, 28)) for h, extra in HEADS.items()}
    optims = {h: torch.optim.Adam(m.parameters(), 1e-3) for h, m in models.items()}
    step_s: dict[str, list[float]] = {h: [] for h in HEADS}
    fwd_s: dict[str, list[float]] = {h: [] for h in HEADS}
    for _ in range(args.repeats):
        for head, model in models.items():
            x = model.prepare(images, None)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss, _ = model.training_loss(x, 1.0, 0.0)
                optims[head].zero_grad()
                loss.backward()
                optims[head].step()
            step_s[head].append((time.perf_counter() - t0) / args.steps)
            t0 = time.perf_counter()
            with torch.no_grad():
                for _ in range(args.steps):
                    model.bound(x, [torch.randn(args.batch, PARAMS["latent_dim"])])
            fwd_s[head].append((time.perf_counter() - t0) / args.steps)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, medians of {args.repeats} rounds")
    print("| head | training step (s) | vs dlm | forward bound (s) | vs dlm |")
    print("|---|---|---|---|---|")
    for head in HEADS:
        ratios = [a / b for a, b in zip(step_s[head], step_s["dlm"], strict=True)]
        f_ratios = [a / b for a, b in zip(fwd_s[head], fwd_s["dlm"], strict=True)]
        print(f"| {head} | {statistics.median(step_s[head]):.3f} | {statistics.median(ratios):.2f}x | "
              f"{statistics.median(fwd_s[head]):.3f} | {statistics.median(f_ratios):.2f}x |")


if __name__ == "__main__":
    main()
