"""Where a dataset file comes from, and proof that it is the right file.

A file is looked for, in order, in the data dir (``$OOD_BENCH_DATA/<dataset>/<filename>``), in the offline
mirror (``$OOD_BENCH_MIRROR/<mirror_path>``), and at paths where an OS package installs a copy; failing that
it is downloaded from its official URLs into the data dir. Every copy is checked against its published
checksum before use. A corrupt copy is reported (:class:`CorruptFileWarning`) and skipped; a corrupt copy in
the data dir is also renamed to ``*.corrupt`` so that it is fetched again.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from ood_bench.files import write_text_atomic
from ood_bench.hashing import hash_file

DATA_ENV = "OOD_BENCH_DATA"
MIRROR_ENV = "OOD_BENCH_MIRROR"
DEFAULT_DATA_DIR = "~/.cache/ood-bench/data"
# Sidecar written when a file without a published checksum is downloaded with allow_unverified=True:
# it pins the bytes seen at download time so later changes are still detected.
TRUSTED_SUFFIX = ".trusted-sha256"

log = logging.getLogger(__name__)


class CorruptFileWarning(UserWarning):
    """A local copy of a dataset file does not match its checksum and was not used."""


def data_dir() -> Path:
    """Where downloads and decoded-array caches live: ``$OOD_BENCH_DATA`` or ``~/.cache/ood-bench/data``."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser()


def mirror_dir() -> Path | None:
    """The offline mirror named by ``$OOD_BENCH_MIRROR``, or None when unset."""
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: official URLs and checksums, plus where offline copies may sit.

    ``payload_md5`` is the published md5 of a ``.gz`` file's decompressed bytes; it lets a recompressed copy
    with the same content (the Debian package's FashionMNIST files) pass verification.
    """

    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    mirror_path: str | None = None
    system_paths: tuple[str, ...] = ()
    payload_md5: str | None = None

    @property
    def checksum(self) -> str | None:
        """The strongest known checksum as ``"sha256:<hex>"`` / ``"md5:<hex>"``; None when unpublished."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return None


@dataclass(frozen=True)
class FileCheck:
    """The result of hashing one local copy: status is "ok", "corrupt" or "unverified"."""

    path: Path
    status: str
    detail: str


def _payload_md5(path: Path) -> str | None:
    h = hashlib.md5()
    try:
        with gzip.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except (OSError, EOFError):
        return None
    return h.hexdigest()


def check_file(path: Path, remote: RemoteFile) -> FileCheck:
    """Hash ``path`` and compare it with ``remote``'s checksum (sha256 preferred over md5)."""
    if remote.checksum is None:
        sidecar = path.with_name(path.name + TRUSTED_SUFFIX)
        if not sidecar.exists():
            return FileCheck(path, "unverified", "no published checksum")
        pinned = sidecar.read_text().strip()
        actual = hash_file(path)
        if actual == pinned:
            return FileCheck(path, "ok", "matches the sha256 pinned at download (no published checksum)")
        return FileCheck(path, "corrupt", f"sha256 {actual} differs from the one pinned at download {pinned}")
    algorithm, expected = remote.checksum.split(":")
    actual = hash_file(path, algorithm)
    if actual == expected:
        return FileCheck(path, "ok", f"{algorithm} matches")
    if remote.payload_md5 and remote.filename.endswith(".gz") and _payload_md5(path) == remote.payload_md5:
        return FileCheck(path, "ok", "recompressed copy; decompressed md5 matches the published one")
    return FileCheck(path, "corrupt", f"{algorithm} is {actual}, expected {expected}")


def local_path(dataset: str, remote: RemoteFile) -> Path:
    """Where the data dir keeps (or would download) this file."""
    return data_dir() / dataset / remote.filename


def candidates(dataset: str, remote: RemoteFile) -> list[tuple[str, Path]]:
    """Every place a copy may sit, as (origin, path), in the order they are tried."""
    found = [("data dir", local_path(dataset, remote))]
    mirror = mirror_dir()
    if mirror is not None:
        found.append(("mirror", mirror / (remote.mirror_path or f"{dataset}/{remote.filename}")))
    found.extend(("system package", Path(p)) for p in remote.system_paths)
    return found


def any_copy_exists(dataset: str, remote: RemoteFile) -> bool:
    """Cheap existence test (no hashing), used to decide which source format to try."""
    return any(path.is_file() for _, path in candidates(dataset, remote))


def _report_corrupt(where: str, detail: str, problems: list[str], action: str) -> None:
    message = f"{where} is corrupt ({detail}); {action}."
    warnings.warn(message, CorruptFileWarning, stacklevel=3)
    problems.append(message)


def locate(dataset: str, remote: RemoteFile, problems: list[str]) -> tuple[str, Path] | None:
    """The first verified local copy as (origin, path), or None; problems found on the way are appended."""
    for origin, path in candidates(dataset, remote):
        if not path.is_file():
            continue
        check = check_file(path, remote)
        if check.status == "ok":
            return origin, path
        if check.status == "unverified":
            problems.append(f"{path} cannot be verified: {remote.filename} has no published checksum; fetch "
                            f"it again with allow_unverified=True to trust it.")
            continue
        if origin == "data dir":
            quarantined = path.with_name(path.name + ".corrupt")
            try:
                os.replace(path, quarantined)
                action = f"moved to {quarantined.name} and will be fetched again"
            except OSError as error:
                action = f"ignored (could not move it aside: {error})"
            _report_corrupt(str(path), check.detail, problems, action)
        else:
            _report_corrupt(str(path), check.detail, problems, "ignored")
    return None


def download(dataset: str, remote: RemoteFile, problems: list[str], *,
             allow_unverified: bool = False) -> Path | None:
    """Download ``remote`` into the data dir from its first URL that yields a verified file."""
    if not remote.urls:
        problems.append(f"{remote.filename} has no download URL (it exists only as a mirror format).")
        return None
    if remote.checksum is None and not allow_unverified:
        problems.append(f"{remote.filename} has no published checksum, so a download cannot be verified; "
                        f"refusing it unless allow_unverified=True is given.")
        return None
    target = local_path(dataset, remote)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        problems.append(f"cannot create {target.parent} for the download: {error}.")
        return None
    part = target.with_name(f"{target.name}.{os.getpid()}.part")  # concurrent fetches must not collide
    for url in remote.urls:
        log.info("downloading %s", url)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "ood-bench"})
            with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (OSError, ValueError) as error:
            part.unlink(missing_ok=True)
            problems.append(f"download of {url} failed: {error}.")
            continue
        check = check_file(part, remote)
        if check.status == "corrupt":
            part.unlink()
            _report_corrupt(f"the download from {url}", check.detail, problems, "discarded")
            continue
        os.replace(part, target)
        if check.status == "unverified":
            write_text_atomic(target.with_name(target.name + TRUSTED_SUFFIX), hash_file(target) + "\n")
            log.warning("trusting %s without a published checksum (allow_unverified)", target)
        return target
    return None
