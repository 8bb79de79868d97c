"""What a plan would compute: each unit with its cache status, for ``ood-bench plan`` (no model is loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ood_bench.cache.store import ScoreStore
from ood_bench.execution.plan import Plan, score_keys
from ood_bench.suite.datasets import SuiteData


def plan_status(plan: Plan, data: SuiteData, run_dir: Path) -> dict[str, Any]:
    """The plan as a dict (:meth:`Plan.to_dict`) with a status per unit and a summary.

    Train units: ``cached`` or ``to train``. Score units, per detector: ``cached`` (finalized), ``to score``
    with how many examples are left, or ``after training`` when a backbone is not trained yet (its weights,
    hence its score keys, are unknown).
    """
    out = plan.to_dict()
    weights = {uid: w for uid, unit in plan.train.items() if (w := unit.weights_hash) is not None}
    keys = score_keys(plan, data, weights)
    store = ScoreStore(run_dir)
    stored = set(store.keys())
    masks: dict[str, Any] = {}
    for entry in out["train"]:
        entry["status"] = "cached" if entry["cached"] else "to train"
    for entry, unit in zip(out["score"], plan.scores, strict=True):
        entry["keys"], entry["status"] = {}, {}
        for label in unit.detectors:
            known = keys.get((label, unit.seed, unit.set_label))
            if known is None:
                entry["status"][label] = "after training"
                continue
            key = known[0]
            entry["keys"][label] = key
            if key in stored:
                entry["status"][label] = "cached"
                continue
            if key not in masks:
                masks[key] = store.done_mask(key, len(data.eval_sets[unit.set_label]))
            left = int((~masks[key][unit.start:unit.stop]).sum())
            entry["status"][label] = f"to score ({left} of {unit.stop - unit.start})" if left else "cached"
    statuses = [s for e in out["score"] for s in e["status"].values()]
    out["summary"] = {
        "train_units": len(out["train"]), "to_train": sum(e["status"] == "to train" for e in out["train"]),
        "fit_units": len(out["fit"]), "score_units": len(out["score"]),
        "scores": len(statuses), "scores_cached": statuses.count("cached"),
    }
    return out


def print_plan(status: dict[str, Any], console: Console) -> None:
    """Rich tables of a :func:`plan_status`."""
    train = Table(title=f"train units of {status['suite']} ({status['compute']})")
    for col in ("unit", "checkpoint", "status"):
        train.add_column(col)
    for e in status["train"]:
        train.add_row(e["id"], Path(e["checkpoint"]).name, e["status"])
    console.print(train)
    if status["fit"]:
        fits = Table(title="fit units")
        fits.add_column("unit")
        fits.add_column("depends on")
        for e in status["fit"]:
            fits.add_row(e["id"], ", ".join(e["depends"]))
        console.print(fits)
    score = Table(title="score units")
    for col in ("detectors", "seed", "set", "examples", "depends on", "status"):
        score.add_column(col)
    for e in status["score"]:
        values = set(e["status"].values())
        text = values.pop() if len(values) == 1 else "; ".join(f"{k}: {v}" for k, v in e["status"].items())
        score.add_row(", ".join(e["detectors"]), str(e["seed"]), e["set"], f"{e['start']}-{e['stop']}",
                      ", ".join(e["depends"]), text)
    console.print(score)
    s = status["summary"]
    console.print(f"{s['train_units']} train units ({s['to_train']} to train), {s['fit_units']} fit units, "
                  f"{s['score_units']} score units; {s['scores_cached']} of {s['scores']} score arrays cached")
