"""Score-cache keys: a stable hash of everything a score depends on."""

from __future__ import annotations

from typing import Any

from ood_bench.hashing import digest


def score_key(
    *, backbone_hash: str, detector: str, params: dict, detector_version: str, dataset: str, seed: int,
    compute: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """The key of one (backbone weights, detector + params + version, dataset, seed, numerics) score array.

    ``backbone_hash`` is the digest of the weights (one member) or of the members' digests (an ensemble);
    ``compute`` is :meth:`ood_bench.compute.Compute.key_fields`, so a score is never reused under other numerics.
    """
    fields = {
        "backbone_checkpoint": backbone_hash,
        "detector": detector,
        "params": params,
        "detector_version": detector_version,
        "dataset": dataset,
        "seed": seed,
        "compute": compute,
    }
    return digest(fields), fields
