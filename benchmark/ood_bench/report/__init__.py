"""Leaderboards and run comparisons built from a run's tidy metric records."""

from ood_bench.report.compare import compare_runs, print_comparison
from ood_bench.report.leaderboard import leaderboard_table, print_table, summarize_records, write_leaderboard

__all__ = [
    "compare_runs",
    "leaderboard_table",
    "print_comparison",
    "print_table",
    "summarize_records",
    "write_leaderboard",
]
