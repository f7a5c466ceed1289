"""``tladapt plot RUN_DIR...``: the pictures of finished runs, from their checkpoints.

Writes the ``end`` feature t-SNE (source and target, by domain and by class) and the
target confusion matrix (oracle) into each run directory as PNG and into its TensorBoard
events (images and the embedding projector), as ``trainer.plots = true`` does during a run.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt plot``."""
    plot = sub.add_parser("plot", help="feature t-SNE and target (oracle) confusion matrix of finished runs")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (holding checkpoint.pt)")
    plot.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt plot``; returns the exit status."""
    from torch.utils.tensorboard import SummaryWriter

    from tladapt.api import load_run
    from tladapt.data.augment import attach
    from tladapt.data.tasks import load_task, split_task
    from tladapt.plots import write_plots

    for run_dir in args.run_dirs:
        run = load_run(run_dir)  # weights_only; ConfigError for an unfinished run or a foreign file
        r, data = run.results, run.config.data
        source, target = load_task(data, r["task"])
        source = None if source is None else attach(source, run.config.augment)
        splits = split_task(data, source, attach(target, run.config.augment), r["seed"])  # the run's own splits
        writer = SummaryWriter(log_dir=str(run.run_dir))  # a new event file beside the run's own
        title = f"{r['task']} {r['method']} seed {r['seed']}, step {r['steps']}"
        written = write_plots(writer, run.run_dir, run.modules["backbone"], run.modules["head"], splits.source,
                              splits.target_rest.unlabelled(), splits.target_rest.y, "end", r["steps"], r["seed"], title)
        writer.close()
        for path in written:
            print(path)
    return 0
