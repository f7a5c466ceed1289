"""``tladapt table``: tabulate the runs below one or more directories, choosing each number as
``--select`` says (the last evaluation point by default: label-free)."""

from __future__ import annotations

import argparse

from tladapt.errors import ConfigError


def add_format_args(parser: argparse.ArgumentParser) -> None:
    """``--format`` and ``--metric``, shared by ``table`` and ``select``."""
    parser.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown",
                        help="markdown (default), csv (numeric columns) or json")
    parser.add_argument("--metric", default="oracle/target_acc",
                        help="recorded tag reported for each chosen model (default oracle/target_acc; "
                             "e.g. metrics/source_val_acc)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt table``."""
    table = sub.add_parser("table", help="tabulate the runs below one or more runs directories")
    table.add_argument("runs", nargs="+", help="runs directories, e.g. runs/default")
    table.add_argument("--select", default="last", metavar="VALIDATOR",
                       help="how each run's number is chosen: last (default: the last evaluation point), "
                            "a validator (tladapt plugins lists them) picking the evaluation point, or oracle "
                            "(target labels; always labelled oracle)")
    table.add_argument("--pivot", action="store_true", help="tasks x methods, with a mean row per experiment")
    table.add_argument("--methods", nargs="+", help="pivot column order (default: as found)")
    add_format_args(table)
    table.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt table``; returns the exit status."""
    from tladapt.tables import build_table, read_runs, render_pivot, render_table

    runs = read_runs(*args.runs)
    if not runs:
        raise ConfigError(f"no run directory (config.json / results.json) found below {', '.join(args.runs)}")
    table = build_table(runs, args.select, args.metric)
    print(render_pivot(table, args.format, args.methods) if args.pivot else render_table(table, args.format))
    return 0
