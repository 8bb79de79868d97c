"""User-facing errors: one paragraph saying what was wrong and how to fix it, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (suite, data, command line) rather than a bug.

    The CLI prints ``str(error)`` as one paragraph and exits with status 2, without a traceback.
    """

    exit_code = 2


class DatasetMissing(UserError):
    """A dataset's files are neither cached, in the mirror, nor downloadable right now."""

    def __init__(self, name: str, detail: str):
        self.name = name
        self.fetch_command = f"ood-bench data fetch {name}"
        super().__init__(
            f"Dataset '{name}' is not available on this machine: {detail} "
            f"Get it with `{self.fetch_command}` (needs internet), or point OOD_BENCH_MIRROR at a "
            f"directory holding a copy of its files."
        )


class DamagedStore(UserError):
    """A run's score store, or one key in it, failed its integrity check (unreadable, or a checksum mismatch)."""

    def __init__(self, path: object, detail: str, key: str | None = None):
        self.key = key
        what = f"the scores of key {key[:12]}" if key else "the file"
        super().__init__(f"The score store {path} is damaged: {what} {detail}. Its scores cannot be trusted and are "
                         f"not used; run the suite again (`ood-bench run SUITE` with the same --results) to "
                         f"recompute the damaged scores.")
