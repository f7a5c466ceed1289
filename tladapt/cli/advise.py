"""``tladapt advise``: recommend one of the four fine-tuning regimes per task (``--verify`` runs them)."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from tladapt.cli.args import add_set_arg
from tladapt.cli.output import significant


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt advise``."""
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
    add_set_arg(advise)
    advise.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt advise``; returns the exit status."""
    from tladapt.config import load_config
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
        print(tabulate([[layer, significant(d["pad"]), significant(d["mmd"])] for layer, d in a["distances"].items()],
                       headers=["layer", "proxy A-distance", "MMD^2"], tablefmt="github", disable_numparse=True))
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
