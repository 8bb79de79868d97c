"""Checkpoint files of trained backbones: content-addressed names, atomic writes, safe loading.

A checkpoint's key hashes everything the trained weights depend on (backbone kind and resolved
parameters, training config, training/validation data fingerprints, seed, and the model and training
code versions), so a changed input never reuses a stale model and an unchanged one never retrains.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ood_bench.hashing import digest

TRAINING_VERSION = "1"  # bump when a change in training.py alters the weights it produces
_KEY_CHARS = 24


def checkpoint_key(
    *,
    kind: str,
    params: dict[str, Any],
    train_config: dict[str, Any],
    train_fingerprint: str,
    val_fingerprint: str,
    seed: int,
    model_version: str,
    input_shape: tuple[int, ...],
    aux_fingerprint: str | None = None,
) -> str:
    """Digest of every input of a training run (see :func:`ood_bench.hashing.digest`)."""
    fields = {
        "kind": kind,
        "params": params,
        "train_config": train_config,
        "train_data": train_fingerprint,
        "val_data": val_fingerprint,
        "seed": int(seed),
        "model_version": model_version,
        "training_version": TRAINING_VERSION,
        "input_shape": list(input_shape),
    }
    if aux_fingerprint is not None:  # only backbones trained with auxiliary data carry the field
        fields["aux_data"] = aux_fingerprint
    return digest(fields)


def checkpoint_paths(checkpoint_dir: Path, kind: str, key: str) -> tuple[Path, Path]:
    """(final checkpoint, partial checkpoint of an unfinished run) for a key."""
    stem = f"{kind}-{key[:_KEY_CHARS]}"
    return checkpoint_dir / f"{stem}.pt", checkpoint_dir / f"{stem}.partial.pt"


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A reader therefore sees either the old complete file or the new complete one, never a torn write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write human-readable JSON next to a checkpoint, atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` with ``weights_only=True`` (no pickled code runs)."""
    return torch.load(path, map_location=device, weights_only=True)
