"""How far two cached runs of one suite differ, metric by metric (docs/reproduction.md).

Usage: python benchmarks/run_delta.py BASELINE_RUN_DIR OTHER_RUN_DIR [--metric auroc] [--top 5]

`ood-bench compare` lists every cell with its delta; this summarises that same table (``compare_runs``):
the number of cells both runs have, the largest absolute delta and the --top cells that moved most.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ood_bench.report.compare import compare_runs, delta_column
from ood_bench.suite.results import records_from_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--metric", default="auroc")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    names = [str(args.baseline), str(args.other)]
    table = compare_runs({n: records_from_cache(Path(n)) for n in names}, metrics=[args.metric])
    delta = table[delta_column(names[1], names[0])].dropna()
    moved = delta.abs().sort_values(ascending=False)
    print(f"{args.metric}: {len(delta)} cells in both runs; largest |delta| {moved.iloc[0]:.3f}; "
          f"median |delta| {moved.median():.3f}")
    for key in moved.index[: args.top]:
        detector, backbone, output, ood_set, _ = key
        print(f"  {detector}/{output} ({backbone}) on {ood_set}: {table.loc[key, names[0]]:.3f} -> "
              f"{table.loc[key, names[1]]:.3f}")


if __name__ == "__main__":
    main()
