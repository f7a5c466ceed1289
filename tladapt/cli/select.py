"""``tladapt select``: model selection after the fact, from recorded runs only: per task, method
and seed, the evaluation point and/or configuration a validator scores best."""

from __future__ import annotations

import argparse
import json

from tladapt.cli.table import add_format_args
from tladapt.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt select``."""
    select = sub.add_parser("select", help="select checkpoints/configs of recorded runs by a validator (no retraining)")
    select.add_argument("runs", nargs="+", help="runs directories (tladapt run or tladapt sweep output)")
    select.add_argument("--validator", required=True,
                        help="a validator recorded in the runs (tladapt plugins lists them), last, or oracle "
                             "(target labels: always labelled oracle)")
    select.add_argument("--over", choices=["steps", "configs", "both"], default="steps",
                        help="choose the evaluation point of each run (steps), the configuration of each method "
                             "at its last step (configs), or both")
    select.add_argument("--per-seed", action="store_true", help="also list each seed's choice (run, step, score)")
    add_format_args(select)
    select.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt select``; returns the exit status."""
    from tabulate import tabulate

    from tladapt.tables import build_table, read_runs, render_table

    runs = read_runs(*args.runs)
    if not runs:
        raise ConfigError(f"no run directory (config.json / results.json) found below {', '.join(args.runs)}")
    table = build_table(runs, args.validator, args.metric, args.over)
    text = render_table(table, args.format)
    if args.per_seed:
        cols = ["experiment", "task", "method", "seed", "config_id", "step", "score", "selected", "run_dir"]
        chosen = table.chosen[cols]
        if args.format == "json":
            text = json.dumps({**json.loads(text), "choices": json.loads(chosen.to_json(orient="records"))}, indent=2)
        elif args.format == "csv":
            text += "\n" + chosen.to_csv(index=False)
        else:
            text += "\n\nChoices per seed:\n" + tabulate(chosen.values.tolist(), headers=cols, tablefmt="github")
    print(text)
    return 0
