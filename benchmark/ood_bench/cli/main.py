"""The ``ood-bench`` command line: run, plan, validate, show, compare, report, list, data.

A thin layer over the Python API (:mod:`ood_bench.api`) and the modules it calls.
"""

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

    run = sub.add_parser("run", help="train or load backbones, score every set, write the leaderboard",
                         epilog=EXAMPLES["run"], formatter_class=argparse.RawDescriptionHelpFormatter)
    plan = sub.add_parser("plan", help="the units of work of a run, their keys, dependencies and cache status; "
                                       "trains and scores nothing",
                          epilog=EXAMPLES["plan"], formatter_class=argparse.RawDescriptionHelpFormatter)
    validate = sub.add_parser("validate", help="validate a suite (schema, names, parameters); loads no data",
                              epilog=EXAMPLES["validate"], formatter_class=argparse.RawDescriptionHelpFormatter)
    for p in (run, plan, validate):
        p.add_argument("suite", type=Path, help="suite YAML file, e.g. suites/fmnist.yaml")
        p.add_argument("--profile", default="cpu", help="budget profile defined in the suite (default: cpu)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a suite field by its dotted path, value as YAML (repeatable), e.g. "
                            "--set detectors.llr.params.iwae_samples=8 --set seeds=[0,1,2]")
        p.add_argument("--detectors", default=None, metavar="A,B", help="run only these detector entries")
        p.add_argument("--ood", default=None, metavar="A,B", help="evaluate only these OOD sets (by label)")
    for p in (run, plan):
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
        p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                       help="numerics (default fp32: exact, deterministic; tf32/bf16 trade accuracy for speed "
                            "and get their own checkpoints and scores)")
        p.add_argument("--threads", type=int, default=None,
                       help="torch threads per process or Ray task (default: one per core); part of the CPU "
                            "numerics, so it is recorded in the keys")
        p.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
        p.add_argument("--checkpoints", type=Path, default=None,
                       help="checkpoint cache (default: $OOD_BENCH_CHECKPOINTS or <results>/checkpoints)")
        p.add_argument("--batch-size", type=int, default=None,
                       help="scoring batch size (scores do not depend on it)")
        p.add_argument("--examples-per-unit", type=int, default=None,
                       help="split each evaluation set into score units of about this many examples "
                            "(default: one unit per set)")
        p.add_argument("--strict", action="store_true", help="fail instead of skipping unavailable OOD datasets")
        p.add_argument("--offline", action="store_true",
                       help="never download; use only the data dir, OOD_BENCH_MIRROR and OS packages")
    run.add_argument("--executor", default="local", choices=["local", "ray"],
                     help="local (default: this process) or ray (a local Ray cluster, or --address)")
    run.add_argument("--address", default=None,
                     help="with --executor ray: an existing cluster ('auto', or host:port); default: start one")
    run.add_argument("--gpus-per-task", type=float, default=None,
                     help="with --executor ray --device cuda: GPUs per task (fractions share a GPU; default 1)")
    run.add_argument("--logger", default="none", choices=["none", "tensorboard"],
                     help="tensorboard: validation curves, per-layer KL and score histograms in "
                          "RESULTS/SUITE/tensorboard (needs the tensorboard extra)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (for tools)")

    show = sub.add_parser("show", help="print the leaderboard of a cached run",
                          epilog=EXAMPLES["show"], formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("run_dir", type=Path)
    show.add_argument("--format", choices=["table", "md", "csv", "json"], default=None,
                      help="table (default on a terminal), md (default when piped), csv or json")

    compare = sub.add_parser("compare", help="compare two or more cached runs side by side, with deltas",
                             epilog=EXAMPLES["compare"], formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("run_dirs", type=Path, nargs="+")
    compare.add_argument("--bootstrap", type=int, default=0, metavar="N",
                         help="add 95%% confidence intervals of each delta from N resamples of the examples")
    compare.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resamples (default: 0)")
    compare.add_argument("--metric", action="append", default=None, help="only this metric (repeatable)")
    compare.add_argument("--ood", default=None, metavar="A,B", help="only these OOD sets")
    compare.add_argument("--out", type=Path, default=None, help="also write the table as CSV to this file")

    export = sub.add_parser("export", help="per-example scores of a cached run as one table (CSV or Parquet)",
                            epilog=EXAMPLES["export"], formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", choices=["csv", "parquet"], default="csv")
    export.add_argument("--out", type=Path, default=None, help="output file (default: RUN_DIR/scores.<format>)")

    report = sub.add_parser("report", help="write figures and a static HTML/Markdown report of a cached run",
                            epilog=EXAMPLES["report"], formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("run_dir", type=Path)
    report.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/report)")
    report.add_argument("--suite", type=Path, default=None,
                        help="suite file to load the images from (default: the one recorded in run.json)")
    report.add_argument("--checkpoints", type=Path, default=None,
                        help="where to look for backbone checkpoints besides the path recorded in run.json")

    lst = sub.add_parser("list", help="list registered detectors, datasets or backbones",
                         epilog=EXAMPLES["list"], formatter_class=argparse.RawDescriptionHelpFormatter)
    lst.add_argument("what", choices=["detectors", "datasets", "backbones"])

    data = sub.add_parser("data", help="list, fetch or verify datasets",
                          epilog=EXAMPLES["data"], formatter_class=argparse.RawDescriptionHelpFormatter)
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="every dataset, whether it is available here, and how to get it",
                        epilog=EXAMPLES["data list"], formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch = data_sub.add_parser("fetch", help="download (or copy from OOD_BENCH_MIRROR) and verify datasets",
                                epilog=EXAMPLES["data fetch"], formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--allow-unverified", action="store_true",
                       help="accept a download that has no published checksum (plugins only)")
    verify = data_sub.add_parser("verify", help="re-hash local dataset files against their checksums",
                                 epilog=EXAMPLES["data verify"], formatter_class=argparse.RawDescriptionHelpFormatter)
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


EXAMPLES = {
    "run": "example:\n  ood-bench run suites/fmnist.yaml --set evaluation.max_examples=1000 --detectors llr,likelihood",
    "plan": "example:\n  ood-bench plan suites/fmnist.yaml --profile paper --json",
    "validate": "example:\n  ood-bench validate suites/fmnist.yaml --profile paper",
    "show": "example:\n  ood-bench show results/fmnist --format csv > board.csv",
    "compare": "example:\n  ood-bench compare results/fmnist results/fmnist-b --metric auroc --ood mnist "
               "--bootstrap 1000 --out deltas.csv",
    "export": "example:\n  ood-bench export results/fmnist --format parquet --out scores.parquet",
    "report": "example:\n  ood-bench report results/fmnist     # then open results/fmnist/report/index.html",
    "list": "example:\n  ood-bench list detectors",
    "data": "examples:\n  ood-bench data list\n  ood-bench data fetch mnist kmnist\n  ood-bench data verify",
    "data list": "example:\n  ood-bench data list",
    "data fetch": "example:\n  OOD_BENCH_MIRROR=/path/to/mirror ood-bench data fetch mnist notmnist",
    "data verify": "example:\n  ood-bench data verify mnist      # every local dataset when no name is given",
}


def _suite_options(args: argparse.Namespace) -> dict:
    """``--set``, ``--detectors`` and ``--ood`` as keyword arguments of load_suite / run_suite."""
    import yaml

    overrides = {}
    for item in args.overrides:
        field, sep, text = item.partition("=")
        if not sep or not field:
            raise UserError(f"--set expects FIELD=VALUE (a dotted suite field, a YAML value), got '{item}'; "
                            f"e.g. --set detectors.llr.params.iwae_samples=8.")
        try:
            overrides[field.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item}: the value is not valid YAML ({exc}).") from None

    def names(text: str | None) -> list[str] | None:
        return None if text is None else [n.strip() for n in text.split(",") if n.strip()]

    return {"overrides": overrides, "detectors": names(args.detectors), "ood": names(args.ood)}


def _check_sizes(args: argparse.Namespace) -> None:
    for flag, value in (("--batch-size", args.batch_size), ("--examples-per-unit", args.examples_per_unit)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}.")


def _run(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.api import run_suite
    from ood_bench.execution.executor import make_executor

    _check_sizes(args)
    options = _suite_options(args)
    executor = make_executor(args.executor, address=args.address, gpus_per_task=args.gpus_per_task)
    run_suite(args.suite, profile=args.profile, **options, results=args.results, checkpoints=args.checkpoints,
              device=args.device, precision=args.precision, threads=args.threads, executor=executor,
              batch_size=args.batch_size, examples_per_unit=args.examples_per_unit, strict=args.strict,
              download=not args.offline, console=console, logger=args.logger)
    return 0


def _validate(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.suite.load import check_detector_backbones, expected_input_shape, load_suite

    suite, digest = load_suite(args.suite, args.profile, **_suite_options(args))
    shape = expected_input_shape(suite)
    if shape is not None:
        check_detector_backbones(suite, shape, str(args.suite))
    else:
        console.print("note: the ID images' shape depends on transforms or parameters; detector-backbone pairs are "
                      "checked when a run has loaded the data, before any training")
    console.print(f"{args.suite}: valid suite '{suite.name}' (profile {args.profile}): {len(suite.seeds)} seed(s), "
                  f"{len(suite.backbones)} backbone(s), {len(suite.detectors)} detector(s), {len(suite.ood)} OOD "
                  f"set(s); sha256 {digest[:12]}")
    return 0


def _plan(args: argparse.Namespace, console: Console) -> int:
    import json

    from ood_bench.execution.status import plan_status, print_plan
    from ood_bench.suite.runner import prepare

    _check_sizes(args)
    suite, _, data, plan, _ = prepare(args.suite, profile=args.profile, **_suite_options(args), device=args.device,
                                      precision=args.precision, threads=args.threads, results_root=args.results,
                                      strict=args.strict, download=not args.offline, batch_size=args.batch_size,
                                      checkpoint_dir=args.checkpoints, examples_per_unit=args.examples_per_unit)
    status = plan_status(plan, data, args.results / suite.name)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print_plan(status, console)
    return 0


def _show(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.report.leaderboard import leaderboard_table, print_table, render_markdown, summarize_records
    from ood_bench.suite.results import read_plan, records_from_cache

    plan = read_plan(args.run_dir)
    records = records_from_cache(args.run_dir)
    fmt = args.format or ("table" if console.is_terminal else "md")
    if fmt == "csv":
        sys.stdout.write(summarize_records(records, plan["metrics"]).to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(summarize_records(records, plan["metrics"]).to_json(orient="records", indent=1) + "\n")
    else:
        table = leaderboard_table(records, plan["metrics"], missing=plan["missing"])
        if fmt == "md":  # whole cells, no terminal width: for pipes, files and notebooks
            prov = plan.get("provenance", {}) | {"suite": plan["suite"], "seeds": plan["seeds"],
                                                 "balanced": plan["balanced"]}
            sys.stdout.write(render_markdown(table, plan["missing"], prov) + "\n")
        else:
            print_table(table, console, title=f"{plan['suite']} ({plan['profile']} profile)")
    return 0


def _compare(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.report.compare import compare_runs, print_comparison
    from ood_bench.suite.results import records_from_cache

    if len(args.run_dirs) < 2:
        raise UserError("compare needs at least two run directories, e.g. `ood-bench compare results/a results/b`.")
    named = {str(d): records_from_cache(d) for d in args.run_dirs}
    table = compare_runs(named, metrics=args.metric)
    if args.bootstrap:
        from ood_bench.report.compare import add_intervals, bootstrap_deltas

        table = add_intervals(table, bootstrap_deltas(args.run_dirs, args.bootstrap, seed=args.bootstrap_seed))
        console.print(f"bootstrap: {args.bootstrap} resamples, seed {args.bootstrap_seed}")
    if args.ood is not None:
        wanted = {n.strip() for n in args.ood.split(",") if n.strip()}
        present = set(table.index.get_level_values("ood_set"))
        if not wanted & present:
            raise UserError(f"--ood {args.ood}: none of these sets is in the runs; they have "
                            f"{', '.join(sorted(present))}.")
        table = table[table.index.get_level_values("ood_set").isin(wanted)]
    print_comparison(table, console)
    if args.out is not None:
        from ood_bench.files import write_text_atomic

        write_text_atomic(args.out, table.reset_index().to_csv(index=False))
        console.print(f"wrote {args.out}")
    return 0


def _export(args: argparse.Namespace, console: Console) -> int:
    from ood_bench.suite.results import export_scores

    out = args.out or args.run_dir / f"scores.{args.format}"
    frame = export_scores(args.run_dir)
    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--format parquet needs pyarrow (`pip install pyarrow`); or use --format csv.") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)
    else:
        from ood_bench.files import write_text_atomic

        write_text_atomic(out, frame.to_csv(index=False))
    console.print(f"{len(frame)} scores ({frame['detector'].nunique()} detectors, {frame['set'].nunique()} sets) "
                  f"-> {out}")
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


COMMANDS = {"run": _run, "plan": _plan, "validate": _validate, "show": _show, "compare": _compare,
            "export": _export, "report": _report, "list": _list, "data": _data}


if __name__ == "__main__":
    sys.exit(main())
