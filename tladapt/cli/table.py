"""``tladapt table``: tabulate every ``results.json`` below a runs directory."""

from __future__ import annotations

import argparse

from tladapt.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt table``."""
    table = sub.add_parser("table", help="tabulate results.json files below a runs directory")
    table.add_argument("runs", help="a runs directory, e.g. runs/default")
    table.add_argument("--csv", action="store_true", help="tab-separated output instead of markdown")
    table.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt table``; returns the exit status."""
    from tladapt.experiment import collect_results, results_table

    results = collect_results(args.runs)
    if not results:
        raise ConfigError(f"no results.json found below {args.runs}")
    print(results_table(results, "tsv" if args.csv else "github"))
    return 0
