"""Datasets that are not made of catalogued files: seeded synthetic sets and a user's image folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ood_bench.data.formats import IMAGE_SUFFIXES, archive_members, decode_image, is_wanted_member
from ood_bench.data.transforms import stack_conformed
from ood_bench.errors import UserError
from ood_bench.hashing import digest, hash_file


def uniform_noise(split: str, params: Mapping[str, Any]) -> np.ndarray:
    """``n`` images of independent uniform uint8 pixels, seeded."""
    rng = np.random.default_rng(params["seed"])
    return rng.integers(0, 256, size=(params["n"], *params["shape"]), dtype=np.uint8)


def constant_images(split: str, params: Mapping[str, Any]) -> np.ndarray:
    """``n`` images, each filled with one uniformly drawn uint8 value, seeded."""
    rng = np.random.default_rng(params["seed"])
    values = rng.integers(0, 256, size=params["n"], dtype=np.uint8)
    return np.ascontiguousarray(np.broadcast_to(values[:, None, None, None], (params["n"], *params["shape"])))


def existing_path(value: Any) -> str:
    """Accept a path to an existing directory or archive; return it absolute."""
    if not isinstance(value, (str, Path)):
        raise ValueError(f"expected a path to a directory, zip or tar of images, got {value!r}")
    path = Path(value).expanduser().resolve()
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    return str(path)


def image_folder_identity(params: Mapping[str, Any]) -> str:
    """Digest of the images behind ``path``: the archive's sha256, or every image file's for a directory."""
    path = Path(params["path"])
    if path.is_file():
        return "sha256:" + hash_file(path)
    names = sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file())
    return digest([(name, hash_file(path / name)) for name in names if is_wanted_member(name)])


def load_image_folder(split: str, params: Mapping[str, Any]) -> np.ndarray:
    """All images under ``path`` (sorted by relative path); with ``shape`` each is conformed to it.

    Without ``shape`` all images must have the same size; grey images stay one-channel unless the folder
    also holds colour images, in which case all become RGB.
    """
    path, shape = Path(params["path"]), params["shape"]
    try:
        members = archive_members(path)
    except ValueError as error:
        raise UserError(f"image_folder cannot read {path}: {error}.") from error
    if not members:
        raise UserError(f"image_folder found no images ({', '.join(IMAGE_SUFFIXES)}) in {path}.")
    mode = None if shape is None else ("L" if shape[0] == 1 else "RGB")
    decoded = []
    for name, data in members:
        try:
            decoded.append(decode_image(data, mode))
        except OSError as error:
            raise UserError(f"image_folder cannot decode {name} in {path}: {error}.") from error
    if shape is None:
        sizes = sorted({image.shape[1:] for image in decoded})
        if len(sizes) > 1:
            raise UserError(f"Images in {path} have different sizes ({', '.join(map(str, sizes[:5]))}, ...); "
                            f"pass the image_folder parameter shape: [C, H, W] to resize them all.")
        shape = [max(image.shape[0] for image in decoded), *sizes[0]]
    return stack_conformed(decoded, shape)
