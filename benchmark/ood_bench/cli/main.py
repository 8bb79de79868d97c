"""The ``ood-bench`` command line: run, show, compare, report, list, data."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ood_bench import __version__
from ood_bench.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="ood-bench", description="Benchmark unsupervised OOD detectors on VAE and HVAE backbones."
    )
    parser.add_argument("--version", action="version", version=f"ood-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train or load backbones, score every set, write the leaderboard")
    run.add_argument("suite", type=Path, help="suite YAML file, e.g. suites/fmnist.yaml")
    run.add_argument("--profile", default="cpu", help="budget profile defined in the suite (default: cpu)")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    run.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
    run.add_argument("--checkpoints", type=Path, default=None,
                     help="checkpoint cache (default: $OOD_BENCH_CHECKPOINTS or <results>/checkpoints)")
    run.add_argument("--batch-size", type=int, default=None, help="scoring batch size (scores do not depend on it)")
    run.add_argument("--strict", action="store_true", help="fail instead of skipping unavailable OOD datasets")
    run.add_argument("--offline", action="store_true",
                     help="never download; use only the data dir, OOD_BENCH_MIRROR and OS packages")

    show = sub.add_parser("show", help="print the leaderboard of a cached run")
    show.add_argument("run_dir", type=Path)

    compare = sub.add_parser("compare", help="compare two or more cached runs side by side, with deltas")
    compare.add_argument("run_dirs", type=Path, nargs="+")
    compare.add_argument("--bootstrap", type=int, default=0, metavar="N",
                         help="add 95%% confidence intervals of each delta from N resamples of the examples")
    compare.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resamples (default: 0)")

    report = sub.add_parser("report", help="write figures and a static HTML/Markdown report of a cached run")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/report)")
    report.add_argument("--suite", type=Path, default=None,
                        help="suite file to load the images from (default: the one recorded in run.json)")
    report.add_argument("--checkpoints", type=Path, default=None,
                        help="where to look for backbone checkpoints besides the path recorded in run.json")

    lst = sub.add_parser("list", help="list registered detectors, datasets or backbones")
    lst.add_argument("what", choices=["detectors", "datasets", "backbones"])

    data = sub.add_parser("data", help="list, fetch or verify datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="every dataset, whether it is available here, and how to get it")
    fetch = data_sub.add_parser("fetch", help="download (or copy from OOD_BENCH_MIRROR) and verify datasets")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--allow-unverified", action="store_true",
                       help="accept a download that has no published checksum (plugins only)")
    verify = data_sub.add_parser("verify", help="re-hash local dataset files against their checksums")
    verify.add_argument("names", nargs="*")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return COMMANDS[args.command](args, console)
    except UserError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finished chunks are cached; run the same command to resume.")
        return 130


def _run(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.suite.runner import run_suite

    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    run_suite(args.suite, profile=args.profile, device=args.device, results_root=args.results,
              strict=args.strict, download=not args.offline, batch_size=args.batch_size,
              checkpoint_dir=args.checkpoints, console=console)
    return 0


def _show(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.report.leaderboard import leaderboard_table, print_table
    from ood_bench.suite.results import read_plan, records_from_cache

    plan = read_plan(args.run_dir)
    table = leaderboard_table(records_from_cache(args.run_dir), plan["metrics"], missing=plan["missing"])
    print_table(table, console, title=f"{plan['suite']} ({plan['profile']} profile)")
    return 0


def _compare(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.report.compare import compare_runs, print_comparison
    from ood_bench.suite.results import records_from_cache

    if len(args.run_dirs) < 2:
        raise UserError("compare needs at least two run directories, e.g. `ood-bench compare results/a results/b`.")
    named = {str(d): records_from_cache(d) for d in args.run_dirs}
    table = compare_runs(named)
    if args.bootstrap:
        from ood_bench.report.compare import add_intervals, bootstrap_deltas

        table = add_intervals(table, bootstrap_deltas(args.run_dirs, args.bootstrap, seed=args.bootstrap_seed))
        console.print(f"bootstrap: {args.bootstrap} resamples, seed {args.bootstrap_seed}")
    print_comparison(table, console)
    return 0


def _report(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.report.build import write_report

    out = write_report(args.run_dir, out_dir=args.out, suite_path=args.suite, checkpoint_dir=args.checkpoints,
                       console=console)
    console.print(f"report: {out / 'index.html'} and {out / 'report.md'}")
    return 0


def _list(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.registry import registry

    reg = registry(args.what)
    table = Table(title=f"registered {args.what}")
    table.add_column("name")
    table.add_column("provided by")
    table.add_column("description")
    for name, obj in sorted(reg.entries.items()):
        module = getattr(obj, "__module__", type(obj).__module__)
        doc = (getattr(obj, "description", None) or (obj.__doc__ or "")).strip().splitlines()
        table.add_row(name, module.split(".")[0], doc[0] if doc else "")
    console.print(table)
    for name, error in sorted(reg.failures.items()):
        console.print(f"[red]{name}: failed to load ({error})[/]")
    return 0


def _data(args: argparse.Namespace, console: Console) -> int:
    from ood_bench import data

    if args.data_command == "list":
        table = Table(title="datasets")
        for col in ("name", "splits", "available", "source", "get it with"):
            table.add_column(col)
        for st in data.data_status():
            table.add_row(st.name, ", ".join(st.splits), "yes" if st.available else "no", st.where or "",
                          "" if st.available else st.fetch_command)
        console.print(table)
        return 0
    if args.data_command == "fetch":
        for name in args.names:
            paths = data.fetch(name, allow_unverified=args.allow_unverified)
            console.print(f"{name}: {len(paths)} file(s) ready")
        return 0
    bad = 0
    for result in data.verify(args.names[0] if len(args.names) == 1 else None):
        if args.names and result.dataset not in args.names:
            continue
        console.print(f"{result.dataset}: {result.filename}: {result.status}")
        bad += result.status == "corrupt"
    return 1 if bad else 0


COMMANDS = {"run": _run, "show": _show, "compare": _compare, "report": _report, "list": _list, "data": _data}


if __name__ == "__main__":
    sys.exit(main())
