"""``tladapt cluster``: unsupervised transfer, clustering each task's target in raw and transferred
representations, scored against the hidden target labels (oracle)."""

from __future__ import annotations

import argparse
import statistics

from tladapt.cli.args import add_set_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt cluster``."""
    cluster = sub.add_parser("cluster", help="cluster each task's target in raw and transferred representations "
                                             "(oracle NMI / ARI / accuracy)")
    cluster.add_argument("config", metavar="CONFIG")
    cluster.add_argument("--features", action="append", default=[], metavar="RUN",
                         help="a trained run whose features to cluster in (repeatable): a run directory, or a "
                              "path with {source}/{target}/{task}/{seed} as model.init_from takes")
    cluster.add_argument("--method", action="append", choices=("kmeans", "gmm", "spectral"),
                         help="clustering method (repeatable; default: kmeans, gmm, spectral)")
    cluster.add_argument("--layer", default="backbone", help="feature layer of the runs (default: backbone)")
    cluster.add_argument("--reduce", type=int, metavar="N",
                         help="also score dimension reduction to N dimensions transferred from the source "
                              "(PCA fit on the source vs on the target) and each run's encoder by k-NN (oracle)")
    cluster.add_argument("--knn", type=int, default=1, metavar="K", help="k of the k-NN oracle score (default 1)")
    cluster.add_argument("--seeds", help="seeds of the clusterings: '0', '0-2' or '0,3,5'")
    add_set_arg(cluster)
    cluster.set_defaults(func=main)


def _fmt(values: list[float], digits: int) -> str:
    mean = f"{statistics.fmean(values):.{digits}f}"
    return mean + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def main(args) -> int:
    """Run ``tladapt cluster``; returns the exit status."""
    from tabulate import tabulate
    from tqdm import tqdm

    from tladapt.clustering import (METHODS, cluster_task, clusterable_target, knn_accuracy, reduction_scores,
                                    represent, run_label)
    from tladapt.config import load_config
    from tladapt.data.tasks import load_task
    from tladapt.runs import find_checkpoint

    config = load_config(args.config, args.set, args.seeds)
    methods = args.method or list(METHODS)
    seed = config.experiment.seeds[0]
    runs_of = {task: [str(find_checkpoint(spec, task, seed).parent) for spec in args.features]
               for task in config.data.tasks}  # every path is checked before any work
    for task in config.data.tasks:  # and every target has classes to score clusters against
        clusterable_target(config, task)
    rows, reductions = [], []
    for task in tqdm(config.data.tasks, desc="tasks", disable=None, leave=False):
        representations = {"input": "input"}
        for run in runs_of[task]:
            label = run_label(run)
            representations[label if label not in representations else run] = run
        for r in cluster_task(config, task, representations, methods, args.layer):
            rows.append([task, r.representation, r.method, _fmt([s.nmi for s in r.scores], 3),
                         _fmt([s.ari for s in r.scores], 3), _fmt([s.acc for s in r.scores], 1)])
        if args.reduce:
            source, target = load_task(config.data, task)
            y = target.y.numpy()
            scores = reduction_scores(represent(source, "input"), represent(target, "input"), y, args.reduce,
                                      args.knn, seed)
            encoders = [knn_accuracy(represent(target, run, args.layer), y, args.knn, seed=seed)
                        for run in representations.values() if run != "input"]
            reductions.append([task, *(f"{v:.1f}" for v in (*scores.values(), *encoders))])
    print("Clustering of each target (k = its number of classes; scores read the hidden target labels: ORACLE)")
    print(tabulate(rows, headers=["task", "representation", "method", "oracle NMI", "oracle ARI", "oracle ACC (%)"],
                   tablefmt="github"))
    if args.reduce:
        names = [n for n in representations if n != "input"]
        print(f"\nDimension reduction to {args.reduce} dims, scored by {args.knn}-NN accuracy (%) on the target "
              f"under 5-fold CV (ORACLE)")
        print(tabulate(reductions, headers=["task", "input", "PCA fit on target", "PCA fit on source",
                                            *(f"encoder: {n}" for n in names)], tablefmt="github"))
    return 0
