"""Content-addressed cache keys: a stable hash of everything a score depends on."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal content always gives equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_key(fields: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of ``fields``."""
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    return content_key(fields), fields
