"""Leaderboard tables from a run's tidy metric records: terminal, Markdown, CSV and LaTeX.

``records`` has one row per (detector, backbone, output, params, seed, ood_set, metric) with its
``value``; every table cell is the mean ± sample standard deviation over seeds. Outputs named
``<prefix>_k<N>`` (one per latent-skip depth k) also get an oracle row that picks k on the OOD set
itself, as Havtorn et al. do, and is labelled so that it cannot be read as a fair number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table
from tabulate import tabulate

from ood_bench.files import write_text_atomic
from ood_bench.metrics import HIGHER_IS_BETTER, METRIC_INFO, check_metric_names
from ood_bench.suite import marks

RECORD_COLUMNS = ["detector", "backbone", "output", "params", "uses_auxiliary_data", "seed", "ood_set",
                  "metric", "value"]
OPTIONAL_COLUMNS = {"marks": ""}
"""Record columns that older runs' records may lack, with their default."""
ROW_KEY = ["detector", "backbone", "output", "params"]
SUMMARY_COLUMNS = [*ROW_KEY, "uses_auxiliary_data", "ood_set", "metric", "mean", "std", "n_seeds",
                   "oracle_choice", "marks", "nonfinite"]
NONFINITE_NOTE = ("(N NaN/inf): N scores of the cell (ID and OOD, the most over seeds) were NaN or infinite; "
                  "the metric ranks NaN and +inf as the most OOD and -inf as the least (docs/metrics.md).")
AUX_MARK = "†aux"
SANITY_SUFFIX = "(sanity)"
MISSING_CELL = "missing"
EMPTY_CELL = "–"
ORACLE_SELECTION_METRIC = "auroc"
_K_OUTPUT = re.compile(r"^(?P<prefix>.+)_k(?P<k>\d+)$")


def oracle_label(prefix: str) -> str:
    """Row label of the best-of-k oracle for outputs ``<prefix>_k<N>``."""
    return f"{prefix}_k* (oracle best k)"


def _normalised(records: pd.DataFrame) -> pd.DataFrame:
    absent = [c for c in RECORD_COLUMNS if c not in records.columns]
    if absent:
        raise ValueError(f"records lack column(s) {absent}; expected {RECORD_COLUMNS}")
    out = records[RECORD_COLUMNS].copy()
    for column, default in OPTIONAL_COLUMNS.items():
        out[column] = records[column].fillna(default).astype(str) if column in records else default
    out["nonfinite"] = records["nonfinite"].fillna(0).astype(int) if "nonfinite" in records else 0
    out["params"] = out["params"].fillna("").astype(str)
    out["uses_auxiliary_data"] = out["uses_auxiliary_data"].astype(bool)
    out["value"] = out["value"].astype(float)
    return out


def _oracle_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Best-of-k rows: per OOD set, the k with the best mean AUROC (each metric's own best without AUROC)."""
    parsed = summary["output"].str.extract(_K_OUTPUT)
    with_k = summary.assign(prefix=parsed["prefix"], k=pd.to_numeric(parsed["k"])).dropna(subset=["prefix"])
    rows = []
    for (*_, prefix), group in with_k.groupby(["detector", "backbone", "params", "prefix"], sort=False):
        if group["k"].nunique() < 2:
            continue
        for _, block in group.groupby("ood_set", sort=False):
            by_auroc = block[block["metric"] == ORACLE_SELECTION_METRIC]
            for metric, cells in block.groupby("metric", sort=False):
                if not by_auroc.empty:
                    best_k = by_auroc.sort_values(["mean", "k"], ascending=[False, True])["k"].iloc[0]
                elif metric in HIGHER_IS_BETTER:
                    ranked = cells.sort_values(["mean", "k"], ascending=[not HIGHER_IS_BETTER[metric], True])
                    best_k = ranked["k"].iloc[0]
                else:
                    continue
                chosen = cells[cells["k"] == best_k]
                if chosen.empty:
                    continue
                row = chosen.iloc[0].to_dict()
                row.update(output=oracle_label(prefix), oracle_choice=row["output"])
                rows.append(row)
    return pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, "prefix", "k"])[SUMMARY_COLUMNS]


def _k_family(frame: pd.DataFrame) -> pd.Series:
    """A label shared by the ``<prefix>_k<N>`` outputs of one detector instance (else the output itself)."""
    prefix = frame["output"].str.extract(_K_OUTPUT)["prefix"].fillna(frame["output"])
    return frame["detector"] + "\x1f" + frame["backbone"] + "\x1f" + frame["params"] + "\x1f" + prefix


def summarize_records(records: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy mean/std over seeds per (row key, ood_set, metric), oracle rows following their group.

    ``std`` is the sample standard deviation (ddof=1), NaN with a single seed; ``oracle_choice`` names
    the output an oracle row copied and is empty elsewhere.
    """
    recs = _normalised(records)
    if recs.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    keys = [*ROW_KEY, "ood_set", "metric"]
    grouped = recs.groupby(keys, sort=False)
    summary = grouped["value"].agg(mean="mean", std="std", n_seeds="count").reset_index()
    aux = recs.groupby(ROW_KEY, sort=False)["uses_auxiliary_data"].any().rename("uses_auxiliary_data")
    summary = summary.join(aux, on=ROW_KEY)
    cell_marks = recs.groupby([*ROW_KEY, "ood_set"], sort=False)["marks"].agg(
        lambda v: marks.encode(m for field in v for m in marks.decode(field))).rename("marks")
    summary = summary.join(cell_marks, on=[*ROW_KEY, "ood_set"])
    summary = summary.join(grouped["nonfinite"].max().rename("nonfinite"), on=keys)
    unstable = summary["std"] > marks.UNSTABLE_STD
    summary.loc[unstable, "marks"] = [marks.encode([*marks.decode(m), marks.UNSTABLE])
                                      for m in summary.loc[unstable, "marks"]]
    summary["n_seeds"] = summary["n_seeds"].astype(int)
    summary["oracle_choice"] = ""
    summary = summary[SUMMARY_COLUMNS]

    oracle = _oracle_rows(summary)
    if not oracle.empty:
        # Each oracle block goes right after the last row of the k-outputs it chose from.
        row_order = {key: i for i, key in enumerate(summary[ROW_KEY].drop_duplicates().itertuples(index=False,
                                                                                                    name=None))}
        position = pd.Series([row_order[key] for key in summary[ROW_KEY].itertuples(index=False, name=None)],
                             dtype=float)
        family = _k_family(summary)
        last_of_family = position.groupby(family).max()
        oracle_family = _k_family(oracle.assign(output=oracle["oracle_choice"]))
        summary = pd.concat([summary.assign(_pos=position),
                             oracle.assign(_pos=oracle_family.map(last_of_family).to_numpy() + 0.5)],
                            ignore_index=True)
        summary = summary.sort_values("_pos", kind="stable").drop(columns="_pos").reset_index(drop=True)
    if metrics is not None:
        wanted = check_metric_names(metrics)
        summary = summary[summary["metric"].isin(wanted)].reset_index(drop=True)
    return summary


def _cell(mean: float, std: float, n_seeds: int, oracle_choice: str, cell_marks: str = "",
          nonfinite: int = 0) -> str:
    text = f"{mean:.3f}" if n_seeds < 2 or pd.isna(std) else f"{mean:.3f} ± {std:.3f}"
    if oracle_choice:
        k = _K_OUTPUT.match(oracle_choice)
        text += f" (k={k['k']})" if k else f" ({oracle_choice})"
    if nonfinite:
        text += f" ({nonfinite} NaN/inf)"
    symbols = "".join(marks.SYMBOLS[m] for m in marks.decode(cell_marks))
    return f"{text} {symbols}" if symbols else text


def _column_order(ood_sets: list[str], metrics: list[str]) -> list[tuple[str, str]]:
    ordered = sorted(ood_sets, key=lambda s: s.endswith(SANITY_SUFFIX))  # stable: sanity sets go last
    return [(s, m) for s in ordered for m in metrics]


def _marker_notes(summary: pd.DataFrame) -> list[str]:
    notes = []
    if summary["uses_auxiliary_data"].astype(bool).any():
        notes.append(f"{AUX_MARK}: the detector uses auxiliary data beyond the ID training set (e.g. "
                     "negative or simple-image examples); not a purely unsupervised result.")
    if (summary["oracle_choice"] != "").any():
        notes.append("`<prefix>_k* (oracle best k)`: k chosen per OOD set by the best mean AUROC on that OOD "
                     "test set itself (Havtorn et al.'s protocol); optimistic, shown for comparison with the "
                     "papers only. The chosen k is given in each cell.")
    present = {m for field in summary["marks"] for m in marks.decode(field)}
    notes += [marks.NOTES[m] for m in marks.SYMBOLS if m in present]
    if (summary["nonfinite"] > 0).any():
        notes.append(NONFINITE_NOTE)
    return notes


def _missing_note(item: dict) -> str:
    reason = str(item.get("reason", "")).strip().rstrip(".")
    return f"{item['ood_set']}: {MISSING_CELL} ({reason}). Fetch with `{item.get('fetch_command', '')}`."


def leaderboard_table(
    records: pd.DataFrame, metrics: Sequence[str] | None = None, missing: Sequence[dict] | None = None
) -> pd.DataFrame:
    """Wide table of "mean ± std" strings; rows (detector, backbone, output, params), cols (ood_set, metric).

    Detectors that use auxiliary data carry the suffix " †aux" on their row label. Each entry of
    ``missing`` ({ood_set, reason, fetch_command}) becomes columns of "missing" cells. Sanity sets
    (names ending "(sanity)") come last. ``table.attrs``: "marker_notes" explain †aux and oracle rows,
    "missing_notes" give each missing set's reason and fetch command, "footnotes" is both.
    """
    missing = list(missing or [])
    summary = summarize_records(records, metrics)
    metric_names = list(metrics) if metrics is not None else list(dict.fromkeys(summary["metric"]))
    if not metric_names:
        metric_names = ["auroc"]
    present = list(dict.fromkeys(summary["ood_set"]))
    missing_sets = [m["ood_set"] for m in missing if m["ood_set"] not in present]
    columns = pd.MultiIndex.from_tuples(_column_order(present + missing_sets, metric_names),
                                        names=["ood_set", "metric"])

    labels = summary.assign(detector=[f"{d} {AUX_MARK}" if aux else d for d, aux in
                                      zip(summary["detector"], summary["uses_auxiliary_data"], strict=True)])
    row_keys = list(dict.fromkeys(labels[ROW_KEY].itertuples(index=False, name=None)))
    index = pd.MultiIndex.from_tuples(row_keys, names=ROW_KEY)
    cells: dict[tuple, dict[tuple, str]] = {}
    for row in labels.itertuples(index=False):
        cells.setdefault((row.ood_set, row.metric), {})[(row.detector, row.backbone, row.output, row.params)] = (
            _cell(row.mean, row.std, row.n_seeds, row.oracle_choice, row.marks, row.nonfinite))
    table = pd.DataFrame(cells, dtype=object).reindex(index=index, columns=columns).astype(object).fillna(EMPTY_CELL)
    for ood_set in missing_sets:
        for metric in metric_names:
            table[(ood_set, metric)] = MISSING_CELL
    table.attrs["marker_notes"] = _marker_notes(summary)
    table.attrs["missing_notes"] = [_missing_note(item) for item in missing]
    table.attrs["footnotes"] = table.attrs["marker_notes"] + table.attrs["missing_notes"]
    return table


def _metric_view(table: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]], int]:
    """Headers and rows of one metric's slice: label columns (params only if any is set), then OOD sets."""
    view = table.xs(metric, axis=1, level="metric")
    keys = list(view.index)
    show_params = any(k[3] for k in keys)
    label_names = ROW_KEY if show_params else ROW_KEY[:3]
    headers = [*label_names, *view.columns]
    rows = [[*key[: len(label_names)], *values] for key, values in zip(keys, view.to_numpy().tolist(),
                                                                        strict=True)]
    return headers, rows, len(label_names)


def _metrics_of(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table.columns.get_level_values("metric")))


def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|")


PROVENANCE_KEYS = ["suite", "profile", "seeds", "git_revision", "date"]


def _provenance_lines(provenance: dict) -> list[str]:
    lines = []
    for key in PROVENANCE_KEYS:
        value = provenance.get(key, "(not recorded)")
        if isinstance(value, list | tuple):
            value = ", ".join(map(str, value))
        lines.append(f"{key}: {value}")
    balanced = provenance.get("balanced")
    if balanced is None:
        lines.append("balanced: (not recorded)")
    elif balanced:
        lines.append("balanced: yes: all of the smaller set, a seeded equal-size subset of the larger")
    else:
        lines.append("balanced: no: all ID and OOD test examples")
    shown = [*PROVENANCE_KEYS, "balanced"]
    lines += [f"{key}: {value}" for key, value in provenance.items() if key not in shown]
    return lines


def render_markdown(table: pd.DataFrame, missing: Sequence[dict], provenance: dict) -> str:
    """The leaderboard.md text: provenance header, conventions, missing data, one table per metric."""
    parts = ["# ood-bench leaderboard", ""]
    for line in _provenance_lines(provenance):
        key, value = line.split(": ", 1)
        parts.append(f"- **{key}:** {_md_escape(value)}")
    parts += ["", "## Conventions", "",
              "- Scores: higher = more OOD. Cells: mean ± sample standard deviation (ddof=1) over seeds, "
              "fractions to 3 decimals; the std is omitted with one seed. `–`: not computed.",
              *[f"- `{m}`: {METRIC_INFO.get(m, 'custom metric')}" for m in _metrics_of(table)]]
    if missing:
        parts += ["", "## Missing datasets", ""]
        parts += [f"- {_md_escape(_missing_note(item))}" for item in missing]
    for metric in _metrics_of(table):
        headers, rows, _ = _metric_view(table, metric)
        cells = [[_md_escape(cell) for cell in row] for row in rows]
        parts += ["", f"## {metric}", "", tabulate(cells, headers=[_md_escape(h) for h in headers],
                                                   tablefmt="github", disable_numparse=True)]
    notes = table.attrs.get("marker_notes", [])
    if notes:
        parts += ["", "## Notes", "", *[f"- {_md_escape(n)}" for n in notes]]
    return "\n".join(parts) + "\n"


def render_latex(table: pd.DataFrame, provenance: dict) -> str:
    """The leaderboard.tex text: provenance as comments, one booktabs tabular per metric."""
    parts = [f"% {line}" for line in _provenance_lines(provenance)]
    for metric in _metrics_of(table):
        headers, rows, _ = _metric_view(table, metric)
        parts += ["", f"% {metric}: {METRIC_INFO.get(metric, 'custom metric')}",
                  tabulate(rows, headers=headers, tablefmt="latex_booktabs", disable_numparse=True)]
    parts += ["", *[f"% {note}" for note in table.attrs.get("footnotes", [])]]
    return "\n".join(parts) + "\n"


def print_table(table: pd.DataFrame, console: Console, title: str | None = None) -> None:
    """Print :func:`leaderboard_table`'s result as one rich table per metric (each fits 120 columns)."""
    for metric in _metrics_of(table):
        headers, rows, n_labels = _metric_view(table, metric)
        title_line = f"{metric}: {METRIC_INFO.get(metric, 'custom metric')}"
        rich_table = Table(title=f"{title}: {title_line}" if title else title_line, title_justify="left")
        for i, header in enumerate(headers):
            rich_table.add_column(str(header), justify="left" if i < n_labels else "right")
        for row in rows:
            rich_table.add_row(*[str(c) for c in row])
        console.print(rich_table)
    for note in table.attrs.get("footnotes", []):
        console.print(note, markup=False, highlight=False)


def write_leaderboard(
    run_dir: Path,
    records: pd.DataFrame,
    missing: list[dict],
    provenance: dict,
    metrics: Sequence[str] | None = None,
    console: Console | None = None,
) -> dict[str, Path]:
    """Print the leaderboard and write leaderboard.{md,csv,tex} into ``run_dir``; returns paths by suffix."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    table = leaderboard_table(records, metrics, missing)
    paths = {suffix: run_dir / f"leaderboard.{suffix}" for suffix in ("md", "csv", "tex")}
    write_text_atomic(paths["md"], render_markdown(table, missing, provenance))
    write_text_atomic(paths["csv"], summarize_records(records, metrics).to_csv(index=False))
    write_text_atomic(paths["tex"], render_latex(table, provenance))
    print_table(table, console if console is not None else Console(width=120), title=provenance.get("suite"))
    return paths


def read_summary_csv(path: Path) -> pd.DataFrame:
    """Read leaderboard.csv back with the dtypes :func:`summarize_records` produced."""
    text_columns = [*ROW_KEY, "ood_set", "metric", "oracle_choice", "marks"]
    table = pd.read_csv(path, dtype={**{c: str for c in text_columns}, "uses_auxiliary_data": bool,
                                     "n_seeds": int}, keep_default_na=False,
                        na_values={"mean": [""], "std": [""]})
    if "nonfinite" not in table:  # written before the column existed
        table["nonfinite"] = 0
    return table
