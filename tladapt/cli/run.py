"""``tladapt run``: validate every config, train, print the results table."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources

from tladapt.cli.args import add_plugin_arg, add_set_arg
from tladapt.config import load_config

DEFAULT_CONFIGS = ("default.toml", "default_dann.toml")


def _default_config_paths() -> list[str]:
    base = resources.files("tladapt") / "configs"
    return [str(base / name) for name in DEFAULT_CONFIGS]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt run`` and its arguments."""
    run = sub.add_parser("run", help="train the tasks of one or more configs; no config runs the bundled default")
    run.add_argument("configs", nargs="*", metavar="CONFIG", help="experiment TOML files")
    add_set_arg(run)
    run.add_argument("--seeds", help="seeds to run: '0', '0-2' or '0,3,5'")
    run.add_argument("--runs-dir", help="root of the run directories (default: experiment.runs_dir, 'runs')")
    run.add_argument("--init-from", metavar="RUN_DIR", help="start backbone and head from this run (model.init_from)")
    add_plugin_arg(run)
    run.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt run``; returns the exit status."""
    from tladapt.experiment import prepare, run_experiment
    from tladapt.tables import build_table, render_table

    paths = args.configs or _default_config_paths()
    overrides = args.set + ([f"model.init_from={json.dumps(args.init_from)}"] if args.init_from else [])
    configs = [load_config(path, overrides, args.seeds) for path in paths]
    if args.runs_dir:
        for config in configs:
            config.experiment.runs_dir = args.runs_dir
    for config in configs:  # every config is checked before the first run starts
        prepare(config, args.plugin)
    if not args.configs:
        print("No config given: running the bundled default experiment "
              f"({', '.join(DEFAULT_CONFIGS)}) on real data.", file=sys.stderr)
    results = []
    for config in configs:
        results += run_experiment(config, args.plugin)
    print(render_table(build_table(results)))
    print(f"\nRun directories (TensorBoard: tensorboard --logdir {configs[0].experiment.runs_dir}):")
    for r in results:
        print(f"  {r['run_dir']}")
    return 0
