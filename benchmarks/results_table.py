"""Write a run's leaderboard next to the papers' reference numbers, as Markdown.

Usage: python benchmarks/results_table.py results/fmnist [--reference CSV ...]
       [--metrics auroc ...]   (default: every CSV in REFERENCES below, every metric they report)

Reads the run's leaderboard.csv and run.json (written by `ood-bench run`), so every number it prints
was measured by that run; the reference columns are cited from the paper named in the CSV header.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

# Our output names for the paper's score names (seed 001 notation).
SCORES = {
    "L>0": [("likelihood", "iwae_bpd"), ("likelihood", "elbo_bpd")],
    "L>1": [("llr", "lk1_bpd")],
    "L>2": [("llr", "lk2_bpd")],
    "LLR>1": [("llr", "llr_k1"), ("llr", "llr_elbo_k1")],
    "LLR>2": [("llr", "llr_k2"), ("llr", "llr_elbo_k2")],
    # seed 000 notation: the informative HVAE (suite backbone hvae_informative) and the Table 3 contrast
    "LLR>1 (informative HVAE)": [("llr_ada", "llr_k1")],
    "LLR>2 (informative HVAE)": [("llr_ada", "llr_k2")],
    "LLR^ada (informative HVAE)": [("llr_ada", "llr_ada")],
    "LLR^ada (HVAE)": [("llr_ada_hvae", "llr_ada")],
    "WAIC ensemble": [("waic", "waic")],
    # seed 003 (VAE-family detectors on the `vae` backbone)
    "NLL": [("vae_likelihood", "iwae_bpd"), ("vae_likelihood", "elbo_bpd")],
    "LR_E": [("likelihood_regret", "regret")],
    "ROSE": [("rose", "rose")],
    "ROSE-DIAG": [("rose_diag", "rose")],
    # seeds 002-004 (benchmarks/reference/seeds_vae_objectives_fmnist.csv)
    "IC(png)": [("input_complexity", "ic_png")],
    "IC(jp2)": [("input_complexity", "ic_jp2")],
    "BPVAE": [("bpvae", "bpd")],
    "NS AUC-BPD": [("negative_sampling", "bpd")],
    "NS AUC-KL": [("negative_sampling", "kl")],
}
REFERENCES = ["seed001_table7_fmnist.csv", "seed000_fmnist.csv", "seed003_fmnist_vae.csv",
              "seeds_vae_objectives_fmnist.csv"]


def read_references(paths: list[Path]) -> pd.DataFrame:
    """The reference CSVs stacked; a file without a ``source`` column is cited by its file name."""
    frames = []
    for path in paths:
        ref = pd.read_csv(path, comment="#")
        if "source" not in ref:
            ref["source"] = path.stem
        frames.append(ref)
    return pd.concat(frames, ignore_index=True)


def comparison(run_dir: Path, references: list[Path], metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per (OOD set, our output) with our metrics and the papers' for the matching score
    ("–" where no paper reports one; several reference rows of one score are joined with " / ").
    ``metrics``: default, every metric column of the references."""
    ref = read_references(references)
    metrics = metrics or [c for c in ref.columns if c not in ("ood_set", "score", "source")]
    ours = pd.read_csv(run_dir / "leaderboard.csv")
    ours = ours[ours["metric"].isin(metrics)]
    sets = list(dict.fromkeys(ours["ood_set"]))
    rows = []
    for ood_set in sets:
        for score, outputs in SCORES.items():
            paper = ref[(ref["ood_set"] == ood_set) & (ref["score"] == score)]
            for detector, output in outputs:
                mine = ours[(ours["ood_set"] == ood_set) & (ours["detector"] == detector)
                            & (ours["output"] == output)].set_index("metric")["mean"]
                if mine.empty:
                    continue
                row = {"OOD set": ood_set, "score": score, "ours (output)": f"{detector}/{output}"}
                for m in metrics:
                    row[f"{m} ours"] = f"{mine.get(m, float('nan')):.3f}"
                    values = paper[m].dropna() if m in paper else pd.Series(dtype=float)
                    row[f"{m} paper"] = " / ".join(f"{v:.3f}" for v in values) if len(values) else "–"
                row["paper source"] = " / ".join(dict.fromkeys(paper["source"])) if not paper.empty else "–"
                rows.append(row)
    return pd.DataFrame(rows)


def backbones(plan: dict) -> pd.DataFrame:
    """One row per trained backbone of the run: training cost, validation ELBO and per-layer KL (collapse check)."""
    rows = []
    for name, entry in plan["backbones"].items():
        meta = entry["metadata"]
        rows.append({
            "backbone": name,
            "kind": meta["kind"],
            "epochs": meta.get("epochs_completed"),
            "training s": round(meta["wall_time_s"]),
            "img/s": round(meta["images_per_s"]),
            "threads": meta.get("num_threads"),
            "val bits/dim": f"{meta['best_val_bpd']:.4f}",
            "val KL per layer (nats)": " / ".join(f"{kl:.1f}" for kl in meta["best_val_kl"]),
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--reference", type=Path, nargs="+",
                        default=[Path(__file__).parent / "reference" / name for name in REFERENCES])
    parser.add_argument("--metrics", nargs="+", default=None, help="default: the references' metric columns")
    args = parser.parse_args()
    plan = json.loads((args.run_dir / "run.json").read_text())
    prov = plan["provenance"]
    table = comparison(args.run_dir, args.reference, args.metrics)
    print(f"Suite `{plan['suite']}`, profile `{plan['profile']}`, device {prov['device']}, commit "
          f"`{prov['git_revision']}`, {prov['machine']}, {prov['date']}.")
    for i, run in enumerate(plan.get("history", [prov | {"wall_s": prov["wall_s"]["total"]}]), 1):
        print(f"- run {i} ({run['date']}, commit `{run['git_revision']}`): {run['wall_s']:.0f} s inside "
              f"`ood-bench run`, {run['trained_backbones']} backbone(s) trained, {run['scored_examples']} "
              f"examples scored.")
        parts = {k: v for k, v in run.get("wall_s_parts", {}).items() if k != "total" and v >= 1}
        if run["scored_examples"] and parts:
            print("  seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()) + ".")
    if plan["missing"]:
        print("Not available on this machine (skipped): "
              + ", ".join(f"{m['ood_set']} (`{m['fetch_command']}`)" for m in plan["missing"]) + ".")
    print()
    print(backbones(plan).to_markdown(index=False))
    print()
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
