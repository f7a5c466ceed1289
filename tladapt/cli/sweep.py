"""``tladapt sweep``: a hyper-parameter search on Optuna whose trials are ordinary tladapt runs."""

from __future__ import annotations

import argparse
import sys

from tladapt.cli.args import add_plugin_arg, add_set_arg
from tladapt.errors import ConfigError

#: The objective when --objective is not given (see docs/model-selection.md for why).
DEFAULT_OBJECTIVE = "validator/im"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt sweep``."""
    sweep = sub.add_parser("sweep", help="search hyper-parameters with Optuna; each trial is a tladapt run")
    sweep.add_argument("config", metavar="CONFIG", help="the base experiment TOML")
    sweep.add_argument("--space", required=True, metavar="SPACE.toml",
                       help='search space: [params."<config key>"] tables (see docs/model-selection.md)')
    sweep.add_argument("--trials", type=int, required=True, metavar="N", help="finished trials the study ends with")
    sweep.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes on this machine (default 1)")
    sweep.add_argument("--storage", metavar="URL",
                       help="Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or journal:PATH; "
                            "default sqlite:///<runs_dir>/<experiment>/optuna.db")
    sweep.add_argument("--study", metavar="NAME", help="study name (default: experiment name + a hash of "
                                                       "config, space and objective)")
    sweep.add_argument("--objective", default=DEFAULT_OBJECTIVE, metavar="TAG",
                       help=f"recorded tag to optimise, averaged over a trial's runs (default {DEFAULT_OBJECTIVE}); "
                            "oracle/target_acc only when named, and then labelled oracle")
    sweep.add_argument("--heartbeat", type=int, default=20, metavar="S",
                       help="seconds between heartbeats; a silent trial is retried after 3 (default 20)")
    sweep.add_argument("--worker", action="store_true", help="be one worker only, print no summary (cluster jobs)")
    add_set_arg(sweep)
    sweep.add_argument("--seeds", help="seeds of every trial: '0', '0-2' or '0,3,5'")
    sweep.add_argument("--runs-dir", help="root of the run directories (default: experiment.runs_dir)")
    add_plugin_arg(sweep)
    sweep.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt sweep``; returns the exit status."""
    import dataclasses
    import multiprocessing

    from tladapt.config import load_config
    from tladapt.experiment import prepare
    from tladapt.manager import make_plugin_manager
    from tladapt.sweep import (SweepSpec, default_study_name, default_values, experiment_folder, file_lock,
                               load_space, open_study, summary, worker)
    from tladapt.validators import available_validators, choose_validators, tag_direction

    if args.trials < 1 or args.jobs < 1 or args.heartbeat < 1:
        raise ConfigError("--trials, --jobs and --heartbeat must be >= 1")
    base = load_config(args.config, args.set, args.seeds)
    if args.runs_dir:
        base.experiment.runs_dir = args.runs_dir
    space = load_space(args.space)
    spec0 = SweepSpec(args.config, tuple(args.set), args.seeds, args.runs_dir, args.space, args.trials,
                      args.objective, "max", "", "", args.heartbeat, tuple(args.plugin))
    direction = None
    for values in space.corners():  # every key and range is checked before the first trial
        config, active = prepare(spec0.trial_config(values), args.plugin)
        has_val = config.data.source_val_fraction > 0 and config.data.source_labels
        found = {v.name: v.direction for v in choose_validators(
            available_validators(make_plugin_manager(active)), config.validation.validators, has_val)}
        direction = tag_direction(args.objective, found, "--objective")
    storage = args.storage or f"sqlite:///{(experiment_folder(base) / 'optuna.db').resolve()}"
    spec = dataclasses.replace(spec0, direction=direction, storage=storage,
                               study=args.study or default_study_name(base, space, args.objective))
    with file_lock(experiment_folder(base) / f".{spec.study}.lock"):  # many --worker jobs may start at once
        study = open_study(spec, space)  # created once here, so that workers only load it
        if space.defaults_first and not study.get_trials(deepcopy=False):
            study.enqueue_trial(default_values(space, prepare(base, args.plugin)[0].to_dict()))
    print(f"study {spec.study!r} in {storage}: {args.trials} trials, {args.jobs} worker(s), "
          f"objective {spec.objective} ({direction})", file=sys.stderr, flush=True)
    if args.worker or args.jobs == 1:
        worker(spec)
    else:
        ctx = multiprocessing.get_context("spawn")
        gpus = _gpu_count()
        procs = [ctx.Process(target=worker, args=(spec, k, k % gpus if gpus > 1 else None)) for k in range(args.jobs)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                p.join()
            raise
        if any(p.exitcode for p in procs):
            print(f"tladapt: error: {sum(bool(p.exitcode) for p in procs)} worker(s) failed", file=sys.stderr)
            return 1
    if not args.worker:
        print(summary(study, spec))
    return 0


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001  (no torch build with CUDA: no GPUs)
        return 0
