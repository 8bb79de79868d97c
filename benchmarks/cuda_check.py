"""The CUDA checks of issue 12 in one prepared process (docs/performance.md, docs/scaling.md).

Usage (on a machine with a GPU; OOD_BENCH_MIRROR pointing at the data):
    python benchmarks/cuda_check.py OUT [--device cuda] [--paper-train-examples 8192] [--paper-max-examples 256]

1. Numerics, on the tiny suite (tests/suites/tiny.yaml): it runs on the CPU and on the device (one checkpoint
   folder: the keys keep CPU and GPU checkpoints apart). The CPU-trained backbone is then scored on the device
   by every detector of the suite with the same images, seed and batch size, and each output is compared with
   the CPU's scores: the largest relative difference must stay under TOLERANCE. Independently trained CPU and
   GPU backbones differ (training amplifies last-bit differences), so those two runs are compared by AUROC
   only, and reported. A second device run into fresh results (cached checkpoints) must give the same bits.
2. Throughput, on the ``paper`` profile of suites/fmnist.yaml shortened: one epoch of
   --paper-train-examples training images per backbone, --paper-max-examples examples per evaluated set,
   MNIST as the only OOD set; negative sampling's EMNIST-Letters negatives are replaced by the cpu profile's
   inverted Omniglot (same shape, so the same cost) when EMNIST is not on the machine. Training images/s per
   backbone and scored examples/s per detector come from the run's own timing (run.json ``wall_s_parts``).

Each part writes OUT/cuda_check.json as soon as it ends (a run stopped by a time limit keeps what it
measured) and OUT/cuda_check.md, the Markdown for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ood_bench as ob
import torch
import yaml
from ood_bench.data import data_status

TOLERANCE = 1e-3
"""Largest relative difference allowed between CPU and GPU scores of the same checkpoint in fp32: a chosen
bound (float32 carries ~7 significant digits; other kernels sum in another order), not a measurement; the
measured maximum is reported beside it."""
TINY = Path("tests/suites/tiny.yaml")
PAPER = Path("suites/fmnist.yaml")


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.maximum(np.abs(a), np.abs(b)).max()
    return float(np.abs(a - b).max() / max(scale, 1e-12))


def numerics(device: str, root: Path) -> dict[str, Any]:
    """Part 1: the tiny suite on CPU and on ``device``; the CPU checkpoint scored on both."""
    suite, ckpt = str(TINY), root / "checkpoints"
    cpu = ob.run_suite(suite, results=root / "cpu", checkpoints=ckpt, device="cpu")
    t0 = time.perf_counter()
    gpu = ob.run_suite(suite, results=root / "gpu", checkpoints=ckpt, device=device)
    gpu_seconds = time.perf_counter() - t0
    again = ob.run_suite(suite, results=root / "gpu-again", checkpoints=ckpt, device=device)
    data = ob.suite_data(suite)
    raw = yaml.safe_load(TINY.read_text())
    batch_size = raw["evaluation"]["batch_size"]
    same_checkpoint, identical_rerun, auroc = {}, True, {}
    models = {b: (ob.load_backbone(cpu.checkpoint(b), device="cpu"), ob.load_backbone(cpu.checkpoint(b), device=device))
              for b in {entry["backbone"] for entry in raw["detectors"].values()}}
    for label, entry in raw["detectors"].items():
        on_cpu, on_gpu = models[entry["backbone"]]
        for set_label, images in data.eval_sets.items():
            name = entry.get("detector", label)
            ref = ob.score(ob.detectors.get(name)(**entry.get("params", {})), on_cpu, images, seed=0,
                           batch_size=batch_size, fit_data=data.detector_fit)
            got = ob.score(ob.detectors.get(name)(**entry.get("params", {})), on_gpu, images, seed=0,
                           batch_size=batch_size, fit_data=data.detector_fit, device=device)
            for output in ref:
                key = f"{label}/{output}/{set_label}"
                same_checkpoint[key] = _relative(ref[output], got[output])
                first, second = gpu.scores(label, set_label)[output], again.scores(label, set_label)[output]
                identical_rerun &= bool(np.array_equal(first, second))
    board_cpu, board_gpu = cpu.leaderboard(), gpu.leaderboard()
    for row in board_cpu.query("metric == 'auroc'").itertuples():
        other = board_gpu.query(f"detector == '{row.detector}' and output == '{row.output}' and "
                                f"ood_set == '{row.ood_set}' and metric == 'auroc'")
        auroc[f"{row.detector}/{row.output}/{row.ood_set}"] = [float(row.mean), float(other["mean"].item())]
    worst = max(same_checkpoint.values())
    return {"tolerance": TOLERANCE, "same_checkpoint_max_relative": same_checkpoint,
            "same_checkpoint_within_tolerance": worst <= TOLERANCE, "worst": worst,
            "gpu_rerun_bit_identical": identical_rerun, "auroc_cpu_vs_gpu_trained": auroc,
            "tiny_suite_gpu_seconds": gpu_seconds}


def throughput(device: str, root: Path, train_examples: int, max_examples: int,
               profile: str = "paper") -> dict[str, Any]:
    """Part 2: the shortened ``profile`` of suites/fmnist.yaml on ``device``; images/s and examples/s from its
    timing (``profile`` cpu: a quick dry run of this script without a GPU)."""
    raw = yaml.safe_load(PAPER.read_text())
    paper = raw.get("profiles", {}).get(profile, {})
    overrides: dict[str, Any] = {"in_distribution.max_train_examples": train_examples,
                                 "evaluation.max_examples": max_examples}
    for name in {**raw["backbones"], **paper.get("backbones", {})}:
        overrides[f"backbones.{name}.train.epochs"] = 1
    substituted = None
    emnist = next(st for st in data_status() if st.name == "emnist_letters")
    if emnist.sources.get("train", "missing") == "missing":
        substituted = "vae-ns: inverted Omniglot 'train' negatives (EMNIST-Letters not on this machine)"
        overrides["backbones.vae-ns.auxiliary"] = {"dataset": "omniglot", "split": "train", "transforms": ["invert"]}
    run = ob.run_suite(str(PAPER), profile=profile, overrides=overrides, ood=["mnist"], results=root / "paper",
                       checkpoints=root / "paper-checkpoints", device=device)
    parts = run.record["history"][-1]["wall_s_parts"]
    training = {}
    for part, seconds in parts.items():
        if part.startswith("backbone "):
            training[part.removeprefix("backbone ")] = {"seconds": seconds, "images_per_s": train_examples / seconds}
    scoring = {}
    for ev in run.record["evaluations"]:
        label = ev["detector"]
        seconds = parts.get(f"score {label} seed 0")
        if seconds is None or ev["seed"] != 0:
            continue
        n = sum(len(next(iter(run.scores(label, s).values()))) for s in ev["keys"])
        scoring[label] = {"seconds": seconds, "examples": n, "examples_per_s": n / seconds}
    return {"profile": profile, "train_examples": train_examples, "max_examples": max_examples,
            "substituted": substituted, "training": training, "scoring": scoring, "total_seconds": parts["total"]}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Device {result['device_name']}, torch {result['torch']}, commit {result['commit']}; "
             "`python benchmarks/cuda_check.py OUT`.", ""]
    num = result.get("numerics")
    if num:
        met = "met" if num["same_checkpoint_within_tolerance"] else "NOT met"
        lines += [f"Same CPU checkpoint scored on CPU and GPU: largest relative difference {num['worst']:.1e} "
                  f"(tolerance {num['tolerance']:.0e}: {met}); "
                  f"a second GPU run gives {'the same bits' if num['gpu_rerun_bit_identical'] else 'OTHER bits'}; "
                  f"tiny suite on the GPU in {num['tiny_suite_gpu_seconds']:.0f} s.", "",
                  "| score | AUROC, CPU-trained | AUROC, GPU-trained |", "|---|---:|---:|"]
        lines += [f"| {k} | {a:.3f} | {b:.3f} |" for k, (a, b) in num["auroc_cpu_vs_gpu_trained"].items()]
    thr = result.get("throughput")
    if thr:
        lines += ["", f"Profile `{thr['profile']}` of suites/fmnist.yaml shortened: 1 epoch of "
                      f"{thr['train_examples']} training images, {thr['max_examples']} examples per set; "
                      f"{thr['substituted'] or 'no substitution'}.", "",
                  "| backbone (training) | s | images/s |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['seconds']:.1f} | {v['images_per_s']:,.0f} |" for k, v in thr["training"].items()]
        lines += ["", "| detector (scoring) | examples | s | examples/s |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['examples']} | {v['seconds']:.1f} | {v['examples_per_s']:,.1f} |"
                  for k, v in thr["scoring"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--paper-train-examples", type=int, default=8192)
    parser.add_argument("--paper-max-examples", type=int, default=256)
    parser.add_argument("--profile", default="paper", help="the profile timed in part 2 (cpu: a dry run)")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result: dict[str, Any] = {"device": args.device, "device_name": name, "torch": torch.__version__,
                              "commit": commit or "unknown"}

    def write() -> None:
        (args.out / "cuda_check.json").write_text(json.dumps(result, indent=1))
        (args.out / "cuda_check.md").write_text(markdown(result))

    with tempfile.TemporaryDirectory() as tmp:
        result["numerics"] = numerics(args.device, Path(tmp))
        write()
        print(markdown(result), flush=True)
        if not args.skip_throughput:
            result["throughput"] = throughput(args.device, Path(tmp), args.paper_train_examples,
                                              args.paper_max_examples, args.profile)
            write()
    print(markdown(result))


if __name__ == "__main__":
    main()
