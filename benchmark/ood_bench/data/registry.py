"""The dataset registry: every dataset, built-in or plugin, comes from an ``ood_bench.datasets`` entry point.

A plugin package declares, in its pyproject.toml::

    [project.entry-points."ood_bench.datasets"]
    mydata = "my_package.datasets:MYDATA"     # a DatasetDef whose name is "mydata"

When ood-bench itself runs from a source checkout without being installed, its own entry points are absent;
the built-in table below (a copy of pyproject.toml's, kept equal by a test) is then loaded through the very
same code path. A plugin that fails to load is reported by name with its error and skipped.
"""

from __future__ import annotations

import functools
import warnings
from importlib.metadata import EntryPoint, entry_points

from ood_bench.data.definitions import DatasetDef
from ood_bench.errors import UserError

GROUP = "ood_bench.datasets"
_CATALOG = "ood_bench.data.catalog"
BUILTIN_ENTRY_POINTS = {
    "fashionmnist": f"{_CATALOG}:FASHIONMNIST",
    "mnist": f"{_CATALOG}:MNIST",
    "kmnist": f"{_CATALOG}:KMNIST",
    "notmnist": f"{_CATALOG}:NOTMNIST",
    "omniglot": f"{_CATALOG}:OMNIGLOT",
    "smallnorb": f"{_CATALOG}:SMALLNORB",
    "cifar10": f"{_CATALOG}:CIFAR10",
    "svhn": f"{_CATALOG}:SVHN",
    "celeba": f"{_CATALOG}:CELEBA",
    "lsun": f"{_CATALOG}:LSUN",
    "gtsrb": f"{_CATALOG}:GTSRB",
    "noise": f"{_CATALOG}:NOISE",
    "constant": f"{_CATALOG}:CONSTANT",
    "image_folder": f"{_CATALOG}:IMAGE_FOLDER",
}


class PluginLoadWarning(UserWarning):
    """A dataset entry point could not be loaded; the other datasets still work."""


def dataset_entry_points() -> list[EntryPoint]:
    """Installed entry points of the group, plus the built-ins when ood-bench's own are not installed."""
    found = list(entry_points(group=GROUP))
    if not any(ep.value.startswith(_CATALOG + ":") for ep in found):
        taken = {ep.name for ep in found}
        found += [EntryPoint(name, value, GROUP) for name, value in BUILTIN_ENTRY_POINTS.items()
                  if name not in taken]
    return found


@functools.lru_cache(maxsize=1)
def _discover() -> tuple[dict[str, DatasetDef], dict[str, str]]:
    datasets: dict[str, DatasetDef] = {}
    errors: dict[str, str] = {}
    for ep in dataset_entry_points():
        try:
            obj = ep.load()
        except Exception as error:  # a broken plugin must not break the others
            errors[ep.name] = f"cannot load {ep.value}: {type(error).__name__}: {error}"
            continue
        if not isinstance(obj, DatasetDef):
            errors[ep.name] = f"{ep.value} is a {type(obj).__name__}, not a DatasetDef"
        elif obj.name != ep.name:
            errors[ep.name] = f"{ep.value} is named {obj.name!r}, not {ep.name!r} as its entry point says"
        elif ep.name in datasets:
            errors[ep.name] = f"{ep.value} duplicates an already registered dataset of that name; ignored"
        else:
            datasets[ep.name] = obj
    for name, error in errors.items():
        warnings.warn(f"dataset plugin {name!r} skipped: {error}", PluginLoadWarning, stacklevel=2)
    return datasets, errors


def reload_registry() -> None:
    """Forget discovered datasets, so the next lookup reads the entry points again."""
    _discover.cache_clear()


def available_datasets() -> dict[str, DatasetDef]:
    """Every dataset that loaded, by name (built-ins and plugins)."""
    return dict(_discover()[0])


def plugin_errors() -> dict[str, str]:
    """Entry points that failed to load: name -> what went wrong."""
    return dict(_discover()[1])


def get_dataset(name: str) -> DatasetDef:
    """The dataset called ``name`` (case-insensitive); UserError listing the allowed names otherwise."""
    datasets, errors = _discover()
    key = name if name in datasets or name in errors or not isinstance(name, str) else name.lower()
    if key in datasets:
        return datasets[key]
    if key in errors:
        raise UserError(f"Dataset {name!r} is provided by a plugin that failed to load: {errors[key]}.")
    raise UserError(f"Unknown dataset {name!r}. Allowed datasets: {', '.join(sorted(datasets))}.")
