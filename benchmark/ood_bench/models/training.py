"""Train a backbone once, cache it by content, resume it after an interruption: the checkpoint cache.

``train_or_load`` is the only entry point. The checkpoint key covers every input of training and the numerics
policy (see :mod:`ood_bench.models.checkpoints`); a finished checkpoint is loaded without any forward pass
after its weights are checked against the digest it recorded, an unfinished one resumes where it stopped
(:mod:`ood_bench.models.train_loop`). One process trains a key at a time: a per-key lock in the checkpoint
folder makes a concurrent run (or Ray worker) wait and then load the result. The final weights are the best
by validation ELBO (the validation set is binarised and sampled once, per example, from the seed); the test
split is never seen here. The optimisation settings are :class:`ood_bench.models.train_config.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ood_bench.compute import Compute, resolve_compute
from ood_bench.data.imageset import ImageSet
from ood_bench.files import file_lock, write_json_atomic
from ood_bench.models.base import Backbone
from ood_bench.models.checkpoints import (
    checkpoint_key,
    checkpoint_paths,
    load_checkpoint,
    save_atomic,
    weights_digest,
)
from ood_bench.models.train_config import TrainConfig
from ood_bench.models.train_loop import TrainingRun, TrainingStopped

FINAL_FORMAT = "ood-bench-backbone/1"
__all__ = ["TrainConfig", "TrainedBackbone", "TrainingStopped", "checkpoint_identity", "load_trained",
           "train_or_load"]


@dataclass
class TrainedBackbone:
    """A trained model in eval mode, with the identity of its checkpoint and how it was made."""

    model: Backbone
    weights_hash: str
    """:func:`~ood_bench.models.checkpoints.weights_digest` of the weights: what score keys depend on."""
    path: Path
    metadata: dict[str, Any]
    steps_this_call: int = 0
    """Optimiser steps taken by this call: 0 when the checkpoint was loaded from the cache."""


def train_or_load(
    kind: str,
    backbone_cls: type[Backbone],
    params: dict[str, Any],
    train_config: dict[str, Any],
    train_set: ImageSet,
    val_set: ImageSet,
    seed: int,
    compute: Compute | str,
    checkpoint_dir: Path,
    console: Console | None = None,
    *,
    stop_after_steps: int | None = None,
    aux_set: ImageSet | None = None,
    on_validation: Callable[[dict[str, Any]], None] | None = None,
) -> TrainedBackbone:
    """Load the cached model for these inputs, or train it (resuming a partial run) and cache it.

    Ctrl-C during training finishes the current step, saves a partial checkpoint and re-raises
    KeyboardInterrupt; the next call resumes there. ``stop_after_steps`` does the same at that global
    step count but raises :class:`TrainingStopped` (for tests). ``aux_set``: auxiliary training data
    (converted to the training image shape); each step then passes one minibatch of it to
    ``training_loss(..., aux=...)``, and its fingerprint joins the checkpoint key. ``on_validation`` is called
    with each validation record made by this call (see :class:`ood_bench.loggers.RunLogger`). ``compute``: the numerics
    policy, applied to this process (a device string means :func:`~ood_bench.compute.resolve_compute` of it).
    """
    config = TrainConfig.validate(train_config)
    backbone_cls.validate_params(params)
    if aux_set is not None and aux_set.shape != train_set.shape:
        raise ValueError(f"auxiliary images {aux_set.shape} and training images {train_set.shape} differ in shape")
    if train_set.shape != val_set.shape:
        raise ValueError(
            f"training images {train_set.shape} and validation images {val_set.shape} differ in shape"
        )
    compute = resolve_compute(compute) if isinstance(compute, str) else compute
    compute.apply()  # the key records the policy: make it the one this process computes with
    console = console or Console(stderr=True)
    torch_device = torch.device(compute.device)
    with torch.random.fork_rng(devices=[torch_device] if torch_device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = backbone_cls.from_params(params, train_set.shape)
        resolved = model.resolved_params()
        key = _key(kind, backbone_cls, params, resolved, config, train_set, val_set, seed, compute, aux_set)
        final_path, partial_path = checkpoint_paths(Path(checkpoint_dir), kind, key)
        loaded = _load_final(final_path, model, torch_device, console)
        if loaded is not None:
            return loaded
        def waiting() -> None:
            console.print(f"another process is training {final_path.name}; waiting for it to finish")

        with file_lock(final_path.with_suffix(".lock"), on_wait=waiting):
            loaded = _load_final(final_path, model, torch_device, console)  # trained meanwhile by another process
            if loaded is not None:
                return loaded
            run = TrainingRun(model, config, train_set, val_set, seed, compute, console, key, partial_path, aux_set)
            run.on_validation = on_validation
            run.metadata_base = {
                "key": key, "kind": kind, "params": resolved if resolved is not None else params,
                "train_config": dataclasses.asdict(config), "seed": int(seed),
                "input_shape": list(train_set.shape), "compute": compute.key_fields(),
                "train_data": {"name": train_set.name, "fingerprint": train_set.fingerprint, "n": len(train_set)},
                "val_data": {"name": val_set.name, "fingerprint": val_set.fingerprint, "n": len(val_set)},
            }
            if aux_set is not None:
                run.metadata_base["aux_data"] = {"name": aux_set.name, "fingerprint": aux_set.fingerprint,
                                                 "n": len(aux_set)}
            steps = run.train(stop_after_steps)
            metadata = {**run.final_metadata(), "weights_sha256": weights_digest(run.best_state)}
            save_atomic({"format": FINAL_FORMAT, "model": run.best_state, "metadata": metadata}, final_path)
            write_json_atomic(final_path.with_suffix(".json"), metadata)
            partial_path.unlink(missing_ok=True)
        model.load_state_dict(run.best_state)
        model.eval()
        return TrainedBackbone(model, metadata["weights_sha256"], final_path, metadata, steps)


def checkpoint_identity(
    kind: str, backbone_cls: type[Backbone], params: dict[str, Any], train_config: dict[str, Any],
    train_set: ImageSet, val_set: ImageSet, seed: int, compute: Compute, checkpoint_dir: Path,
    aux_set: ImageSet | None = None,
) -> tuple[str, Path]:
    """(checkpoint key, final checkpoint path) of a training run, without training (a plan needs them).

    Builds the model on torch's ``meta`` device only to resolve its parameters (no weights are allocated).
    """
    config = TrainConfig.validate(train_config)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # shapes only: no memory, no initialisation
        resolved = backbone_cls.from_params(params, train_set.shape).resolved_params()
    key = _key(kind, backbone_cls, params, resolved, config, train_set, val_set, seed, compute, aux_set)
    return key, checkpoint_paths(Path(checkpoint_dir), kind, key)[0]


def _key(kind: str, backbone_cls: type[Backbone], params: dict[str, Any], resolved: dict[str, Any] | None,
         config: TrainConfig, train_set: ImageSet, val_set: ImageSet, seed: int, compute: Compute,
         aux_set: ImageSet | None) -> str:
    return checkpoint_key(
        kind=kind, params=resolved if resolved is not None else params,
        train_config=dataclasses.asdict(config), train_fingerprint=train_set.fingerprint,
        val_fingerprint=val_set.fingerprint, seed=seed, model_version=backbone_cls.MODEL_VERSION,
        input_shape=train_set.shape, aux_fingerprint=aux_set.fingerprint if aux_set is not None else None,
        compute=compute.key_fields(),
    )


def _load_final(path: Path, model: Backbone, device: torch.device, console: Console) -> TrainedBackbone | None:
    """The finished checkpoint at ``path`` loaded into ``model``, or None when there is none or it is damaged.

    A damaged file (unreadable, not a backbone checkpoint, or weights that no longer match the digest they
    were saved with) is moved aside as ``<name>.damaged`` with a warning, so the caller retrains it.
    """
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path, device)
        problem = None if state.get("format") == FINAL_FORMAT else f"not a backbone checkpoint ({FINAL_FORMAT})"
        if problem is None:
            expected = state["metadata"].get("weights_sha256")
            if expected is not None and weights_digest(state["model"]) != expected:
                problem = "its weights do not match the digest recorded when it was written"
            else:
                model.load_state_dict(state["model"])
    except Exception as exc:  # a truncated or overwritten file fails in many ways inside torch.load
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    if problem is not None:
        damaged = path.with_name(path.name + ".damaged")
        path.replace(damaged)
        console.print(f"[yellow]warning: checkpoint {path} is damaged: {problem}; moved to {damaged.name} "
                      f"and training it again[/yellow]")
        return None
    model.to(device).eval()
    metadata = state["metadata"]
    return TrainedBackbone(model, metadata.get("weights_sha256") or weights_digest(model), path, metadata, 0)


def load_trained(path: Path, backbone_cls: type[Backbone], device: str = "cpu") -> TrainedBackbone:
    """The finished checkpoint at ``path`` (written by :func:`train_or_load`), rebuilt from its metadata.

    Never trains: reports and other readers of a finished run use it to get the exact scored model back.
    """
    state = load_checkpoint(path, device)
    if state.get("format") != FINAL_FORMAT:
        raise ValueError(f"{path} is not a finished backbone checkpoint ({FINAL_FORMAT})")
    metadata = state["metadata"]
    model = backbone_cls.from_params(metadata["params"], tuple(metadata["input_shape"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return TrainedBackbone(model, metadata.get("weights_sha256") or weights_digest(model), Path(path), metadata, 0)
