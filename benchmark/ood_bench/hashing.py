"""Content digests: the one place ood-bench turns values and files into stable hex identities.

Dataset fingerprints, checkpoint keys and score-cache keys all use :func:`digest`; checksums of
downloaded files and checkpoints use :func:`hash_file`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace (tuples as lists), so equal content gives equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(*parts: Any) -> str:
    """Hex sha256 of the canonical JSON of ``parts``; equal inputs give equal digests across processes."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def hash_file(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
