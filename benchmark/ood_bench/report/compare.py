"""Side-by-side comparison of two or more runs' metrics, with deltas against the first run."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

from ood_bench.errors import UserError
from ood_bench.metrics import HIGHER_IS_BETTER, check_metric_names

COMPARE_KEY = ["detector", "backbone", "output", "ood_set", "metric"]


def delta_column(run: str, baseline: str) -> str:
    """Name of the column holding ``run - baseline``."""
    return f"delta {run} - {baseline}"


def _seed_means(name: str, records: pd.DataFrame, metrics: list[str] | None) -> pd.Series:
    absent = [c for c in [*COMPARE_KEY, "params", "value"] if c not in records.columns]
    if absent:
        raise ValueError(f"records of run {name!r} lack column(s) {absent}")
    recs = records if metrics is None else records[records["metric"].isin(metrics)]
    params = recs["params"].fillna("").astype(str).groupby([recs[c] for c in COMPARE_KEY]).nunique()
    clashing = params[params > 1]
    if not clashing.empty:
        raise ValueError(f"run {name!r} has several params for the same (detector, backbone, output), e.g. "
                         f"{clashing.index[0]}; give each parameter setting its own detector label")
    return recs.groupby(COMPARE_KEY, sort=False)["value"].mean().astype(float).rename(name)


def compare_runs(
    named_records: dict[str, pd.DataFrame], metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """Mean over seeds per (detector, backbone, output, ood_set, metric), one column per run.

    The first run is the baseline: each later run gets a column ``delta <run> - <first>``. Rows found in
    only some runs are kept, with NaN where a run lacks them (and in their deltas).
    """
    if len(named_records) < 2:
        raise UserError(f"Comparing needs at least two runs, got {len(named_records)}.")
    wanted = check_metric_names(metrics) if metrics is not None else None
    means = [_seed_means(name, records, wanted) for name, records in named_records.items()]
    table = pd.concat(means, axis=1, join="outer", sort=False)
    table.index = table.index.set_names(COMPARE_KEY)
    names = list(named_records)
    for name in names[1:]:
        table[delta_column(name, names[0])] = table[name] - table[names[0]]
    return table


def _delta_text(delta: float, metric: str) -> str:
    if pd.isna(delta):
        return ""
    text = f"{delta:+.3f}"
    if metric not in HIGHER_IS_BETTER or delta == 0:
        return text
    better = (delta > 0) == HIGHER_IS_BETTER[metric]
    return f"[green]{text}[/green]" if better else f"[red]{text}[/red]"


def print_comparison(table: pd.DataFrame, console: Console) -> None:
    """A rich table of :func:`compare_runs`' result; deltas green where the later run is better."""
    rich_table = Table(title="Run comparison (mean over seeds; deltas against the first run)",
                       title_justify="left")
    for name in COMPARE_KEY:
        rich_table.add_column(name)
    for column in table.columns:
        rich_table.add_column(str(column), justify="right")
    for key, values in zip(table.index, table.itertuples(index=False, name=None), strict=True):
        metric = key[COMPARE_KEY.index("metric")]
        cells = [_delta_text(value, metric) if str(column).startswith("delta ")
                 else "" if pd.isna(value) else f"{value:.3f}"
                 for column, value in zip(table.columns, values, strict=True)]
        rich_table.add_row(*[str(k) for k in key], *cells)
    console.print(rich_table)
