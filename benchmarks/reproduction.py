"""Write docs/reproduction.md from cached runs: every seed-table row this harness reaches, ours against the paper's.

Usage: python benchmarks/reproduction.py MAIN_RUN [--ablations RUN] [--sweep RUN] [--rose RUN]
       [--heads RUN [SCORED_BY ...]] [--rose-epochs RUN] [--out docs/reproduction.md]
       python benchmarks/reproduction.py MAIN_RUN --readme-table      (the README's table, printed)

MAIN_RUN is a run of ``suites/fmnist.yaml --profile cpu-3seeds`` (three seeds); ``--ablations``, ``--sweep``
and ``--rose`` are runs of the suites ``benchmarks/ablation_suites.py`` writes; ``--heads`` and
``--rose-epochs`` are the runs that compared ROSE's heads and chose its backbone's epochs. Each RUN is a run
directory (run.json) or a record ``benchmarks/keep_run.py`` kept of one (record.json). Every number comes from
the runs' leaderboard.csv and records (cached scores, nothing is recomputed); the papers' numbers come from
benchmarks/reference/*.csv, which cite their tables. ``benchmarks/reproduction.sh`` runs them all and this.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from ood_bench.suite import marks
from results_table import backbones, read_references

REFERENCE_DIR = Path(__file__).parent / "reference"
REFERENCES = ["seed001_table7_fmnist.csv", "seed000_fmnist.csv", "seed003_fmnist_vae.csv",
              "seeds_vae_objectives_fmnist.csv"]

HVAE_DIFF = "[H]"
VAE8_DIFF = "[V8]"
ROSE_DIFF = "[V8C]"
IC_DIFF = ("both terms in bits/dim; the paper's IC subtracts compressed bits from nats (its code's mix), so "
           "its numbers are not a target; ELBO (paper IWAE-20); " + VAE8_DIFF)
LEGEND = {
    HVAE_DIFF: "S = 32 (paper 1000; llr_ada and WAIC S = 8); 16-channel HVAE without residual blocks or weight "
               "norm, 4 epochs (paper 64 channels, 3 residual blocks per stage, 1000 epochs)",
    VAE8_DIFF: "8-bit VAE with a 5-component DLM head (paper: 256-way categorical), 28x28 inputs (paper 32x32), d = 16 "
               "(paper 100), convs 16/32 + dense 128, 4 epochs (paper 100), IWAE S = 16 (paper 20)",
    ROSE_DIFF: "ROSE's 8-bit VAE: the same network with the paper's 256-way categorical head, 1 epoch (paper 100), "
               "28x28 inputs (paper 32x32), d = 16 (paper 100)",
}


@dataclass(frozen=True)
class Row:
    """One reproduction row: a paper's score on one OOD set and the output of ours that reproduces it."""

    score: str  # the score's name in the reference CSVs
    label: str  # what the row is called in the doc
    detector: str
    output: str
    sets: tuple[str, ...]
    diff: str  # how our protocol differs from the paper's
    run: str = "main"  # which run holds it: main or ablations


ROWS = [
    Row("L>0", "L>0 (likelihood, IWAE)", "likelihood", "iwae_bpd",
        ("mnist", "notmnist", "kmnist", "omniglot", "omniglot-inverted", "smallnorb", "smallnorb-inverted",
         "fashionmnist-train (sanity)"), HVAE_DIFF),
    Row("L>1", "L>1", "llr", "lk1_bpd", ("mnist", "notmnist", "kmnist", "omniglot", "omniglot-inverted", "smallnorb",
                                        "smallnorb-inverted"), HVAE_DIFF),
    Row("L>2", "L>2", "llr", "lk2_bpd", ("mnist", "notmnist", "kmnist", "omniglot", "omniglot-inverted", "smallnorb",
                                        "smallnorb-inverted"), HVAE_DIFF),
    Row("LLR>1", "LLR>1", "llr", "llr_k1",
        ("mnist", "notmnist", "kmnist", "omniglot-inverted", "fashionmnist-train (sanity)"), HVAE_DIFF),
    Row("LLR>2", "LLR>2", "llr", "llr_k2", ("omniglot", "smallnorb", "smallnorb-inverted"), HVAE_DIFF),
    Row("LLR^ada (informative HVAE)", "LLR^ada, informative HVAE, λ = 0.3", "llr_ada", "llr_ada",
        ("mnist", "kmnist", "notmnist", "omniglot", "smallnorb"),
        "informative_weight λ = 0.3 (paper 1: collapses at this budget, see the λ ablation); " + HVAE_DIFF),
    Row("LLR^ada (informative HVAE)", "LLR^ada, informative HVAE, λ = 1 (1 seed)", "llr_ada_l1", "llr_ada",
        ("mnist", "kmnist", "notmnist", "omniglot", "smallnorb"), "λ = 1 as the paper; one seed; " + HVAE_DIFF,
        run="ablations"),
    Row("LLR>1 (informative HVAE)", "LLR>1, informative HVAE, λ = 0.3", "llr_ada", "llr_k1", ("mnist",),
        "λ = 0.3 (paper 1); " + HVAE_DIFF),
    Row("LLR^ada (HVAE)", "LLR^ada, plain HVAE", "llr_ada_hvae", "llr_ada",
        ("kmnist", "notmnist", "omniglot", "smallnorb"), HVAE_DIFF),
    Row("WAIC ensemble", "WAIC", "waic", "waic", ("mnist",),
        "2 HVAE members, S = 8; the paper's 0.766 is a 5-model Glow ensemble (Choi et al.), not a VAE"),
    Row("NLL", "NLL (8-bit VAE)", "vae_likelihood", "iwae_bpd",
        ("mnist", "kmnist", "notmnist", "omniglot", "cifar10-gray", "uniform-noise", "constant"), VAE8_DIFF),
    Row("LR_E", "LR(Z), T = 20 (8-bit VAE)", "likelihood_regret", "regret",
        ("mnist", "kmnist", "notmnist", "omniglot", "cifar10-gray", "uniform-noise", "constant"),
        "LR(Z): the posterior optimised, T = 20, S = 16 (paper LR_E: the encoder, T = 100, S = 1000); " + VAE8_DIFF),
    Row("ROSE", "ROSE, EKFAC (8-bit VAE)", "rose", "rose",
        ("mnist", "kmnist", "notmnist", "omniglot", "cifar10-gray", "uniform-noise", "constant"),
        "every encoder layer, n_fit 1000 as the paper; " + ROSE_DIFF),
    Row("ROSE-DIAG", "ROSE, DIAG (8-bit VAE)", "rose_diag", "rose",
        ("mnist", "kmnist", "notmnist", "cifar10-gray", "uniform-noise", "constant"),
        "every encoder layer; " + ROSE_DIFF),
    Row("IC(png)", "IC(png), bits/dim (8-bit VAE)", "input_complexity", "ic_png",
        ("mnist", "kmnist", "notmnist", "omniglot"), IC_DIFF),
    Row("IC(jp2)", "IC(jp2), bits/dim (8-bit VAE)", "input_complexity", "ic_jp2",
        ("mnist", "kmnist", "notmnist", "omniglot"), IC_DIFF),
    Row("IC(png)", "IC(png), reference nats − bits mix (1 seed)", "input_complexity_reference_mix", "ic_png",
        ("mnist", "notmnist", "omniglot"), "the reference's units; one seed; " + VAE8_DIFF, run="ablations"),
    Row("BPVAE", "BPVAE", "bpvae", "bpd", ("mnist",),
        "d = 100, σ_s = 0.05, inverted Omniglot 'train' as the simple set (seed 002 gives no d, σ_s; "
        "its simple set is Omniglot); 2 epochs (paper 200)"),
    Row("NS AUC-BPD", "NS AUC-BPD", "negative_sampling", "bpd", ("mnist",),
        "inverted Omniglot 'train' negatives (paper EMNIST-Letters or KMNIST); 2 epochs (paper 100)"),
    Row("NS AUC-KL", "NS AUC-KL", "negative_sampling", "kl", ("mnist",),
        "inverted Omniglot 'train' negatives (paper EMNIST-Letters or KMNIST); 2 epochs (paper 100)"),
]


def leaderboard(run_dir: Path) -> pd.DataFrame:
    """A run's leaderboard.csv (mean, std, n_seeds per detector output, set and metric)."""
    frame = pd.read_csv(run_dir / "leaderboard.csv", keep_default_na=False, na_values={"mean": [""], "std": [""]})
    frame["std"] = pd.to_numeric(frame["std"], errors="coerce")
    return frame


def cell(board: pd.DataFrame, detector: str, output: str, ood_set: str, metric: str = "auroc") -> pd.Series | None:
    """The leaderboard row of one cell, or None."""
    hit = board[(board["detector"] == detector) & (board["output"] == output) & (board["ood_set"] == ood_set)
                & (board["metric"] == metric)]
    return None if hit.empty else hit.iloc[0]


def fmt(row: pd.Series | None) -> str:
    """mean ± std (std over seeds; the mean alone for one seed), with the cell's marks."""
    if row is None:
        return "–"
    text = f"{row['mean']:.3f}" if pd.isna(row["std"]) else f"{row['mean']:.3f} ± {row['std']:.3f}"
    symbols = "".join(marks.SYMBOLS[m] for m in marks.decode(row.get("marks", "")))
    return f"{text} {symbols}" if symbols else text


def paper_hits(ref: pd.DataFrame, score: str, ood_set: str) -> pd.DataFrame:
    """The reference rows that give a score's AUROC on a set (one per citing source)."""
    return ref[(ref["score"] == score) & (ref["ood_set"] == ood_set)].dropna(subset=["auroc"])


def paper_value(ref: pd.DataFrame, score: str, ood_set: str) -> str:
    """The papers' AUROC(s) of a score on a set, with their source, or "–"."""
    hits = paper_hits(ref, score, ood_set)
    if hits.empty:
        return "–"
    return " / ".join(f"{v:.3f} ({s})" for v, s in zip(hits["auroc"], hits["source"], strict=True))


def reproduction_table(boards: dict[str, pd.DataFrame], ref: pd.DataFrame) -> str:
    lines = ["| OOD set | score | ours (AUROC) | paper (AUROC, source) | protocol difference |",
             "|---|---|---|---|---|"]
    for row in ROWS:
        board = boards.get(row.run)
        if board is None:
            continue
        for ood_set in row.sets:
            ours = cell(board, row.detector, row.output, ood_set)
            if ours is None:
                continue
            lines.append(f"| {ood_set} | {row.label} | {fmt(ours)} | {paper_value(ref, row.score, ood_set)} | "
                         f"{row.diff} |")
    return "\n".join(lines)


def wide_table(board: pd.DataFrame, rows: list[tuple[str, str, str]], sets: list[str], metric: str = "auroc") -> str:
    """Rows (label, detector, output) x sets, one metric."""
    header = "| row | " + " | ".join(sets) + " |"
    lines = [header, "|---" * (len(sets) + 1) + "|"]
    for label, detector, output in rows:
        values = [fmt(cell(board, detector, output, s, metric)) for s in sets]
        if all(v == "–" for v in values):
            continue
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def read_record(run_dir: Path) -> dict:
    """A run's run.json, or the record.json that ``keep_run.py`` keeps of it (the same fields, no paths)."""
    path = run_dir / "run.json"
    return json.loads((path if path.exists() else run_dir / "record.json").read_text())


def run_header(run_dir: Path) -> str:
    """Command, machine, commit and wall time of a run, from its run.json."""
    plan = read_record(run_dir)
    prov = plan["provenance"]
    history = plan.get("history") or []
    first = history[0] if history else {"wall_s": prov["wall_s"]["total"], "date": prov["date"],
                                        "git_revision": prov["git_revision"]}
    text = (f"suite `{plan['suite']}` (`{Path(plan['suite_file']).name}`), profile `{plan['profile']}`, "
            f"seeds {plan['seeds']}, "
            f"device {prov['device']}, torch {prov['torch']}, {prov['machine']}; first run {first['date']} at "
            f"commit `{first['git_revision']}`, {first['wall_s']:.0f} s inside `ood-bench run`")
    later = [run for run in history[1:] if run.get("scored_examples") or run.get("trained_backbones")]
    for run in later:  # a rerun of a changed subset suite computed more rows, at its own commit
        text += (f"; then {run['date']} at commit `{run['git_revision']}`, {run['wall_s']:.0f} s, "
                 f"{run['scored_examples']} examples scored")
    if plan["missing"]:
        text += "; not available on this machine: " + ", ".join(m["ood_set"] for m in plan["missing"])
    return text + "."


def per_seed_seconds(run_dir: Path) -> dict[int, float]:
    """Wall seconds of each seed's backbone trainings and scorings in the first run (data loading apart)."""
    plan = read_record(run_dir)
    parts = (plan.get("history") or [{}])[0].get("wall_s_parts", {})
    seeds = list(plan["seeds"])
    seconds = dict.fromkeys(seeds, 0.0)
    for name, value in parts.items():
        m = re.match(r"^(backbone|score) .+ seed (\d+)$", name)
        if m:
            # a seed beyond the suite's (WAIC's extra member of the last seed) counts for the last seed
            seed = int(m[2]) if int(m[2]) in seconds else seeds[-1]
            seconds[seed] += value
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("main_run", type=Path)
    parser.add_argument("--ablations", type=Path)
    parser.add_argument("--sweep", type=Path)
    parser.add_argument("--rose", type=Path, help="the ROSE ablation run (n_fit x d x preconditioner, three seeds)")
    parser.add_argument("--heads", type=Path, nargs="+", default=[],
                        help="the ROSE-heads run (ROSE and the NLL on the categorical-head 8-bit VAE, 4 epochs), then "
                             "any runs of part of it whose scores were merged into its cache")
    parser.add_argument("--rose-epochs", type=Path, help="the run that chose the categorical VAE's epochs")
    parser.add_argument("--out", type=Path, default=Path("docs/reproduction.md"))
    parser.add_argument("--notes", type=Path, default=Path(__file__).parent / "reproduction_notes.md",
                        help="hand-written sections (headings '## name'), spliced in by name")
    parser.add_argument("--readme-table", action="store_true",
                        help="print the README's table of MAIN_RUN and write nothing")
    args = parser.parse_args()
    ref = read_references([REFERENCE_DIR / name for name in REFERENCES])
    boards = {"main": leaderboard(args.main_run)}
    if args.readme_table:
        print(readme_table(boards["main"], ref))
        return
    if args.ablations:
        boards["ablations"] = leaderboard(args.ablations)
    notes = _sections(args.notes.read_text()) if args.notes.exists() else {}
    main_board = boards["main"]
    out = ["# Reproduction: FashionMNIST, cpu profile, three seeds", "",
           "<!-- generated by benchmarks/reproduction.py from cached runs; edit benchmarks/reproduction_notes.md -->",
           "", notes.get("intro", ""), "", "## How these numbers were produced", "",
           f"- Main run: {run_header(args.main_run)}"]
    seconds = per_seed_seconds(args.main_run)
    if seconds:
        out.append("- Seconds per seed (training + scoring, data loading apart): "
                   + ", ".join(f"seed {s}: {v:.0f} s ({v / 60:.1f} min)" for s, v in sorted(seconds.items())) + ".")
    if args.ablations:
        out.append(f"- Ablation run: {run_header(args.ablations)}")
    if args.sweep:
        out.append(f"- BPVAE sweep: {run_header(args.sweep)}")
    if args.rose:
        out.append(f"- ROSE ablation: {run_header(args.rose)}")
    if args.heads:
        out.append(f"- ROSE heads: {run_header(args.heads[0])}")
        out += [f"  - scored in part by: {run_header(run)}" for run in args.heads[1:]]
    if args.rose_epochs:
        out.append(f"- ROSE epochs: {run_header(args.rose_epochs)}")
    out += ["", notes.get("commands", ""), "", "## Every seed-table row we reach", "",
            "Mean ± sample standard deviation over the seeds (AUROC, OOD positive). "
            + " ".join(marks.NOTES.values()), "",
            reproduction_table(boards, ref), "",
            *[f"- {key}: {text}." for key, text in LEGEND.items()], "", notes.get("why", ""), "",
            "## Acceptance criteria of issue 11", "", acceptance(boards, seconds), "", "## Ablations", "",
            "### Bernoulli vs 8-bit backbone (same network; 8-bit ROSE: categorical head; Bernoulli IC: the HVAE)",
            "",
            notes.get("bernoulli", ""), "",
            wide_table(main_board, [
                ("NLL, 8-bit", "vae_likelihood", "iwae_bpd"),
                ("LR(Z), 8-bit", "likelihood_regret", "regret"),
                ("LR(Z), Bernoulli", "likelihood_regret_bernoulli", "regret"),
                ("ROSE EKFAC, 8-bit (categorical, 1 epoch)", "rose", "rose"),
                ("ROSE EKFAC, Bernoulli", "rose_bernoulli", "rose"),
                ("ROSE DIAG, 8-bit (categorical, 1 epoch)", "rose_diag", "rose"),
                ("ROSE DIAG, Bernoulli", "rose_diag_bernoulli", "rose"),
                ("IC(png), 8-bit, uint8 PNG", "input_complexity", "ic_png"),
                ("IC(jp2), 8-bit, uint8 JPEG 2000", "input_complexity", "ic_jp2"),
                ("IC(png), Bernoulli HVAE, 1-bit PNG", "input_complexity_bernoulli", "ic_png"),
                ("IC(jp2), Bernoulli HVAE, 0/1 JPEG 2000", "input_complexity_bernoulli", "ic_jp2")],
                ["mnist", "kmnist", "notmnist", "omniglot", "cifar10-gray", "uniform-noise", "constant",
                 "fashionmnist-train (sanity)"])]
    if args.ablations:
        ab = boards["ablations"]
        sets = ["mnist", "notmnist", "omniglot", "omniglot-inverted", "cifar10-gray", "uniform-noise",
                "fashionmnist-train (sanity)"]
        out += ["", "### Negative sampling: which negatives (one seed)", "", notes.get("negatives", ""), "",
                wide_table(ab, [("stroke negatives (inverted Omniglot), AUC-BPD", "negative_sampling", "bpd"),
                                ("stroke negatives (inverted Omniglot), AUC-KL", "negative_sampling", "kl"),
                                ("CelebA faces, AUC-BPD", "negative_sampling_celeba", "bpd"),
                                ("CelebA faces, AUC-KL", "negative_sampling_celeba", "kl"),
                                ("uniform noise, AUC-BPD", "negative_sampling_uniform", "bpd"),
                                ("uniform noise, AUC-KL", "negative_sampling_uniform", "kl"),
                                ("no negatives (plain ELBO VAE, d = 100), bits/dim", "likelihood_bpvae_elbo",
                                 "elbo_bpd")], sets),
                "", "### Informative HVAE: λ and the k = 0 term of LLR^ada (one seed)", "", notes.get("lambda", ""),
                "",
                wide_table(ab, [("λ = 0.3, k0 = 0 (paper form)", "llr_ada", "llr_ada"),
                                ("λ = 0.3, k0 = IWAE gap", "llr_ada_iwae_gap", "llr_ada"),
                                ("λ = 1, k0 = 0 (paper form)", "llr_ada_l1", "llr_ada"),
                                ("λ = 1, k0 = IWAE gap", "llr_ada_l1_iwae_gap", "llr_ada"),
                                ("λ = 1, LLR>1", "llr_ada_l1", "llr_k1")], sets),
                "", "### Input complexity: units (one seed)", "", notes.get("ic_units", ""), "",
                wide_table(ab, [("IC(png), bits/dim", "input_complexity", "ic_png"),
                                ("IC(png), reference nats − bits", "input_complexity_reference_mix", "ic_png"),
                                ("IC(jp2), bits/dim", "input_complexity", "ic_jp2"),
                                ("IC(jp2), reference nats − bits", "input_complexity_reference_mix", "ic_jp2")],
                           sets)]
    if args.sweep:
        out += ["", "### BPVAE: latent size d, simple-prior scale σ_s, simple-set polarity (one seed)", "",
                notes.get("bpvae", ""), "", bpvae_sweep_table(leaderboard(args.sweep))]
    if args.rose:
        out += ["", "### ROSE on the DLM-head 8-bit VAE: fit size, latent size, preconditioner (three seeds)", "",
                notes.get("rose", ""), "", rose_table(leaderboard(args.rose))]
    if args.heads:
        out += ["", HEADS_TITLE, "", notes.get("heads", ""), "",
                heads_table(leaderboard(args.heads[0]), main_board, leaderboard(args.rose) if args.rose else None)]
    if args.rose_epochs:
        board = leaderboard(args.rose_epochs)
        out += ["", "### ROSE's categorical-head VAE: one or two epochs (seed 0)", "", notes.get("rose_epochs", ""),
                "", wide_table(board, [(f"{p}, {n} epoch{'s' * (n > 1)}", f"{d}{n}", "rose")
                                       for p, d in (("EKFAC", "rose"), ("DIAG", "rose_diag")) for n in (1, 2)],
                               ["mnist"])]
    plan = read_record(args.main_run)
    out += ["", "## Backbones of the main run", "", backbones(plan).to_markdown(index=False), "",
            notes.get("budget", ""), ""]
    args.out.write_text("\n".join(out).replace("\n\n\n", "\n\n"))
    print(f"wrote {args.out}")


def bpvae_sweep_table(board: pd.DataFrame) -> str:
    sets = ["mnist", "notmnist", "omniglot-inverted", "cifar10-gray", "uniform-noise", "fashionmnist-train (sanity)"]
    names = sorted({d for d in board["detector"] if d.startswith("bpvae-d")},
                   key=lambda n: tuple(float(x) if x.replace(".", "").isdigit() else x
                                       for x in re.findall(r"d(\d+)-s([\d.]+)-(\w+)", n)[0]))
    return wide_table(board, [(n.removeprefix("bpvae-"), n, "bpd") for n in names], sets)


ROSE_NAME = re.compile(r"rose-(\w+)-d(\d+)-n(\d+)")


def rose_table(board: pd.DataFrame) -> str:
    sets = ["mnist", "notmnist", "omniglot", "cifar10-gray", "uniform-noise", "constant", "fashionmnist-train (sanity)"]
    found = {d: ROSE_NAME.fullmatch(d) for d in board["detector"].unique()}
    keyed = sorted((m.group(1) != "ekfac", int(m.group(2)), int(m.group(3)), d) for d, m in found.items() if m)
    label = {False: "EKFAC", True: "DIAG"}
    return wide_table(board, [(f"{label[diag]}, d = {d}, n_fit = {n}", name, "rose") for diag, d, n, name in keyed],
                      sets)


HEADS_TITLE = "### ROSE and the NLL on the 8-bit VAE: the reference's categorical head vs the cpu profile's DLM head"
HEAD_NAME = re.compile(r"(rose-ekfac|rose-diag|nll)-categorical-d(\d+)")


def heads_table(board: pd.DataFrame, main: pd.DataFrame | None = None, rose: pd.DataFrame | None = None) -> str:
    """The fmnist-rose-heads run's rows (categorical head, 4 epochs) under the DLM-head rows of the same seeds
    and examples: ROSE from the ROSE ablation run (d = 16, n_fit = 1000), the NLL from the main run."""
    sets = ["mnist", "notmnist", "omniglot", "cifar10-gray", "uniform-noise", "constant", "fashionmnist-train (sanity)"]
    lines: list[str] = []
    for source, rows in ((rose, [("DLM (5 components), ROSE EKFAC", "rose-ekfac-d16-n1000", "rose"),
                                 ("DLM (5 components), ROSE DIAG", "rose-diag-d16-n1000", "rose")]),
                         (main, [("DLM (5 components), NLL", "vae_likelihood", "iwae_bpd")])):
        if source is not None:
            lines += wide_table(source, rows, sets).splitlines()[2:]
    what = {"rose-ekfac": ("ROSE EKFAC", "rose"), "rose-diag": ("ROSE DIAG", "rose"), "nll": ("NLL", "iwae_bpd")}
    found = sorted((list(what).index(m[1]), int(m[2]), d) for d in board["detector"].unique()
                   if (m := HEAD_NAME.fullmatch(d)))
    cat = wide_table(board, [(f"categorical (4 epochs), {what[list(what)[kind]][0]}, d = {d}", name,
                              what[list(what)[kind]][1]) for kind, d, name in found], sets).splitlines()
    return "\n".join(cat[:2] + lines + cat[2:])


README_COLUMNS = [  # (label, detector, output, paper score, paper column label)
    ("likelihood (IWAE)", "likelihood", "iwae_bpd", "L>0", "paper"),
    ("LLR>1", "llr", "llr_k1", "LLR>1", "paper"),
    ("LLR^ada, informative HVAE λ = 0.3", "llr_ada", "llr_ada", "LLR^ada (informative HVAE)", "paper (λ = 1)"),
    ("LR(Z), 8-bit VAE", "likelihood_regret", "regret", "LR_E", "paper (LR_E)"),
]
README_SETS = [("MNIST", "mnist"), ("notMNIST", "notmnist"), ("Omniglot, inverted", "omniglot-inverted"),
               ("FashionMNIST train (sanity, ≈ 0.5)", "fashionmnist-train (sanity)")]


def readme_table(board: pd.DataFrame, ref: pd.DataFrame) -> str:
    """The README's table of the main run: a few rows next to the papers' numbers (first source's value)."""
    lines = ["| OOD set | " + " | ".join(f"{c[0]} | {c[4]}" for c in README_COLUMNS) + " |",
             "|---" * (1 + 2 * len(README_COLUMNS)) + "|"]
    for name, ood_set in README_SETS:
        values = []
        for _, detector, output, score, _ in README_COLUMNS:
            hits = paper_hits(ref, score, ood_set)
            values += [fmt(cell(board, detector, output, ood_set)),
                       "–" if hits.empty else f"{hits['auroc'].iloc[0]:.3f}"]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _sections(text: str) -> dict[str, str]:
    """'## name' sections of the notes file by name."""
    parts = re.split(r"^## (\w+)\s*$", text, flags=re.M)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


CRITERIA = [
    # (label, detector, output, set, comparison, threshold)
    ("NS AUC-BPD, MNIST", "negative_sampling", "bpd", "mnist", ">=", 0.95),
    ("NS AUC-KL, MNIST", "negative_sampling", "kl", "mnist", ">=", 0.95),
    ("IC, 8-bit, MNIST (better of png/jp2)", "input_complexity", "ic_*", "mnist", ">=", 0.90),
    ("IC, 8-bit, uniform noise (better of png/jp2)", "input_complexity", "ic_*", "uniform-noise", ">=", 0.95),
    ("IC, 8-bit, CIFAR10-gray (better of png/jp2)", "input_complexity", "ic_*", "cifar10-gray", ">=", 0.95),
    ("ROSE, 8-bit, better preconditioner, MNIST", "rose|rose_diag", "rose", "mnist", ">=", 0.93),
    ("ROSE, Bernoulli ablation, better preconditioner, MNIST", "rose_bernoulli|rose_diag_bernoulli", "rose",
     "mnist", ">=", 0.93),
    ("LR(Z), 8-bit, MNIST", "likelihood_regret", "regret", "mnist", ">=", 0.93),
    ("BPVAE, MNIST", "bpvae", "bpd", "mnist", ">=", 0.70),
    ("LLR>1, MNIST", "llr", "llr_k1", "mnist", ">=", 0.97),
    ("likelihood (IWAE), MNIST", "likelihood", "iwae_bpd", "mnist", "<", 0.5),
]


def acceptance(boards: dict[str, pd.DataFrame], seconds: dict[int, float]) -> str:
    board = boards["main"]
    lines = ["| criterion | target | measured (mean over seeds) | met |", "|---|---|---|---|"]
    for label, detectors, output, ood_set, op, threshold in CRITERIA:
        candidates = []
        for det in detectors.split("|"):
            outs = [o for o in board["output"].unique() if re.fullmatch(output.replace("*", ".*"), o)]
            candidates += [(det, o, cell(board, det, o, ood_set)) for o in outs]
        candidates = [(d, o, c) for d, o, c in candidates if c is not None]
        if not candidates:
            lines.append(f"| {label} | {op} {threshold} | not in the run | no |")
            continue
        det, out, best = max(candidates, key=lambda t: t[2]["mean"]) if op == ">=" else min(
            candidates, key=lambda t: t[2]["mean"])
        ok = best["mean"] >= threshold if op == ">=" else best["mean"] < threshold
        lines.append(f"| {label} | {op} {threshold} | {fmt(best)} (`{det}/{out}`) | {'yes' if ok else '**no**'} |")
    sanity = board[board["ood_set"].str.endswith("(sanity)") & (board["metric"] == "auroc")
                   & (board["oracle_choice"] == "")]  # an oracle row picks k on the sanity set itself
    if not sanity.empty:
        worst = sanity.loc[(sanity["mean"] - 0.5).abs().idxmax()]
        ok = (sanity["mean"] - 0.5).abs().max() <= 0.03
        lines.append(f"| every sanity cell (FashionMNIST train vs test) | 0.50 ± 0.03 | "
                     f"{sanity['mean'].min():.3f}–{sanity['mean'].max():.3f} over {len(sanity)} cells "
                     f"(furthest: `{worst['detector']}/{worst['output']}`) | {'yes' if ok else '**no**'} |")
    if seconds:
        slowest = max(seconds.values())
        lines.append(f"| wall time per seed, 2 cores | <= 30 min | {slowest / 60:.1f} min (slowest seed) | "
                     f"{'yes' if slowest <= 1800 else '**no**'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
