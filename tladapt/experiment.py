"""Running an experiment (tasks x seeds for one method) and tabulating results."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Iterable

from tabulate import tabulate

from tladapt.config import Config, ConfigError, parse_task
from tladapt.data.datasets import DATASETS
from tladapt.data.tasks import check_class_options, load_task
from tladapt.manager import PluginInfo, available_plugins, make_plugin_manager, resolve_active
from tladapt.runs import new_run_dir, write_json
from tladapt.trainer import Trainer, keep_best_direction, resolve_device
from tladapt.validators import available_validators, choose_validators


def prepare(config: Config, cli_plugins: Iterable[str] = ()) -> tuple[Config, list[tuple[PluginInfo, dict]]]:
    """Check everything that can be checked before training and resolve the method name.

    Returns:
        ``(config with experiment.method filled in and every active plugin's options
        resolved with their defaults, active plugins with their tables)``.

    Raises:
        ConfigError: for unknown plugins or options, an unknown dataset or domain,
            unknown classes in ``data.source_classes`` / ``data.target_classes`` (or a target
            task of other classes without labelled target samples), an unavailable device,
            unknown validators (``validation.validators``) or a ``trainer.keep_best`` tag
            that no validator or accuracy provides.
    """
    plugins, forced = available_plugins(cli_plugins)
    active = resolve_active(plugins, config.plugins, forced)
    resolve_device(config.trainer.device)
    if ":" not in config.data.dataset:
        if config.data.dataset not in DATASETS:
            raise ConfigError(f"unknown data.dataset {config.data.dataset!r}: expected one of {', '.join(sorted(DATASETS))}")
        domains = DATASETS[config.data.dataset].domains
        for task in config.data.tasks:
            for name in parse_task(task):
                if name not in domains:
                    raise ConfigError(f"data.tasks entry {task!r}: unknown domain {name!r} of "
                                      f"{config.data.dataset}: expected one of {', '.join(domains)}")
    check_class_options(config.data)
    pm = make_plugin_manager(active)
    directions = {v.name: v.direction for v in choose_validators(
        available_validators(pm), config.validation.validators,
        config.data.source_val_fraction > 0 and config.data.source_labels)}
    keep_best_direction(config.trainer.keep_best, directions)
    method = config.experiment.method or "+".join(info.name for info, _ in active) or "source_only"
    config = dataclasses.replace(config, experiment=dataclasses.replace(config.experiment, method=method),
                                 plugins={info.name: info.resolve(table) for info, table in active})
    return config, active


def run_experiment(config: Config, cli_plugins: Iterable[str] = ()) -> list[dict]:
    """Train every task of ``config`` with every seed; one run directory each.

    Returns:
        The runs' results (as in their ``results.json``), in task-then-seed order.

    Raises:
        ConfigError: as :func:`prepare`, before any run starts.
    """
    config, active = prepare(config, cli_plugins)
    results = []
    for task in config.data.tasks:
        source, target = load_task(config.data, task)
        for seed in config.experiment.seeds:
            run_dir = new_run_dir(config.experiment.runs_dir, config.experiment.name, task,
                                  config.experiment.method, seed)
            write_json(run_dir / "config.json", config.to_dict())
            trainer = Trainer(config, source, target, make_plugin_manager(active), run_dir, seed)
            results.append(trainer.fit())
    return results


def reference_1nn(dataset: str, task: str) -> float | None:
    """The published 1-NN target accuracy (JDA, ICCV 2013, Table 2) for a task, if any."""
    info = DATASETS.get(dataset)
    return info.reference_1nn.get(parse_task(task)) if info else None


def _whole_label_space(result: dict) -> bool:
    """Whether a run used every class of its bundled dataset in one head (the setting of the
    published 1-NN numbers); runs from before heads were recorded count as such."""
    classes = result.get("classes")
    info = DATASETS.get(result["dataset"])
    return classes is None or (info is not None and list(classes) == ["head"] and classes["head"] == list(info.classes))


def results_table(results: list[dict], fmt: str = "github") -> str:
    """A table of target accuracy (mean ± std over seeds, percent) per dataset, task and
    method, with the published 1-NN reference beside it.

    Runs group by dataset, task, method and config fingerprint (``config_id``), so that
    runs of different configs under one method name are never averaged together: such
    methods are shown as ``method [config_id]``. A seed run more than once counts once,
    with its latest run (run directories sort by time).

    Args:
        results: dicts as in ``results.json``.
        fmt: a ``tabulate`` format (``github`` for markdown, ``tsv``, ...).
    """
    groups: dict[tuple, dict[int, dict]] = {}
    for r in results:  # rows keep the order the runs are given in
        key = (r["dataset"], r["task"], r["method"], r.get("config_id", ""))
        by_seed = groups.setdefault(key, {})
        if r["seed"] not in by_seed or r["run_dir"] > by_seed[r["seed"]]["run_dir"]:
            by_seed[r["seed"]] = r  # the latest run of each seed wins (run directories sort by time)
    configs_per_method: dict[tuple, set] = {}
    for dataset, task, method, config_id in groups:
        configs_per_method.setdefault((dataset, task, method), set()).add(config_id)
    rows = []
    for (dataset, task, method, config_id), by_seed in groups.items():
        accs = [r["final"]["oracle/target_acc"] for r in by_seed.values() if "oracle/target_acc" in r["final"]]
        if not accs:  # a pre-training run with no trained head (data.source_labels = false)
            continue
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        label = method if len(configs_per_method[(dataset, task, method)]) == 1 else f"{method} [{config_id}]"
        ref = reference_1nn(dataset, task) if all(_whole_label_space(r) for r in by_seed.values()) else None
        rows.append([dataset, task, label, f"{statistics.fmean(accs):.2f}{spread}", len(accs),
                     "" if ref is None else f"{ref:.2f}"])
    headers = ["dataset", "task", "method", "target acc (%)", "seeds", "published 1-NN (%)"]
    return tabulate(rows, headers=headers, tablefmt=fmt)


def collect_results(root: str | Path) -> list[dict]:
    """Read every ``results.json`` below ``root`` (a runs directory or part of one)."""
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("results.json"))]
