"""Turn a suite's dataset references into the in-memory sets a run trains and evaluates on."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from rich.console import Console

from ood_bench.data import ImageSet, apply_transforms, complement, conform, load_split, split_validation, subset
from ood_bench.errors import DatasetMissing
from ood_bench.suite.schema import DatasetRef, Suite


@dataclass
class SuiteData:
    """Training data, the ID reference set, and every evaluation set of a suite, by display label."""

    train: ImageSet
    val: ImageSet
    id_label: str
    eval_sets: dict[str, ImageSet]  # label -> set; includes the ID test set
    roles: dict[str, str]  # label -> "id" | "ood" | "sanity"
    missing: list[dict[str, str]] = field(default_factory=list)
    auxiliary: dict[str, ImageSet] = field(default_factory=dict)  # backbone label -> its training-only set
    detector_fit: ImageSet | None = None
    """What detectors fit on (e.g. ROSE's Fisher): train minus the sanity set's images, so that no detector
    statistic is fitted on examples it is then evaluated on. None: the whole train set."""


def _load_set(ref: DatasetRef, split: str, download: bool, console: Console | None = None) -> ImageSet:
    t0 = time.perf_counter()
    images = load_split(ref.dataset, split, params=ref.params, download=download)
    images = apply_transforms(images, [{"name": t.name, **t.params} for t in ref.transforms])
    if console is not None:
        console.print(f"data: {ref.display_name} ({ref.dataset} '{split}'): {len(images):,} images "
                      f"{'x'.join(map(str, images.shape))} in {time.perf_counter() - t0:.1f} s", highlight=False)
    return images


def resolve(suite: Suite, strict: bool = False, download: bool = True, console: Console | None = None) -> SuiteData:
    """Load every set of ``suite``, downloading what is missing when allowed; ``console`` hears one line per set.

    A missing OOD set is recorded with its fetch command (or raised when ``strict``).
    """
    ref = suite.in_distribution
    _load = functools.partial(_load_set, console=console)
    cap = suite.evaluation.max_examples
    full_train = _load(ref, ref.train_split, download)
    train, val = split_validation(full_train, ref.validation_size, ref.split_seed)
    if ref.max_train_examples:
        train = subset(train, ref.max_train_examples, ref.split_seed)
    id_label = ref.label or ref.dataset
    id_test = _load(ref, ref.split, download)
    id_cap = ref.max_examples or cap
    if id_cap:
        id_test = subset(id_test, id_cap, ref.split_seed)
    eval_sets = {id_label: id_test}
    roles = {id_label: "id"}
    missing: list[dict[str, str]] = []
    for ood in suite.ood:
        label = ood.display_name
        try:
            images = conform(_load(ood, ood.split, download), train.shape)
        except DatasetMissing as exc:
            if strict:
                raise
            missing.append({"ood_set": label, "reason": str(exc), "fetch_command": exc.fetch_command})
            continue
        n = ood.max_examples or cap
        eval_sets[label] = subset(images, n, ref.split_seed) if n else images
        roles[label] = "ood"
    auxiliary = {name: auxiliary_set(spec.auxiliary, train.shape, ref.split_seed, download, console)
                 for name, spec in suite.backbones.items() if spec.auxiliary is not None}
    detector_fit = None
    if suite.evaluation.sanity:
        label = f"{id_label}-train (sanity)"
        eval_sets[label] = subset(train, len(id_test), ref.split_seed)
        detector_fit = complement(train, len(id_test), ref.split_seed)
        roles[label] = "sanity"
    return SuiteData(train, val, id_label, eval_sets, roles, missing, auxiliary, detector_fit)


def auxiliary_set(ref: DatasetRef, shape: tuple[int, int, int], seed: int, download: bool = True,
                  console: Console | None = None) -> ImageSet:
    """A backbone's auxiliary training set, converted to the ID image shape like an OOD set and capped at
    ``max_examples`` (seeded subset). A missing auxiliary set is an error: the backbone cannot be trained."""
    images = conform(_load_set(ref, ref.split, download, console), shape)
    return subset(images, ref.max_examples, seed) if ref.max_examples else images
