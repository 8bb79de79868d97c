"""Datasets for the benchmark: definitions, verified sources, loading, transforms and seeded selections.

See docs/data.md for the dataset table, the offline mirror layout and the environment variables.
"""

from ood_bench.data.definitions import DatasetDef, Param, SourceFormat
from ood_bench.data.imageset import ImageSet
from ood_bench.data.loading import DatasetStatus, VerifyResult, data_status, fetch, load_split, verify
from ood_bench.data.registry import available_datasets, get_dataset, plugin_errors
from ood_bench.data.sampling import complement, split_validation, subset
from ood_bench.data.sources import CorruptFileWarning, RemoteFile, data_dir, mirror_dir
from ood_bench.data.transforms import TRANSFORMS, apply_transforms, conform

__all__ = [
    "TRANSFORMS",
    "CorruptFileWarning",
    "DatasetDef",
    "DatasetStatus",
    "ImageSet",
    "Param",
    "RemoteFile",
    "SourceFormat",
    "VerifyResult",
    "apply_transforms",
    "available_datasets",
    "conform",
    "data_dir",
    "data_status",
    "fetch",
    "get_dataset",
    "load_split",
    "mirror_dir",
    "plugin_errors",
    "split_validation",
    "subset",
    "complement",
    "verify",
]
