"""Detectors: each turns a backbone and an example into a per-example OOD score (higher = more OOD).

``get(name)`` and ``names()`` look detectors up in the registry, plugins included (``ob.detectors.get("llr")``).
"""

from ood_bench.detectors.base import Batch, Detector


def get(name: str) -> type[Detector]:
    """The registered detector class called ``name`` (a UserError lists the registered names)."""
    from ood_bench.registry import registry

    return registry("detectors").get(name)


def names() -> list[str]:
    """Every registered detector name, plugins included."""
    from ood_bench.registry import registry

    return sorted(registry("detectors").entries)


__all__ = ["Batch", "Detector", "get", "names"]
