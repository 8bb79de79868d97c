"""Pixel transforms: pure functions on uint8 (N, C, H, W) arrays, and their application to an ImageSet.

Every float-to-uint8 conversion rounds half up and clips (:func:`to_uint8`); truncating instead biases
every pixel down by half a level, which shifts likelihoods and bits/dim.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ood_bench.data.imageset import ImageSet
from ood_bench.errors import UserError
from ood_bench.hashing import digest

# ITU-R BT.601 luma weights for R, G, B.
LUMA_601 = (0.299, 0.587, 0.114)
_RESIZE_CHUNK = 2048


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round half up and clip to [0, 255]; the one float-to-uint8 conversion used everywhere."""
    return np.clip(np.floor(np.asarray(values, dtype=np.float64) + 0.5), 0, 255).astype(np.uint8)


def _channels(images: np.ndarray) -> int:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    return int(images.shape[1])


def invert(images: np.ndarray) -> np.ndarray:
    """255 - x: white background becomes black and vice versa."""
    _channels(images)
    return (255 - images).astype(np.uint8)


def brightness(images: np.ndarray, factor: float) -> np.ndarray:
    """Scale intensities by ``factor``, rounded and clipped to uint8."""
    _channels(images)
    return to_uint8(images.astype(np.float64) * float(factor))


def grayscale(images: np.ndarray) -> np.ndarray:
    """RGB to one channel with ITU-R 601 luma; one-channel input is returned unchanged."""
    c = _channels(images)
    if c == 1:
        return images
    if c != 3:
        raise ValueError(f"grayscale needs 1 or 3 channels, got {c}")
    weights = np.asarray(LUMA_601, dtype=np.float64).reshape(1, 3, 1, 1)
    return to_uint8((images.astype(np.float64) * weights).sum(axis=1, keepdims=True))


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Repeat a single channel three times; three-channel input is returned unchanged."""
    c = _channels(images)
    if c == 3:
        return images
    if c != 1:
        raise ValueError(f"to_rgb needs 1 or 3 channels, got {c}")
    return np.repeat(images, 3, axis=1)


def resize(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize to ``size`` = (H, W), antialiased when shrinking (like PIL's bilinear filter)."""
    _channels(images)
    h, w = int(size[0]), int(size[1])
    if images.shape[2:] == (h, w):
        return images
    out = np.empty((images.shape[0], images.shape[1], h, w), dtype=np.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + _RESIZE_CHUNK])).to(torch.float32)
        scaled = torch.nn.functional.interpolate(chunk, size=(h, w), mode="bilinear", align_corners=False,
                                                 antialias=True)
        out[start:start + _RESIZE_CHUNK] = to_uint8(scaled.numpy())
    return out


def center_crop(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The central (H, W) window of every image."""
    _channels(images)
    h, w = int(size[0]), int(size[1])
    top = (images.shape[2] - h) // 2
    left = (images.shape[3] - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {images.shape[2:]} images to {(h, w)}")
    return images[:, :, top:top + h, left:left + w]


def conform_array(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Convert to (C, H, W) = ``shape``: grayscale or to_rgb as needed, then resize."""
    c = int(shape[0])
    if c == 1:
        images = grayscale(images)
    elif c == 3:
        images = to_rgb(images)
    else:
        raise ValueError(f"target shape needs 1 or 3 channels, got {tuple(shape)}")
    return resize(images, shape[1:])


def stack_conformed(images: Sequence[np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """Stack (C, H, W) images of mixed sizes and channel counts into one (N, *shape) uint8 array.

    Images are grouped by their own shape so that each group is converted in one batched call.
    """
    out = np.empty((len(images), *(int(s) for s in shape)), dtype=np.uint8)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for indices in groups.values():
        out[indices] = conform_array(np.stack([images[i] for i in indices]), shape)
    return out


TRANSFORMS: dict[str, Callable[..., np.ndarray]] = {
    "invert": invert,
    "grayscale": grayscale,
    "to_rgb": to_rgb,
    "brightness": brightness,
    "resize": resize,
}

# Parameters each transform takes (besides the images), with a description for error messages.
TRANSFORM_PARAMS: dict[str, dict[str, str]] = {
    "invert": {},
    "grayscale": {},
    "to_rgb": {},
    "brightness": {"factor": "a number >= 0"},
    "resize": {"size": "[height, width], positive integers"},
}


def _allowed_transforms() -> str:
    parts = []
    for name, params in TRANSFORM_PARAMS.items():
        spec = ", ".join(f'"{key}": {text}' for key, text in params.items())
        parts.append(f'{{"name": "{name}"{", " + spec if spec else ""}}}')
    return "; ".join(parts)


def _check_transform(spec: Any) -> tuple[str, dict[str, Any]]:
    """Validate one transform dict; return its name and normalised parameters."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise UserError(f"A transform must be a mapping with a 'name' key, got {spec!r}. "
                        f"Allowed transforms: {_allowed_transforms()}.")
    name = spec["name"]
    if name not in TRANSFORMS:
        raise UserError(f"Unknown transform {name!r}. Allowed transforms: {_allowed_transforms()}.")
    given = {key: value for key, value in spec.items() if key != "name"}
    expected = TRANSFORM_PARAMS[name]
    if set(given) != set(expected):
        raise UserError(f"Transform {name!r} takes parameters {sorted(expected) or 'none'}, got "
                        f"{sorted(given) or 'none'}. Allowed transforms: {_allowed_transforms()}.")
    if name == "brightness":
        factor = given["factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 0:
            raise UserError(f"Transform 'brightness' needs 'factor' to be a number >= 0, got {factor!r}.")
        return name, {"factor": float(factor)}
    if name == "resize":
        size = given["size"]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise UserError(f"Transform 'resize' needs 'size' to be [height, width] of positive integers, "
                            f"got {size!r}.")
        return name, {"size": [int(size[0]), int(size[1])]}
    return name, {}


def _label(name: str, params: Mapping[str, Any]) -> str:
    if name == "brightness":
        return f"brightness={params['factor']:g}"
    if name == "resize":
        return f"resize={params['size'][0]}x{params['size'][1]}"
    return name


def apply_transforms(images: ImageSet, transforms: Sequence[Mapping[str, Any]]) -> ImageSet:
    """Apply transforms in order; the name and fingerprint record each one.

    All specs are validated before any pixel is touched, so a typo fails fast.
    """
    if isinstance(transforms, Mapping) or not isinstance(transforms, Sequence):
        raise UserError(f"'transforms' must be a list of transform mappings, got {transforms!r}. "
                        f"Allowed transforms: {_allowed_transforms()}.")
    checked = [_check_transform(spec) for spec in transforms]
    result = images
    for name, params in checked:
        try:
            pixels = TRANSFORMS[name](result.images, **params)
        except ValueError as error:
            raise UserError(f"Cannot apply transform {name!r} to {result.name!r}: {error}.") from error
        result = ImageSet(name=f"{result.name}+{_label(name, params)}", images=pixels,
                          fingerprint=digest("transform", result.fingerprint, name, params))
    return result


def conform(images: ImageSet, shape: Sequence[int]) -> ImageSet:
    """Convert to (C, H, W) = ``shape`` (grayscale or to_rgb, then resize); unchanged if it already fits."""
    if len(shape) != 3 or int(shape[0]) not in (1, 3) or min(int(s) for s in shape) <= 0:
        raise UserError(f"Target shape must be (C, H, W) with C in (1, 3) and positive H, W, "
                        f"got {tuple(shape)}.")
    c, h, w = (int(s) for s in shape)
    steps: list[dict[str, Any]] = []
    if images.shape[0] != c:
        if images.shape[0] not in (1, 3):
            raise UserError(f"Cannot conform {images.name!r}: it has {images.shape[0]} channels; "
                            f"only 1 or 3 can be converted.")
        steps.append({"name": "grayscale" if c == 1 else "to_rgb"})
    if images.shape[1:] != (h, w):
        steps.append({"name": "resize", "size": [h, w]})
    return apply_transforms(images, steps) if steps else images
