"""The per-run HDF5 score store, resumable and safe against kill -9 and concurrent runs.

Layout of ``<run_dir>/scores.h5``: one group ``/scores/<key>`` per finished score array, with one
float64 dataset per detector output and the key's fields as JSON in the ``key`` attribute.

Why two stages: HDF5 has no journal, so a process killed while it writes into the file can leave
it unreadable, losing every finished score. Scores are therefore first written chunk by chunk as
small ``.npz`` files under ``<run_dir>/.pending/<key>/`` (:func:`ood_bench.files.write_atomic`, so a
chunk is either complete or absent). Finished keys are merged in batches (:meth:`ScoreStore.finalize_many`)
into a copy of the store, which then atomically replaces ``scores.h5`` under an exclusive file lock: one
copy per batch, not per key. Readers therefore always see a complete file, concurrent writers never lose
each other's updates, and a killed run resumes at the first missing chunk.

Integrity: every stored array carries the sha256 of its bytes and its length, checked on every read. A key that
fails (flipped values, a shortened dataset) or a file that is not a readable store raises
:class:`~ood_bench.errors.DamagedStore` to readers (``show``, ``compare``, ``report``); a run calls
:meth:`ScoreStore.repair` first, which drops damaged keys (or moves an unreadable file aside) so that they are
recomputed, never used. A pending chunk that cannot be read is deleted and rescored. Two runs scoring the same key
compute the same bits (scores are deterministic), so whichever finalizes it first wins and the other
drops its chunks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ood_bench.errors import DamagedStore
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
    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as exc:  # truncated, zeroed, or not HDF5 at all
            raise DamagedStore(self.path, f"is not a readable HDF5 file ({exc})") from None

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The finished scores of ``key`` (output name -> float64 array), checked against their checksums, or
        None; :class:`DamagedStore` when they fail the check."""
        if not self.path.exists():
            return None
        with self._open() as f:
            group = f.get(f"scores/{key}")
            if group is None:
                return None
            return {name: _verified(self.path, key, name, ds) for name, ds in group.items()}

    def outputs(self, key: str) -> list[str]:
        """The output names stored under ``key`` (empty when it is not finished), without reading the values."""
        if not self.path.exists():
            return []
        with self._open() as f:
            group = f.get(f"scores/{key}")
            return sorted(group) if group is not None else []

    def keys(self) -> dict[str, dict[str, Any]]:
        """Every finished key with its fields."""
        if not self.path.exists():
            return {}
        with self._open() as f:
            try:
                return {k: json.loads(g.attrs["key"]) for k, g in f.get("scores", {}).items()}
            except (KeyError, ValueError, OSError) as exc:
                raise DamagedStore(self.path, f"has an unreadable key record ({exc})") from None

    def attrs(self) -> dict[str, Any]:
        """Provenance attributes of the store (JSON-decoded)."""
        if not self.path.exists():
            return {}
        with self._open() as f:
            return {k: json.loads(v) for k, v in f.attrs.items()}

    def repair(self) -> list[str]:
        """Make the store safe to resume: an unreadable file is moved aside (``scores.h5.damaged``), keys whose
        arrays fail their checksums are deleted. Returns what was done, one line each; a run recomputes it."""
        if not self.path.exists():
            return []
        try:
            with self._open() as f:
                damaged = []
                for key, group in f.get("scores", {}).items():
                    try:
                        json.loads(group.attrs["key"])
                        for name, ds in group.items():
                            _verified(self.path, key, name, ds)
                    except (DamagedStore, KeyError, ValueError, OSError):
                        damaged.append(key)
        except DamagedStore:
            aside = self.path.with_name(self.path.name + ".damaged")
            with file_lock(self.lock_path):
                if self.path.exists():
                    self.path.replace(aside)
            return [f"{self.path} is not a readable HDF5 file: moved to {aside.name}; every score is recomputed"]
        if damaged:
            def drop(f: h5py.File) -> None:
                for key in damaged:
                    if f"scores/{key}" in f:
                        del f[f"scores/{key}"]

            self._update(drop)
        return [f"{self.path}: key {key[:12]} failed its checksum; dropped, it is recomputed" for key in damaged]

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

        def write(f) -> None:
            np.savez(f, __indices__=np.asarray(indices, dtype=np.int64), **arrays)

        try:
            write_atomic(final, write)
        except FileNotFoundError:
            # another run finalized this key and removed its pending folder while we wrote into it
            if key not in self.keys():
                write_atomic(final, write)

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
                    ds = group.create_dataset(name, data=values, dtype="f8")
                    ds.attrs["sha256"], ds.attrs["n"] = _checksum(values), len(values)

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
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                path.unlink(missing_ok=True)  # damaged (its zip CRC failed, or truncated): rescored, never used
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


def _checksum(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f8").tobytes()).hexdigest()


def _verified(path: Path, key: str, name: str, ds: h5py.Dataset) -> np.ndarray:
    """The dataset's values if they match the checksum and length recorded when they were stored."""
    try:
        values = np.asarray(ds[()], dtype=np.float64)
    except OSError as exc:
        raise DamagedStore(path, f"output '{name}' cannot be read ({exc})", key) from None
    expected = ds.attrs.get("sha256")
    if expected is None:  # written before checksums existed: nothing to compare with
        return values
    n = int(ds.attrs.get("n", -1))
    if values.shape != (n,):
        raise DamagedStore(path, f"output '{name}' holds {values.shape[0] if values.ndim else 0} values where "
                                 f"{n} were stored", key)
    if _checksum(values) != expected:
        raise DamagedStore(path, f"output '{name}' no longer matches the checksum recorded when it was stored", key)
    return values
