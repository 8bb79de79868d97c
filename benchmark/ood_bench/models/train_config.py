"""The ``train`` section of a suite backbone entry: optimisation settings, validated, with their schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ood_bench.params import (
    STRICT,
    Fraction,
    NonNegativeNumber,
    PositiveInt,
    PositiveNumber,
    config_from_params,
)

MAX_EPOCHS = 100_000
"""More epochs than any published budget by orders of magnitude: a larger value is a typo."""
MAX_BATCH = 1_048_576


@dataclass
class TrainConfig:
    """Optimisation settings (the ``train`` section of a suite backbone entry).

    Fractions are of the total number of optimiser steps. Free bits (nats per latent layer) are held for
    ``free_bits_hold_fraction`` of training and annealed linearly to 0 by ``free_bits_end_fraction``;
    the KL weight beta rises linearly from 0 to 1 over ``warmup_fraction``; the learning rate follows a
    cosine from ``lr`` to ``lr_min``. ``patience``: stop after this many validations without a better
    validation ELBO (None: never stop early).
    """

    __pydantic_config__ = STRICT

    epochs: PositiveNumber = 4
    batch_size: PositiveInt = 128
    lr: PositiveNumber = 1e-3
    lr_min: NonNegativeNumber = 1e-4
    grad_clip: PositiveNumber | None = 100.0
    warmup_fraction: Fraction = 0.2
    free_bits: NonNegativeNumber = 2.0
    free_bits_hold_fraction: Fraction = 0.2
    free_bits_end_fraction: Fraction = 0.4
    val_every_epochs: PositiveNumber = 1
    val_batch_size: PositiveInt = 500
    patience: PositiveInt | None = None

    def __post_init__(self) -> None:
        """What the field types cannot say: bounds that involve two fields, and sizes that are typos."""

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"train setting {name!r} must be {expected}, got {getattr(self, name)!r}")

        need(self.epochs <= MAX_EPOCHS, "epochs", f"a number in (0, {MAX_EPOCHS:,}]")
        need(self.batch_size <= MAX_BATCH, "batch_size", f"an integer from 1 to {MAX_BATCH:,}")
        need(self.val_batch_size <= MAX_BATCH, "val_batch_size", f"an integer from 1 to {MAX_BATCH:,}")
        need(self.lr_min <= self.lr, "lr_min", "a number in [0, lr]")
        need(self.free_bits_end_fraction >= self.free_bits_hold_fraction, "free_bits_end_fraction",
             "at least free_bits_hold_fraction")

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
