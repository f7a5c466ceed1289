"""The ``tladapt`` command: run | plugins | datasets | table | distance | advise."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from importlib import resources

from tabulate import tabulate

from tladapt.config import ConfigError, load_config
from tladapt.manager import PluginError

DEFAULT_CONFIGS = ("default.toml", "default_dann.toml")


def _default_config_paths() -> list[str]:
    base = resources.files("tladapt") / "configs"
    return [str(base / name) for name in DEFAULT_CONFIGS]


def cmd_run(args) -> int:
    """``tladapt run``: validate every config, train, print the results table."""
    from tladapt.experiment import prepare, results_table, run_experiment

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
    print(results_table(results))
    print(f"\nRun directories (TensorBoard: tensorboard --logdir {configs[0].experiment.runs_dir}):")
    for r in results:
        print(f"  {r['run_dir']}")
    return 0


def cmd_plugins(args) -> int:
    """``tladapt plugins``: each plugin's origin, hooks and options with defaults and help."""
    from tladapt.manager import available_plugins

    plugins, _ = available_plugins(args.plugin)
    if not plugins:
        print("no plugins installed")
    for name, info in sorted(plugins.items()):
        doc = (info.cls.__doc__ or "").strip().splitlines()
        print(f"{name}  ({info.origin}; {info.cls.__module__}:{info.cls.__qualname__})")
        if doc:
            print(f"  {doc[0]}")
        print(f"  hooks: {', '.join(info.hooks) or '(none)'}")
        opts = info.options_class
        if opts is not None:
            rows = []
            for f in dataclasses.fields(opts):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                rows.append([f.name, getattr(f.type, "__name__", str(f.type)), repr(default), f.metadata.get("help", "")])
            print("  " + tabulate(rows, headers=["option", "type", "default", "help"], tablefmt="plain").replace("\n", "\n  "))
        print()
    return 0


def cmd_datasets(args) -> int:
    """``tladapt datasets``: bundled datasets, domains, sizes, input shapes and class counts."""
    from tladapt.data.datasets import describe_datasets

    print(tabulate(describe_datasets(), headers="keys", tablefmt="github"))
    return 0


def cmd_table(args) -> int:
    """``tladapt table``: tabulate every ``results.json`` below a runs directory."""
    from tladapt.experiment import collect_results, results_table

    results = collect_results(args.runs)
    if not results:
        raise ConfigError(f"no results.json found below {args.runs}")
    print(results_table(results, "tsv" if args.csv else "github"))
    return 0


def cmd_distance(args) -> int:
    """``tladapt distance``: proxy A-distance and MMD² between the domains of each task."""
    from tladapt.transfer import candidate_layers, layer_distances, load_model

    config = load_config(args.config, args.set)
    if args.layer:
        layers = args.layer
    elif args.init_from:
        layers = candidate_layers(load_model(args.init_from)[1]["backbone"])
    else:
        layers = ["input"]
    rows = []
    for task in config.data.tasks:
        for layer, d in layer_distances(config, task, layers, args.init_from).items():
            rows.append([task, layer, f"{d['pad']:.3f}", f"{d['mmd']:.5f}"])
    print(tabulate(rows, headers=["task", "layer", "proxy A-distance", "MMD^2"], tablefmt="github"))
    return 0


def cmd_advise(args) -> int:
    """``tladapt advise``: recommend one of the four fine-tuning regimes per task (``--verify`` runs them)."""
    from tladapt.transfer import REGIMES, advise_task, pretrain_source, regimes_table, run_regimes

    config = load_config(args.config, args.set, args.seeds)
    sources = {task: args.init_from for task in config.data.tasks}
    if args.verify and not args.init_from:
        print("--verify without --init-from: pre-training a source-only model per task first", file=sys.stderr)
        sources = pretrain_source(config)
    for task in config.data.tasks:
        thresholds = {k: v for k, v in (("small_below", args.small_below), ("similar_below", args.similar_below))
                      if v is not None}  # unset: the defaults of tladapt.transfer
        a = advise_task(config, task, sources[task], **thresholds)
        print(f"## {task}")
        print(tabulate([[layer, f"{d['pad']:.3f}", f"{d['mmd']:.5f}"] for layer, d in a["distances"].items()],
                       headers=["layer", "proxy A-distance", "MMD^2"], tablefmt="github"))
        print(f"\nlabelled target samples per class: {a['labels_per_class']:.1f} "
              f"(data.target_labels_per_class = {config.data.target_labels_per_class})")
        print(f"decision layer: {a['decision_layer']}; earlier layer for regime 3: {a['early_layer']}")
        if a["decision_layer"] == "input":
            print("note: measured at the raw input only; pass --init-from SOURCE_RUN to measure a source model's "
                  "layers (on inputs standardised per domain, such as the bundled SURF, the input PAD is ~0)")
        if a["source_acc_labelled"] is not None:
            print(f"(not used by the rule) source model accuracy on the labelled target samples: "
                  f"{a['source_acc_labelled']:.1f}%")
        print(f"advice: {REGIMES[a['regime']]}\n  because {a['reason']}\n")
        if args.verify:
            accs = run_regimes(config, task, sources[task], a["early_layer"], args.steps)
            print(regimes_table(accs, a["regime"]) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tladapt`` command."""
    parser = argparse.ArgumentParser(prog="tladapt", description="Domain-adaptation experiments with plugins.")
    sub = parser.add_subparsers(dest="command", required=True)

    def plugin_arg(p):
        p.add_argument("-p", "--plugin", action="append", default=[], metavar="PLUGIN",
                       help="load and activate a plugin: pkg.module, path/to/file.py, optionally :Class")

    run = sub.add_parser("run", help="train the tasks of one or more configs; no config runs the bundled default")
    run.add_argument("configs", nargs="*", metavar="CONFIG", help="experiment TOML files")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. plugins.dann.weight=0.3 (TOML syntax)")
    run.add_argument("--seeds", help="seeds to run: '0', '0-2' or '0,3,5'")
    run.add_argument("--runs-dir", help="root of the run directories (default: experiment.runs_dir, 'runs')")
    run.add_argument("--init-from", metavar="RUN_DIR", help="start backbone and head from this run (model.init_from)")
    plugin_arg(run)
    run.set_defaults(func=cmd_run)

    plugins = sub.add_parser("plugins", help="list installed plugins, their hooks and options")
    plugin_arg(plugins)
    plugins.set_defaults(func=cmd_plugins)

    datasets = sub.add_parser("datasets", help="list bundled datasets and domains")
    datasets.set_defaults(func=cmd_datasets)

    table = sub.add_parser("table", help="tabulate results.json files below a runs directory")
    table.add_argument("runs", help="a runs directory, e.g. runs/default")
    table.add_argument("--csv", action="store_true", help="tab-separated output instead of markdown")
    table.set_defaults(func=cmd_table)

    distance = sub.add_parser("distance", help="proxy A-distance and MMD between each task's domains")
    distance.add_argument("config", metavar="CONFIG")
    distance.add_argument("--layer", action="append", metavar="L",
                          help="'input', 'backbone' or a path like 'backbone.0' (repeatable); "
                               "default: input, or every candidate layer of --init-from")
    distance.add_argument("--init-from", metavar="RUN_DIR", help="a source run whose model gives the features")
    distance.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    distance.set_defaults(func=cmd_distance)

    advise = sub.add_parser("advise", help="recommend one of the four fine-tuning regimes (CS231n) per task")
    advise.add_argument("config", metavar="CONFIG")
    advise.add_argument("--init-from", metavar="RUN_DIR", help="a source-trained run (its layers are measured)")
    advise.add_argument("--verify", action="store_true", help="also run all four regimes and tabulate them")
    advise.add_argument("--steps", type=int, default=300, help="fine-tuning steps per --verify run (default 300)")
    advise.add_argument("--seeds", help="seeds of the --verify runs: '0', '0-2' or '0,3,5'")
    advise.add_argument("--small-below", type=float,
                        help="'small' target: fewer labelled samples per class than this (default 10)")
    advise.add_argument("--similar-below", type=float,
                        help="'similar' domains: proxy A-distance below this (default 1.0)")
    advise.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    advise.set_defaults(func=cmd_advise)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tladapt`` command; returns the exit status: 2 on bad input (before
    any training), 1 when plugins break the contract or training diverges."""
    args = build_parser().parse_args(argv)
    from tladapt.trainer import TrainingDiverged

    try:
        return args.func(args)
    except (ConfigError, ValueError) as err:
        print(f"tladapt: error: {err}", file=sys.stderr)
        return 2
    except (PluginError, TrainingDiverged) as err:
        print(f"tladapt: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
