"""The datasets of the registry (``ood_bench.registry``, entry-point group ``ood_bench.datasets``).

A plugin package declares, in its pyproject.toml::

    [project.entry-points."ood_bench.datasets"]
    mydata = "my_package.datasets:MYDATA"     # a DatasetDef whose name is "mydata"
"""

from __future__ import annotations

from ood_bench.data.definitions import DatasetDef
from ood_bench.registry import registry


def available_datasets() -> dict[str, DatasetDef]:
    """Every dataset that loaded, by name (built-ins and plugins)."""
    return dict(registry("datasets").entries)


def plugin_errors() -> dict[str, str]:
    """Dataset entry points that failed to load: name -> what went wrong."""
    return dict(registry("datasets").failures)


def get_dataset(name: str) -> DatasetDef:
    """The dataset called ``name`` (case-insensitive); UserError listing the allowed names otherwise."""
    return registry("datasets").get(name)
