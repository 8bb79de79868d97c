"""Write a copy of a suite that keeps only some detectors (and the backbones they use), under a new name.

Usage: python benchmarks/suite_subset.py suites/fmnist.yaml --detectors llr_ada llr_ada_hvae waic
       --name fmnist-hvae-family > /tmp/fmnist-hvae-family.yaml

For measuring a few detectors of a large suite on exactly its data, backbones and profiles: the
checkpoint keys do not depend on the suite's name or on the other detectors, so the subset trains (or
loads) the same checkpoints as the full suite and its scores are the ones the full suite computes.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml


def restrict(raw: dict[str, Any], detectors: list[str], name: str) -> dict[str, Any]:
    """A copy of the raw suite mapping with only ``detectors``, the backbones they use, under ``name``."""
    raw = copy.deepcopy(raw)
    raw["name"] = name
    raw["detectors"] = {k: v for k, v in raw["detectors"].items() if k in detectors}
    used = {d["backbone"] for d in raw["detectors"].values()}
    raw["backbones"] = {k: v for k, v in raw["backbones"].items() if k in used}
    for profile in (raw.get("profiles") or {}).values():
        if "detectors" in profile:
            profile["detectors"] = {k: v for k, v in profile["detectors"].items() if k in detectors}
            used |= {d["backbone"] for d in profile["detectors"].values() if "backbone" in d}
        if "backbones" in profile:
            profile["backbones"] = {k: v for k, v in profile["backbones"].items() if k in used}
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--detectors", nargs="+", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    raw = yaml.safe_load(args.suite.read_text())
    unknown = sorted(set(args.detectors) - set(raw["detectors"]))
    if unknown:
        sys.exit(f"not detectors of {args.suite}: {', '.join(unknown)}")
    yaml.safe_dump(restrict(raw, args.detectors, args.name), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
