"""Leaderboard cells, oracle rows, markers, written files and run comparison on a synthetic run."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from ood_bench.errors import UserError
from ood_bench.report import compare_runs, leaderboard_table, print_comparison, write_leaderboard
from ood_bench.report.compare import delta_column
from ood_bench.report.leaderboard import read_summary_csv, summarize_records
from ood_bench.suite import marks
from rich.console import Console

SANITY = "fashionmnist-train (sanity)"
MISSING = [{"ood_set": "omniglot-inverted", "reason": "omniglot zips are not in the mirror.",
            "fetch_command": "ood-bench data fetch omniglot"}]
PROVENANCE = {"suite": "fmnist-hvae.yaml", "profile": "smoke", "seeds": [0, 1], "git_revision": "0123abc",
              "date": "2025-01-02", "balanced": True}

# Per OOD set: auroc and fpr80_ood_pos values over seeds 0 and 1 for llr_k1 and llr_k2.
LLR_VALUES = {
    "mnist": {"llr_k1": ([0.90, 0.92], [0.05, 0.05]), "llr_k2": ([0.95, 0.97], [0.10, 0.20])},
    SANITY: {"llr_k1": ([0.52, 0.50], [0.80, 0.80]), "llr_k2": ([0.48, 0.50], [0.80, 0.90])},
}


def make_records() -> pd.DataFrame:
    rows = []

    def add(detector, backbone, output, params, aux, ood_set, metric, values):
        for seed, value in enumerate(values):
            rows.append({"detector": detector, "backbone": backbone, "output": output, "params": params,
                         "uses_auxiliary_data": aux, "seed": seed, "ood_set": ood_set, "metric": metric,
                         "value": value})

    for ood_set, outputs in LLR_VALUES.items():
        for output, (auroc, fpr) in outputs.items():
            add("llr", "hvae", output, "S=1", False, ood_set, "auroc", auroc)
            add("llr", "hvae", output, "S=1", False, ood_set, "fpr80_ood_pos", fpr)
        # One seed only: the std must be omitted.
        add("ns", "vae", "elbo_bpd", "", True, ood_set, "auroc", [0.8])
        add("ns", "vae", "elbo_bpd", "", True, ood_set, "fpr80_ood_pos", [0.3])
    return pd.DataFrame(rows)


ORACLE = ("llr", "hvae", "llr_k* (oracle best k)", "S=1")


def test_cells_are_mean_pm_sample_std_over_seeds():
    table = leaderboard_table(make_records(), missing=MISSING)
    # mean(0.90, 0.92) = 0.91; sample std = |0.92 - 0.90| / sqrt(2) = 0.01414
    assert table.loc[("llr", "hvae", "llr_k1", "S=1"), ("mnist", "auroc")] == "0.910 ± 0.014"
    assert table.loc[("llr", "hvae", "llr_k2", "S=1"), ("mnist", "auroc")] == "0.960 ± 0.014"
    # mean(0.10, 0.20) = 0.15; std = 0.1 / sqrt(2) = 0.0707
    assert table.loc[("llr", "hvae", "llr_k2", "S=1"), ("mnist", "fpr80_ood_pos")] == "0.150 ± 0.071 ¶"
    assert table.loc[("llr", "hvae", "llr_k1", "S=1"), ("mnist", "fpr80_ood_pos")] == "0.050 ± 0.000"
    assert table.loc[("ns †aux", "vae", "elbo_bpd", ""), ("mnist", "auroc")] == "0.800"


def test_oracle_row_picks_k_by_auroc_per_ood_set():
    table = leaderboard_table(make_records())
    rows = list(table.index)
    assert rows == [("llr", "hvae", "llr_k1", "S=1"), ("llr", "hvae", "llr_k2", "S=1"), ORACLE,
                    ("ns †aux", "vae", "elbo_bpd", "")]
    # mnist: k=2 has the better AUROC, so its FPR is reported too although k=1 has the lower FPR.
    assert table.loc[ORACLE, ("mnist", "auroc")] == "0.960 ± 0.014 (k=2)"
    assert table.loc[ORACLE, ("mnist", "fpr80_ood_pos")] == "0.150 ± 0.071 (k=2) ¶"
    # sanity set: mean AUROC 0.51 (k=1) beats 0.49 (k=2).
    assert table.loc[ORACLE, (SANITY, "auroc")] == "0.510 ± 0.014 (k=1)"
    assert any("oracle best k" in note for note in table.attrs["footnotes"])


def test_missing_and_sanity_columns_and_aux_marker():
    table = leaderboard_table(make_records(), metrics=["auroc"], missing=MISSING)
    assert list(table.columns) == [("mnist", "auroc"), ("omniglot-inverted", "auroc"), (SANITY, "auroc")]
    assert (table[("omniglot-inverted", "auroc")] == "missing").all()
    assert any("ood-bench data fetch omniglot" in note for note in table.attrs["footnotes"])
    assert [row[0] for row in table.index].count("ns †aux") == 1
    assert any(note.startswith("†aux") for note in table.attrs["footnotes"])


def test_metric_names_are_checked():
    with pytest.raises(UserError, match="fpr95_id_pos"):
        leaderboard_table(make_records(), metrics=["fpr95"])


def test_write_leaderboard_files(tmp_path):
    records = make_records()
    out = io.StringIO()
    paths = write_leaderboard(tmp_path / "run", records, MISSING, PROVENANCE,
                              console=Console(file=out, width=120))
    assert set(paths) == {"md", "csv", "tex"}
    assert all(p.parent == tmp_path / "run" and p.exists() for p in paths.values())

    md = paths["md"].read_text(encoding="utf-8")
    for text in ["fmnist-hvae.yaml", "smoke", "0, 1", "0123abc", "2025-01-02", "balanced:** yes",
                 "ood-bench data fetch omniglot", "OOD positive", "## auroc", "## fpr80_ood_pos",
                 "| llr_k* (oracle best k) |", "0.960 ± 0.014 (k=2)", "ns †aux"]:
        assert text in md, text
    assert md.index("omniglot-inverted") < md.index(SANITY)

    summary = read_summary_csv(paths["csv"])
    pd.testing.assert_frame_equal(summary, summarize_records(records), check_exact=False)
    oracle = summary[summary["output"] == "llr_k* (oracle best k)"]
    assert set(oracle["oracle_choice"]) == {"llr_k1", "llr_k2"}

    tex = paths["tex"].read_text(encoding="utf-8")
    for rule in ["\\toprule", "\\midrule", "\\bottomrule"]:
        assert tex.count(rule) == 2, rule  # one tabular per metric
    assert "% git_revision: 0123abc" in tex and "llr\\_k1" in tex

    printed = out.getvalue()
    assert "0.910 ± 0.014" in printed and "missing" in printed
    assert "fmnist-hvae.yaml: auroc" in printed and "fmnist-hvae.yaml: fpr80_ood_pos" in printed
    assert max(len(line) for line in printed.splitlines()) <= 120


def test_compare_runs_deltas_and_unmatched_rows():
    first = make_records()
    second = make_records()
    second.loc[second["output"] == "llr_k1", "value"] += 0.01
    second = second[second["output"] != "elbo_bpd"]
    table = compare_runs({"base": first, "new": second}, metrics=["auroc"])
    assert list(table.columns) == ["base", "new", delta_column("new", "base")]
    assert table.loc[("llr", "hvae", "llr_k1", "mnist", "auroc"), "base"] == pytest.approx(0.91)
    assert table.loc[("llr", "hvae", "llr_k1", "mnist", "auroc"), "new"] == pytest.approx(0.92)
    assert table.loc[("llr", "hvae", "llr_k1", "mnist", "auroc"), "delta new - base"] == pytest.approx(0.01)
    assert table.loc[("llr", "hvae", "llr_k2", SANITY, "auroc"), "delta new - base"] == pytest.approx(0.0)
    only_base = table.loc[("ns", "vae", "elbo_bpd", "mnist", "auroc")]
    assert only_base["base"] == pytest.approx(0.8)
    assert pd.isna(only_base["new"]) and pd.isna(only_base["delta new - base"])
    assert len(table) == 6  # 3 outputs x 2 OOD sets, auroc only

    out = io.StringIO()
    print_comparison(table, Console(file=out, width=160))
    assert "+0.010" in out.getvalue() and "0.920" in out.getvalue()


def test_compare_needs_two_runs():
    with pytest.raises(UserError, match="two runs"):
        compare_runs({"only": make_records()})


def test_oracle_without_auroc_picks_each_metrics_own_best():
    records = make_records()
    fpr_only = records[records["metric"] == "fpr80_ood_pos"]
    table = leaderboard_table(fpr_only)
    # Lower FPR is better: k=1 on mnist (0.05 < 0.15) and on the sanity set (0.80 < 0.85).
    assert table.loc[ORACLE, ("mnist", "fpr80_ood_pos")] == "0.050 ± 0.000 (k=1)"
    assert table.loc[ORACLE, (SANITY, "fpr80_ood_pos")] == "0.800 ± 0.000 (k=1)"


def test_cell_marks_flag_same_domain_and_binarised_cells_and_explain_them():
    # The plan-side rule: same source dataset as the backbone's auxiliary set; constant under a Bernoulli head.
    sets = {"fashionmnist": "fashionmnist", "omniglot": "omniglot", "omniglot-inverted": "omniglot",
            "constant": "constant", "mnist": "mnist"}
    assert marks.cell_marks(sets, "omniglot", "bernoulli") == {
        "omniglot": [marks.SAME_DOMAIN], "omniglot-inverted": [marks.SAME_DOMAIN], "constant": [marks.BINARISED]}
    assert marks.cell_marks(sets, None, "dlm") == {}
    # The table side: the symbol follows the value in the marked cells only, and a footnote explains it.
    records = make_records()
    records["marks"] = ""
    records.loc[(records["detector"] == "ns") & (records["ood_set"] == "mnist"), "marks"] = marks.SAME_DOMAIN
    table = leaderboard_table(records)
    assert table.loc[("ns †aux", "vae", "elbo_bpd", ""), ("mnist", "auroc")] == "0.800 ‡"
    assert table.loc[("ns †aux", "vae", "elbo_bpd", ""), (SANITY, "auroc")] == "0.800"
    assert table.loc[("llr", "hvae", "llr_k1", "S=1"), ("mnist", "auroc")] == "0.910 ± 0.014"
    assert marks.NOTES[marks.SAME_DOMAIN] in table.attrs["marker_notes"]
    assert marks.NOTES[marks.BINARISED] not in table.attrs["marker_notes"]
    # records without the column (older runs) still build a table, unmarked
    assert leaderboard_table(make_records()).attrs["marker_notes"] == leaderboard_table(
        make_records().assign(marks="")).attrs["marker_notes"]


def test_cells_whose_seeds_disagree_are_marked_unstable():
    records = make_records()
    # llr_k2 fpr80 on mnist: 0.10 / 0.20 over two seeds, std 0.071 > 0.05; its auroc (std 0.014) is stable
    table = leaderboard_table(records)
    assert table.loc[("llr", "hvae", "llr_k2", "S=1"), ("mnist", "fpr80_ood_pos")] == "0.150 ± 0.071 ¶"
    assert table.loc[("llr", "hvae", "llr_k2", "S=1"), ("mnist", "auroc")] == "0.960 ± 0.014"
    assert marks.NOTES[marks.UNSTABLE] in table.attrs["marker_notes"]
