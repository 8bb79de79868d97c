"""Plugin discovery through Python entry points: the one registry of detectors, backbones and datasets.

Built-ins register through the same entry-point groups (in ood-bench's pyproject.toml) as third-party
packages, so there is one code path and ``ood-bench list`` shows everything. A plugin that fails to
load, or loads something of the wrong type, is reported by name with its error and skipped; the other
entries still work.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points

from ood_bench.errors import UserError

GROUPS = {
    "detectors": "ood_bench.detectors",
    "backbones": "ood_bench.backbones",
    "datasets": "ood_bench.datasets",
}


class PluginLoadWarning(UserWarning):
    """An entry point could not be loaded; everything else still works."""


@dataclass(frozen=True)
class Registry:
    """What one entry-point group provides: loaded objects, and entries that failed to load."""

    kind: str
    entries: dict[str, object]
    failures: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> object:
        """The object registered as ``name`` (case-insensitive), or a UserError listing the allowed names."""
        key = name if name in self.entries or name in self.failures else str(name).lower()
        if key in self.entries:
            return self.entries[key]
        singular = self.kind[:-1]
        if key in self.failures:
            raise UserError(f"The {singular} '{name}' is provided by a plugin that failed to load: "
                            f"{self.failures[key]}. Fix or reinstall the package that provides it.")
        allowed = ", ".join(sorted(self.entries)) or "(none)"
        raise UserError(f"Unknown {singular} '{name}'. Allowed {self.kind}: {allowed}.")


def _type_error(kind: str, name: str, obj: object) -> str | None:
    """Why ``obj`` cannot be the ``kind`` entry ``name``, or None when it can."""
    if kind == "datasets":
        from ood_bench.data.definitions import DatasetDef

        if not isinstance(obj, DatasetDef):
            return f"it is a {type(obj).__name__}, not a DatasetDef"
        if obj.name != name:
            return f"it is named {obj.name!r}, not {name!r} as its entry point says"
    elif kind == "detectors":
        from ood_bench.detectors.base import Detector

        if not (isinstance(obj, type) and issubclass(obj, Detector)):
            return "it is not a subclass of ood_bench.detectors.Detector"
    elif not (isinstance(obj, type) and hasattr(obj, "from_params") and hasattr(obj, "validate_params")):
        return "it is not a backbone class (needs from_params and validate_params)"
    return None


@cache
def registry(kind: str) -> Registry:
    """Load every entry point of one group ("detectors", "backbones" or "datasets")."""
    entries: dict[str, object] = {}
    failures: dict[str, str] = {}
    for ep in entry_points(group=GROUPS[kind]):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            failures[ep.name] = f"cannot load {ep.value}: {type(exc).__name__}: {exc}"
            continue
        problem = _type_error(kind, ep.name, obj)
        if problem is None and ep.name in entries:
            problem = "another entry point already registered this name; ignored"
        if problem:
            failures[ep.name] = f"{ep.value}: {problem}"
        else:
            entries[ep.name] = obj
    for name, error in failures.items():
        warnings.warn(f"{kind[:-1]} plugin {name!r} skipped: {error}", PluginLoadWarning, stacklevel=2)
    return Registry(kind, entries, failures)


def reload() -> None:
    """Forget every discovered entry point, so the next lookup reads them again."""
    registry.cache_clear()
