"""Train the HVAE on FashionMNIST and measure LLR>k against MNIST (the cpu-profile acceptance probe).

Usage:
  python benchmarks/train_hvae_probe.py --fashion-dir DIR --mnist-dir DIR [--params JSON] [--train JSON]
         [--seed 0] [--threads 1] [--iwae-samples 16] [--checkpoint-dir DIR]

DIR holds the gzipped IDX files (train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte.gz). The defaults
of --params/--train are the cpu profile. Independent of the data layer on purpose: it reads the IDX
files itself, holds out 5000 seeded training images for validation, trains (or loads) through
``train_or_load`` and reports, on the full FashionMNIST test set (in) against the MNIST test set
(OOD, positive class), the AUROC of the ELBO in bits/dim, L>k, and LLR>k with a single-sample ELBO
and with an S-sample IWAE bound, plus training time, images/s and the per-layer KL.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from ood_bench.data.imageset import ImageSet
from ood_bench.models.hvae import HierarchicalVAE
from ood_bench.models.training import train_or_load
from ood_bench.numerics import example_generators, log_mean_exp
from rich.console import Console
from sklearn.metrics import roc_auc_score

CPU_PARAMS = {"channels": 16, "blocks_per_stage": 1, "kernel_sizes": [3, 3, 3]}
CPU_TRAIN = {"epochs": 4, "batch_size": 128, "lr": 1e-3, "lr_min": 1e-4, "grad_clip": 1000}


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 (N, 1, H, W) from a gzipped IDX3 file."""
    with gzip.open(path) as f:
        raw = f.read()
    n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, h, w).copy()


def image_set(name: str, images: np.ndarray) -> ImageSet:
    return ImageSet(name, images, hashlib.sha256(name.encode() + images.tobytes()).hexdigest())


@torch.inference_mode()
def scores(model: HierarchicalVAE, data: ImageSet, samples: int, batch: int = 256) -> dict[str, np.ndarray]:
    """Per-example ELBO, IWAE_S and L>k (k >= 1) in nats, with per-example seeded randomness."""
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(data), batch):
        idx = list(range(start, min(start + batch, len(data))))

        def gens(purpose: str, idx: list[int] = idx) -> list[torch.Generator]:
            return example_generators(0, data.fingerprint, idx, purpose)

        x = model.prepare(torch.from_numpy(data.images[idx]), gens("input"))
        parts = {"elbo": model.bound(x, model.draw_noise(gens("elbo"), 1), 0).bound}
        weights = model.bound(x.repeat(samples, 1, 1, 1), model.draw_noise(gens("iwae"), samples), 0).bound
        parts["iwae"] = log_mean_exp(weights.view(samples, len(idx)), 0)
        for k in range(1, model.num_latent_layers):
            parts[f"l{k}"] = model.bound(x, model.draw_noise(gens(f"lk{k}"), 1), k).bound
        for name, value in parts.items():
            out.setdefault(name, []).append(value.double())
    return {name: torch.cat(values).numpy() for name, values in out.items()}


def auroc(score_in: np.ndarray, score_ood: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(score_in)), np.ones(len(score_ood))]
    return float(roc_auc_score(labels, np.r_[score_in, score_ood]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion-dir", type=Path, default=os.environ.get("OOD_BENCH_FASHION_DIR"))
    mirror = os.environ.get("OOD_BENCH_MIRROR")
    parser.add_argument("--mnist-dir", type=Path, default=Path(mirror) / "mnist" if mirror else None)
    parser.add_argument("--params", type=json.loads, default=CPU_PARAMS)
    parser.add_argument("--train", type=json.loads, default=CPU_TRAIN)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iwae-samples", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints-probe"))
    args = parser.parse_args()
    if args.fashion_dir is None or args.mnist_dir is None:
        parser.error("give --fashion-dir and --mnist-dir (or set OOD_BENCH_FASHION_DIR and OOD_BENCH_MIRROR)")
    torch.set_num_threads(args.threads)

    train_all = read_idx_images(args.fashion_dir / "train-images-idx3-ubyte.gz")
    order = np.random.default_rng(0).permutation(len(train_all))
    train = image_set("fashionmnist-train", train_all[order[5000:]])
    val = image_set("fashionmnist-val", train_all[order[:5000]])
    test = image_set("fashionmnist-test", read_idx_images(args.fashion_dir / "t10k-images-idx3-ubyte.gz"))
    mnist = image_set("mnist-test", read_idx_images(args.mnist_dir / "t10k-images-idx3-ubyte.gz"))

    console = Console()
    trained = train_or_load("hvae", HierarchicalVAE, args.params, args.train, train, val, args.seed,
                            args.device, args.checkpoint_dir, console)
    meta = trained.metadata
    console.print(f"training: {meta['wall_time_s']:.0f} s, {meta['images_per_s']:.0f} img/s on "
                  f"{meta['num_threads']} thread(s); best epoch {meta['best_epoch']:.2f}; val ELBO "
                  f"{meta['best_val_elbo']:.2f} nats; KL per layer {[round(k, 2) for k in meta['best_val_kl']]}")
    start = time.perf_counter()
    s = args.iwae_samples
    a, b = scores(trained.model, test, s), scores(trained.model, mnist, s)
    console.print(f"scoring {len(test) + len(mnist)} images: {time.perf_counter() - start:.0f} s")
    rows = {"ELBO bits/dim": auroc(-a["elbo"], -b["elbo"]), f"IWAE-{s} bits/dim": auroc(-a["iwae"], -b["iwae"])}
    for k in range(1, trained.model.num_latent_layers):
        lk = f"l{k}"
        rows[f"L>{k}"] = auroc(-a[lk], -b[lk])
        rows[f"LLR>{k} (1-sample ELBO)"] = auroc(a["elbo"] - a[lk], b["elbo"] - b[lk])
        rows[f"LLR>{k} (IWAE-{s})"] = auroc(a["iwae"] - a[lk], b["iwae"] - b[lk])
    for name, value in rows.items():
        console.print(f"  AUROC {name:24s} {value:.4f}")


if __name__ == "__main__":
    main()
