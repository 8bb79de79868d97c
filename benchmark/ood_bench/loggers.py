"""Run loggers: a small callback interface told about each validation and each finished score array.

A logger sees a run as it happens, for tools outside ood-bench (TensorBoard, an experiment tracker):
:meth:`RunLogger.validation` after every validation of a backbone that is trained in this run (live with the
local executor; replayed from the checkpoint's history as each Ray training task returns) and
:meth:`RunLogger.scores` once per finished (detector, seed, set, output) array. Nothing it does changes a
score or a key. ``ood-bench run --logger tensorboard`` (the ``tensorboard`` extra) or
``ob.run_suite(..., logger=MyLogger())``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ood_bench.errors import UserError


class RunLogger:
    """The interface, with methods that do nothing: subclass and override what you need."""

    def validation(self, backbone: str, seed: int, record: dict[str, Any]) -> None:
        """One validation: ``record`` has ``step``, ``epoch``, ``val_elbo`` (nats), ``val_bpd``, ``val_log_px``,
        ``val_kl`` (nats per latent layer, z1 first) and the training state (``train``: loss, beta, ...)."""

    def scores(self, detector: str, seed: int, set_label: str, output: str, values: np.ndarray) -> None:
        """One finished per-example score array (float64, higher = more OOD)."""

    def close(self) -> None:
        """The run has ended (also after an error)."""


class TensorBoardLogger(RunLogger):
    """Validation curves (ELBO, bits/dim, per-layer KL) and score histograms as TensorBoard events."""

    def __init__(self, log_dir: Path | str):
        check_logger("tensorboard")
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only here
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))

    def validation(self, backbone: str, seed: int, record: dict[str, Any]) -> None:
        tag, step = f"{backbone}/seed{seed}", int(record["step"])
        self.writer.add_scalar(f"{tag}/val_elbo_nats", record["val_elbo"], step)
        self.writer.add_scalar(f"{tag}/val_bits_per_dim", record["val_bpd"], step)
        for layer, kl in enumerate(record.get("val_kl", []), start=1):
            self.writer.add_scalar(f"{tag}/val_kl_z{layer}", kl, step)

    def scores(self, detector: str, seed: int, set_label: str, output: str, values: np.ndarray) -> None:
        finite = values[np.isfinite(values)]
        if finite.size:
            self.writer.add_histogram(f"scores/{detector}/{output}/{set_label}", finite, seed)

    def close(self) -> None:
        self.writer.close()


LOGGERS = ("none", "tensorboard")


def check_logger(name: str) -> None:
    """Refuse an unknown logger name or a missing optional package before any work starts."""
    if name not in LOGGERS:
        raise UserError(f"Unknown logger '{name}'. Allowed loggers: {', '.join(LOGGERS)}.")
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError("--logger tensorboard needs the tensorboard package: pip install "
                            "'ood-bench[tensorboard]' (or pip install tensorboard), or run without --logger.") from None


def make_logger(name: str, run_dir: Path) -> RunLogger:
    """The logger ``--logger NAME`` asks for; TensorBoard events go to ``RUN_DIR/tensorboard``."""
    if name == "tensorboard":
        return TensorBoardLogger(Path(run_dir) / "tensorboard")  # checks the extra is installed
    check_logger(name)
    return RunLogger()
