"""The per-run HDF5 score store, resumable and safe against kill -9 and concurrent runs.

Layout of ``<run_dir>/scores.h5``: one group ``/scores/<key>`` per finished score array, with one
float64 dataset per detector output and the key's fields as JSON in the ``key`` attribute.

Why two stages: HDF5 has no journal, so a process killed while it writes into the file can leave
it unreadable, losing every finished score. Scores are therefore first written chunk by chunk as
small ``.npz`` files under ``<run_dir>/.pending/<key>/`` (each written to a temporary name and renamed
into place, so a chunk is either complete or absent). When every example of a key is scored, its
chunks are merged into a copy of the store, which then atomically replaces ``scores.h5`` under an
exclusive file lock. Readers therefore always see a complete file, concurrent writers never lose
each other's updates, and a killed run resumes at the first missing chunk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ood_bench.hashing import canonical_json

STORE_NAME = "scores.h5"


class ScoreStore:
    """Read and write cached per-example scores of one run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        self.pending_dir = self.run_dir / ".pending"
        self.lock_path = self.run_dir / (STORE_NAME + ".lock")

    # ----------------------------------------------------------------------------------- reading
    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The finished scores of ``key`` (output name -> float64 array), or None."""
        if not self.path.exists():
            return None
        with h5py.File(self.path, "r") as f:
            group = f.get(f"scores/{key}")
            if group is None:
                return None
            return {name: np.asarray(ds[()], dtype=np.float64) for name, ds in group.items()}

    def keys(self) -> dict[str, dict[str, Any]]:
        """Every finished key with its fields."""
        if not self.path.exists():
            return {}
        with h5py.File(self.path, "r") as f:
            return {k: json.loads(g.attrs["key"]) for k, g in f.get("scores", {}).items()}

    def attrs(self) -> dict[str, Any]:
        """Provenance attributes of the store (JSON-decoded)."""
        if not self.path.exists():
            return {}
        with h5py.File(self.path, "r") as f:
            return {k: json.loads(v) for k, v in f.attrs.items()}

    def done_mask(self, key: str, n: int) -> np.ndarray:
        """Which of the ``n`` examples of ``key`` already have scores in pending chunks."""
        mask = np.zeros(n, dtype=bool)
        for chunk in self._chunk_files(key):
            mask[np.load(chunk)["__indices__"]] = True
        return mask

    # ----------------------------------------------------------------------------------- writing
    def write_chunk(self, key: str, indices: np.ndarray, scores: dict[str, np.ndarray]) -> None:
        """Persist the scores of some examples of ``key`` atomically (complete or absent)."""
        folder = self.pending_dir / key
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}
        for name, values in arrays.items():
            if values.shape != indices.shape:
                raise ValueError(f"output {name!r} has {values.shape} scores for {indices.shape} examples")
        final = folder / f"{int(indices[0]):09d}-{len(indices)}.npz"
        tmp = folder / f".{final.name}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, __indices__=np.asarray(indices, dtype=np.int64), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def finalize(self, key: str, fields: dict[str, Any], n: int) -> dict[str, np.ndarray]:
        """Merge the pending chunks of ``key`` into the HDF5 store and return the full arrays."""
        merged: dict[str, np.ndarray] = {}
        seen = np.zeros(n, dtype=bool)
        for chunk in self._chunk_files(key):
            data = np.load(chunk)
            idx = data["__indices__"]
            for name in data.files:
                if name != "__indices__":
                    merged.setdefault(name, np.full(n, np.nan))[idx] = data[name]
            seen[idx] = True
        if not seen.all():
            raise RuntimeError(f"cannot finalize {key[:12]}: {int((~seen).sum())} of {n} examples unscored")

        def write(f: h5py.File) -> None:
            path = f"scores/{key}"
            if path in f:
                del f[path]
            group = f.create_group(path)
            group.attrs["key"] = canonical_json(fields)
            for name, values in merged.items():
                group.create_dataset(name, data=values, dtype="f8")

        self._update(write)
        shutil.rmtree(self.pending_dir / key, ignore_errors=True)
        return merged

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        """Record provenance attributes (values JSON-encoded) on the store."""

        def write(f: h5py.File) -> None:
            for k, v in attrs.items():
                f.attrs[k] = canonical_json(v)

        self._update(write)

    # ----------------------------------------------------------------------------------- internals
    def _chunk_files(self, key: str) -> list[Path]:
        folder = self.pending_dir / key
        return sorted(folder.glob("*.npz")) if folder.exists() else []

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _update(self, write) -> None:
        """Copy the store, apply ``write`` to the copy, and atomically swap it in, under the lock."""
        with self._locked():
            tmp = self.run_dir / f".{STORE_NAME}.{uuid.uuid4().hex}.tmp"
            try:
                if self.path.exists():
                    shutil.copyfile(self.path, tmp)
                with h5py.File(tmp, "a") as f:
                    write(f)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
            for stale in self.run_dir.glob(f".{STORE_NAME}.*.tmp"):
                stale.unlink(missing_ok=True)  # left behind by a killed writer; we hold the lock
