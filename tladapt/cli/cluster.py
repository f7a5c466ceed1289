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
                         help="also score dimension reduction to N >= 1 dimensions transferred from the source "
                              "(PCA fit on the source vs on the target) and each run's encoder by k-NN (oracle); "
                              "N is at most the inputs' dimension and each domain's number of samples")
    cluster.add_argument("--knn", type=int, metavar="K",
                         help="with --reduce: k of the k-NN oracle score (default 1; at most the smallest "
                              "cross-validation training fold)")
    cluster.add_argument("--seeds", help="seeds of the clusterings: '0', '0-2' or '0,3,5'")
    add_set_arg(cluster)
    cluster.set_defaults(func=main)


def _fmt(values: list[float], digits: int) -> str:
    mean = f"{statistics.fmean(values):.{digits}f}"
    return mean + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def check_options(args) -> None:
    """The command's options that need no data, before any work.

    Raises:
        ConfigError: naming the option: ``--reduce`` below 1, ``--knn`` below 1, or ``--knn``
            without ``--reduce`` (it scores the reduction table only).
    """
    from tladapt.errors import ConfigError

    if args.reduce is not None and args.reduce < 1:
        raise ConfigError(f"--reduce must be an integer >= 1 (the reduced dimension), got {args.reduce}")
    if args.knn is not None and args.knn < 1:
        raise ConfigError(f"--knn must be an integer >= 1 (neighbours), got {args.knn}")
    if args.knn is not None and args.reduce is None:
        raise ConfigError("--knn sets the k-NN score of the --reduce table: give --reduce N too")


def check_data(config, runs_of: dict[str, list[str]], methods: list[str], args) -> dict[str, int]:
    """The options that depend on each task's data, before any clustering: the target has
    classes to score against (:func:`tladapt.clustering.clusterable_target`), every method suits
    its size, every ``--features`` run's model takes the target's inputs and has
    ``--layer``, and with ``--reduce`` the reduced dimension and ``--knn`` fit the domains.

    Returns:
        ``{task: folds of the k-NN score}`` (empty without ``--reduce``).

    Raises:
        ConfigError: naming the option, the task and what was expected.
    """
    from tladapt.clustering import check_clustering, check_knn, check_reduction, clusterable_target
    from tladapt.data.tasks import load_task
    from tladapt.errors import ConfigError
    from tladapt.transfer import extract_features, load_model

    folds = {}
    for task in config.data.tasks:
        target = clusterable_target(config, task)  # classes to score clusters against
        y = target.y.numpy()
        for method in methods:
            try:
                check_clustering(len(y), len(set(y.tolist())), method)
            except ValueError as err:
                default = "" if args.method else " (it is one of the default methods: choose others with --method)"
                raise ConfigError(f"--method {method} on the target of {task}: {err}{default}") from None
        for run in runs_of[task]:
            try:
                _, model = load_model(run, target.input_shape)
                extract_features(model, target.inputs()[:1], args.layer)
            except (ConfigError, ValueError, RuntimeError) as err:
                raise ConfigError(f"--features {run} (--layer {args.layer}) on the target of {task} "
                                  f"{tuple(target.input_shape)}: {err}") from None
        if args.reduce is not None:
            try:
                source, _ = load_task(config.data, task)
                check_reduction(args.reduce, target.inputs().flatten(1).shape[1], len(source), len(target))
            except ValueError as err:
                raise ConfigError(f"--reduce {args.reduce} on {task}: {err}") from None
            try:
                folds[task] = check_knn(y, args.knn or 1, seed=config.experiment.seeds[0])
            except ValueError as err:
                raise ConfigError(f"--reduce {args.reduce} --knn {args.knn or 1} (the k-NN score) on the target of "
                                  f"{task}: {err}") from None
    return folds


def main(args) -> int:
    """Run ``tladapt cluster``; returns the exit status."""
    from tabulate import tabulate
    from tqdm import tqdm

    from tladapt.clustering import METHODS, cluster_task, knn_accuracy, reduction_scores, represent, run_label
    from tladapt.config import load_config
    from tladapt.data.tasks import load_task
    from tladapt.runs import find_checkpoint

    check_options(args)
    knn = args.knn or 1
    config = load_config(args.config, args.set, args.seeds)
    methods = args.method or list(METHODS)
    seed = config.experiment.seeds[0]
    runs_of = {task: [str(find_checkpoint(spec, task, seed).parent) for spec in args.features]
               for task in config.data.tasks}  # every path is checked before any work
    folds = check_data(config, runs_of, methods, args)
    rows, reductions = [], []
    for task in tqdm(config.data.tasks, desc="tasks", disable=None, leave=False):
        representations = {"input": "input"}
        for run in runs_of[task]:
            label = run_label(run)
            representations[label if label not in representations else run] = run
        for r in cluster_task(config, task, representations, methods, args.layer):
            rows.append([task, r.representation, r.method, _fmt([s.nmi for s in r.scores], 3),
                         _fmt([s.ari for s in r.scores], 3), _fmt([s.acc for s in r.scores], 1)])
        if args.reduce is not None:
            source, target = load_task(config.data, task)
            y = target.y.numpy()
            scores = reduction_scores(represent(source, "input"), represent(target, "input"), y, args.reduce, knn, seed)
            encoders = [knn_accuracy(represent(target, run, args.layer), y, knn, seed=seed)
                        for run in representations.values() if run != "input"]
            reductions.append([task, *(f"{v:.1f}" for v in (*scores.values(), *encoders))])
    print("Clustering of each target (k = its number of classes; scores read the hidden target labels: ORACLE)")
    print(tabulate(rows, headers=["task", "representation", "method", "oracle NMI", "oracle ARI", "oracle ACC (%)"],
                   tablefmt="github"))
    if args.reduce is not None:
        names = [n for n in representations if n != "input"]
        # 5 folds, fewer where a target's smallest class has fewer samples (knn_folds)
        cv = (f"{next(iter(folds.values()))}-fold CV" if len(set(folds.values())) == 1 else
              "stratified CV (folds: " + ", ".join(f"{task} {n}" for task, n in folds.items()) + ")")
        print(f"\nDimension reduction to {args.reduce} dims, scored by {knn}-NN accuracy (%) on the target "
              f"under {cv} (ORACLE)")
        print(tabulate(reductions, headers=["task", "input", "PCA fit on target", "PCA fit on source",
                                            *(f"encoder: {n}" for n in names)], tablefmt="github"))
    return 0
