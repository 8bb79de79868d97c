"""Plugin discovery through Python entry points.

Built-in detectors, backbones and datasets register through the same entry-point groups as
third-party packages, so there is one code path and ``ood-bench list`` shows everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points

from ood_bench.errors import UserError

GROUPS = {
    "detectors": "ood_bench.detectors",
    "backbones": "ood_bench.backbones",
    "datasets": "ood_bench.datasets",
}


@dataclass(frozen=True)
class Registry:
    """What one entry-point group provides: loaded objects, and plugins that failed to import."""

    kind: str
    entries: dict[str, object]
    failures: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> object:
        """The object registered as ``name``, or a UserError that lists the allowed names."""
        if name in self.entries:
            return self.entries[name]
        if name in self.failures:
            raise UserError(
                f"The {self.kind[:-1]} '{name}' is registered but its plugin failed to import: "
                f"{self.failures[name]}. Fix or reinstall the package that provides it."
            )
        allowed = ", ".join(sorted(self.entries)) or "(none)"
        raise UserError(f"Unknown {self.kind[:-1]} '{name}'. Allowed values: {allowed}.")


@cache
def registry(kind: str) -> Registry:
    """Load every entry point of one group ("detectors", "backbones" or "datasets")."""
    entries: dict[str, object] = {}
    failures: dict[str, str] = {}
    for ep in entry_points(group=GROUPS[kind]):
        try:
            entries[ep.name] = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            failures[ep.name] = f"{type(exc).__name__}: {exc}"
    return Registry(kind, entries, failures)
