"""``tladapt run``: validate every config, train, print the results table."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path

from tladapt.cli.args import add_enable_arg, add_plugin_arg, add_set_arg
from tladapt.errors import EXIT_RUN_FAILED, ConfigError

DEFAULT_CONFIGS = ("default_digits.toml", "default_digits_dann.toml", "default.toml", "default_dann.toml")


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
    run.add_argument("--init-from", metavar="RUN_DIR", help="start the backbone from this run, and a head from its head that predicts the "
                     "same classes (else a new head); sets model.init_from")
    run.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR",
                     help="with a run directory (or any folder above runs): resume it (every unfinished run below "
                          "it), skipping finished ones; without one: run the configs again, reusing their finished "
                          "runs and resuming their unfinished ones instead of starting over")
    add_plugin_arg(run)
    add_enable_arg(run)
    run.add_argument("--keep-going", action="store_true",
                     help="a run that fails (a plugin raised, the loss diverged) does not stop the runs after it: "
                          "it stays marked failed, the others train, and the command lists the failed runs and "
                          "exits with status 1 at the end")
    run.add_argument("--show-oracle", action="store_true",
                     help="also show the oracle target accuracy (it reads target labels) while training")
    run.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt run``; returns the exit status. Under ``torchrun`` every run is trained by all
    processes (:mod:`tladapt.distributed`) and rank 0 prints the table."""
    from tladapt import distributed

    try:
        return _run(args, distributed.context().main)
    finally:
        distributed.shutdown()


def _run(args, main: bool) -> int:
    from tladapt.config import load_configs
    from tladapt.experiment import prepare_all, progress_for, resume_runs, run_experiment

    failures: list[tuple[Path, Exception]] = []
    on_failure = (lambda run_dir, err: failures.append((run_dir, err))) if args.keep_going else None
    if args.resume and Path(args.resume).is_dir():
        given = [flag for flag, value in (("CONFIG", args.configs), ("--set", args.set), ("--seeds", args.seeds),
                                          ("--runs-dir", args.runs_dir), ("--init-from", args.init_from)) if value]
        if given:
            raise ConfigError(f"--resume {args.resume} continues runs with their saved configs: "
                              f"{', '.join(given)} cannot change them")
        results = resume_runs(args.resume, args.plugin, on_failure)
        if main:
            _print_results(results, None)
        return _report_failures(failures, main)
    if args.resume:  # --resume CONFIG.toml: the config to run again with resume
        if not Path(args.resume).is_file():
            raise ConfigError(f"--resume {args.resume}: no such run directory or config file")
        args.configs = [args.resume, *args.configs]
    paths = args.configs or _default_config_paths()
    overrides = args.set + ([f"model.init_from={json.dumps(args.init_from)}"] if args.init_from else [])
    overrides += [f"experiment.runs_dir={json.dumps(args.runs_dir)}"] if args.runs_dir else []
    configs = load_configs(paths, overrides, args.seeds, args.enable)
    configs = prepare_all(configs, args.plugin, args.enable)  # every config is checked before the first run
    if not args.configs and main:
        print("No config given: running the bundled default experiment "
              f"({', '.join(DEFAULT_CONFIGS)}) on real data.", file=sys.stderr)
    results = []
    progress = progress_for(configs, oracle=args.show_oracle)
    for config in configs:
        results += run_experiment(config, args.plugin, progress, resume=args.resume is not None,
                                  on_failure=on_failure)
    progress.close()
    if not main:
        return 0
    _print_results(results, configs[0].experiment.runs_dir)
    return _report_failures(failures, main)


def _print_results(results: list[dict], runs_dir: str | None) -> None:
    """The results table of the runs that recorded the target accuracy; for those that did not
    (nothing trained a target head: a label-free pre-training), what they recorded last and how
    to use them next; then every run's directory."""
    from tladapt.selection import ORACLE_TAG
    from tladapt.tables import build_table, render_final, render_table

    if not results:
        return
    scored = [r for r in results if ORACLE_TAG in r["final"]]
    unscored = [r for r in results if ORACLE_TAG not in r["final"]]
    if scored:
        print(render_table(build_table(scored)))
    if unscored:
        print(("\n" if scored else "") + f"{len(unscored)} run(s) trained no target head (no {ORACLE_TAG}, as in "
              "a label-free pre-training); what each recorded at its last step:\n")
        print(render_final(unscored))
    where = f"tensorboard --logdir {runs_dir}" if runs_dir else "tensorboard --logdir RUN_DIR"
    print(f"\nRun directories (TensorBoard: {where}):")
    for r in results:
        print(f"  {r['run_dir']}")
    if unscored:
        tags = sorted({k for r in unscored for k in r["final"] if k.startswith("loss/")})
        root = os.path.commonpath([str(Path(r["run_dir"]).parents[2]) for r in unscored])  # <runs>/<experiment>
        print("\nNext: start a run from one of these with tladapt run TARGET.toml --init-from RUN_DIR (its backbone; "
              "a new head for the target)" + (f", or tabulate them: tladapt table {root} --metric {tags[0]}" if tags else ""))
    for note in _clamp_notes(results):
        print(f"tladapt: note: {note}", file=sys.stderr)


def _clamp_notes(results: list[dict]) -> list[str]:
    """One line per config and task whose k labelled target samples per class were clamped to
    ``n_c - 1`` for some class (``results.json["splits"]["clamped"]``; the counts do not depend
    on the seed), with the labelled and test counts the numbers rest on."""
    notes: dict[tuple, str] = {}
    for r in results:
        split = r.get("splits") or {}
        if split.get("clamped"):
            key = (r.get("config_id"), r["task"], r["method"])
            notes.setdefault(key, (
                f"{r['task']} ({r['method']}): data.target_labels_per_class = {split['target_labels_per_class']} "
                f"exceeds what {len(split['clamped'])} class(es) can give ({', '.join(split['clamped'][:5])}"
                f"{', ...' if len(split['clamped']) > 5 else ''}), so each of them gave n_c - 1 labelled "
                f"samples and kept one for testing: {split['target_labelled']} labelled, {split['target_test']} "
                f"test samples of oracle/target_acc (results.json \"splits\")"))
    return list(notes.values())


def _report_failures(failures: list[tuple[Path, Exception]], main: bool) -> int:
    """Under ``--keep-going``: list the runs that failed on stderr, one line each; the exit
    status: 1 when any failed (as without ``--keep-going``), else 0."""
    if failures and main:
        print(f"\ntladapt: error: {len(failures)} run(s) failed (marked failed; retry them with "
              "tladapt run --resume RUN_DIR):", file=sys.stderr)
        for run_dir, err in failures:
            print(f"  {run_dir}: {type(err).__name__}: {err}", file=sys.stderr)
    return EXIT_RUN_FAILED if failures else 0
