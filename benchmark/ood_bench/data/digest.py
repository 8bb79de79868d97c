"""Content digests for fingerprints and cache keys."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(*parts: Any) -> str:
    """Hex sha256 of a canonical JSON encoding of ``parts`` (dict keys sorted, tuples as lists).

    Used for every ImageSet fingerprint, so equal inputs give equal fingerprints across processes.
    """
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
