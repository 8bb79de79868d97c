"""Published numbers beside ours: the AUROCs a suite's detectors reproduce, read from its reference CSVs.

A suite lists CSV files of published results (``references``: columns ``ood_set``, ``score``, ``auroc`` and
optionally ``source``; ``#`` lines are comments that cite the tables) and a detector entry names, per output,
the score it reproduces (``paper: {scores: {llr_k1: "LLR>1"}, differs: "..."}``). The values are looked up by
OOD set label when the suite is loaded and recorded in run.json, so a report never needs the files again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ood_bench.errors import UserError
from ood_bench.suite.schema import Suite

COLUMNS = ("ood_set", "score", "auroc")


def resolve_references(suite: Suite, base: Path) -> None:
    """Make the suite's relative reference paths relative to ``base`` (the suite's folder)."""
    suite.references[:] = [str((base / ref).resolve()) if not Path(ref).is_absolute() else ref
                           for ref in suite.references]


def _read(path: str, where: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, comment="#", dtype={"ood_set": str, "score": str})
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: field 'references': '{path}' cannot be read as a CSV file ({exc}). List CSV "
                        f"files of published results relative to the suite file, e.g. "
                        f"../benchmarks/reference/seed001_table7_fmnist.csv.") from None
    lacking = [c for c in COLUMNS if c not in frame.columns]
    if lacking:
        raise UserError(f"{where}: field 'references': '{path}' has no column(s) {', '.join(lacking)}; a "
                        f"reference file needs the columns {', '.join(COLUMNS)} (and optionally source).")
    frame = frame.assign(auroc=pd.to_numeric(frame["auroc"], errors="coerce"),
                         file=Path(path).stem, source=frame.get("source", pd.Series([""] * len(frame))))
    return frame


def paper_values(suite: Suite, where: str) -> dict[str, dict[str, Any]]:
    """Per detector entry with a ``paper`` field: its note and, per output, the score and its AUROC per set.

    ``{label: {"differs": str, "outputs": {output: {"score": name, "auroc": {set: value}, "source": {set: str}}}}}``.
    A UserError (before any work) when a file cannot be read or a named score is in none of them.
    """
    entries = {label: spec for label, spec in suite.detectors.items() if spec.paper is not None}
    if not entries:
        return {}
    if not suite.references:
        raise UserError(f"{where}: detector(s) {', '.join(entries)} name published scores ('paper') but the suite "
                        f"lists no reference files; add 'references: [<csv>, ...]' or remove the 'paper' fields.")
    table = pd.concat([_read(path, where) for path in suite.references], ignore_index=True)
    sets = {ref.display_name for ref in suite.ood} | {f"{suite.in_distribution.display_name}-train (sanity)"}
    values: dict[str, dict[str, Any]] = {}
    for label, spec in entries.items():
        outputs = {}
        for output, score in spec.paper.scores.items():
            rows = table[table["score"] == score]
            if rows.empty:
                known = ", ".join(sorted(set(table["score"])))
                raise UserError(f"{where}: field 'detectors.{label}.paper.scores.{output}': no reference file has "
                                f"the score '{score}'. Scores in the suite's references: {known}.")
            aurocs, sources = {}, {}
            for row in rows.itertuples(index=False):
                if row.ood_set in sets and row.ood_set not in aurocs and not math.isnan(row.auroc):
                    aurocs[row.ood_set] = float(row.auroc)
                    sources[row.ood_set] = f"{row.file}" + (f", {row.source}" if str(row.source) not in ("", "nan")
                                                             else "")
            outputs[output] = {"score": score, "auroc": aurocs, "source": sources}
        values[label] = {"differs": spec.paper.differs, "outputs": outputs}
    return values
