"""Keep what the result docs need from a run folder, without this machine's paths.

Usage: python benchmarks/keep_run.py RUN_DIR OUT_DIR

Writes OUT_DIR/record.json (suite name and file name, profile, seeds, provenance, history with its per-step
seconds, the labels of the sets that were missing, and each backbone's training figures) and copies
leaderboard.csv. run.json itself names
checkpoint files, the data mirror and the suite file by absolute path and carries a checksum of all of it, so
it is not committed; ``reproduction.py`` reads either file, so docs/reproduction.md regenerates from the records
kept in benchmarks/results/ without rerunning them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

KEPT = ("suite", "profile", "seeds", "provenance", "history")
BACKBONE_FIELDS = ("kind", "epochs_completed", "wall_time_s", "images_per_s", "num_threads", "best_val_bpd",
                   "best_val_kl")
"""What the docs' backbone tables show of each trained backbone (``results_table.backbones``)."""


def record(run_dir: Path) -> dict:
    """The portable part of RUN_DIR/run.json."""
    plan = json.loads((run_dir / "run.json").read_text())
    kept = {k: plan[k] for k in KEPT}
    kept["suite_file"] = Path(plan["suite_file"]).name
    kept["missing"] = [{"ood_set": m["ood_set"]} for m in plan["missing"]]
    kept["backbones"] = {name: {"metadata": {k: entry["metadata"][k] for k in BACKBONE_FIELDS
                                             if k in entry["metadata"]}}
                         for name, entry in plan.get("backbones", {}).items()}
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "record.json").write_text(json.dumps(record(args.run_dir), indent=1) + "\n")
    if (args.run_dir / "leaderboard.csv").exists():
        shutil.copyfile(args.run_dir / "leaderboard.csv", args.out_dir / "leaderboard.csv")
    print(f"wrote {args.out_dir / 'record.json'}")


if __name__ == "__main__":
    main()
