"""The per-run HDF5 score store, resumable and safe against kill -9 and concurrent runs.

Layout of ``<run_dir>/scores.h5``: one group ``/scores/<key>`` per finished score array, with one
float64 dataset per detector output and the key's fields as JSON in the ``key`` attribute.

Why two stages: HDF5 has no journal, so a process killed while it writes into the file can leave
it unreadable, losing every finished score. Scores are therefore first written chunk by chunk as
small ``.npz`` files under ``<run_dir>/.pending/<key>/`` (:func:`ood_bench.files.write_atomic`, so a
chunk is either complete or absent). Finished keys are merged in batches (:meth:`ScoreStore.finalize_many`)
into a copy of the store, which then atomically replaces ``scores.h5`` under an exclusive file lock: one
copy per batch, not per key. Readers therefore always see a complete file, concurrent writers never lose
each other's updates, and a killed run resumes at the first missing chunk. Two runs scoring the same key
compute the same bits (scores are deterministic), so whichever finalizes it first wins and the other
drops its chunks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ood_bench.files import atomic_path, file_lock, stale_temporaries, write_atomic
from ood_bench.hashing import canonical_json

STORE_NAME = "scores.h5"


@dataclass(frozen=True)
class Finished:
    """A key whose examples are all scored in pending chunks: what :meth:`ScoreStore.finalize_many` merges."""

    key: str
    fields: dict[str, Any]
    n: int


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
        for indices, _ in self._chunks(key):
            mask[indices] = True
        return mask

    # ----------------------------------------------------------------------------------- writing
    def write_chunk(self, key: str, indices: np.ndarray, scores: dict[str, np.ndarray]) -> None:
        """Persist the scores of some examples of ``key`` atomically (complete or absent)."""
        arrays = {name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}
        for name, values in arrays.items():
            if values.shape != indices.shape:
                raise ValueError(f"output {name!r} has {values.shape} scores for {indices.shape} examples")
        final = self.pending_dir / key / f"{int(indices[0]):09d}-{len(indices)}.npz"
        write_atomic(final, lambda f: np.savez(f, __indices__=np.asarray(indices, dtype=np.int64), **arrays))

    def finalize(self, key: str, fields: dict[str, Any], n: int) -> dict[str, np.ndarray]:
        """Merge the pending chunks of one key into the HDF5 store and return its full arrays."""
        self.finalize_many([Finished(key, fields, n)])
        scores = self.get(key)
        assert scores is not None
        return scores

    def finalize_many(self, finished: Iterable[Finished]) -> None:
        """Merge the pending chunks of several keys into the store with one copy of ``scores.h5``.

        A key that another process finalized meanwhile keeps the stored arrays (equal by determinism) and its
        leftover chunks are dropped; a key with unscored examples and no stored arrays is a RuntimeError.
        """
        finished = list(finished)
        if not finished:
            return
        done = set(self.keys())
        merged: dict[str, dict[str, np.ndarray]] = {}
        for item in finished:
            if item.key in done:
                continue
            arrays: dict[str, np.ndarray] = {}
            seen = np.zeros(item.n, dtype=bool)
            for idx, chunk in self._chunks(item.key):
                for name, values in chunk.items():
                    arrays.setdefault(name, np.full(item.n, np.nan))[idx] = values
                seen[idx] = True
            if not seen.all():
                if item.key in self.keys():  # finalized by another run since we looked
                    continue
                raise RuntimeError(f"cannot finalize {item.key[:12]}: {int((~seen).sum())} of {item.n} "
                                   f"examples unscored")
            merged[item.key] = arrays
        fields = {item.key: item.fields for item in finished}

        def write(f: h5py.File) -> None:
            for key, arrays in merged.items():
                path = f"scores/{key}"
                if path in f:
                    continue  # another run stored it while we merged: the same bits
                group = f.create_group(path)
                group.attrs["key"] = canonical_json(fields[key])
                for name, values in arrays.items():
                    group.create_dataset(name, data=values, dtype="f8")

        if merged:
            self._update(write)
        for item in finished:
            shutil.rmtree(self.pending_dir / item.key, ignore_errors=True)

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        """Record provenance attributes (values JSON-encoded) on the store."""

        def write(f: h5py.File) -> None:
            for k, v in attrs.items():
                f.attrs[k] = canonical_json(v)

        self._update(write)

    # ----------------------------------------------------------------------------------- internals
    def _chunks(self, key: str) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(indices, arrays) of every pending chunk of ``key``; chunks removed meanwhile by a run that
        finalized the key are skipped."""
        folder = self.pending_dir / key
        out = []
        for path in sorted(folder.glob("*.npz")) if folder.exists() else []:
            try:
                with np.load(path) as data:
                    out.append((data["__indices__"], {n: data[n] for n in data.files if n != "__indices__"}))
            except FileNotFoundError:
                continue
        return out

    def _update(self, write) -> None:
        """Copy the store, apply ``write`` to the copy, and atomically swap it in, under the lock."""
        with file_lock(self.lock_path):
            for stale in stale_temporaries(self.run_dir, STORE_NAME):
                stale.unlink(missing_ok=True)  # left behind by a killed writer; we hold the lock

            with atomic_path(self.path) as tmp:
                if self.path.exists():
                    shutil.copyfile(self.path, tmp)
                with h5py.File(tmp, "a") as f:
                    write(f)
