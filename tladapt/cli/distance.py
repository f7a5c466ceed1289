"""``tladapt distance``: proxy A-distance and MMD² between the domains of each task."""

from __future__ import annotations

import argparse

from tabulate import tabulate

from tladapt.cli.args import add_set_arg
from tladapt.cli.output import significant


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt distance``."""
    distance = sub.add_parser("distance", help="proxy A-distance and MMD between each task's domains")
    distance.add_argument("config", metavar="CONFIG")
    distance.add_argument("--layer", action="append", metavar="L",
                          help="'input', 'backbone' or a path like 'backbone.0' (repeatable); "
                               "default: input, or every candidate layer of --init-from")
    distance.add_argument("--init-from", metavar="RUN_DIR", help="a source run whose model gives the features")
    add_set_arg(distance)
    distance.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt distance``; returns the exit status."""
    from tqdm import tqdm

    from tladapt.config import load_config
    from tladapt.transfer import candidate_layers, layer_distances, load_model

    config = load_config(args.config, args.set)
    if args.layer:
        layers = args.layer
    elif args.init_from:
        layers = candidate_layers(load_model(args.init_from)[1]["backbone"])
    else:
        layers = ["input"]
    rows = []
    with tqdm(total=len(config.data.tasks) * len(layers), desc="distances", unit="layer", disable=None,
              leave=False) as bar:  # a bar on a terminal only
        for task in config.data.tasks:
            for layer, d in layer_distances(config, task, layers, args.init_from, progress=bar.update).items():
                rows.append([task, layer, significant(d["pad"]), significant(d["mmd"])])
    print(tabulate(rows, headers=["task", "layer", "proxy A-distance", "MMD^2"], tablefmt="github",
                   disable_numparse=True))
    if any(row[2] == "0" for row in rows):
        print("\nproxy A-distance 0: the domain classifier did no better than chance on held-out samples "
              "(2 (1 - 2 error) is clipped at 0)")
    return 0
