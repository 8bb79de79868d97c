"""What a dataset is: its splits, the source formats each split can be read from, and its parameters.

A file-backed dataset lists, per split, one or more :class:`SourceFormat` in order of preference: the
official files first, then any repackaged "mirror format" (e.g. CIFAR-10 as JPEG folders). Datasets that are
not made of catalogued files (synthetic noise, a user's image folder) have a ``loader`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ood_bench.data.sources import RemoteFile
from ood_bench.errors import UserError

Reader = Callable[[Mapping[str, Path]], np.ndarray]
Loader = Callable[[str, Mapping[str, Any]], np.ndarray]
Identity = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True)
class SourceFormat:
    """One way to obtain a split: its files and the reader that turns them into uint8 (N, C, H, W).

    ``reader`` gets the verified local paths keyed by file name. ``revision`` is part of the fingerprint:
    bump it whenever the reader's output changes so caches built from the old output are not reused.
    """

    label: str
    files: tuple[RemoteFile, ...]
    reader: Reader
    revision: str = "1"
    note: str = ""

    @property
    def official(self) -> bool:
        """True for the publisher's own files, False for a repackaged mirror format."""
        return self.label == "official"


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """A dataset parameter: ``check`` returns the normalised value or raises ValueError with the reason."""

    description: str
    default: Any = REQUIRED
    check: Callable[[Any], Any] = lambda value: value
    in_fingerprint: bool = True


@dataclass(frozen=True)
class DatasetDef:
    """A dataset as the registry knows it; built-ins and plugins are instances of this class.

    ``identify`` (loader datasets only) returns a digest of the content behind the parameters, e.g. the
    hash of a user's image folder, so the fingerprint changes when the pixels do.
    """

    name: str
    description: str
    splits: tuple[str, ...]
    shape: tuple[int, int, int]
    sources: Mapping[str, tuple[SourceFormat, ...]] = field(default_factory=dict)
    synthetic: bool = False
    params: Mapping[str, Param] = field(default_factory=dict)
    loader: Loader | None = None
    identify: Identity | None = None
    cache: bool = True
    revision: str = "1"
    notes: str = ""

    def __post_init__(self) -> None:
        if self.loader is None and set(self.sources) != set(self.splits):
            raise ValueError(f"dataset {self.name!r}: every split needs source formats, or give a loader")

    def remote_files(self, split: str) -> list[RemoteFile]:
        """Every file any source format of ``split`` can use, official ones first."""
        files: list[RemoteFile] = []
        for source in self.sources.get(split, ()):
            files.extend(f for f in source.files if f not in files)
        return files

    def check_split(self, split: str) -> None:
        """Raise UserError unless ``split`` is one of this dataset's splits."""
        if split not in self.splits:
            raise UserError(f"Dataset {self.name!r} has no split {split!r}. Allowed splits: "
                            f"{', '.join(self.splits)}.")

    def check_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate ``params`` and fill in defaults; raise UserError naming the allowed parameters."""
        given = dict(params or {})
        allowed = "; ".join(f"{key} ({p.description}; default {p.default!r})"
                            for key, p in self.params.items()) or "none"
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise UserError(f"Dataset {self.name!r} does not take parameter(s) {', '.join(unknown)}. "
                            f"Allowed parameters: {allowed}.")
        checked = {}
        for key, param in self.params.items():
            value = given.get(key, param.default)
            if value is REQUIRED:
                raise UserError(f"Dataset {self.name!r} needs parameter {key!r} ({param.description}). "
                                f"Allowed parameters: {allowed}.")
            try:
                checked[key] = param.check(value)
            except (ValueError, TypeError) as error:
                raise UserError(f"Dataset {self.name!r} parameter {key!r} is invalid: {error}. "
                                f"Allowed parameters: {allowed}.") from error
        return checked


def positive_int(value: Any) -> int:
    """Accept a positive integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return int(value)


MAX_SYNTHETIC_IMAGES = 1_000_000


def synthetic_count(value: Any) -> int:
    """A positive number of synthetic images, at most ``MAX_SYNTHETIC_IMAGES`` (more is a typo: evaluation sets
    are subsets of a few thousand, and a million 3x32x32 images already take 3 GB)."""
    n = positive_int(value)
    if n > MAX_SYNTHETIC_IMAGES:
        raise ValueError(f"expected at most {MAX_SYNTHETIC_IMAGES:,} images, got {n:,}")
    return n


MAX_SEED = 2**31 - 1


def seed_int(value: Any) -> int:
    """A seed: an integer from 0 to ``MAX_SEED``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"expected an integer seed from 0 to {MAX_SEED}, got {value!r}")
    return int(value)


def any_int(value: Any) -> int:
    """Accept any integer (not a bool), e.g. a seed."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def image_shape(value: Any) -> list[int]:
    """Accept (C, H, W) with C in (1, 3) and positive H, W."""
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
            or int(value[0]) not in (1, 3)):
        raise ValueError(f"expected [C, H, W] with C 1 or 3 and positive H, W, got {value!r}")
    return [int(v) for v in value]


def optional_image_shape(value: Any) -> list[int] | None:
    """Like :func:`image_shape`, or None."""
    return None if value is None else image_shape(value)
