"""The training loop of one backbone: steps, validation, best-weights tracking and partial checkpoints.

:func:`ood_bench.models.training.train_or_load` drives it; nothing else does. The data order is a function of
(seed, epoch) and every piece of state (model, optimiser, step, RNG) is saved in a partial checkpoint, so a
resumed run ends with the weights of an uninterrupted one on CPU. Partial checkpoints are written every
``PARTIAL_EVERY_S`` seconds of wall time, on Ctrl-C and at a test hook, not every epoch: a paper-profile
backbone would otherwise write tens of gigabytes of partial files.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ood_bench.compute import Compute
from ood_bench.data.imageset import ImageSet
from ood_bench.models.base import Backbone
from ood_bench.models.checkpoints import load_checkpoint, save_atomic
from ood_bench.models.train_config import TrainConfig
from ood_bench.numerics import LN2, example_generators, example_seed
from ood_bench.progress import track

PARTIAL_FORMAT = "ood-bench-backbone-partial/1"
PARTIAL_EVERY_S = 600.0
LOG_EVERY_STEPS = 10


class TrainingStopped(Exception):
    """Training stopped at ``stop_after_steps`` (a test hook); the partial checkpoint is saved."""


@dataclass
class TrainingRun:
    """The mutable state of one training run (everything a partial checkpoint holds)."""

    model: Backbone
    config: TrainConfig
    train_set: ImageSet
    val_set: ImageSet
    seed: int
    compute: Compute
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
    last_train: dict[str, Any] = field(default_factory=dict)
    last_partial_at: float = field(default_factory=time.perf_counter)
    on_validation: Callable[[dict[str, Any]], None] | None = None
    """Told about each validation record as it is made (a run logger's hook)."""

    def __post_init__(self) -> None:
        n, bs = len(self.train_set), self.config.batch_size
        self.steps_per_epoch = math.ceil(n / bs)
        self.total_steps = max(1, round(self.config.epochs * self.steps_per_epoch))
        self.val_interval = max(1, round(self.config.val_every_epochs * self.steps_per_epoch))
        self.device = torch.device(self.compute.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        # uint8 images live on the training device: a step gathers its batch there (no host copy per step)
        self.images = torch.from_numpy(self.train_set.images).to(self.device)
        self.aux_images = (torch.from_numpy(self.aux_set.images).to(self.device) if self.aux_set is not None
                           else None)

    # ---------------------------------------------------------------------------------- loop
    def train(self, stop_after_steps: int | None) -> int:
        """Run (or resume) to the end; return the number of optimiser steps this call took."""
        model, config = self.model, self.config
        model.to(self.device)
        resumed = False
        if self.partial_path.exists():
            try:
                self._restore(load_checkpoint(self.partial_path, self.device))
                resumed = True
            except Exception as exc:  # a damaged partial file fails in many ways inside torch.load
                damaged = self.partial_path.with_name(self.partial_path.name + ".damaged")
                self.partial_path.replace(damaged)
                self.console.print(f"[yellow]warning: partial checkpoint {self.partial_path} is damaged "
                                   f"({type(exc).__name__}: {exc}); moved to {damaged.name}, training from "
                                   f"the start[/yellow]")
        if resumed:
            self.console.print(
                f"Resuming training at step {self.step}/{self.total_steps} from {self.partial_path}"
            )
        else:
            first = self.images[self._epoch_order(0)[: config.batch_size]]
            model.train()
            model.data_dependent_init(model.prepare(first, None))
        val_inputs = self._validation_inputs()
        start_step = self.step
        interrupted = threading.Event()
        with _deferred_sigint(interrupted), track(self.console, f"training {self.key[:12]}", self.total_steps,
                                                  self.step, unit="steps") as progress:
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
                    progress.advance(1)
                    if self.step % LOG_EVERY_STEPS == 0 or self.step == self.total_steps:
                        rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                        progress.stats(_format_logs(_floats(logs), rate))
                        window_start, window_images = time.perf_counter(), 0
                    if self.step % self.val_interval == 0 or self.step == self.total_steps:
                        self._validate(val_inputs)
                    if time.perf_counter() - self.last_partial_at >= PARTIAL_EVERY_S:
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
        x = model.prepare(self.images[indices.to(self.device)], None)
        beta, free_bits = config.beta(progress), config.free_bits_at(progress)
        with self.compute.autocast():
            if self.aux_images is None:
                loss, logs = model.training_loss(x, beta, free_bits)
            else:
                aux_idx = self._aux_indices(len(indices)).to(self.device)
                aux = model.prepare(self.aux_images[aux_idx], None)
                loss, logs = model.training_loss(x, beta, free_bits, aux=aux)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            # kept as a tensor: converting it here would make every step wait for the GPU
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
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
        with torch.inference_mode(), self.compute.autocast():
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
            "train": _floats(self.last_train), "elapsed_s": self.elapsed_s,
        }
        self.history.append(record)
        if self.on_validation is not None:
            self.on_validation(record)
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
        self.last_partial_at = time.perf_counter()
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



def _floats(logs: dict[str, Any]) -> dict[str, float]:
    """Logs as Python floats (a model may return 0-dim tensors, converted only when a log is written)."""
    return {k: float(v) for k, v in logs.items()}


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

