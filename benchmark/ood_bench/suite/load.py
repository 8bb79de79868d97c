"""Read a suite file, apply a budget profile, and validate it down to registered names and parameters.

Every problem becomes one UserError paragraph that names the field, says what was wrong and lists
the allowed values; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ood_bench.errors import UserError
from ood_bench.hashing import canonical_json
from ood_bench.params import describe
from ood_bench.suite.papers import paper_values, resolve_references
from ood_bench.suite.schema import DatasetRef, Suite


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; explicit keys may override it
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"the key {key!r} appears twice (the first "
                    f"value would be silently lost); keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_SUITE_NODES = 100_000
"""The most values (mapping keys and values, list items, scalars) a suite may expand to."""


def _exceeds(node: Any, limit: int) -> bool:
    """Whether ``node`` holds more than ``limit`` values counting every alias use, stopping at the limit."""
    count = 0
    stack = [node]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_suite_file(path: Path) -> tuple[dict[str, Any], str]:
    """The raw mapping of a suite file and the sha256 of its bytes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Suite file '{path}' does not exist. "
                        f"Pass the path of a suite YAML file, e.g. suites/fmnist.yaml.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"Suite file '{path}' cannot be read ({exc.strerror or exc}). Check its permissions "
                        f"(e.g. chmod u+r {path}) and run again.") from None
    try:
        raw = yaml.load(data, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise UserError(f"Suite file '{path}' is not valid YAML: {exc}. Fix the syntax and run again.") from None
    if _exceeds(raw, MAX_SUITE_NODES):
        raise UserError(f"Suite file '{path}' expands to more than {MAX_SUITE_NODES:,} values once its YAML "
                        f"aliases (*name) are followed; a suite is a few hundred values, so this is a mistake "
                        f"or an alias bomb. Write the repeated parts out or use fewer nested aliases.")
    if not isinstance(raw, dict):
        raise UserError(f"Suite file '{path}' must hold a mapping of suite fields at the top level, "
                        f"got {type(raw).__name__}. See suites/fmnist.yaml for the format.")
    return raw, hashlib.sha256(data).hexdigest()


SuiteSource = Path | str | dict | Suite
"""A suite file, an already-parsed mapping (e.g. from a notebook), or a validated :class:`Suite`."""


def _raw_of(source: SuiteSource) -> tuple[dict[str, Any], str, Path, str]:
    """(raw mapping, digest, the folder relative paths resolve against, how to name the source in errors)."""
    if isinstance(source, Suite):
        raw = source.model_dump(mode="json")
        raw.pop("profile", None)
        raw["profiles"] = {}  # a validated suite already has its profile applied
        return raw, hashlib.sha256(canonical_json(raw).encode()).hexdigest(), Path.cwd(), f"suite '{source.name}'"
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
        return raw, hashlib.sha256(canonical_json(raw).encode()).hexdigest(), Path.cwd(), "the suite mapping"
    path = Path(source)
    raw, digest = read_suite_file(path)
    return raw, digest, path.resolve().parent, str(path)


def apply_override(raw: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """Set ``raw[a][b]...`` for ``dotted`` = "a.b..." (list items by index), creating missing mappings."""
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise UserError(f"{where}: override '{dotted}' is not a dotted field path such as "
                        f"'evaluation.max_examples' or 'detectors.llr.params.iwae_samples'.")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"{where}: override '{dotted}': '{'.'.join(parts[:i])}' is a list of {len(node)} "
                                f"items; use an index from 0 to {len(node) - 1}.")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"{where}: override '{dotted}': '{'.'.join(parts[:i])}' is a value, not a mapping.")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def load_suite(source: SuiteSource, profile: str = "cpu", overrides: dict[str, Any] | None = None,
               detectors: list[str] | None = None, ood: list[str] | None = None) -> tuple[Suite, str]:
    """Validate a suite under ``profile``; returns the suite and the sha256 of its source.

    ``overrides`` ({dotted path: value}) are applied to the raw mapping after the profile and before
    validation, so an error names the overridden field. ``detectors`` and ``ood`` keep only those detector
    entries and OOD sets (by label). Neither changes the cache keys of what is computed. Relative ``path``
    parameters of datasets resolve against the suite file's folder.
    """
    raw, digest, base, where = _raw_of(source)
    path = where
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise UserError(f"{path}: field 'profiles' must map profile names to overrides, got {type(profiles).__name__}.")
    if profile in profiles:
        if not isinstance(profiles[profile], dict):
            raise UserError(f"{path}: profile '{profile}' must be a mapping of overrides.")
        raw = deep_merge(raw, profiles[profile])
    elif profile != "cpu" and not isinstance(source, Suite):  # the base settings are the cpu profile
        allowed = ", ".join(sorted(set(profiles) | {"cpu"}))
        raise UserError(f"{path}: unknown profile '{profile}'. Profiles of this suite: {allowed}.")
    for dotted, value in (overrides or {}).items():
        apply_override(raw, dotted, copy.deepcopy(value), path)
    raw["profile"] = profile
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path} is not a valid suite: {format_validation_error(exc)}") from None
    suite = _subset(suite, detectors, ood, path)
    _resolve_paths(suite, base)
    resolve_references(suite, base)
    check_references(suite, path)
    paper_values(suite, path)  # the reference files and the scores named in them, before any work
    return suite, digest


def _subset(suite: Suite, detectors: list[str] | None, ood: list[str] | None, where: str) -> Suite:
    """``suite`` with only the named detectors and OOD sets; a UserError lists the names there are."""
    if detectors is not None:
        unknown = sorted(set(detectors) - set(suite.detectors))
        if unknown or not detectors:
            raise UserError(f"{where}: --detectors names {', '.join(unknown) or 'nothing'}, which the suite does "
                            f"not define. Detectors of this suite: {', '.join(suite.detectors)}.")
        suite = suite.model_copy(update={"detectors": {k: v for k, v in suite.detectors.items() if k in detectors}})
    if ood is not None:
        names = [r.display_name for r in suite.ood]
        unknown = sorted(set(ood) - set(names))
        if unknown or not ood:
            raise UserError(f"{where}: --ood names {', '.join(unknown) or 'nothing'}, which the suite does not "
                            f"evaluate. OOD sets of this suite: {', '.join(names)}.")
        suite = suite.model_copy(update={"ood": [r for r in suite.ood if r.display_name in ood]})
    return suite


def _resolve_paths(suite: Suite, base: Path) -> None:
    """Make relative ``params.path`` of every dataset reference relative to ``base`` (the suite's folder)."""
    refs = [suite.in_distribution, *suite.ood, *(b.auxiliary for b in suite.backbones.values() if b.auxiliary)]
    for ref in refs:
        value = ref.params.get("path")
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            ref.params["path"] = str((base / value).resolve())


def format_validation_error(exc: ValidationError) -> str:
    """All pydantic errors as one paragraph: field path, problem, allowed keys where relevant."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1])
            parts.append(f"field '{loc}' is not a known key (allowed keys here: {', '.join(allowed)})")
        elif err["type"] == "missing":
            parts.append(f"field '{loc}' is required but missing")
        else:
            parts.append(f"field '{loc}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts) + ". Fix the field(s) and run again."


def _allowed_keys(loc: tuple) -> list[str]:
    """The field names accepted at a location of the suite schema."""
    model: Any = Suite
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            model = _inner(model)
            if isinstance(part, int):
                continue
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = _inner(model.model_fields[part].annotation)
        else:
            model = _inner(model)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _inner(annotation: Any) -> Any:
    """Unwrap ``X | None``, ``list[X]`` and ``dict[str, X]`` down to X."""
    origin = typing.get_origin(annotation)
    if origin in (list, dict, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _inner(args[-1]) if args else annotation
    return annotation


def check_references(suite: Suite, path: Path) -> None:
    """Check names against the registries and parameters against their owners' signatures."""
    from ood_bench.data import TRANSFORMS, available_datasets
    from ood_bench.metrics import METRICS
    from ood_bench.models.training import TrainConfig
    from ood_bench.registry import registry

    def fail(field: str, problem: str, allowed: Any = None) -> None:
        hint = f" Allowed values: {', '.join(sorted(allowed))}." if allowed is not None else ""
        raise UserError(f"{path} is not a valid suite: field '{field}': {problem}.{hint} Fix the field and run again.")

    datasets = available_datasets()
    refs = [("in_distribution", suite.in_distribution)] + [(f"ood.{i}", r) for i, r in enumerate(suite.ood)]
    refs += [(f"backbones.{n}.auxiliary", b.auxiliary) for n, b in suite.backbones.items() if b.auxiliary]
    for field, ref in refs:
        if ref.dataset not in datasets:
            fail(f"{field}.dataset", f"unknown dataset '{ref.dataset}'", datasets)
        for j, t in enumerate(ref.transforms):
            if t.name not in TRANSFORMS:
                fail(f"{field}.transforms.{j}", f"unknown transform '{t.name}'", TRANSFORMS)
    labels = [r.display_name for r in suite.ood]
    id_ref = suite.in_distribution
    id_label = id_ref.label or id_ref.dataset
    for i, ref in enumerate(suite.ood):
        if _source(ref, ref.split) == _source(id_ref, id_ref.split) and not ref.transforms:
            fail(f"ood.{i}", f"'{ref.display_name}' is the in-distribution test set itself ({ref.dataset}, split "
                             f"'{ref.split}'); an OOD set must differ from it (another dataset, split or a transform)")
        if ref.display_name in (id_label, f"{id_label}-train (sanity)"):
            fail(f"ood.{i}.label", f"'{ref.display_name}' is the name of the ID or sanity set; give the OOD set "
                                   f"another 'label'")
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        fail("ood", f"two OOD entries share the name {duplicates}; give one of them a distinct 'label'")

    backbones = registry("backbones")
    for name, spec in suite.backbones.items():
        if spec.kind not in backbones.entries:
            fail(f"backbones.{name}.kind", f"unknown backbone kind '{spec.kind}'", backbones.entries)
        try:
            backbones.entries[spec.kind].validate_params(spec.params)
        except (ValueError, TypeError) as exc:
            fail(f"backbones.{name}.params", str(exc))
        try:
            TrainConfig.validate(spec.train)
        except (ValueError, TypeError) as exc:
            fail(f"backbones.{name}.train", str(exc))
        check_auxiliary(suite, name, backbones.entries[spec.kind].auxiliary_use(spec.params), fail)

    detectors = registry("detectors")
    for name, spec in suite.detectors.items():
        kind = spec.detector or name
        if kind not in detectors.entries:
            fail(f"detectors.{name}.detector", f"unknown detector '{kind}'", detectors.entries)
        if spec.backbone not in suite.backbones:
            fail(f"detectors.{name}.backbone", f"'{spec.backbone}' is not a backbone defined in this suite",
                 suite.backbones)
        build_detector(detectors.entries[kind], spec.params, f"{path}: field 'detectors.{name}.params'")

    for i, metric in enumerate(suite.metrics):
        if metric not in METRICS:
            fail(f"metrics.{i}", f"unknown metric '{metric}'", METRICS)


TRAINING_BYTES_PER_PARAMETER = 16
"""float32 weights, gradients and Adam's two moments: a lower bound on what training a backbone holds."""


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_detector_backbones(suite: Suite, input_shape: tuple[int, int, int], where: str) -> None:
    """Before any training: refuse a backbone whose weights alone would not fit in this machine's memory, and
    a detector paired with a backbone it cannot score (``Detector.backbone_problem``). Each backbone entry is
    built on torch's ``meta`` device (shapes only, no memory) for images of ``input_shape``."""
    import torch

    from ood_bench.registry import registry

    models: dict[str, Any] = {}
    memory = _memory_bytes()
    for label, backbone in suite.backbones.items():
        with torch.device("meta"):
            model = registry("backbones").get(backbone.kind).from_params(backbone.params, input_shape)
        models[label] = model
        params = sum(p.numel() for p in model.parameters())
        need = params * TRAINING_BYTES_PER_PARAMETER
        if memory is not None and need > memory:
            raise UserError(f"{where} is not a valid suite: field 'backbones.{label}.params': this backbone has "
                            f"{params:,} parameters; training it needs at least {need / 2**30:,.1f} GiB (weights, "
                            f"gradients and Adam state) and this machine has {memory / 2**30:,.1f} GiB. Make it "
                            f"smaller (channels, widths, latent sizes) and run again.")
    for name, spec in suite.detectors.items():
        cls = registry("detectors").get(spec.detector or name)
        problem = cls.backbone_problem(models[spec.backbone])
        if problem is not None:
            raise UserError(f"{where} is not a valid suite: field 'detectors.{name}.backbone': detector "
                            f"'{spec.detector or name}' cannot score backbone '{spec.backbone}' "
                            f"(kind {suite.backbones[spec.backbone].kind}): {problem}. Fix the field and run again.")


def expected_input_shape(suite: Suite) -> tuple[int, int, int] | None:
    """The training images' shape from the ID dataset's definition, when no transform or parameter changes it
    (``validate`` loads no data); None when only the data can tell."""
    from ood_bench.data import get_dataset

    ref = suite.in_distribution
    if ref.transforms or "shape" in ref.params:
        return None
    return tuple(get_dataset(ref.dataset).shape)


def _source(ref: DatasetRef, split: str) -> tuple[str, str, str]:
    """What identifies the source images of a reference: dataset, split and parameters (not transforms).

    Normalised, so that two spellings of one source compare equal: the registry's name of the dataset (names
    are case-insensitive) and its parameters with defaults filled in and checked; paths are already
    absolute (:func:`_resolve_paths`).
    """
    from ood_bench.data import get_dataset

    definition = get_dataset(ref.dataset)
    try:
        params = definition.check_params(ref.params)
    except UserError:  # reported where the set is loaded; compare the parameters as written
        params = ref.params
    return definition.name, split, canonical_json(params)


def check_auxiliary(suite: Suite, name: str, use: str, fail: Callable[..., None]) -> None:
    """Refuse auxiliary data that the backbone cannot use, that it needs but lacks, or that is evaluated.

    An auxiliary set drawn from the same source images (dataset, split, parameters) as an OOD evaluation
    set or the ID test set is refused whatever its transforms or size cap: inverting or subsetting images
    does not make them unseen, and a detector trained on its test OOD data measures nothing.
    """
    aux = suite.backbones[name].auxiliary
    field = f"backbones.{name}.auxiliary"
    if aux is None:
        if use == "required":
            fail(field, f"backbone kind '{suite.backbones[name].kind}' with these parameters trains on auxiliary "
                        f"data (e.g. BPVAE's simple set, negative sampling with negatives: aux) but none is "
                        f"given; add 'auxiliary: <dataset>' to the backbone entry")
        return
    ident = _source(aux, aux.split)
    id_ref = suite.in_distribution
    if ident == _source(id_ref, id_ref.split):
        fail(field, f"the auxiliary set is the in-distribution test set ({aux.dataset}, split '{aux.split}')")
    for ood in suite.ood:
        if ident == _source(ood, ood.split):
            fail(field, f"the auxiliary set draws on the same images as the OOD evaluation set "
                        f"'{ood.display_name}' (dataset '{aux.dataset}', split '{aux.split}', params "
                        f"{aux.params}); a backbone must never train on data it is evaluated on - use another "
                        f"split or dataset, or remove that set from the suite's OOD list")
    if use == "unused":
        fail(field, f"backbone kind '{suite.backbones[name].kind}' with these parameters does not train on "
                    f"auxiliary data; remove the field or choose an objective that uses it")


def build_detector(cls: type, params: dict[str, Any], where: str):
    """Instantiate a detector class, turning bad parameters into a UserError that lists the allowed ones."""
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown parameter(s) {', '.join(unknown)} for detector '{cls.name}'. "
                        f"Allowed parameters: {', '.join(allowed) or '(none)'}.")
    try:
        return cls(**params)
    except ValidationError as exc:
        raise UserError(f"{where}: invalid parameter for detector '{cls.name}' {describe(exc)}.") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: invalid parameters for detector '{cls.name}': {exc}.") from None
