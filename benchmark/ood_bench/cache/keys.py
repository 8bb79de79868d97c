"""Score-cache keys: a stable hash of everything a score depends on."""

from __future__ import annotations

from typing import Any

from ood_bench.hashing import digest


def score_key(
    *, backbone_hash: str, detector: str, params: dict, detector_version: str, dataset: str, seed: int
) -> tuple[str, dict[str, Any]]:
    """The key of one (backbone checkpoint, detector + params + version, dataset, seed) score array."""
    fields = {
        "backbone_checkpoint": backbone_hash,
        "detector": detector,
        "params": params,
        "detector_version": detector_version,
        "dataset": dataset,
        "seed": seed,
    }
    return digest(fields), fields
