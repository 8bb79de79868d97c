"""Which cpu-budget HVAE makes LLR>1 work: train one configuration, score FashionMNIST vs MNIST (full test sets).

Usage: python benchmarks/hvae_architecture.py '<backbone params JSON>' [--train '<train JSON>'] [--seed 0]
       [--samples 16] [--checkpoints DIR]

Trains (or loads, through the checkpoint cache) an HVAE on the FashionMNIST training split of
suites/fmnist.yaml (5,000 images carved out for validation, seed 0), then scores all 10,000
FashionMNIST test images against all 10,000 MNIST test images with the estimators of the `likelihood`
and `llr` detectors (one fixed binarisation per example, per-example seeded noise). Prints the
per-layer validation KL and AUROCs with MNIST as the positive class. docs/reproduction.md lists the
configurations compared with it and its output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ood_bench.data.loading import load_split
from ood_bench.data.sampling import split_validation
from ood_bench.detectors import Batch, estimators
from ood_bench.models.hvae import HierarchicalVAE
from ood_bench.models.training import train_or_load
from ood_bench.numerics import bits_per_dim
from rich.console import Console
from sklearn.metrics import roc_auc_score

CPU_TRAIN = {"epochs": 4, "batch_size": 128, "lr": 1e-3, "lr_min": 1e-4, "grad_clip": 1000}


def scores(model: HierarchicalVAE, images, samples: int, batch_size: int = 250) -> dict[str, np.ndarray]:
    """ELBO, IWAE and L^{>k} (k = 1..L-1) in nats per example, as the detectors compute them."""
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        batch = Batch(torch.from_numpy(images.images[idx]), idx, images.fingerprint, 0)
        x = model.prepare(batch.images, batch.generators("input"))
        parts = {"elbo": estimators.elbo(model, x, batch.generators("elbo")),
                 "iwae": estimators.iwae(model, x, batch.generators("iwae"), samples)}
        for k in range(1, model.num_latent_layers):
            parts[f"l{k}"] = estimators.bound_above(model, x, batch.generators(f"lk{k}"), k)[0]
        for name, value in parts.items():
            out.setdefault(name, []).append(value.double().cpu())
    return {name: torch.cat(values).numpy() for name, values in out.items()}


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    return float(roc_auc_score(labels, np.r_[id_scores, ood_scores]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", type=json.loads)
    parser.add_argument("--train", type=json.loads, default=CPU_TRAIN)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--checkpoints", type=Path, default=Path("results/checkpoints"))
    args = parser.parse_args()

    train, val = split_validation(load_split("fashionmnist", "train"), 5000, 0)
    test, mnist = load_split("fashionmnist", "test"), load_split("mnist", "test")
    t0 = time.perf_counter()
    trained = train_or_load("hvae", HierarchicalVAE, args.params, args.train, train, val, seed=args.seed,
                            compute="cpu", checkpoint_dir=args.checkpoints, console=Console(width=160))
    model = trained.model.eval()
    meta = trained.metadata
    print(f"params {json.dumps(args.params)}  train {json.dumps(args.train)}  seed {args.seed}")
    print(f"training: {time.perf_counter() - t0:.0f} s this call, {meta['images_per_s']:.0f} img/s, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, torch threads {torch.get_num_threads()}")
    print(f"validation ELBO {meta['best_val_elbo']:.2f} nats, per-layer KL "
          + ", ".join(f"z{i + 1} {kl:.2f}" for i, kl in enumerate(meta["best_val_kl"])))
    with torch.inference_mode():
        a, b = scores(model, test, args.samples), scores(model, mnist, args.samples)
    print(f"bits/dim (IWAE-{args.samples}): FashionMNIST {bits_per_dim(torch.tensor(a['iwae']), 784).mean():.4f}, "
          f"MNIST {bits_per_dim(torch.tensor(b['iwae']), 784).mean():.4f}")
    rows = {"L>0 (ELBO)": auroc(-a["elbo"], -b["elbo"]), f"L>0 (IWAE-{args.samples})": auroc(-a["iwae"], -b["iwae"])}
    for k in range(1, model.num_latent_layers):
        rows[f"L>{k}"] = auroc(-a[f"l{k}"], -b[f"l{k}"])
        rows[f"LLR>{k} (ELBO)"] = auroc(a["elbo"] - a[f"l{k}"], b["elbo"] - b[f"l{k}"])
        rows[f"LLR>{k} (IWAE-{args.samples})"] = auroc(a["iwae"] - a[f"l{k}"], b["iwae"] - b[f"l{k}"])
    for name, value in rows.items():
        print(f"  AUROC FashionMNIST -> MNIST  {name:18s} {value:.4f}")


if __name__ == "__main__":
    main()
