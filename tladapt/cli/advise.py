"""``tladapt advise``: which of the four transfer regimes to use per task, cross-validated on the
labelled target samples (``--verify`` runs all four on the test rest)."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from tladapt.cli.args import add_set_arg
from tladapt.cli.output import significant


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt advise``."""
    advise = sub.add_parser("advise", help="advise one of the four transfer regimes per task, cross-validated on "
                                           "the labelled target samples")
    advise.add_argument("config", metavar="CONFIG")
    advise.add_argument("--init-from", metavar="RUN_DIR",
                        help="the source model (a run directory; default: train a source-only model per task first)")
    advise.add_argument("--verify", action="store_true",
                        help="also run all four regimes on the test rest (oracle) and tabulate them")
    advise.add_argument("--steps", type=int, default=300, help="fine-tuning steps per run (default 300)")
    advise.add_argument("--folds", type=int, default=3, help="cross-validation splits of the labelled samples (default 3)")
    advise.add_argument("--margin", type=float, default=1.0,
                        help="points a regime must beat from_source by in cross-validation (a new head, or >= 5 "
                             "labelled samples per class; below that a source head is kept) (default 1)")
    advise.add_argument("--noise", type=float, default=2.0,
                        help="paired standard errors over the folds it must beat the default by, too (default 2)")
    advise.add_argument("--seeds", help="seeds: the first draws the labelled samples advised on; --verify runs all")
    advise.add_argument("--small-below", type=float, default=10.0,
                        help="classic rule, for reference: 'small' below this many labelled samples per class")
    advise.add_argument("--similar-below", type=float, default=1.0,
                        help="classic rule, for reference: 'similar' below this proxy A-distance")
    add_set_arg(advise)
    advise.set_defaults(func=main)


def _print_advice(a, config) -> None:
    from tladapt.transfer import REGIMES

    print(f"## {a.task}")
    print(f"labelled target samples per class: {a.labels_per_class:.1f} "
          f"(data.target_labels_per_class = {a.k}; split of seed {config.experiment.seeds[0]})")
    if a.source_acc_labelled is not None:
        print(f"source model accuracy on the labelled samples: {a.source_acc_labelled:.1f}% (chance {a.chance:.1f}%)")
    else:
        print("no source head predicts the target's classes: a new head (default regime: from_source)")
    if a.cv:
        rows = [[REGIMES[r], f"{sum(v) / len(v):.1f}", " ".join(f"{x:.1f}" for x in v)] for r, v in a.cv.items()]
        print(tabulate(rows, headers=["regime", "cross-validated acc (%)", "per fold"], tablefmt="github"))
    print(f"\nadvice: {REGIMES[a.regime]}\n  because {a.reason}")
    print(tabulate([[layer, significant(d["pad"]), significant(d["mmd"])] for layer, d in a.distances.items()],
                   headers=["layer", "proxy A-distance", "MMD^2"], tablefmt="github", disable_numparse=True))
    print(f"classic rule (CS231n, for reference; it held in 3 of 20 cells of experiments/inductive.md): "
          f"{REGIMES[a.classic]}\n  because {a.classic_reason}\n")


def check_options(args) -> None:
    """The command's numeric options, before any work.

    Raises:
        ConfigError: naming the option and what was expected: ``--steps`` >= 1, ``--folds``
            >= 2 (one fold has no standard error to clear), ``--margin``, ``--noise`` and
            ``--small-below`` finite and >= 0, ``--similar-below`` finite.
    """
    import math

    from tladapt.errors import ConfigError

    checks = [("--steps", args.steps, args.steps >= 1, "an integer >= 1"),
              ("--folds", args.folds, args.folds >= 2, "an integer >= 2"),
              ("--margin", args.margin, math.isfinite(args.margin) and args.margin >= 0, "a finite number >= 0"),
              ("--noise", args.noise, math.isfinite(args.noise) and args.noise >= 0, "a finite number >= 0"),
              ("--small-below", args.small_below, math.isfinite(args.small_below) and args.small_below >= 0,
               "a finite number >= 0"),
              ("--similar-below", args.similar_below, math.isfinite(args.similar_below), "a finite number")]
    for flag, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{flag} must be {expected}, got {value!r}")


def main(args) -> int:
    """Run ``tladapt advise``; returns the exit status."""
    from tqdm import tqdm

    from tladapt.advice import advise_task, require_labels
    from tladapt.config import load_config
    from tladapt.transfer import pretrain_source, regimes_table, run_regimes

    check_options(args)
    config = load_config(args.config, args.set, args.seeds)
    require_labels(config)  # before any source model is trained
    where = f"{config.experiment.runs_dir}/{config.experiment.name}"
    if args.init_from:
        sources = {task: args.init_from for task in config.data.tasks}
    else:
        print(f"no --init-from: training a source-only model per task first, under {where}/<task>/source_pretrain/",
              file=sys.stderr)
        sources = pretrain_source(config)
    if args.verify:
        print(f"--verify: the regime runs are written under {where}/<task>/<regime>-k{config.data.target_labels_per_class}/",
              file=sys.stderr)
    for task in config.data.tasks:
        fits = 4 * args.folds if config.data.target_labels_per_class > 1 else 0
        with tqdm(total=fits, desc=f"advise {task}", unit="fit", disable=None, leave=False) as bar:
            a = advise_task(config, task, sources[task], steps=args.steps, folds=args.folds, margin=args.margin,
                            noise=args.noise,
                            small_below=args.small_below, similar_below=args.similar_below, progress=bar.update)
        _print_advice(a, config)
        if args.verify:
            accs = run_regimes(config, task, sources[task], a.early_layer, args.steps)
            print("--verify (accuracy on the target's test rest: ORACLE)")
            print(regimes_table(accs, a.regime) + "\n")
    return 0
