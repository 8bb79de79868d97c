"""Seeded, deterministic selections of images: a validation split carved from train, and subsets.

Indices come from ``numpy.random.default_rng(seed)`` and are kept in their original order, so the same
(set, n, seed) always selects the same images; the fingerprint records the selection.
"""

from __future__ import annotations

import numpy as np

from ood_bench.data.imageset import ImageSet
from ood_bench.errors import UserError
from ood_bench.hashing import digest


def _chosen(total: int, n: int, seed: int) -> np.ndarray:
    """A boolean mask selecting ``n`` of ``total`` positions, seeded."""
    mask = np.zeros(total, dtype=bool)
    mask[np.random.default_rng(seed).permutation(total)[:n]] = True
    return mask


def split_validation(train: ImageSet, n_val: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Carve ``n_val`` images out of a training set: returns (remaining train, validation), disjoint.

    Checkpoint selection uses the validation part, never a test split.
    """
    if isinstance(n_val, bool) or not isinstance(n_val, (int, np.integer)) or not 0 < n_val < len(train):
        raise UserError(f"n_val must be an integer between 1 and {len(train) - 1} for {train.name!r} "
                        f"({len(train)} images), got {n_val!r}.")
    is_val = _chosen(len(train), int(n_val), int(seed))
    rest = ImageSet(f"{train.name}[train]", train.images[~is_val],
                    digest("split_validation", train.fingerprint, int(n_val), int(seed), "train"))
    val = ImageSet(f"{train.name}[val]", train.images[is_val],
                   digest("split_validation", train.fingerprint, int(n_val), int(seed), "val"))
    return rest, val


def subset(images: ImageSet, n: int, seed: int) -> ImageSet:
    """``n`` images drawn without replacement (original order kept); the set itself if ``n >= len``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise UserError(f"Subset size must be a positive integer, got {n!r}.")
    if n >= len(images):
        return images
    keep = _chosen(len(images), int(n), int(seed))
    return ImageSet(f"{images.name}[{n} of {len(images)}]", images.images[keep],
                    digest("subset", images.fingerprint, int(n), int(seed)))


def complement(images: ImageSet, n: int, seed: int) -> ImageSet:
    """The images that :func:`subset` with the same (n, seed) leaves out (empty when it keeps them all)."""
    if n >= len(images):
        return ImageSet(f"{images.name}[none]", images.images[:0], digest("complement", images.fingerprint, "all"))
    keep = _chosen(len(images), int(n), int(seed))
    return ImageSet(f"{images.name}[{len(images) - n} not in {n} of {len(images)}]", images.images[~keep],
                    digest("complement", images.fingerprint, int(n), int(seed)))
