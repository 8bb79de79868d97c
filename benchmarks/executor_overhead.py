"""Wall time of a suite under ``--executor local`` and ``--executor ray``, measured in one invocation (docs/scaling.md).

Usage: python benchmarks/executor_overhead.py SUITE [--profile cpu] [--max-examples N] [--repeats 1]
       [--out benchmarks/results/executor_overhead.json]

Each repeat runs the suite twice from nothing (fresh results and checkpoint folders, both executors training
and scoring everything), alternating which executor goes first, and checks that the two runs' score arrays
are bit-identical. ``--max-examples`` caps every evaluation set (a derived copy of the suite; training is
unchanged). Prints and writes the wall times and the ratio ray / local with the machine and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from ood_bench.cache.store import ScoreStore

ROOT = Path(__file__).resolve().parents[1]


def run(suite: Path, profile: str, executor: str, base: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ood_bench", "run", str(suite), "--profile", profile,
                           "--results", str(base / "results"), "--checkpoints", str(base / "ckpt"),
                           "--executor", executor], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    if proc.returncode != 0:
        raise SystemExit(f"{executor} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def scores(run_dir: Path) -> dict:
    store = ScoreStore(run_dir)
    finished = store.keys()  # key -> fields
    return {k: store.get(k) for k in finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    raw = yaml.safe_load(args.suite.read_text())
    work = Path(tempfile.mkdtemp(prefix="executor-overhead-"))
    suite = args.suite.resolve()
    if args.max_examples:
        raw.setdefault("evaluation", {})["max_examples"] = args.max_examples
        for profile in (raw.get("profiles") or {}).values():
            profile.get("evaluation", {}).pop("max_examples", None)
        suite = work / args.suite.name
        suite.write_text(yaml.safe_dump(raw, sort_keys=False))
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for r in range(args.repeats):
        order = ["local", "ray"] if r % 2 == 0 else ["ray", "local"]
        for executor in order:
            times[executor].append(run(suite, args.profile, executor, work / f"{executor}-{r}"))
        a, b = (scores(work / f"{e}-{r}" / "results" / raw["name"]) for e in ("local", "ray"))
        identical = a.keys() == b.keys() and all(
            np.array_equal(a[k][o], b[k][o]) for k in a for o in a[k])
        if not identical:
            raise SystemExit("the local and ray runs gave different scores")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    result = {
        "suite": str(args.suite), "profile": args.profile, "max_examples": args.max_examples,
        "repeats": args.repeats, "local_s": times["local"], "ray_s": times["ray"],
        "ratio_ray_over_local": float(np.mean(times["ray"]) / np.mean(times["local"])),
        "scores_identical": True, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
