"""The suite file format, validated by pydantic with field-level errors.

A suite names the in-distribution dataset, the OOD datasets, backbones with their training settings,
detectors with their parameters and backbone, seeds, metrics, and named budget profiles.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    """Base for suite sections: misspelled or unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class TransformSpec(Strict):
    """One image transform, e.g. ``{name: brightness, factor: 0.2}`` (extra keys are its parameters)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DatasetRef(Strict):
    """A dataset as a suite uses it: registered name, split, parameters, transforms and size cap."""

    dataset: str
    label: str | None = Field(None, description="name shown in tables (default: derived from dataset)")
    split: str = "test"
    params: dict[str, Any] = Field(default_factory=dict)
    transforms: list[TransformSpec] = Field(default_factory=list)
    max_examples: int | None = Field(None, gt=0)

    @field_validator("transforms", mode="before")
    @classmethod
    def _short_transforms(cls, value: Any) -> Any:
        # "invert" is short for {name: invert}
        if isinstance(value, list):
            return [{"name": t} if isinstance(t, str) else t for t in value]
        return value

    @property
    def display_name(self) -> str:
        if self.label:
            return self.label
        parts = [self.dataset] + [t.name for t in self.transforms]
        for t in self.transforms:
            parts += [str(v) for v in t.params.values()]
        return "-".join(parts)


def _dataset_shorthand(value: Any) -> Any:
    return {"dataset": value} if isinstance(value, str) else value


class InDistribution(DatasetRef):
    """The in-distribution dataset: trained on its ``train_split``, evaluated on ``split``."""

    train_split: str = "train"
    validation_size: int = Field(5000, gt=0, description="examples carved from train for model selection")
    split_seed: int = Field(0, ge=0, le=2**31 - 1)
    max_train_examples: int | None = Field(None, gt=0)


class BackboneSpec(Strict):
    """A backbone to train or load: registered kind, architecture parameters, training settings."""

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    auxiliary: DatasetRef | None = Field(
        None, description="extra data used only in training (e.g. BPVAE's simple set); never an evaluation set")

    @field_validator("auxiliary", mode="before")
    @classmethod
    def _aux_shorthand(cls, value: Any) -> Any:
        return _dataset_shorthand(value)


class PaperRef(Strict):
    """Which published numbers an entry's outputs reproduce, and how its protocol differs from the paper's."""

    scores: dict[str, str] = Field(min_length=1, description="output -> score name in the suite's references")
    differs: str = Field("", description="how this entry's protocol differs from the paper's (a footnote)")


class DetectorSpec(Strict):
    """A detector instance: registered detector, the suite backbone it uses, its parameters."""

    detector: str | None = Field(None, description="registered detector name (default: the entry's key)")
    backbone: str
    params: dict[str, Any] = Field(default_factory=dict)
    paper: PaperRef | None = Field(None, description="published values shown beside this entry's in the report")


class Evaluation(Strict):
    """How scores are computed and compared."""

    batch_size: int = Field(256, gt=0)
    max_examples: int | None = Field(None, gt=0, description="cap per evaluation set (seeded subset)")
    balanced: bool = False
    sanity: bool = True


class Suite(Strict):
    """A whole benchmark suite (after its profile has been applied)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(default_factory=lambda: [0], min_length=1)
    in_distribution: InDistribution
    ood: list[DatasetRef] = Field(min_length=1)
    backbones: dict[str, BackboneSpec] = Field(min_length=1)
    detectors: dict[str, DetectorSpec] = Field(min_length=1)
    metrics: list[str] = Field(
        default_factory=lambda: ["auroc", "auprc_out", "auprc_in", "fpr80_ood_pos", "fpr80_id_pos", "fpr95_id_pos"],
        min_length=1,
    )
    evaluation: Evaluation = Field(default_factory=Evaluation)
    references: list[str] = Field(
        default_factory=list,
        description="CSV files of published AUROCs (columns ood_set, score, auroc; optional source), relative to "
                    "the suite file; detectors' `paper` entries name their rows")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    profile: str = "cpu"

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds must be distinct; {repeated} appear more than once")
        return value

    @field_validator("in_distribution", mode="before")
    @classmethod
    def _id_shorthand(cls, value: Any) -> Any:
        return _dataset_shorthand(value)

    @field_validator("ood", mode="before")
    @classmethod
    def _ood_shorthand(cls, value: Any) -> Any:
        return [_dataset_shorthand(v) for v in value] if isinstance(value, list) else value
