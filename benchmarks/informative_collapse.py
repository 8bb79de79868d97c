"""Informative-HVAE variants at the cpu budget: per-layer KL and LLR AUROC (docs/informative-hvae.md).

Usage: python benchmarks/informative_collapse.py suites/fmnist.yaml VARIANT [VARIANT ...] [--n 2000]
       [--epochs 4] [--checkpoints DIR]

Each VARIANT is ``name`` or ``name:key=value,key=value`` with HVAE parameters added to the suite's ``hvae``
backbone (e.g. ``paper:objective=informative`` or ``w03:objective=informative,informative_weight=0.3``);
keys prefixed ``train.`` change the training settings instead (e.g. ``fb:objective=informative,
train.free_bits_hold_fraction=0.6,train.free_bits_end_fraction=0.9``); ``elbo`` alone is the plain
backbone. Every variant trains (or loads from the checkpoint cache) through
``train_or_load`` with the suite's training settings and data, so a variant identical to a suite backbone
reuses its checkpoint. Then ``llr_ada`` (S = 8) scores the first N FashionMNIST test images (the suite's
seeded subset) and N MNIST images. Prints one Markdown row per variant: per-layer KL on the validation
split, validation ELBO, training throughput and AUROC (MNIST positive) of llr_ada, llr_k1, llr_k2.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch
import yaml
from ood_bench.detectors import Batch
from ood_bench.detectors.llr_ada import AdaptiveLikelihoodRatio
from ood_bench.metrics import compute_metrics
from ood_bench.models.training import train_or_load
from ood_bench.registry import registry
from ood_bench.suite.datasets import resolve
from ood_bench.suite.load import load_suite


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    return name, params


def scores(detector, images, n, batch_size=250):
    parts = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        parts.append(detector.score(Batch(torch.from_numpy(images.images[idx]), idx, images.fingerprint, 0)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=None, help="override the suite's epochs")
    parser.add_argument("--checkpoints", type=Path,
                        default=Path(os.environ.get("OOD_BENCH_CHECKPOINTS", "results/checkpoints")))
    args = parser.parse_args()

    suite, _ = load_suite(args.suite, "cpu")
    data = resolve(suite, download=False)
    base = suite.backbones["hvae"]
    train = dict(base.train) | ({"epochs": args.epochs} if args.epochs else {})
    id_set, ood_set = data.eval_sets[data.id_label], data.eval_sets["mnist"]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"suite {args.suite} backbone `hvae` + variant parameters, train {train}; {args.n} {data.id_label} test "
          f"vs {args.n} mnist; {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} thread(s); commit {rev}")
    print()
    print("| variant | parameters | epochs | img/s | val ELBO (nats) | KL z1 / z2 / z3 (nats) | AUROC llr_ada | "
          "llr_k1 | llr_k2 |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for text in args.variants:
        name, extra = parse_variant(text)
        params = dict(base.params) | {k: v for k, v in extra.items() if not k.startswith("train.")}
        variant_train = train | {k[6:]: v for k, v in extra.items() if k.startswith("train.")}
        trained = train_or_load(base.kind, registry("backbones").get(base.kind), params, variant_train, data.train,
                                data.val, seed=suite.seeds[0], compute="cpu", checkpoint_dir=args.checkpoints)
        meta = trained.metadata
        det = AdaptiveLikelihoodRatio(iwae_samples=8).fit(trained.model, data.train)
        s_id, s_ood = scores(det, id_set, args.n), scores(det, ood_set, args.n)
        auroc = {k: compute_metrics(s_id[k], s_ood[k], ["auroc"])["auroc"] for k in s_id}
        kl = " / ".join(f"{v:.1f}" for v in meta["best_val_kl"])
        print(f"| {name} | {extra or '-'} | {meta['epochs_completed']:.0f} | {meta['images_per_s']:.0f} | "
              f"{meta['best_val_elbo']:.1f} | {kl} | {auroc['llr_ada']:.3f} | {auroc['llr_k1']:.3f} | "
              f"{auroc['llr_k2']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
