"""Checkpoint files of trained backbones: content-addressed names, atomic writes, safe loading.

A checkpoint's key hashes everything the trained weights depend on (backbone kind and resolved
parameters, training config, training/validation data fingerprints, seed, the model and training
code versions, and the numerics policy of :mod:`ood_bench.compute`), so a changed input never reuses a
stale model and an unchanged one never retrains.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import torch

from ood_bench.files import write_atomic
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
    compute: dict[str, Any],
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
        "compute": compute,
    }
    if aux_fingerprint is not None:  # only backbones trained with auxiliary data carry the field
        fields["aux_data"] = aux_fingerprint
    return digest(fields)


def checkpoint_paths(checkpoint_dir: Path, kind: str, key: str) -> tuple[Path, Path]:
    """(final checkpoint, partial checkpoint of an unfinished run) for a key."""
    stem = f"{kind}-{key[:_KEY_CHARS]}"
    return checkpoint_dir / f"{stem}.pt", checkpoint_dir / f"{stem}.partial.pt"


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through :func:`ood_bench.files.write_atomic`: a reader never sees a torn file."""
    write_atomic(path, lambda f: torch.save(obj, f))


def weights_digest(state: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 of a model's (or state dict's) tensors: names, shapes, dtypes and bytes, in state-dict order.

    The identity of trained weights: score keys use it (not the checkpoint file, whose metadata holds wall
    times), and a checkpoint records it when written so a damaged file is detected on load.
    """
    items = state.state_dict().items() if isinstance(state, torch.nn.Module) else state.items()
    h = hashlib.sha256()
    for name, t in items:
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` with ``weights_only=True`` (no pickled code runs).

    Every member of the file's zip archive is checked against its CRC-32 first (``torch.load`` checks none),
    so a changed byte in the metadata is detected as surely as one in the weights; ValueError if one fails.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            failed = archive.testzip()
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a readable checkpoint archive ({exc})") from None
    if failed is not None:
        raise ValueError(f"member '{failed}' does not match the checksum it was written with")
    return torch.load(path, map_location=device, weights_only=True)
