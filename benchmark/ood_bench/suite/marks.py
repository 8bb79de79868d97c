"""Cell marks: per (detector evaluation, evaluation set) caveats that a leaderboard cell must carry.

A mark says that the number in one cell does not measure what the column's name suggests, for a reason
the run knows from its own plan:

* ``same-domain``: the detector's backbone trained on auxiliary images from the same dataset as this
  evaluation set (a disjoint split, as the suite checker requires), e.g. negative sampling trained on
  inverted Omniglot negatives and evaluated on Omniglot. Disjoint images, same domain: not a fair OOD test.
* ``binarised``: a ``constant`` set scored by a backbone with a Bernoulli head. Dynamic binarisation turns a
  constant grey image into i.i.d. noise, so the column measures noise, not the papers' constant images.
* ``unstable``: over two or more seeds, the metric's sample standard deviation exceeds ``UNSTABLE_STD``; the
  cell changes with the seed (or float rounding) more than differences a reader would draw from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SAME_DOMAIN = "same-domain"
BINARISED = "binarised"
UNSTABLE = "unstable"
UNSTABLE_STD = 0.05
SYMBOLS = {SAME_DOMAIN: "‡", BINARISED: "§", UNSTABLE: "¶"}
NOTES = {
    SAME_DOMAIN: "‡: the backbone trained on auxiliary images of this same dataset (a disjoint split): "
                 "same domain, not a fair OOD test.",
    BINARISED: "§: constant images scored by a Bernoulli backbone; dynamic binarisation turns them into "
               "i.i.d. noise, so this cell measures noise, not the papers' constant images.",
    UNSTABLE: f"¶: unstable, the standard deviation over seeds exceeds {UNSTABLE_STD}: this cell is not a "
              "result at this budget.",
}
CONSTANT_DATASET = "constant"


def cell_marks(set_datasets: Mapping[str, str], auxiliary_dataset: str | None,
               likelihood: str | None) -> dict[str, list[str]]:
    """Marks per evaluation-set label, from each set's source dataset name, the backbone's auxiliary
    dataset name (None without one) and the backbone's likelihood head."""
    marks: dict[str, list[str]] = {}
    for label, dataset in set_datasets.items():
        found = []
        if auxiliary_dataset is not None and dataset == auxiliary_dataset:
            found.append(SAME_DOMAIN)
        if dataset == CONSTANT_DATASET and likelihood == "bernoulli":
            found.append(BINARISED)
        if found:
            marks[label] = found
    return marks


def encode(marks: Iterable[str]) -> str:
    """Marks as one record field ("" for none)."""
    return ",".join(sorted(set(marks)))


def decode(field: object) -> list[str]:
    """The marks of a record field (tolerates NaN / None from older runs)."""
    return [m for m in str(field).split(",") if m in SYMBOLS] if isinstance(field, str) else []
