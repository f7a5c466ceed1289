"""Running an experiment: tasks x seeds for one method, resuming runs (tables: :mod:`tladapt.tables`)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tladapt import checkpoint, distributed, provenance, signals
from tladapt.config import Config, ConfigError, load_run_config, parse_task
from tladapt.batched import RunSpec, fit_together
from tladapt.data.augment import resolve_spec
from tladapt.data.datasets import DATASETS, DIGITS_FORMAT
from tladapt.data.images import is_image_dataset, prepare_images
from tladapt.data.tasks import check_class_options, load_task
from tladapt.manager import PluginInfo, available_plugins, hook_frames, make_plugin_manager, resolve_active
from tladapt.models import check_model
from tladapt.data.domain import Domain
from tladapt.errors import PluginError, RunFailed, RunInterrupted, TrainingDiverged
from tladapt.preflight import check_tasks
from tladapt.progress import Progress
from tladapt.runs import (atomic_write_bytes, clean_temp_files, find_checkpoint, find_run, find_run_dirs, new_run_dir,
                          read_status, slug, write_json, write_status)
from tladapt.steps import check_compile
from tladapt.trainer import Trainer, nothing_to_train, resolve_device
from tladapt.validators import available_validators, choose_validators

#: What stops one run but not the runs after it under ``on_failure`` (``tladapt run --keep-going``):
#: a plugin that raised, a diverged loss, plugins that broke the hook contract. Bad input
#: (``ConfigError``, found before any run) and interrupts always stop everything.
RUN_FAILURES = (RunFailed, TrainingDiverged, PluginError)

#: ``on_failure(run_dir, error)``: told of a run that failed, instead of raising.
OnFailure = Callable[[Path, Exception], None]


def prepare(config: Config, plugins: Iterable[str | type] = (), *,
            tasks: bool = True) -> tuple[Config, list[tuple[PluginInfo, dict]]]:
    """Check everything that can be checked before training and resolve the method name.

    Args:
        config: a validated config; its ``[plugins.<name>]`` tables say which plugins
            take part.
        plugins: extra plugins to make available (``-p`` specs or plugin classes); they
            take part only where the config enables them.
        tasks: also check every task's data, model and plugin checks
            (:func:`tladapt.preflight.check_tasks`); False only for a caller that trains
            on domains of its own rather than the config's tasks (``tladapt advise``'s
            cross-validation on the labelled samples).

    Returns:
        ``(config with experiment.method filled in and every enabled plugin's options
        resolved with their defaults, enabled plugins with their tables)``.

    Raises:
        ConfigError: for unknown plugins or options, an unknown dataset or domain,
            unknown classes in ``data.source_classes`` / ``data.target_classes`` (or a target
            task of other classes without labelled target samples), an unavailable device,
            unknown validators (``validation.validators``) or a ``trainer.keep_best`` tag
            that no validator or accuracy provides,
            plugins that need source data in a source-free run, nothing to train (no
            supervised loss and no active plugin with ``tladapt_losses``), a missing
            ``model.init_from`` checkpoint for some task and seed,
            an image dataset that cannot be read (its caches are built here, see
            :func:`tladapt.data.images.prepare_images`), or anything
            :func:`tladapt.preflight.check_tasks` finds in a task: domains, batch size,
            model, optimizer, plugins' ``tladapt_check``.
    """
    available, _ = available_plugins(plugins)
    active = resolve_active(available, config.plugins)
    resolve_device(config.trainer.device)
    if is_image_dataset(config.data.dataset):
        prepare_images(config.data, config.augment, progress=None if config.trainer.progress else False)
    elif ":" not in config.data.dataset:
        if config.data.dataset not in DATASETS:
            raise ConfigError(f"unknown data.dataset {config.data.dataset!r}: expected one of {', '.join(sorted(DATASETS))}")
        domains = DATASETS[config.data.dataset].domains
        for task in config.data.tasks:
            for name in parse_task(task):
                if name not in domains:
                    raise ConfigError(f"data.tasks entry {task!r}: unknown domain {name!r} of "
                                      f"{config.data.dataset}: expected one of {', '.join(domains)}")
        if config.data.dataset == "digits":
            try:
                resolve_spec(DIGITS_FORMAT, 28, 1, config.augment)
            except ValueError as err:
                raise ConfigError(str(err)) from None
    check_class_options(config.data)
    check_model(config.model)
    if config.data.source_free:
        check_source_free(config, active)
    if config.model.init_from:  # every task and seed has its checkpoint before any run starts
        for task in config.data.tasks:
            for seed in config.experiment.seeds:
                find_checkpoint(config.model.init_from, task, seed)
    check_compile(config, active)
    distributed.check_config(config)
    pm = make_plugin_manager(active)
    directions = {v.name: v.direction for v in choose_validators(
        available_validators(pm), config.validation.validators,
        config.data.source_val_fraction > 0 and config.data.source_labels and not config.data.source_free)}
    checkpoint.best_direction(config.trainer.keep_best, config.trainer.keep_best_mode, directions)
    enabled = [(info, table) for info, table in active if info.name in config.plugins]  # not the measuring ones
    method = config.experiment.method or "+".join(info.name for info, _ in enabled if not info.measures_only) \
        or "source_only"
    config = dataclasses.replace(config, experiment=dataclasses.replace(config.experiment, method=method),
                                 plugins={info.name: info.resolve(table) for info, table in enabled})
    if tasks:
        check_tasks(config, pm)  # every task's data, model, optimizer and plugin checks (tladapt.preflight)
    unsupervised = config.data.source_free or not config.data.source_labels
    if unsupervised and config.data.target_labels_per_class == 0 and not pm.hook.tladapt_losses.get_hookimpls():
        raise nothing_to_train(config, "has a loss (tladapt_losses)")  # after the plugins' own, finer checks
    return config, active


def check_source_free(config: Config, active: list[tuple[PluginInfo, dict]]) -> None:
    """Refuse, before any run, a source-free run that cannot work.

    A plugin works without source data when its instance (built from its options) has a
    true ``source_free`` attribute, usually a class attribute ``source_free = True``.

    Raises:
        ConfigError: naming every active plugin that does not declare it.
    """
    needs_source = [info.name for info, table in active
                    if not info.measures_only and not getattr(info.make(table), "source_free", False)]
    if needs_source:
        raise ConfigError(
            f"data.source_free = true, but plugin(s) {', '.join(needs_source)} need source data (they do not declare "
            f"source_free = True): remove their [plugins.*] tables or set data.source_free = false")


def prepare_all(configs: Sequence[Config], plugins: Iterable[str | type] = (),
                enable: Iterable[str] = ()) -> list[Config]:
    """:func:`prepare` every config before the first run starts, as ``tladapt run`` does.

    Args:
        configs: validated configs (``enable`` already applied, see
            :func:`tladapt.config.load_configs`).
        plugins: ``-p`` specs or plugin classes to make available.
        enable: the names passed as ``--enable``, checked to name available plugins.

    Returns:
        The prepared configs (method names and plugin options resolved), in order.

    Raises:
        ConfigError: as :func:`prepare`; for a loaded plugin that does not fit the hook
            contract; for an ``enable`` name that is no available
            plugin; for a loaded plugin that no config enables (loading is not enabling:
            the message says how to enable it).
    """
    plugins = list(plugins)
    available, loaded = available_plugins(plugins)
    make_plugin_manager([(available[name], {}) for name in loaded])  # the hook contract, enabled or not
    for name in enable:
        if name not in available:
            raise ConfigError(f"--enable {name}: no such plugin; available plugins are "
                              f"{', '.join(sorted(available)) or '(none)'} (load one from a file or module with -p)")
    prepared = [prepare(config, plugins)[0] for config in configs]
    for name in loaded:
        if not available[name].measures_only and not any(name in config.plugins for config in prepared):
            raise ConfigError(f"plugin {name!r} ({available[name].origin}) is loaded but no config enables it: "
                              f"add a [plugins.{name}] table to the configs that should use it, or pass "
                              f"--enable {name} to enable it in every config")
    return prepared


def progress_for(configs: Sequence[Config], oracle: bool = False) -> Progress:
    """One progress display for every run of ``configs`` (tasks x seeds each); shown when every
    config has ``trainer.progress``; ``oracle`` adds the oracle target accuracy."""
    runs = sum(len(c.data.tasks) * len(c.experiment.seeds) for c in configs)
    steps = sum(len(c.data.tasks) * len(c.experiment.seeds) * c.trainer.steps for c in configs)
    shown = all(c.trainer.progress for c in configs) and distributed.context().main  # torchrun: rank 0's
    return Progress(runs, steps, enabled=shown, oracle=oracle)


def run_experiment(config: Config, plugins: Iterable[str | type] = (), progress: Progress | None = None,
                   on_run: Callable[[Trainer, dict], None] | None = None, resume: bool = False,
                   on_failure: OnFailure | None = None) -> list[dict]:
    """Train every task of ``config`` with every seed; one run directory each.

    Args:
        config: a validated config.
        plugins: extra plugins to make available (``-p`` specs or classes).
        progress: the command's progress display; None: one for this experiment.
        on_run: called with each finished run's trainer (modules in eval mode) and results
            (the Python API keeps the trained models this way).
        resume: reuse the work of an earlier invocation of the same config: for each task
            and seed, a finished run of the same config fingerprint below
            ``experiment.runs_dir`` is not run again (its ``results.json`` is returned), an
            unfinished one (interrupted, killed or failed) continues from its last
            checkpoint in its own directory (:func:`tladapt.runs.find_run`), and only the
            rest start in new directories.
        on_failure: when given, a run that fails (one of :data:`RUN_FAILURES`) does not stop
            the others: it stays marked ``failed`` (``status.json``, ``traceback.txt``),
            ``on_failure(run_dir, error)`` is called, and training goes on with the next run.
            Runs trained together in one batch (``trainer.batch_runs``) fail together.
            None: the first failure is raised.

    Returns:
        The finished runs' results (as in their ``results.json``), in task-then-seed order
        (without the failed ones under ``on_failure``).

    Raises:
        ConfigError: as :func:`prepare`, before any run starts; or when a run to resume is
            being trained by another live process.
        RunInterrupted: after SIGINT/SIGTERM (the run under way is checkpointed).
        RunFailed, TrainingDiverged, PluginError: a run failed (without ``on_failure``).
    """
    config, active = prepare(config, plugins)
    distributed.setup(config.trainer.device)  # under torchrun: every run is trained by all processes
    own = progress is None
    progress = progress_for([config]) if own else progress
    exp, method, config_id = config.experiment, config.experiment.method, config.fingerprint()
    group_size = max(len(exp.seeds), 1) if config.trainer.batch_runs == 0 else config.trainer.batch_runs
    results = []
    with signals.stop_signals():
        for task in config.data.tasks:
            source, target = load_task(config.data, task)
            done: dict[int, dict] = {}
            fresh: list[RunSpec] = []  # new runs, trained together in groups of trainer.batch_runs

            def train_one(run_dir: Path, seed: int) -> None:
                try:
                    done[seed] = execute_run(config, active, task, source, target, run_dir, seed, progress, on_run)
                except RUN_FAILURES as err:
                    _failed(on_failure, [run_dir], err)

            def train_fresh():
                specs = fresh[:]
                fresh.clear()
                if len(specs) > 1:
                    try:
                        together = execute_together(config, active, specs, progress, on_run)
                    except RUN_FAILURES as err:
                        _failed(on_failure, [spec.run_dir for spec in specs], err)
                        return
                    if together is not None:
                        done.update(zip((spec.seed for spec in specs), together))
                        return
                for spec in specs:
                    train_one(spec.run_dir, spec.seed)

            for seed in exp.seeds:
                if signals.requested() is not None:
                    raise RunInterrupted(signals.requested())
                # rank 0 reads and makes run directories; under torchrun the others follow its answers
                run_dir, finished = distributed.on_main(lambda: _found_run(exp, task, method, seed, config_id)) \
                    if resume else (None, False)
                if finished:
                    train_fresh()
                    done[seed] = json.loads((run_dir / "results.json").read_text())
                    progress.advance(config.trainer.steps)
                    continue
                if run_dir is not None:  # an unfinished run continues alone from its checkpoint
                    train_fresh()
                    if not (run_dir / "config.json").is_file():  # its process was killed as it made the directory
                        distributed.on_main(lambda: _write_config(config, active, run_dir))
                    train_one(run_dir, seed)
                    continue
                run_dir = distributed.on_main(lambda: _new_run(config, active, task, method, seed))
                fresh.append(RunSpec(config, task, source, target, active, seed, run_dir))
                if len(fresh) == group_size:
                    train_fresh()
            train_fresh()
            results += [done[seed] for seed in exp.seeds if seed in done]
    if own:
        progress.close()
    return results


def _failed(on_failure: OnFailure | None, run_dirs: list[Path], err: Exception) -> None:
    """Tell ``on_failure`` that the runs in ``run_dirs`` failed with ``err``; without it, raise ``err``."""
    if on_failure is None:
        raise err
    for run_dir in run_dirs:
        on_failure(run_dir, err)


def _found_run(exp, task: str, method: str, seed: int, config_id: str) -> tuple[Path | None, bool]:
    """The earlier run of this task, seed and config to reuse (:func:`tladapt.runs.find_run`) and
    whether it finished."""
    run_dir = find_run(exp.runs_dir, exp.name, task, method, seed, config_id)
    return run_dir, run_dir is not None and read_status(run_dir).finished


def _new_run(config: Config, active: list[tuple[PluginInfo, dict]], task: str, method: str, seed: int) -> Path:
    """A new run directory: its ``status.json`` first (``running`` at step 0, naming the run, so
    that a process killed from here on leaves a directory that the next resume of this config
    finds and continues), then its ``config.json``."""
    exp = config.experiment
    run_dir = new_run_dir(exp.runs_dir, exp.name, task, method, seed)
    write_status(run_dir, "running", step=0, **_run_fields(config, task, seed))
    _write_config(config, active, run_dir)
    return run_dir


def _write_config(config: Config, active: list[tuple[PluginInfo, dict]], run_dir: Path) -> None:
    """Write the run's ``config.json``: the config and its provenance."""
    write_json(run_dir / "config.json", {**config.to_dict(), "provenance": provenance.environment(config, active, run_dir)})


def _run_fields(config: Config, task: str, seed: int) -> dict:
    """The :class:`tladapt.runs.RunStatus` fields that name a run, by which
    :func:`tladapt.runs.find_run` matches a directory to its config."""
    return dict(dataset=config.data.dataset, task=task, method=config.experiment.method, seed=seed,
                config_id=config.fingerprint(), steps=config.trainer.steps)


def _clean_for_training(run_dir: Path) -> bool:
    """Remove the temporary files a killed process left in ``run_dir``; whether it has a checkpoint."""
    clean_temp_files(run_dir)
    return (run_dir / "checkpoint.pt").is_file()


def execute_run(config: Config, active: list[tuple[PluginInfo, dict]], task: str, source: Domain | None,
                target: Domain, run_dir: Path, seed: int, progress: Progress | None = None,
                on_run: Callable[[Trainer, dict], None] | None = None) -> dict:
    """Train one run in ``run_dir``, continuing from its ``checkpoint.pt`` when it has one,
    and keep its ``status.json`` true (:class:`tladapt.runs.RunStatus`): ``running`` while it
    trains, then ``finished``, ``interrupted`` or ``failed`` (with ``traceback.txt``).

    Temporary files a killed process left in ``run_dir`` are removed first. Under ``torchrun``
    every rank trains the run and rank 0 alone keeps the files.

    Returns:
        The run's results (its ``results.json``).

    Raises:
        RunFailed: for an exception raised in a plugin's hook or elsewhere in the run, naming
            the plugin, the hook and the step (chained to the original exception); the
            library's own errors (``ConfigError``, ``PluginError``, ``TrainingDiverged``),
            ``RunInterrupted`` and ``KeyboardInterrupt`` propagate as they are. Whatever
            stopped the run is recorded in ``status.json`` first.
    """
    main = distributed.context().main
    file = run_dir / "checkpoint.pt"
    state = checkpoint.load(file, f"the checkpoint of run {run_dir}") if distributed.on_main(
        lambda: _clean_for_training(run_dir)) else None
    status = write_status if main else (lambda *args, **kwargs: None)
    status(run_dir, "running", step=0 if state is None else state["step"], **_run_fields(config, task, seed))
    pm, trainer = make_plugin_manager(active), None
    try:
        trainer = Trainer(config, source, target, pm, run_dir, seed, source_name=parse_task(task)[0], resume=state)
        results = trainer.fit(progress)
    except RunInterrupted as stop:
        status(run_dir, "interrupted", step=stop.step)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint stays usable
        status(run_dir, "interrupted")
        raise
    except BaseException as err:
        if main:
            atomic_write_bytes(run_dir / "traceback.txt", lambda f: f.write(traceback.format_exc().encode()))
        status(run_dir, "failed", error=f"{type(err).__name__}: {err}", traceback="traceback.txt")
        _raise_failed(err, pm, run_dir, trainer)
    status(run_dir, "finished", step=config.trainer.steps)
    if on_run is not None:
        on_run(trainer, results)
    return results


def _raise_failed(err: BaseException, pm, run_dir: Path, trainer: Trainer | None) -> None:
    """Re-raise what stopped a run: the library's own errors, ``KeyboardInterrupt`` and the
    like as they are; anything else as :class:`RunFailed` naming the plugin and hook whose
    code raised (found in the traceback) and the step."""
    if isinstance(err, (ConfigError, PluginError, TrainingDiverged)) or not isinstance(err, Exception):
        raise err
    plugin, hook = (hook_frames(pm, err.__traceback__) or [(None, None)])[-1]
    step = None if trainer is None or hook in ("tladapt_setup", "tladapt_fit_start") else trainer.step
    raise RunFailed(err, run_dir, step, plugin, hook) from err


def execute_together(config: Config, active: list[tuple[PluginInfo, dict]], specs: list[RunSpec],
                     progress: Progress | None = None,
                     on_run: Callable[[Trainer, dict], None] | None = None) -> list[dict] | None:
    """Train new runs of one task as one batch (:mod:`tladapt.batched`), keeping each run's
    ``status.json`` true as :func:`execute_run` does; None when something keeps them apart
    (named in a warning: the caller then trains them one by one, in the same directories).
    """

    trainers: list[Trainer] = []

    def make_trainer(spec: RunSpec) -> Trainer:
        trainers.append(Trainer(spec.config, spec.source, spec.target, make_plugin_manager(spec.active),
                                spec.run_dir, spec.seed, source_name=parse_task(spec.task)[0]))
        return trainers[-1]

    for spec in specs:
        write_status(spec.run_dir, "running", step=0, **_run_fields(config, spec.task, spec.seed))
    try:
        results = fit_together(specs, make_trainer, progress, on_run)
    except RunInterrupted as stop:
        for spec in specs:
            write_status(spec.run_dir, "interrupted", step=stop.step)
        raise
    except KeyboardInterrupt:
        for spec in specs:
            write_status(spec.run_dir, "interrupted")
        raise
    except BaseException as err:
        for spec in specs:
            atomic_write_bytes(spec.run_dir / "traceback.txt", lambda f: f.write(traceback.format_exc().encode()))
            write_status(spec.run_dir, "failed", error=f"{type(err).__name__}: {err}", traceback="traceback.txt")
        first = trainers[0] if trainers else None  # the runs share one step: the first one names them
        _raise_failed(err, make_plugin_manager(specs[0].active) if first is None else first.pm, specs[0].run_dir,
                      first)
    if results is not None:
        for spec in specs:
            write_status(spec.run_dir, "finished", step=config.trainer.steps)
    return results


def resume_runs(root: str | Path, plugins: Iterable[str | type] = (), on_failure: OnFailure | None = None) -> list[dict]:
    """Resume the run directory ``root``, or every unfinished run at or below the folder ``root``.

    Finished runs are not run again; runs being trained by a live process are skipped
    (an error when ``root`` is that run). Every run's config (its ``config.json``),
    plugins and checkpoint are checked before the first one resumes. ``on_failure``: as
    :func:`run_experiment`'s (a failed run does not stop the others).

    Returns:
        The results of every run at or below ``root`` that is finished now, in path order.

    Raises:
        ConfigError: for a folder without run directories, a run whose config no longer
            validates or whose plugins are not available (pass its ``-p`` plugins again),
            or an unreadable checkpoint; before any run resumes.
        RunInterrupted: after SIGINT/SIGTERM.
        RunFailed, TrainingDiverged, PluginError: a run failed (without ``on_failure``).
    """
    run_dirs = find_run_dirs(root)
    if not run_dirs:
        raise ConfigError(f"--resume {root}: no run directory (a folder with config.json) at or below it")
    distributed.setup(load_run_config(run_dirs[0]).trainer.device)
    # rank 0 reads the states; under torchrun the other ranks follow its answers
    states = distributed.on_main(lambda: [(s, s.finished, s.live) for s in map(read_status, run_dirs)])
    plan: list[tuple[Path, Config, list, str, int] | Path] = []
    for run_dir, (status, finished, live) in zip(run_dirs, states):
        if finished:
            plan.append(run_dir)
            continue
        if live:
            if run_dir == Path(root):
                raise ConfigError(f"run {run_dir} is being trained by process {status.pid} on {status.host}")
            print(f"skipping {run_dir}: being trained by process {status.pid}", file=sys.stderr)
            continue
        try:
            config, active = prepare(load_run_config(run_dir), plugins)
            task, seed = _run_identity(run_dir, config, status)
            if (run_dir / "checkpoint.pt").is_file():
                what = f"the checkpoint of run {run_dir}"
                distributed.rank_checkpoint(checkpoint.load(run_dir / "checkpoint.pt", what), what)
        except ConfigError as err:
            raise ConfigError(f"cannot resume {run_dir}: {err}") from None
        plan.append((run_dir, config, active, task, seed))
    results = []
    with signals.stop_signals():
        for item in plan:
            if isinstance(item, Path):
                results.append(json.loads((item / "results.json").read_text()))
                continue
            if signals.requested() is not None:
                raise RunInterrupted(signals.requested())
            run_dir, config, active, task, seed = item
            source, target = load_task(config.data, task)
            try:
                results.append(execute_run(config, active, task, source, target, run_dir, seed))
            except RUN_FAILURES as err:
                _failed(on_failure, [run_dir], err)
    return results


def _run_identity(run_dir: Path, config: Config, status) -> tuple[str, int]:
    """The task and seed of a run directory: from ``status.json``, else from its path
    (``<task slug>/<method>/seed<k>-<time>``) matched against the config's tasks and seeds."""
    if status.task and status.seed >= 0:
        return status.task, status.seed
    m = re.match(r"seed(\d+)-", run_dir.name)
    tasks = [t for t in config.data.tasks if slug(t) == run_dir.parent.parent.name]
    if not m or len(tasks) != 1:
        raise ConfigError(f"{run_dir}: cannot tell its task and seed (no status.json)")
    return tasks[0], int(m.group(1))
