"""Side-by-side comparison of two or more runs' metrics, with deltas against the first run.

With a bootstrap, each delta also gets a percentile confidence interval from resampling the examples
(ID and OOD independently, seeded). Runs whose sets have the same fingerprints and sizes share the
resamples (a paired interval); otherwise each run is resampled on its own and the interval is unpaired.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from ood_bench.errors import UserError
from ood_bench.hashing import digest
from ood_bench.metrics import HIGHER_IS_BETTER, balanced_pair, check_metric_names
from ood_bench.metrics.bootstrap import bootstrap_metrics, resample_counts

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


CI_COLUMNS = [*COMPARE_KEY, "run", "low", "high", "paired"]
CONFIDENCE = 0.95


def _run_samples(run_dir: Path, resamples: int, seed: int, metrics: list[str] | None) -> dict[tuple, dict]:
    """Per (detector, backbone, output, ood_set): each metric on every resample (mean over seeds) and the
    identity of the resampled examples (``slots``: set fingerprints and sizes per seed)."""
    from ood_bench.suite.results import read_plan, score_pairs

    plan = read_plan(run_dir)
    names = check_metric_names(metrics or plan["metrics"])
    fingerprints = {label: info["fingerprint"] for label, info in plan["sets"].items()}
    counts_memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    per_seed: dict[tuple, list] = {}
    for ev, set_label, id_scores, ood_scores, _ in score_pairs(run_dir):
        for output in sorted(ood_scores):
            s_id, s_ood = id_scores[output], ood_scores[output]
            if plan["balanced"]:
                s_id, s_ood = balanced_pair(s_id, s_ood, ev["seed"])
            slot = (fingerprints[plan["id_set"]], fingerprints[set_label], s_id.size, s_ood.size, ev["seed"]
                    if plan["balanced"] else None)
            if slot not in counts_memo:
                rng = np.random.default_rng(int(digest("bootstrap", seed, slot)[:16], 16))
                counts_memo[slot] = (resample_counts(rng, s_id.size, resamples),
                                     resample_counts(rng, s_ood.size, resamples))
            values = bootstrap_metrics(s_id, s_ood, *counts_memo[slot], names)
            per_seed.setdefault((ev["detector"], ev["backbone"], output, set_label), []).append((slot, values))
    out = {}
    for key, items in per_seed.items():
        out[key] = {"slots": sorted(str(slot) for slot, _ in items),
                    "values": {m: np.mean([values[m] for _, values in items], axis=0) for m in names}}
    return out


def bootstrap_deltas(
    run_dirs: Sequence[Path], resamples: int, seed: int = 0, metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """95% percentile intervals of each later run's delta against the first, from ``resamples`` resamples.

    One row per (detector, backbone, output, ood_set, metric, run) found in both runs; ``paired`` says
    whether both runs were resampled on the same examples.
    """
    if resamples < 1:
        raise UserError(f"--bootstrap needs a positive number of resamples, got {resamples}.")
    wanted = check_metric_names(metrics) if metrics is not None else None
    samples = [_run_samples(Path(d), resamples, seed, wanted) for d in run_dirs]
    base, base_name = samples[0], str(run_dirs[0])
    tail = (1.0 - CONFIDENCE) / 2 * 100
    rows = []
    for run_dir, other in zip(run_dirs[1:], samples[1:], strict=True):
        for key in sorted(base.keys() & other.keys()):
            paired = base[key]["slots"] == other[key]["slots"]
            for metric in [m for m in base[key]["values"] if m in other[key]["values"]]:
                delta = other[key]["values"][metric] - base[key]["values"][metric]
                low, high = np.percentile(delta, [tail, 100 - tail])
                rows.append([*key, metric, delta_column(str(run_dir), base_name), low, high, paired])
    return pd.DataFrame(rows, columns=CI_COLUMNS)


def ci_column(delta: str) -> str:
    """Name of the column holding the interval text of a delta column."""
    return f"95% CI {delta[len('delta '):]}"


def ci_text(low: float, high: float, paired: bool) -> str:
    """``[low, high]``, with ``*`` when the interval excludes 0 and ``(unpaired)`` when it is unpaired."""
    text = f"[{low:+.3f}, {high:+.3f}]"
    if low > 0 or high < 0:
        text += " *"
    return text if paired else text + " (unpaired)"


def add_intervals(table: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """:func:`compare_runs`' table with a ``95% CI ...`` text column after each delta column."""
    out = table.copy()
    for delta in [c for c in table.columns if str(c).startswith("delta ")]:
        mine = intervals[intervals["run"] == delta].set_index(COMPARE_KEY)
        texts = pd.Series([ci_text(r.low, r.high, r.paired) for r in mine.itertuples()], index=mine.index,
                          dtype=object)
        column = texts.reindex(out.index).fillna("")
        position = list(out.columns).index(delta) + 1
        out.insert(position, ci_column(delta), column)
    return out


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
    title = "Run comparison (mean over seeds; deltas against the first run)"
    if any(str(c).startswith("95% CI ") for c in table.columns):
        title += ("\n95% CI: percentile bootstrap over examples (ID and OOD resampled independently); "
                  "* the interval excludes 0; (unpaired): the runs evaluated different examples")
    rich_table = Table(title=title, title_justify="left")
    for name in COMPARE_KEY:
        rich_table.add_column(name)
    for column in table.columns:
        rich_table.add_column(str(column), justify="right")
    for key, values in zip(table.index, table.itertuples(index=False, name=None), strict=True):
        metric = key[COMPARE_KEY.index("metric")]
        cells = [_delta_text(value, metric) if str(column).startswith("delta ")
                 else value if str(column).startswith("95% CI ")
                 else "" if pd.isna(value) else f"{value:.3f}"
                 for column, value in zip(table.columns, values, strict=True)]
        rich_table.add_row(*[str(k) for k in key], *cells)
    console.print(rich_table)
