"""The Python API, for notebooks and scripts: the same checks and runs as the ``tladapt`` command.

Everything here is re-exported by :mod:`tladapt` on first use (``tladapt.run``,
``tladapt.load_run``, ...), so ``import tladapt`` stays light. A short tour::

    import tladapt

    config = tladapt.load_config("experiments/digits_jda/dann.toml", set=["trainer.steps=500"])
    runs = tladapt.run(config, seeds="0-2", runs_dir="runs")   # list[TrainedRun]
    runs[0].model(x)                                            # logits of the trained model
    print(tladapt.table(runs))                                  # markdown, as `tladapt table`
    frame = tladapt.frame("runs")                               # one row per run (pandas)
    run = tladapt.load_run(runs[0].run_dir)                     # config, results, model (eval)

The semantics are the command's: loading a plugin is not enabling it (``plugins=`` loads,
a config's ``[plugins.NAME]`` table or ``enable=`` enables), an override never enables a
plugin, and every config is checked before the first run starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from tladapt.config import Config, load_configs
from tladapt.errors import ConfigError

if TYPE_CHECKING:  # torch, pandas: imported when a function needs them
    import pandas as pd
    from torch import nn

__all__ = ["TrainedRun", "load_config", "build_config", "run", "load_run", "frame", "table"]

@dataclass
class TrainedRun:
    """One finished run: where it is, what ran, what it measured, the model it trained.

    Attributes:
        run_dir: the run directory.
        config: the run's resolved config (plugin options with their defaults).
        results: its ``results.json`` (``task``, ``method``, ``seed``, ``final``, ``history``, ...).
        modules: every trained module (``backbone``, ``head`` and the plugins' modules such
            as DANN's discriminator), in eval mode, on the device it trained on (on the CPU
            for :func:`load_run`).
    """

    run_dir: Path
    config: Config
    results: dict
    modules: nn.ModuleDict

    @property
    def model(self) -> nn.Sequential:
        """The classifier, ``backbone`` then ``head``, in eval mode: ``model(x)`` maps inputs
        ``(n, *input_shape)`` float32 to logits ``(n, num_classes)``; ``model.backbone(x)``
        gives the features ``(n, feature_dim)``."""
        from collections import OrderedDict

        from torch import nn

        return nn.Sequential(OrderedDict(backbone=self.modules["backbone"], head=self.modules["head"])).eval()

    @property
    def final(self) -> dict[str, float]:
        """The last evaluation: ``oracle/target_acc``, ``metrics/source_val_acc``, ``validator/*`` (percent / scores)."""
        return self.results["final"]

    def __repr__(self) -> str:
        r = self.results
        return f"TrainedRun({r['task']} {r['method']} seed {r['seed']}: {self.run_dir})"


def _as_data(config: Config) -> dict:
    """A config as raw data to load again; a method name that was derived from the enabled
    plugins is dropped, so that it is derived again (``enable=`` then names the new method)."""
    data = config.to_dict()
    if data["experiment"]["method"] == ("+".join(sorted(config.plugins)) or "source_only"):
        data["experiment"]["method"] = ""
    return data


def _sources(configs: Sequence[Any]) -> list:
    return [_as_data(c) if isinstance(c, Config) else c for c in configs] or [None]


def _load(configs: Sequence[Any], set: Sequence[str], seeds: str | Sequence[int] | None,
          enable: Sequence[str], plugins: Iterable[str | type], runs_dir: str | Path | None) -> list[Config]:
    from tladapt.experiment import prepare_all

    overrides = list(set) + ([f"experiment.runs_dir={json.dumps(str(runs_dir))}"] if runs_dir is not None else [])
    if seeds is not None and not isinstance(seeds, str):
        seeds = ",".join(str(int(s)) for s in seeds)
    loaded = load_configs(_sources(configs), overrides, seeds, enable)
    return prepare_all(loaded, plugins, enable)


def load_config(path: str | Path | dict | Config | None = None, *, set: Sequence[str] = (),
                seeds: str | Sequence[int] | None = None, enable: Sequence[str] = (),
                plugins: Iterable[str | type] = (), runs_dir: str | Path | None = None) -> Config:
    """Read and check one config exactly as ``tladapt run`` does, with the same errors.

    Args:
        path: a TOML file, raw config data (a dict as read from TOML), a :class:`Config`,
            or None for the built-in defaults.
        set: ``--set`` overrides, ``"dotted.key=value"`` with TOML values;
            ``plugins.NAME.KEY=VALUE`` applies only when the config enables NAME.
        seeds: ``--seeds``: ``"0-2"``, ``"0,3"`` or a list of ints.
        enable: plugin names to enable (``--enable``).
        plugins: extra plugins to make available: ``-p`` specs (``"my_plugin.py"``) or
            plugin classes (named by their ``name`` attribute, else their class name in
            snake case). Loading does not enable.
        runs_dir: root of the run directories (``--runs-dir``).

    Returns:
        The prepared config: ``experiment.method`` resolved, every enabled plugin's
        options filled in with their defaults.

    Raises:
        ConfigError: for anything the command refuses before a run (unknown keys, bad
            values, unknown plugins or options, unknown datasets or domains, ...).
    """
    return _load([path], set, seeds, enable, plugins, runs_dir)[0]


def build_config(tables: dict | None = None, /, **sections: dict) -> Config:
    """A checked config from raw data, as :func:`load_config` checks a file: the TOML tables
    as a dict, or as keyword arguments (merged over ``tables``)::

        tladapt.build_config(data={"dataset": "mnist_usps_jda", "tasks": ["usps->mnist"]},
                             model={"backbone": "lenet"}, plugins={"dann": {}})

    Raises:
        ConfigError: as :func:`load_config`.
    """
    return load_config({**(tables or {}), **sections})


def run(*configs: str | Path | dict | Config, set: Sequence[str] = (), seeds: str | Sequence[int] | None = None,
        enable: Sequence[str] = (), plugins: Iterable[str | type] = (), runs_dir: str | Path | None = None,
        progress: bool = True, show_oracle: bool = False) -> list[TrainedRun]:
    """Train every task x seed of each config, as ``tladapt run CONFIG...`` does.

    Args:
        configs: TOML files, raw config dicts or :class:`Config` objects; none: the
            built-in defaults (not the bundled default experiment: pass its files for that).
        set, seeds, enable, plugins, runs_dir: as :func:`load_config`, for every config.
        progress: show the command's progress bar (or a line per run off a terminal).
        show_oracle: also show the oracle target accuracy while training.

    Returns:
        One :class:`TrainedRun` per run, in config-task-seed order, each holding its
        trained modules in eval mode.

    Raises:
        ConfigError: before any run starts, as :func:`load_config`; PluginError or
            TrainingDiverged from a run.
    """
    import dataclasses

    from tladapt.experiment import progress_for, run_experiment

    prepared = _load(configs, set, seeds, enable, plugins, runs_dir)
    if not progress:
        prepared = [dataclasses.replace(c, trainer=dataclasses.replace(c.trainer, progress=False)) for c in prepared]
    display = progress_for(prepared, oracle=show_oracle)
    plugins = list(plugins)
    trained = []
    for config in prepared:
        run_experiment(config, plugins, display, on_run=lambda trainer, results: trained.append(
            TrainedRun(trainer.run_dir, trainer.config, results, trainer.modules)))
    display.close()
    return trained


def load_run(run_dir: str | Path, *, device: str = "cpu") -> TrainedRun:
    """A finished run from its directory: config, results and model, without running code.

    ``config.json`` is validated as a config (not against the installed plugins, which
    loading a model does not need); ``checkpoint.pt`` is read with
    ``torch.load(weights_only=True)``; the backbone and heads are rebuilt from the config
    and the task's input shape (the task's domains are read to get it) and loaded strictly.

    Args:
        run_dir: a run directory (holding ``config.json``, ``results.json``, ``checkpoint.pt``).
        device: where to put the modules.

    Returns:
        A :class:`TrainedRun` whose ``modules`` hold ``backbone``, ``head`` (and
        ``source_head`` when the run had one), in eval mode.

    Raises:
        ConfigError: a missing file, a run that did not finish, a checkpoint that is not
            a plain-tensor file, or weights that do not fit the config's model.
    """
    from torch import nn

    from tladapt import checkpoint
    from tladapt.config import load_run_config
    from tladapt.data.augment import attach
    from tladapt.data.tasks import load_task
    from tladapt.models import build_backbone

    run_dir = Path(run_dir)
    for name in ("config.json", "results.json", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            hint = " (the run did not finish)" if name == "results.json" else \
                " (runs with trainer.checkpoint = false keep no model)" if name == "checkpoint.pt" else ""
            raise ConfigError(f"{run_dir}: no {name}{hint}")
    config = load_run_config(run_dir)  # its provenance entry aside
    results = json.loads((run_dir / "results.json").read_text())
    state = checkpoint.load(run_dir / "checkpoint.pt", f"load_run({str(run_dir)!r})")  # weights_only=True
    modules = state["modules"]
    source, target = load_task(config.data, results["task"])
    target = attach(target, config.augment)
    m = config.model
    backbone = build_backbone(m.backbone, target.input_shape, m.hidden, m.dropout, "", m.bottleneck)
    model = nn.ModuleDict({"backbone": backbone})
    for head in ("head", "source_head"):
        if f"{head}.weight" in modules:
            model[head] = nn.Linear(backbone.out_features, modules[f"{head}.weight"].shape[0])
    try:
        model.load_state_dict({k: v for k, v in modules.items() if k.split(".", 1)[0] in model}, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{run_dir / 'checkpoint.pt'} does not fit the model of its config.json: {err}") from None
    return TrainedRun(run_dir, config, results, model.to(device).eval())


def _runs(items) -> list:
    """Recorded runs (:class:`tladapt.tables.Run` or results dicts) from directories,
    :class:`TrainedRun` objects and results dicts."""
    from tladapt.tables import read_runs

    if isinstance(items, (str, Path, TrainedRun, dict)):
        items = [items]
    found = []
    for item in items:
        if isinstance(item, (str, Path)):
            found += read_runs(item)
        elif isinstance(item, TrainedRun):
            found.append(item.results)
        else:
            found.append(item)
    return found


def frame(runs) -> pd.DataFrame:
    """One row per run (finished or not): ``experiment``, ``dataset``, ``task``, ``method``,
    ``config_id``, ``seed``, ``status``, ``run_dir``, ``steps`` and the final evaluation's tags.

    Args:
        runs: a runs directory, a list of them, :class:`TrainedRun` objects (as
            :func:`run` returns) or results dicts.

    Implemented by :func:`tladapt.tables.runs_frame` (``tladapt table``'s data).
    """
    from tladapt.tables import runs_frame

    return runs_frame(_runs(runs))


def table(runs, *, fmt: str = "markdown", select: str = "last", metric: str = "oracle/target_acc",
          pivot: bool = False) -> str:
    """The results table of ``tladapt table``: mean ± std over seeds per task and method,
    the published 1-NN beside where it applies, unfinished and failed runs listed.

    Args:
        runs: as :func:`frame`.
        fmt: ``"markdown"``, ``"csv"`` or ``"json"``.
        select: ``"last"`` (the final evaluation) or a validator name (label-free model
            selection over each run's evaluations); see ``docs/model-selection.md``.
        metric: the reported tag, e.g. ``"oracle/target_acc"`` or ``"metrics/source_val_acc"``.
        pivot: tasks x methods with a mean row.

    Raises:
        ConfigError: no runs, or an unknown metric or validator.
    """
    from tladapt.tables import build_table, render_pivot, render_table

    built = build_table(_runs(runs), select=select, metric=metric)
    return render_pivot(built, fmt) if pivot else render_table(built, fmt)
