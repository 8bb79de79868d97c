"""Datasets that are not made of catalogued files: seeded synthetic sets and a user's image folder."""

from __future__ import annotations

from collections import Counter
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

    Without ``shape`` images of different sizes are resized to the most common size (a suite then converts
    the set to its ID shape anyway); grey images stay one-channel unless the folder also holds colour images,
    in which case all become RGB.
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
        counts = Counter(image.shape[1:] for image in decoded)
        size = max(counts, key=lambda hw: (counts[hw], hw))  # the most common; ties go to the larger
        shape = [max(image.shape[0] for image in decoded), *size]
    return stack_conformed(decoded, shape)


def array_identity(params: Mapping[str, Any]) -> str:
    """The sha256 of the .npy / .npz file and the array's key."""
    return digest("array", hash_file(Path(params["path"])), params["key"])


def load_array(split: str, params: Mapping[str, Any]) -> np.ndarray:
    """Images from a .npy file or one array of a .npz file: uint8 (N, C, H, W), (N, H, W, C) with C 1 or 3,
    or (N, H, W) for grey; every split reads the same images."""
    path, key = Path(params["path"]), params["key"]
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            array = loaded
        else:
            with loaded:
                names = list(loaded.files)
                if key is None and len(names) != 1:
                    raise UserError(f"array: {path} holds arrays {names}; pass the parameter key: <name>.")
                if key is not None and key not in names:
                    raise UserError(f"array: {path} has no array '{key}'; it holds {names}.")
                array = loaded[key or names[0]]
    except (OSError, ValueError) as error:
        raise UserError(f"array cannot read {path} as .npy / .npz: {error}.") from error
    if array.dtype != np.uint8:
        raise UserError(f"array: {path} holds {array.dtype}, not uint8 pixels; convert with "
                        f"(x * 255).round().astype(np.uint8) for floats in [0, 1].")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] not in (1, 3) and array.shape[3] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3) or array.shape[0] == 0:
        raise UserError(f"array: {path} holds shape {array.shape}; expected (N, C, H, W), (N, H, W, C) with C 1 "
                        f"or 3, or (N, H, W).")
    return np.ascontiguousarray(array)

