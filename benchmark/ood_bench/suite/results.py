"""Read a finished run back from its directory: the plan in run.json and the scores in scores.h5.

``show``, ``compare`` and the runner's own leaderboard all go through :func:`records_from_cache`, so a
table is always computed the same way, from cached scores alone (no model is loaded).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ood_bench.cache.store import ScoreStore
from ood_bench.errors import UserError
from ood_bench.files import write_json_atomic
from ood_bench.hashing import digest
from ood_bench.metrics import compute_metrics, rank_nonfinite
from ood_bench.suite import marks

PLAN_NAME = "run.json"


DIGEST_FIELD = "digest"
"""run.json's checksum of its other fields, so a changed byte that still parses is detected too."""


def _plan_digest(plan: dict[str, Any]) -> str:
    return digest("run.json", {k: v for k, v in plan.items() if k != DIGEST_FIELD})


def write_plan(run_dir: Path, plan: dict[str, Any]) -> Path:
    """Write run.json atomically (a concurrent run's write wins whole, never interleaved), with its checksum."""
    plan = {k: v for k, v in plan.items() if k != DIGEST_FIELD}
    return write_json_atomic(Path(run_dir) / PLAN_NAME, {**plan, DIGEST_FIELD: _plan_digest(plan)})


REQUIRED = {"suite": str, "profile": str, "seeds": list, "metrics": list, "balanced": bool, "id_set": str,
            "sets": dict, "missing": list, "evaluations": list}
"""The fields every reader of run.json relies on, with their JSON types (``backbones``, ``provenance`` and
``history`` are read with defaults: the report and show say what they lack)."""
EVALUATION = {"detector": str, "backbone": str, "seed": int, "keys": dict, "params_str": str}


def _problem(plan: Any) -> str | None:
    """What is wrong with the shape of a decoded run.json, or None."""
    if not isinstance(plan, dict):
        return f"it holds a {type(plan).__name__}, not a mapping"
    for name, kind in REQUIRED.items():
        if not isinstance(plan.get(name), kind):
            found = "missing" if name not in plan else type(plan[name]).__name__
            return f"field '{name}' is {found}, not {kind.__name__}"
    for i, ev in enumerate(plan["evaluations"]):
        for name, kind in EVALUATION.items():
            if not isinstance(ev, dict) or not isinstance(ev.get(name), kind):
                return f"evaluation {i} lacks a valid '{name}'"
        if plan["id_set"] not in ev["keys"]:
            return f"evaluation {i} has no key for the ID set '{plan['id_set']}'"
    return None


def read_plan(run_dir: Path) -> dict[str, Any]:
    """The validated run record (run.json) of a run directory, or a UserError saying how to make or repair it."""
    path = Path(run_dir) / PLAN_NAME
    if not path.is_file():
        raise UserError(f"'{run_dir}' is not an ood-bench run directory (no {PLAN_NAME}). Pass a directory "
                        f"written by `ood-bench run SUITE`, e.g. results/fmnist.")
    try:
        plan = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        problem: str | None = f"it is not valid UTF-8 JSON ({exc})"
    else:
        problem = _problem(plan)
        if problem is None and plan.get(DIGEST_FIELD) != _plan_digest(plan):
            problem = ("its content does not match its checksum (a changed byte)" if DIGEST_FIELD in plan
                       else "it has no checksum (written by an older ood-bench, or a changed byte)")
    if problem is not None:
        raise UserError(f"{path} is damaged: {problem}. The scores themselves are in scores.h5; run the suite "
                        f"again (`ood-bench run SUITE` with the same --results) to rebuild the record from the "
                        f"cache, which recomputes nothing that is cached.")
    return plan


def previous_runs(run_dir: Path) -> list[dict[str, Any]]:
    """What earlier runs in this directory computed and how long they took (run.json's history); empty when
    there is no record or it is damaged (the run that calls this rewrites it)."""
    path = Path(run_dir) / PLAN_NAME
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_bytes().decode("utf-8")).get("history", [])
    except (UnicodeDecodeError, ValueError, AttributeError):
        return []
    return [run for run in history if isinstance(run, dict)] if isinstance(history, list) else []


Pair = tuple[dict[str, Any], str, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]


def score_pairs(run_dir: Path) -> Iterator[Pair]:
    """``(evaluation, set label, ID scores, set scores, non-finite counts)`` for every evaluation of run.json
    and every non-ID set.

    Scores are the cached arrays by output name with non-finite values ranked by
    :func:`ood_bench.metrics.rank_nonfinite` (what every table and figure uses), and per output the number
    of values it replaced; a missing key is a UserError saying to run the suite again.
    """
    run_dir = Path(run_dir)
    plan = read_plan(run_dir)
    store = ScoreStore(run_dir)
    id_label = plan["id_set"]

    def cached(ev: dict[str, Any], set_label: str) -> dict[str, np.ndarray]:
        scores = store.get(ev["keys"][set_label])
        if scores is None:
            raise UserError(f"Scores of {ev['detector']} on {set_label} are missing from {store.path}; "
                            f"run the suite again to compute them.")
        return scores

    for ev in plan["evaluations"]:
        id_scores = cached(ev, id_label)
        for set_label in ev["keys"]:
            if set_label == id_label:
                continue
            ood_scores = cached(ev, set_label)
            ranked_id, ranked_ood, counts = {}, {}, {}
            for output in id_scores:
                ranked_id[output], ranked_ood[output], counts[output] = rank_nonfinite(id_scores[output],
                                                                                       ood_scores[output])
            yield ev, set_label, ranked_id, ranked_ood, counts


def records_from_cache(run_dir: Path) -> pd.DataFrame:
    """Tidy metric records (one row per detector output x seed x OOD set x metric) from cached scores."""
    plan = read_plan(run_dir)
    rows = []
    for ev, set_label, id_scores, ood_scores, nonfinite in score_pairs(run_dir):
        for output in sorted(ood_scores):
            values = compute_metrics(id_scores[output], ood_scores[output], plan["metrics"],
                                     balanced=plan["balanced"], seed=ev["seed"])
            for metric, value in values.items():
                rows.append({
                    "detector": ev["detector"], "backbone": ev["backbone"], "output": output,
                    "params": ev["params_str"], "uses_auxiliary_data": ev["uses_auxiliary_data"],
                    "seed": ev["seed"], "ood_set": set_label, "metric": metric, "value": value,
                    "marks": marks.encode(ev.get("marks", {}).get(set_label, [])),
                    "nonfinite": nonfinite[output],
                })
    return pd.DataFrame(rows, columns=["detector", "backbone", "output", "params", "uses_auxiliary_data",
                                       "seed", "ood_set", "metric", "value", "marks", "nonfinite"])


def export_scores(run_dir: Path) -> pd.DataFrame:
    """Every cached per-example score of a run as one long table: detector, output, seed, set, role, index,
    score (as stored: non-finite values are kept)."""
    plan = read_plan(run_dir)
    store = ScoreStore(run_dir)
    frames = []
    for ev in plan["evaluations"]:
        for set_label, key in ev["keys"].items():
            scores = store.get(key)
            if scores is None:
                raise UserError(f"Scores of {ev['detector']} on {set_label} are missing from {store.path}; run "
                                f"the suite again to compute them.")
            for output, values in scores.items():
                frames.append(pd.DataFrame({
                    "detector": ev["detector"], "backbone": ev["backbone"], "output": output, "seed": ev["seed"],
                    "set": set_label, "role": plan["sets"][set_label]["role"],
                    "index": np.arange(len(values)), "score": values}))
    columns = ["detector", "backbone", "output", "seed", "set", "role", "index", "score"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
