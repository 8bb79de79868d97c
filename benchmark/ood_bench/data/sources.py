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
import http.client
import logging
import os
import socket
import time
import urllib.error
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


DOWNLOAD_ATTEMPTS_ENV = "OOD_BENCH_DOWNLOAD_ATTEMPTS"
BACKOFF_S = 2.0
"""Wait before the second attempt of a URL; doubled before each later one."""


def _attempts() -> int:
    try:
        return max(1, int(os.environ.get(DOWNLOAD_ATTEMPTS_ENV, "4")))
    except ValueError:
        return 4


def _transient(error: Exception) -> bool:
    """Whether trying the same URL again may succeed: a server error, a timeout or a dropped connection, but
    not a missing file (HTTP 4xx) or a name that does not resolve (no network)."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code == 429
    if isinstance(error, urllib.error.URLError):
        return not isinstance(error.reason, socket.gaierror)
    return isinstance(error, (TimeoutError, ConnectionError, http.client.HTTPException))


def _fetch(url: str, part: Path, description: str) -> str | None:
    """Download ``url`` to ``part`` with size and progress shown, retrying transient failures with
    exponential backoff; None on success, otherwise what went wrong."""
    from rich.console import Console

    from ood_bench.progress import track

    attempts = _attempts()
    for attempt in range(1, attempts + 1):
        log.info("downloading %s (attempt %d of %d)", url, attempt, attempts)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "ood-bench"})
            with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
                size = int(response.headers.get("Content-Length") or 0)
                console = Console(stderr=True)
                console.print(f"{description}: {size / 2**20:.1f} MiB from {url}" if size else
                              f"{description} from {url} (size not given)", highlight=False)
                with track(console, description, max(size // 1024, 1), unit="KiB") as progress:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        progress.advance(len(block) // 1024)
            return None
        except (OSError, ValueError, http.client.HTTPException) as error:
            if attempt == attempts or not _transient(error):
                return f"{error}" + (f" (after {attempt} attempts)" if attempt > 1 else "")
            wait = BACKOFF_S * 2 ** (attempt - 1)
            log.warning("download of %s failed (%s); retrying in %.0f s", url, error, wait)
            time.sleep(wait)
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
        error = _fetch(url, part, f"downloading {dataset}/{remote.filename}")
        if error is not None:
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
