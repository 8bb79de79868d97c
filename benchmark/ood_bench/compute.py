"""The numerics policy: which device, precision and determinism a run computes with, chosen in one place.

A :class:`Compute` is resolved once per run from ``--device`` and ``--precision``, applied to torch in every
process that computes (the driver and each worker), and recorded in every checkpoint key and score key, so a
checkpoint or a score is never reused, or resumed, under other numerics, and CPU and GPU checkpoints never
share a path.

* ``fp32`` (default): full float32 matmuls and convolutions. On CUDA, TF32 is off and deterministic
  algorithms are on (cuDNN autotuning off, a fixed cuBLAS workspace), so a rerun gives the same bits.
* ``tf32`` (CUDA only): TF32 tensor-core matmuls and convolutions; faster on Ampere and later, ~1e-3
  relative error per product; still deterministic.
* ``bf16``: ``torch.autocast`` to bfloat16 around training steps and scoring; the fastest, least accurate.

On CPU the torch thread count is part of the policy: float32 reductions split differently across threads, so
training with 1 or 2 threads gives weights that differ in their last bits. It is recorded in CPU keys (not in
CUDA keys, where the GPU computes) and every worker of every executor uses it, so an executor never changes
a number.

Pass sizes are part of the policy too (:data:`PASS_ROWS`): how many rows one forward pass may hold, per device
type. A CPU runs fastest per row on small passes (cache), a GPU on large ones. Another pass size moves a score
in its last bits (tests/test_compute.py: not bit-identical, within 1e-4 relative on CPU), so the device's table
is recorded in its keys and retuning it never mixes scores of two tables. Noise is drawn on the CPU from per-example
generators; :func:`to_device` copies it to a GPU from pinned memory without blocking, so the host draws the
next noise while the GPU computes, and the bits are the CPU's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ood_bench.errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16")

PASS_ROWS: dict[str, dict[str, int]] = {
    # CPU: larger vae / hvae passes run slower per row (cache misses); the regret sizes bound memory.
    "cpu": {"vae": 512, "hvae": 256, "regret_iwae": 1024, "regret_encoders": 32},
    # Sized for memory, not tuned on a GPU: one 28x28 feature map of the paper profile's 64-channel hvae is
    # 0.8 GB at 4096 rows in float32; the regret encoders hold one encoder copy per example.
    "cuda": {"vae": 16384, "hvae": 4096, "regret_iwae": 16384, "regret_encoders": 512},
}
"""Rows per forward pass by device type and pass: ``vae`` / ``hvae`` (a backbone's bound), ``regret_iwae``
(likelihood regret's IWAE passes) and ``regret_encoders`` (examples whose encoder copies are optimised
together)."""


@dataclass(frozen=True)
class Compute:
    """How a run computes. ``device`` is a torch device string; the key fields omit the GPU index."""

    device: str = "cpu"
    precision: str = "fp32"
    deterministic: bool = True
    threads: int = 1

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def key_fields(self) -> dict[str, Any]:
        """What checkpoint and score keys record: device type, precision, determinism, the device's pass sizes,
        and the thread count on CPU (not which GPU)."""
        fields = {"device": self.device_type, "precision": self.precision, "deterministic": self.deterministic,
                  "pass_rows": dict(PASS_ROWS[self.device_type])}
        if self.device_type == "cpu":
            fields["threads"] = self.threads
        return fields

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply(self) -> None:
        """Set torch's global numerics flags for this policy (idempotent; call in every computing process)."""
        cuda = self.device_type == "cuda"
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        torch.backends.cuda.matmul.allow_tf32 = cuda and self.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = cuda and self.precision == "tf32"
        if cuda:
            torch.backends.cudnn.benchmark = not self.deterministic
            torch.backends.cudnn.deterministic = self.deterministic
            if self.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(self.deterministic, warn_only=True)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The precision context of a forward pass (a no-op unless ``bf16``)."""
        if self.precision != "bf16":
            yield
            return
        with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16):
            yield


def pass_rows(device: torch.device | str, what: str) -> int:
    """The most rows one ``what`` pass (a key of the :data:`PASS_ROWS` tables) holds on ``device`` (a device
    type without a table, e.g. a model moved to ``mps`` through the API, gets the CPU's smaller passes)."""
    return PASS_ROWS.get(torch.device(device).type, PASS_ROWS["cpu"])[what]


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device``. To a GPU the copy goes from pinned memory and does not block the
    host, so noise drawn on the CPU for the next pass overlaps the GPU's work on this one; same bits."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def resolve_compute(device: str = "cpu", precision: str = "fp32", threads: int | None = None) -> Compute:
    """The policy for ``--device`` (cpu, cuda, cuda:N, auto), ``--precision`` and ``--threads`` (default: torch's
    default for this machine, one per core); a UserError if unusable here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"Unknown device '{device}'. Allowed values: cpu, cuda, cuda:N, auto.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was requested but this machine has no usable CUDA GPU "
                        f"(torch {torch.__version__}). Use --device cpu, or install a CUDA build of torch.")
    if precision not in PRECISIONS:
        raise UserError(f"Unknown precision '{precision}'. Allowed values: {', '.join(PRECISIONS)} "
                        f"(fp32 is exact and the default).")
    if precision == "tf32" and not device.startswith("cuda"):
        raise UserError("--precision tf32 needs a CUDA device (TF32 is a GPU tensor-core format); "
                        "use --device cuda, or --precision fp32 on CPU.")
    if threads is None:
        threads = DEFAULT_THREADS
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads must be a positive integer, got {threads!r}.")
    return Compute(device=device, precision=precision, deterministic=True, threads=threads)


DEFAULT_THREADS = torch.get_num_threads()
"""torch's thread count at import, before any policy changed it: one per core unless OMP_NUM_THREADS says."""
