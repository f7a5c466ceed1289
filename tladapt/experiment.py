"""Running an experiment: tasks x seeds for one method (tables: :mod:`tladapt.tables`)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

from tladapt.config import Config, ConfigError, parse_task
from tladapt.data.augment import resolve_spec
from tladapt.data.datasets import DATASETS, DIGITS_FORMAT
from tladapt.data.images import is_image_dataset, prepare_images
from tladapt.data.tasks import check_class_options, load_task
from tladapt.manager import PluginInfo, available_plugins, make_plugin_manager, resolve_active
from tladapt.models import check_model
from tladapt.progress import Progress
from tladapt.runs import find_checkpoint, new_run_dir, write_json
from tladapt.trainer import Trainer, keep_best_direction, resolve_device
from tladapt.validators import available_validators, choose_validators


def prepare(config: Config, plugins: Iterable[str | type] = ()) -> tuple[Config, list[tuple[PluginInfo, dict]]]:
    """Check everything that can be checked before training and resolve the method name.

    Args:
        config: a validated config; its ``[plugins.<name>]`` tables say which plugins
            take part.
        plugins: extra plugins to make available (``-p`` specs or plugin classes); they
            take part only where the config enables them.

    Returns:
        ``(config with experiment.method filled in and every enabled plugin's options
        resolved with their defaults, enabled plugins with their tables)``.

    Raises:
        ConfigError: for unknown plugins or options, an unknown dataset or domain,
            unknown classes in ``data.source_classes`` / ``data.target_classes`` (or a target
            task of other classes without labelled target samples), an unavailable device,
            unknown validators (``validation.validators``) or a ``trainer.keep_best`` tag
            that no validator or accuracy provides,
            plugins that need source data in a source-free run, a missing
            ``model.init_from`` checkpoint for some task and seed,
            or an image dataset that cannot be read (its caches are built here, see
            :func:`tladapt.data.images.prepare_images`).
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
    pm = make_plugin_manager(active)
    directions = {v.name: v.direction for v in choose_validators(
        available_validators(pm), config.validation.validators,
        config.data.source_val_fraction > 0 and config.data.source_labels and not config.data.source_free)}
    keep_best_direction(config.trainer.keep_best, directions)
    enabled = [(info, table) for info, table in active if info.name in config.plugins]  # not the measuring ones
    method = config.experiment.method or "+".join(info.name for info, _ in enabled if not info.measures_only) \
        or "source_only"
    config = dataclasses.replace(config, experiment=dataclasses.replace(config.experiment, method=method),
                                 plugins={info.name: info.resolve(table) for info, table in enabled})
    return config, active


def check_source_free(config: Config, active: list[tuple[PluginInfo, dict]]) -> None:
    """Refuse, before any run, a source-free run that cannot work.

    A plugin works without source data when its instance (built from its options) has a
    true ``source_free`` attribute, usually a class attribute ``source_free = True``.

    Raises:
        ConfigError: naming every active plugin that does not declare it; or when no
            plugin is active and no target sample is labelled (nothing to train on).
    """
    needs_source = [info.name for info, table in active
                    if not info.measures_only and not getattr(info.make(table), "source_free", False)]
    if needs_source:
        raise ConfigError(
            f"data.source_free = true, but plugin(s) {', '.join(needs_source)} need source data (they do not declare "
            f"source_free = True): remove their [plugins.*] tables or set data.source_free = false")
    if all(info.measures_only for info, _ in active) and config.data.target_labels_per_class == 0:
        raise ConfigError("data.source_free = true with no plugin and no labelled target sample leaves nothing to "
                          "train on: add a source-free plugin (e.g. [plugins.shot]) or data.target_labels_per_class")


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
    return Progress(runs, steps, enabled=all(c.trainer.progress for c in configs), oracle=oracle)


def run_experiment(config: Config, plugins: Iterable[str | type] = (), progress: Progress | None = None,
                   on_run: Callable[[Trainer, dict], None] | None = None) -> list[dict]:
    """Train every task of ``config`` with every seed; one run directory each.

    Args:
        config: a validated config.
        plugins: extra plugins to make available (``-p`` specs or classes).
        progress: the command's progress display; None: one for this experiment.
        on_run: called with each finished run's trainer (modules in eval mode) and results
            (the Python API keeps the trained models this way).

    Returns:
        The runs' results (as in their ``results.json``), in task-then-seed order.

    Raises:
        ConfigError: as :func:`prepare`, before any run starts.
    """
    config, active = prepare(config, plugins)
    own = progress is None
    progress = progress_for([config]) if own else progress
    results = []
    for task in config.data.tasks:
        source, target = load_task(config.data, task)
        for seed in config.experiment.seeds:
            run_dir = new_run_dir(config.experiment.runs_dir, config.experiment.name, task,
                                  config.experiment.method, seed)
            write_json(run_dir / "config.json", config.to_dict())
            trainer = Trainer(config, source, target, make_plugin_manager(active), run_dir, seed,
                              source_name=parse_task(task)[0])
            results.append(trainer.fit(progress))
            if on_run is not None:
                on_run(trainer, results[-1])
    if own:
        progress.close()
    return results
