"""The errors tladapt raises on purpose, each with its own exit status of the ``tladapt`` command."""

from __future__ import annotations

#: Exit status of the ``tladapt`` command when a run failed, and for bad input (docs/runs.md).
EXIT_RUN_FAILED, EXIT_BAD_INPUT = 1, 2


class ConfigError(ValueError):
    """A config, override, plugin option or input is invalid; the message names the key and
    what was expected. Raised before any run directory exists (exit status 2)."""


class PluginError(RuntimeError):
    """Plugins broke the contract during a run: two of them returned the same loss name or
    both returned source weights, or a hook returned a value of the wrong type (exit status 1)."""


class TrainingDiverged(RuntimeError):
    """A logged loss became NaN or infinite; the run stops without writing ``results.json``
    (exit status 1)."""


class RunInterrupted(Exception):
    """SIGINT (Ctrl-C) or SIGTERM stopped a run at the end of a step, after a checkpoint
    (exit status 128 + the signal: 130 for SIGINT, 143 for SIGTERM).

    Attributes:
        signum: the signal number.
        run_dir: the interrupted run's directory (None when no run was in progress).
        step: steps done (saved in its checkpoint).
        steps: the run's ``trainer.steps``.
    """

    def __init__(self, signum: int, run_dir=None, step: int = 0, steps: int = 0):
        self.signum, self.run_dir, self.step, self.steps = signum, run_dir, step, steps
        where = f" at step {step} of {steps} of run {run_dir}" if run_dir is not None else " between runs"
        super().__init__(f"interrupted by signal {signum}{where}")


class RunFailed(RuntimeError):
    """An exception stopped a run: raised in a plugin's hook or elsewhere in training; the run
    is marked ``failed`` with its traceback in ``traceback.txt`` (exit status 1). The original
    exception is the ``__cause__``.

    Attributes:
        error: the original exception.
        run_dir: the failed run's directory.
        step: the training step under way (counted from 0), or None before the first step.
        plugin, hook: the plugin and hook that raised, or None when no plugin code raised.
    """

    def __init__(self, error: BaseException, run_dir, step: int | None = None, plugin: str | None = None,
                 hook: str | None = None):
        self.error, self.run_dir, self.step, self.plugin, self.hook = error, run_dir, step, plugin, hook
        who = f"plugin {plugin!r} raised {type(error).__name__} in {hook}" if plugin else \
            f"the run raised {type(error).__name__}"
        when = " before the first step" if step is None else f" at step {step}"
        super().__init__(f"{who}{when}: {error} (run {run_dir} is marked failed, its traceback is in "
                         f"{run_dir}/traceback.txt; --debug shows it here)")
