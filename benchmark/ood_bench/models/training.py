"""Train a backbone once, cache it by content, resume it after an interruption.

``train_or_load`` is the only entry point. The checkpoint key covers every input of training
(see :mod:`ood_bench.models.checkpoints`); a finished checkpoint is loaded without any forward pass,
an unfinished one resumes at the step where it stopped and, on CPU, ends with exactly the weights of
an uninterrupted run: the data order is a function of (seed, epoch), and the model, optimiser, step
and RNG states are all saved. The final weights are the best by validation ELBO (the validation set
is binarised and sampled once, per example, from the seed); the test split is never seen here.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ood_bench.data.imageset import ImageSet
from ood_bench.hashing import hash_file
from ood_bench.models.base import Backbone, config_from_params
from ood_bench.models.checkpoints import (
    checkpoint_key,
    checkpoint_paths,
    load_checkpoint,
    save_atomic,
    write_json_atomic,
)
from ood_bench.numerics import LN2, example_generators, example_seed

FINAL_FORMAT = "ood-bench-backbone/1"
PARTIAL_FORMAT = "ood-bench-backbone-partial/1"


@dataclass
class TrainConfig:
    """Optimisation settings (the ``train`` section of a suite backbone entry).

    Fractions are of the total number of optimiser steps. Free bits (nats per latent layer) are held for
    ``free_bits_hold_fraction`` of training and annealed linearly to 0 by ``free_bits_end_fraction``;
    the KL weight beta rises linearly from 0 to 1 over ``warmup_fraction``; the learning rate follows a
    cosine from ``lr`` to ``lr_min``. ``patience``: stop after this many validations without a better
    validation ELBO (None: never stop early).
    """

    epochs: float = 4
    batch_size: int = 128
    lr: float = 1e-3
    lr_min: float = 1e-4
    grad_clip: float | None = 100.0
    warmup_fraction: float = 0.2
    free_bits: float = 2.0
    free_bits_hold_fraction: float = 0.2
    free_bits_end_fraction: float = 0.4
    val_every_epochs: float = 1
    val_batch_size: int = 500
    patience: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"train setting {name!r} must be {expected}, got {getattr(self, name)!r}")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def positive_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        def fraction(v: Any) -> bool:
            return number(v) and 0 <= v <= 1

        need(number(self.epochs) and self.epochs > 0, "epochs", "a positive number")
        need(positive_int(self.batch_size), "batch_size", "a positive integer")
        need(number(self.lr) and self.lr > 0, "lr", "a positive number")
        need(number(self.lr_min) and 0 <= self.lr_min <= self.lr, "lr_min", "a number in [0, lr]")
        need(self.grad_clip is None or (number(self.grad_clip) and self.grad_clip > 0), "grad_clip",
             "a positive number or null")
        need(number(self.free_bits) and self.free_bits >= 0, "free_bits", "a number >= 0")
        for name in ("warmup_fraction", "free_bits_hold_fraction", "free_bits_end_fraction"):
            need(fraction(getattr(self, name)), name, "a number in [0, 1]")
        need(self.free_bits_end_fraction >= self.free_bits_hold_fraction, "free_bits_end_fraction",
             "at least free_bits_hold_fraction")
        need(number(self.val_every_epochs) and self.val_every_epochs > 0, "val_every_epochs",
             "a positive number")
        need(positive_int(self.val_batch_size), "val_batch_size", "a positive integer")
        need(self.patience is None or positive_int(self.patience), "patience", "a positive integer or null")

    @classmethod
    def validate(cls, values: dict[str, Any]) -> TrainConfig:
        """The config for ``values``; ValueError names unknown keys (and the allowed ones) or bad values."""
        return config_from_params(cls, values, "train")

    def beta(self, progress: float) -> float:
        """KL weight at ``progress`` (fraction of steps done)."""
        return 1.0 if self.warmup_fraction == 0 else min(1.0, progress / self.warmup_fraction)

    def free_bits_at(self, progress: float) -> float:
        """Free-bits budget (nats per layer) at ``progress``."""
        hold, end = self.free_bits_hold_fraction, self.free_bits_end_fraction
        if progress < hold:
            return self.free_bits
        if progress >= end:
            return 0.0
        return self.free_bits * (end - progress) / (end - hold)

    def lr_at(self, progress: float) -> float:
        """Learning rate at ``progress``: cosine from lr to lr_min."""
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class TrainedBackbone:
    """A trained model in eval mode, with the identity of its checkpoint and how it was made."""

    model: Backbone
    checkpoint_hash: str
    path: Path
    metadata: dict[str, Any]
    steps_this_call: int = 0
    """Optimiser steps taken by this call: 0 when the checkpoint was loaded from the cache."""


class TrainingStopped(Exception):
    """Training stopped at ``stop_after_steps`` (a test hook); the partial checkpoint is saved."""


def train_or_load(
    kind: str,
    backbone_cls: type[Backbone],
    params: dict[str, Any],
    train_config: dict[str, Any],
    train_set: ImageSet,
    val_set: ImageSet,
    seed: int,
    device: str,
    checkpoint_dir: Path,
    console: Console | None = None,
    *,
    stop_after_steps: int | None = None,
    aux_set: ImageSet | None = None,
) -> TrainedBackbone:
    """Load the cached model for these inputs, or train it (resuming a partial run) and cache it.

    Ctrl-C during training finishes the current step, saves a partial checkpoint and re-raises
    KeyboardInterrupt; the next call resumes there. ``stop_after_steps`` does the same at that global
    step count but raises :class:`TrainingStopped` (for tests). ``aux_set``: auxiliary training data
    (converted to the training image shape); each step then passes one minibatch of it to
    ``training_loss(..., aux=...)``, and its fingerprint joins the checkpoint key.
    """
    config = TrainConfig.validate(train_config)
    backbone_cls.validate_params(params)
    if aux_set is not None and aux_set.shape != train_set.shape:
        raise ValueError(f"auxiliary images {aux_set.shape} and training images {train_set.shape} differ in shape")
    if train_set.shape != val_set.shape:
        raise ValueError(
            f"training images {train_set.shape} and validation images {val_set.shape} differ in shape"
        )
    console = console or Console(stderr=True)
    checkpoint_dir = Path(checkpoint_dir)
    torch_device = torch.device(device)

    with torch.random.fork_rng(devices=[torch_device] if torch_device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = backbone_cls.from_params(params, train_set.shape)
        resolved = model.resolved_params()
        key = checkpoint_key(
            kind=kind, params=resolved if resolved is not None else params,
            train_config=dataclasses.asdict(config), train_fingerprint=train_set.fingerprint,
            val_fingerprint=val_set.fingerprint, seed=seed, model_version=backbone_cls.MODEL_VERSION,
            input_shape=train_set.shape, aux_fingerprint=aux_set.fingerprint if aux_set is not None else None,
        )
        final_path, partial_path = checkpoint_paths(checkpoint_dir, kind, key)
        if final_path.exists():
            state = load_checkpoint(final_path, torch_device)
            if state.get("format") != FINAL_FORMAT:
                raise ValueError(f"{final_path} is not a backbone checkpoint ({FINAL_FORMAT})")
            model.load_state_dict(state["model"])
            model.to(torch_device).eval()
            return TrainedBackbone(model, hash_file(final_path), final_path, state["metadata"], 0)

        run = _Run(model, config, train_set, val_set, seed, torch_device, console, key, partial_path, aux_set)
        run.metadata_base = {
            "key": key, "kind": kind, "params": resolved if resolved is not None else params,
            "train_config": dataclasses.asdict(config), "seed": int(seed),
            "input_shape": list(train_set.shape),
            "train_data": {"name": train_set.name, "fingerprint": train_set.fingerprint, "n": len(train_set)},
            "val_data": {"name": val_set.name, "fingerprint": val_set.fingerprint, "n": len(val_set)},
        }
        if aux_set is not None:
            run.metadata_base["aux_data"] = {"name": aux_set.name, "fingerprint": aux_set.fingerprint,
                                             "n": len(aux_set)}
        steps = run.train(stop_after_steps)
        metadata = run.final_metadata()
        save_atomic(
            {"format": FINAL_FORMAT, "model": run.best_state, "metadata": metadata}, final_path
        )
        write_json_atomic(metadata, final_path.with_suffix(".json"))
        partial_path.unlink(missing_ok=True)
        model.load_state_dict(run.best_state)
        model.eval()
        return TrainedBackbone(model, hash_file(final_path), final_path, metadata, steps)


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
    return TrainedBackbone(model, hash_file(path), Path(path), metadata, 0)


@dataclass
class _Run:
    """The mutable state of one training run (everything a partial checkpoint holds)."""

    model: Backbone
    config: TrainConfig
    train_set: ImageSet
    val_set: ImageSet
    seed: int
    device: torch.device
    console: Console
    key: str
    partial_path: Path
    aux_set: ImageSet | None = None
    metadata_base: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best: dict[str, Any] = field(default_factory=dict)
    validations_since_best: int = 0
    stopped_early: bool = False
    elapsed_s: float = 0.0
    images_seen: int = 0
    resumes: int = 0
    last_train: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, bs = len(self.train_set), self.config.batch_size
        self.steps_per_epoch = math.ceil(n / bs)
        self.total_steps = max(1, round(self.config.epochs * self.steps_per_epoch))
        self.val_interval = max(1, round(self.config.val_every_epochs * self.steps_per_epoch))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        self.images = torch.from_numpy(self.train_set.images)
        self.aux_images = torch.from_numpy(self.aux_set.images) if self.aux_set is not None else None

    # ---------------------------------------------------------------------------------- loop
    def train(self, stop_after_steps: int | None) -> int:
        """Run (or resume) to the end; return the number of optimiser steps this call took."""
        model, config = self.model, self.config
        model.to(self.device)
        if self.partial_path.exists():
            self._restore(load_checkpoint(self.partial_path, self.device))
            self.console.print(
                f"Resuming training at step {self.step}/{self.total_steps} from {self.partial_path}"
            )
        else:
            first = self.images[self._epoch_order(0)[: config.batch_size]].to(self.device)
            model.train()
            model.data_dependent_init(model.prepare(first, None))
        val_inputs = self._validation_inputs()
        start_step = self.step
        interrupted = threading.Event()
        with _deferred_sigint(interrupted), self._progress() as progress:
            task = progress.add_task("training", total=self.total_steps, completed=self.step, stats="")
            window_start, window_images = time.perf_counter(), 0
            while self.step < self.total_steps and not self.stopped_early:
                epoch, offset = divmod(self.step, self.steps_per_epoch)
                order = self._epoch_order(epoch)
                for batch_index in range(offset, self.steps_per_epoch):
                    t0 = time.perf_counter()
                    first = batch_index * config.batch_size
                    logs = self._step(order[first : first + config.batch_size])
                    self.elapsed_s += time.perf_counter() - t0
                    window_images += logs.pop("_images")
                    progress.update(task, advance=1)
                    if self.step % 10 == 0 or self.step == self.total_steps:
                        rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                        progress.update(task, stats=_format_logs(logs, rate))
                        window_start, window_images = time.perf_counter(), 0
                    at_epoch_end = batch_index == self.steps_per_epoch - 1
                    if self.step % self.val_interval == 0 or self.step == self.total_steps:
                        self._validate(val_inputs)
                    if at_epoch_end or self.step % self.val_interval == 0:
                        self._save_partial()
                    if self.step >= self.total_steps or self.stopped_early:
                        break
                    hook_stop = stop_after_steps is not None and self.step >= stop_after_steps
                    if interrupted.is_set() or hook_stop:
                        self._save_partial()
                        self.console.print(f"Training stopped at step {self.step}; partial checkpoint saved "
                                           f"to {self.partial_path}; the next run resumes there.")
                        if interrupted.is_set():
                            raise KeyboardInterrupt
                        raise TrainingStopped(f"stopped after {self.step} steps")
        self._report_collapse()
        return self.step - start_step

    def _step(self, indices: torch.Tensor) -> dict[str, Any]:
        config, model = self.config, self.model
        progress = self.step / self.total_steps
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr_at(progress)
        model.train()
        x = model.prepare(self.images[indices].to(self.device), None)
        beta, free_bits = config.beta(progress), config.free_bits_at(progress)
        if self.aux_images is None:
            loss, logs = model.training_loss(x, beta, free_bits)
        else:
            aux = model.prepare(self.aux_images[self._aux_indices(len(indices))].to(self.device), None)
            loss, logs = model.training_loss(x, beta, free_bits, aux=aux)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
        self.optimizer.step()
        self.step += 1
        self.images_seen += len(indices)
        self.last_train = {**logs, "beta": beta, "free_bits": free_bits, "lr": config.lr_at(progress)}
        return {**logs, "_images": len(indices)}

    def _aux_indices(self, n: int) -> torch.Tensor:
        """``n`` auxiliary examples for the current step (without replacement), a function of (seed, step)."""
        seed = example_seed(self.seed, self.aux_set.fingerprint, self.step, "aux")
        perm = torch.randperm(len(self.aux_set), generator=torch.Generator().manual_seed(seed))
        return perm[: min(n, len(self.aux_set))]

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """The data order of one epoch, a function of (seed, training data, epoch) only."""
        seed = example_seed(self.seed, self.train_set.fingerprint, epoch, "shuffle")
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(len(self.train_set), generator=g)

    # ---------------------------------------------------------------------------------- validation
    def _validation_inputs(self) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Prepared validation batches and their noise, fixed per example by the seed."""
        batches = []
        images = torch.from_numpy(self.val_set.images)
        fp, bs = self.val_set.fingerprint, self.config.val_batch_size
        for start in range(0, len(self.val_set), bs):
            idx = list(range(start, min(start + bs, len(self.val_set))))
            gens = example_generators(self.seed, fp, idx, "val-input")
            x = self.model.prepare(images[idx].to(self.device), gens)
            noise = self.model.draw_noise(example_generators(self.seed, fp, idx, "val-noise"), 1)
            batches.append((x, noise))
        return batches

    def _validate(self, val_inputs: list[tuple[torch.Tensor, list[torch.Tensor]]]) -> None:
        model = self.model
        model.eval()
        total, log_px, kls, n = 0.0, 0.0, None, 0
        with torch.inference_mode():
            for x, noise in val_inputs:
                terms = model.bound(x, noise, 0)
                total += float(terms.bound.double().sum())
                log_px += float(terms.log_px.double().sum())
                layer_sums = [float(t.double().sum()) for t in terms.kl]
                kls = layer_sums if kls is None else [a + b for a, b in zip(kls, layer_sums, strict=True)]
                n += x.shape[0]
        model.train()
        dims = math.prod(model.input_shape)
        elbo = total / n
        record = {
            "epoch": self.step / self.steps_per_epoch, "step": self.step, "val_elbo": elbo,
            "val_bpd": -elbo / (dims * LN2), "val_log_px": log_px / n, "val_kl": [k / n for k in kls or []],
            "train": dict(self.last_train), "elapsed_s": self.elapsed_s,
        }
        self.history.append(record)
        improved = not self.best or elbo > self.best["val_elbo"]
        if improved:
            self.best = {k: record[k] for k in ("epoch", "step", "val_elbo", "val_bpd", "val_kl")}
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.validations_since_best = 0
        else:
            self.validations_since_best += 1
            if self.config.patience is not None and self.validations_since_best >= self.config.patience:
                self.stopped_early = True
        kl_text = "  ".join(f"z{i + 1} {k:.2f}" for i, k in enumerate(record["val_kl"]))
        t = record["train"]
        self.console.print(
            f"epoch {record['epoch']:.2f}  val ELBO {elbo:.2f} nats ({record['val_bpd']:.4f} bits/dim)  "
            f"KL {kl_text}  beta {t.get('beta', 0):.2f}  free bits {t.get('free_bits', 0):.2f}  "
            f"lr {t.get('lr', 0):.2e}{'  *best' if improved else ''}"
        )

    def _report_collapse(self) -> None:
        for i, kl in enumerate(self.best.get("val_kl", [])):
            if kl < 0.5:
                self.console.print(f"[yellow]warning: latent layer z{i + 1} carries {kl:.3f} nats on the "
                                   f"validation set (posterior collapse)[/yellow]")

    # ---------------------------------------------------------------------------------- persistence
    def _save_partial(self) -> None:
        save_atomic(
            {
                "format": PARTIAL_FORMAT, "key": self.key, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step, "history": self.history,
                "best": self.best, "best_state": self.best_state, "stopped_early": self.stopped_early,
                "validations_since_best": self.validations_since_best, "elapsed_s": self.elapsed_s,
                "images_seen": self.images_seen, "resumes": self.resumes, "rng": _rng_states(self.device),
            },
            self.partial_path,
        )

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != PARTIAL_FORMAT or state.get("key") != self.key:
            raise ValueError(f"{self.partial_path} is not a partial checkpoint of this training run")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name in ("step", "history", "best", "best_state", "stopped_early", "validations_since_best",
                     "elapsed_s", "images_seen"):
            setattr(self, name, state[name])
        self.resumes = state["resumes"] + 1
        _set_rng_states(state["rng"], self.device)

    def final_metadata(self) -> dict[str, Any]:
        return {
            **self.metadata_base,
            "history": self.history,
            "best_epoch": self.best.get("epoch"), "best_step": self.best.get("step"),
            "best_val_elbo": self.best.get("val_elbo"), "best_val_bpd": self.best.get("val_bpd"),
            "best_val_kl": self.best.get("val_kl"),
            "collapsed_layers": [i + 1 for i, kl in enumerate(self.best.get("val_kl", [])) if kl < 0.5],
            "steps": self.step, "epochs_completed": self.step / self.steps_per_epoch,
            "stopped_early": self.stopped_early, "wall_time_s": self.elapsed_s,
            "images_per_s": self.images_seen / max(self.elapsed_s, 1e-9), "resumes": self.resumes,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "torch_version": str(torch.__version__), "num_threads": torch.get_num_threads(),
        }

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=self.console,
        )


def _format_logs(logs: dict[str, Any], rate: float) -> str:
    kl = " ".join(f"{k[3:]} {v:.1f}" for k, v in logs.items() if k.startswith("kl_"))
    return f"loss {logs.get('loss', float('nan')):.1f}  KL {kl}  {rate:.0f} img/s"


def _rng_states(device: torch.device) -> dict[str, Any]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


@contextmanager
def _deferred_sigint(flag: threading.Event) -> Iterator[None]:
    """Turn the first Ctrl-C into ``flag`` (checked between steps); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        flag.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

