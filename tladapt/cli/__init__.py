"""The ``tladapt`` command. Each sub-command is one module of this package with
``add_parser(subparsers)`` and ``main(args) -> int``; :data:`COMMANDS` lists them in
the order ``--help`` shows them."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys

from tladapt.cli import advise, cluster, config, datasets, distance, plot, plugins, run, select, sweep, table
from tladapt.errors import (EXIT_BAD_INPUT, EXIT_RUN_FAILED, ConfigError, PluginError, RunFailed, RunInterrupted,
                            TrainingDiverged)

#: The sub-command modules, in ``--help`` order.
COMMANDS = (run, plugins, config, datasets, table, select, sweep, plot, distance, advise, cluster)


class _Version(argparse.Action):
    """``--version``: tladapt's, Python's and torch's versions (read from package metadata, so
    torch is not imported)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import importlib.metadata
        import platform

        import tladapt

        try:
            torch_version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            torch_version = "not installed"
        print(f"tladapt {tladapt.__version__} (Python {platform.python_version()}, torch {torch_version})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tladapt`` command."""
    parser = argparse.ArgumentParser(prog="tladapt", description="Domain-adaptation experiments with plugins.")
    parser.add_argument("--version", action=_Version, help="print the versions of tladapt, Python and torch")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():  # also after the sub-command: tladapt run ... --debug
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


DEBUG_HELP = "on an error, show the full traceback instead of one line"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tladapt`` command; returns the exit status (documented in
    ``docs/runs.md``): 0 done, 1 a run failed (a plugin raised, the loss diverged, plugins
    broke the contract), 2 bad input (before any training), 130 / 143 interrupted by SIGINT /
    SIGTERM after a checkpoint, 141 when the output pipe was closed (``tladapt table | head``).
    ``--debug`` re-raises errors with their full traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 128 + signal.SIGPIPE
    except (ConfigError, ValueError, PluginError, TrainingDiverged, RunFailed) as err:
        if args.debug:
            raise
        print(f"tladapt: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(err, (ConfigError, ValueError)) else EXIT_RUN_FAILED
    except RunInterrupted as stop:
        print(f"tladapt: {_interrupted(stop, argv)}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("tladapt: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def _interrupted(stop: RunInterrupted, argv: list[str]) -> str:
    """One line: what was interrupted, and the command that resumes it."""
    name = signal.Signals(stop.signum).name
    again = shlex.join(["tladapt", *argv] + ([] if "--resume" in argv else ["--resume"]))
    if stop.run_dir is None:
        return f"interrupted by {name} between runs; continue with: {again}"
    return (f"interrupted by {name} at step {stop.step}/{stop.steps} of {stop.run_dir} (checkpoint saved); "
            f"resume with: {again}   (or this run alone: tladapt run --resume {stop.run_dir})")
