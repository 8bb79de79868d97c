"""Loading splits as ImageSets, with a decoded-array cache; fetching, verifying and reporting dataset files.

A split's fingerprint is a digest of (dataset, split, parameters, checksums of the source files, reader
revision). Decoded arrays are cached as ``<data dir>/cache/<dataset>/<split>-<fingerprint>.npy``, so a
second load skips decoding and hashing; the cache is only ever written from verified files.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ood_bench.data import sources
from ood_bench.data.definitions import DatasetDef, SourceFormat
from ood_bench.data.imageset import ImageSet
from ood_bench.data.registry import available_datasets, get_dataset, plugin_errors
from ood_bench.errors import DatasetMissing
from ood_bench.files import write_atomic, write_text_atomic
from ood_bench.hashing import digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyResult:
    """One local copy of a dataset file (or its absence): status is ok, corrupt, unverified or missing."""

    dataset: str
    filename: str
    status: str
    origin: str | None = None
    path: Path | None = None
    detail: str = ""


@dataclass(frozen=True)
class DatasetStatus:
    """Whether each split can be loaded without downloading, and from where."""

    name: str
    description: str
    splits: tuple[str, ...]
    available: bool
    sources: dict[str, str] = field(default_factory=dict)
    fetch_command: str | None = None
    notes: str = ""

    @property
    def where(self) -> str:
        """The sources as one line: "mirror", or "train: missing; test: mirror" when splits differ."""
        if len(set(self.sources.values())) == 1:
            return next(iter(self.sources.values()))
        return "; ".join(f"{split}: {source}" for split, source in self.sources.items())


def fetch_command(name: str) -> str:
    """The CLI command that downloads a dataset's files."""
    return f"ood-bench data fetch {name}"


# --- fingerprints and the decoded-array cache -----------------------------------------------------------
def _source_fingerprint(definition: DatasetDef, split: str, source: SourceFormat) -> str:
    checksums = [f"{f.filename}={f.checksum or 'unverified'}" for f in source.files]
    return digest("dataset", definition.name, split, {}, checksums, source.revision)


def _cache_path(name: str, split: str, fingerprint: str) -> Path:
    return sources.data_dir() / "cache" / name / f"{split}-{fingerprint[:32]}.npy"


def _pixels_digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_cache(path: Path) -> np.ndarray | None:
    """The decoded array cached at ``path`` if it matches the digest written with it; else None (and the
    cache is deleted, so the caller decodes the verified source files again)."""
    if not path.is_file():
        return None
    try:
        images = np.load(path, allow_pickle=False)
        expected = _digest_path(path).read_text().strip()
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable cache %s: %s", path, error)
        images, expected = None, None
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or _pixels_digest(images) != expected):
        log.warning("ignoring damaged cache %s (its pixels do not match the digest written with it); decoding "
                    "the source files again", path)
        images = None
    if images is None:
        path.unlink(missing_ok=True)
        _digest_path(path).unlink(missing_ok=True)
    return images


def _write_cache(path: Path, images: np.ndarray) -> None:
    try:
        write_atomic(path, lambda f: np.save(f, images, allow_pickle=False))
        write_text_atomic(_digest_path(path), _pixels_digest(images) + "\n")
    except OSError as error:
        log.warning("could not cache %s: %s", path, error)


def _checked(images: np.ndarray, where: str) -> np.ndarray:
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{where} produced {images.dtype} {images.shape}, expected non-empty uint8 "
                         f"(N, C, H, W)")
    return images


# --- resolving files ------------------------------------------------------------------------------------
def _resolve(name: str, source: SourceFormat, problems: list[str], *, download: bool,
             allow_unverified: bool = False) -> dict[str, Path] | None:
    """Verified local paths for every file of ``source`` (downloading if allowed), or None."""
    paths = {}
    for remote in source.files:
        found = sources.locate(name, remote, problems)
        if found is not None:
            paths[remote.filename] = found[1]
            continue
        if not download:
            return None
        path = sources.download(name, remote, problems, allow_unverified=allow_unverified)
        if path is None:
            return None
        paths[remote.filename] = path
    return paths


def _missing_detail(definition: DatasetDef, split: str, problems: list[str], downloaded: bool) -> str:
    mirror = sources.mirror_dir()
    files = ", ".join(f.filename for f in definition.remote_files(split))
    places = [f"the data dir ({sources.data_dir() / definition.name})",
              f"the mirror ({mirror})" if mirror else f"a mirror (${sources.MIRROR_ENV} is not set)"]
    detail = f"split {split!r} needs {files}; no verified copy was found in {' or '.join(places)}"
    detail += "." if downloaded else ", and downloading was not requested."
    return " ".join([detail, *dict.fromkeys(problems)])


# --- public API -----------------------------------------------------------------------------------------
def load_split(name: str, split: str = "test", params: Mapping[str, Any] | None = None,
               download: bool = False) -> ImageSet:
    """Load one split as an ImageSet named ``<name>/<split>``.

    Source formats are tried in order of preference (official first); the first one that is cached or whose
    files are all present and verified is used. With ``download`` the official files are downloaded when
    nothing local works. Raises DatasetMissing when no source is available, UserError for a bad name, split
    or parameter.
    """
    definition = get_dataset(name)
    definition.check_split(split)
    checked = definition.check_params(params)
    if definition.loader is not None:
        return _load_from_loader(definition, split, checked)
    problems: list[str] = []
    candidates = definition.sources[split]
    for source in candidates:
        fingerprint = _source_fingerprint(definition, split, source)
        cache = _cache_path(definition.name, split, fingerprint)
        cached = _read_cache(cache)
        if cached is not None:
            return ImageSet(f"{definition.name}/{split}", cached, fingerprint)
        if all(sources.any_copy_exists(definition.name, f) for f in source.files):
            paths = _resolve(definition.name, source, problems, download=False)
            if paths is not None:
                return _decode(definition, split, source, paths, fingerprint, cache)
    if download:
        for source in candidates:
            if all(f.urls for f in source.files):
                paths = _resolve(definition.name, source, problems, download=True)
                if paths is not None:
                    fingerprint = _source_fingerprint(definition, split, source)
                    cache = _cache_path(definition.name, split, fingerprint)
                    return _decode(definition, split, source, paths, fingerprint, cache)
    raise DatasetMissing(definition.name, _missing_detail(definition, split, problems, download))


def _decode(definition: DatasetDef, split: str, source: SourceFormat, paths: dict[str, Path],
            fingerprint: str, cache: Path) -> ImageSet:
    log.info("decoding %s/%s from %s", definition.name, split, source.label)
    images = _checked(source.reader(paths), f"{definition.name}/{split} ({source.label})")
    if definition.cache:
        _write_cache(cache, images)
    return ImageSet(f"{definition.name}/{split}", images, fingerprint)


def _load_from_loader(definition: DatasetDef, split: str, params: dict[str, Any]) -> ImageSet:
    in_fingerprint = {k: v for k, v in params.items() if definition.params[k].in_fingerprint}
    identity = definition.identify(params) if definition.identify else None
    fingerprint = digest("dataset", definition.name, split, in_fingerprint, identity, definition.revision)
    cache = _cache_path(definition.name, split, fingerprint)
    images = _read_cache(cache) if definition.cache else None
    if images is None:
        images = _checked(definition.loader(split, params), f"{definition.name}/{split}")
        if definition.cache:
            _write_cache(cache, images)
    return ImageSet(f"{definition.name}/{split}", images, fingerprint)


def fetch(name: str, *, allow_download: bool = True, allow_unverified: bool = False) -> list[Path]:
    """Make every split's files available locally, verified; return their paths.

    Per split, in order: the official files from a local copy (data dir, mirror, OS package), else downloaded
    into the data dir, else a local mirror format. A file without a published checksum is only downloaded
    with ``allow_unverified=True``, and its sha256 is then pinned for later checks.
    """
    definition = get_dataset(name)
    found: list[Path] = []
    missing: list[str] = []
    for split in definition.splits if definition.loader is None else ():
        attempts = []
        for source in definition.sources[split]:
            attempts.append((source, False))
            if allow_download and all(f.urls for f in source.files):
                attempts.append((source, True))
        problems: list[str] = []
        for source, download in attempts:
            paths = _resolve(definition.name, source, problems, download=download,
                             allow_unverified=allow_unverified)
            if paths is not None:
                found.extend(p for p in paths.values() if p not in found)
                if problems:
                    log.warning("%s/%s: used %s after: %s", name, split, source.label, " ".join(problems))
                break
        else:
            missing.append(_missing_detail(definition, split, problems, allow_download))
    if missing:
        raise DatasetMissing(definition.name, " ".join(missing))
    return found


def verify(name: str | None = None) -> list[VerifyResult]:
    """Re-hash every local copy of every catalogued file (of one dataset, or all) and report each."""
    names = [get_dataset(name).name] if name is not None else list(available_datasets())
    results = []
    for dataset_name in names:
        definition = get_dataset(dataset_name)
        files = []
        for split in definition.splits if definition.loader is None else ():
            files.extend(f for f in definition.remote_files(split) if f not in files)
        for remote in files:
            present = [(origin, path) for origin, path in sources.candidates(dataset_name, remote)
                       if path.is_file()]
            for origin, path in present:
                check = sources.check_file(path, remote)
                results.append(VerifyResult(dataset_name, remote.filename, check.status, origin, path,
                                            check.detail))
            if not present:
                results.append(VerifyResult(dataset_name, remote.filename, "missing",
                                            detail="not in the data dir, the mirror or a system package"))
    return results


def _split_source(definition: DatasetDef, split: str) -> tuple[str, SourceFormat] | None:
    """Where ``split`` would load from now without downloading (existence only), and in which format."""
    for source in definition.sources[split]:
        label = "" if source.official else f" [{source.label}]"
        if _cache_path(definition.name, split, _source_fingerprint(definition, split, source)).is_file():
            return "decoded cache" + label, source
        origins = []
        for remote in source.files:
            origin = next((o for o, p in sources.candidates(definition.name, remote) if p.is_file()), None)
            if origin is None:
                break
            origins.append(origin)
        else:
            return " + ".join(dict.fromkeys(origins)) + label, source
    return None


def data_status() -> list[DatasetStatus]:
    """Per dataset: which splits load offline and from where, and the command that fetches the rest.

    Only existence is checked here (fast); ``verify`` hashes the files, and every load verifies before use.
    """
    statuses = []
    for name, definition in available_datasets().items():
        if definition.loader is not None:
            where = "generated from its parameters" if definition.synthetic else "read from params['path']"
            statuses.append(DatasetStatus(name, definition.description, definition.splits, True,
                                          dict.fromkeys(definition.splits, where), None, definition.notes))
            continue
        found = {split: _split_source(definition, split) for split in definition.splits}
        where = {split: hit[0] if hit else "missing" for split, hit in found.items()}
        notes = [definition.notes] + [hit[1].note for hit in found.values() if hit and not hit[1].official]
        available = None not in found.values()
        statuses.append(DatasetStatus(name, definition.description, definition.splits, available, where,
                                      fetch_command(name), " ".join(dict.fromkeys(n for n in notes if n))))
    for name, error in plugin_errors().items():
        statuses.append(DatasetStatus(name, "plugin failed to load", (), False, {}, None, error))
    return statuses
