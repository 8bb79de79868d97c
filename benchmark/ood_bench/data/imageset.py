"""The in-memory form of every evaluation or training set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageSet:
    """A set of images as the models see them.

    ``images`` is uint8 of shape (N, C, H, W). ``fingerprint`` identifies the content: a hex digest
    of the source files' checksums, the split, the transforms and the subset applied. Two sets with
    the same fingerprint hold the same pixels, so it is the dataset part of every cache key.
    """

    name: str
    images: np.ndarray
    fingerprint: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"ImageSet {self.name!r} needs uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{self.images.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W)."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)
