"""ood-bench: a benchmark harness for unsupervised OOD detection with deep generative models.

The Python API (docs/api.md), imported on first use::

    import ood_bench as ob
    run = ob.run_suite("suites/fmnist.yaml", overrides={"evaluation.max_examples": 1000})
    run.leaderboard()
    det = ob.detectors.get("llr")(iwae_samples=32)
    scores = ob.score(det, ob.load_backbone(run.checkpoint("hvae")), images_uint8, seed=0)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"run_suite", "score", "load_backbone", "as_image_set", "suite_data", "Run"}
__all__ = sorted(_API | {"detectors", "backbones", "datasets", "metrics", "load_suite", "__version__"})
# ``detectors`` and ``metrics`` are subpackages (``detectors.get(name)``); ``backbones`` and ``datasets`` are
# the registries themselves (``.get(name)``, ``.entries``).


def __getattr__(name: str) -> Any:
    """Load the API lazily, so ``import ood_bench`` stays cheap and free of import cycles."""
    if name in _API:
        from ood_bench import api

        return getattr(api, name)
    if name in ("detectors", "metrics"):
        import importlib

        return importlib.import_module(f"ood_bench.{name}")
    if name in ("backbones", "datasets"):
        from ood_bench.registry import registry

        return registry(name)
    if name == "load_suite":
        from ood_bench.suite.load import load_suite

        return load_suite
    raise AttributeError(f"module 'ood_bench' has no attribute {name!r}")
