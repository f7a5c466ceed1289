"""Experiment configs: TOML files mapped onto dataclasses, ``--set`` overrides, early errors.

A config file has the tables ``[experiment]``, ``[data]``, ``[model]``,
``[trainer]`` and one ``[plugins.<name>]`` table per active plugin; every key is
optional. ``extends = "base.toml"`` at the top merges the file over another one
(path relative to the file), so variants of an experiment do not repeat it.
Types are checked strictly by pydantic; unknown keys fail listing the valid keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

import pydantic


class ConfigError(ValueError):
    """A config, override or plugin option is invalid; the message names the key."""


@dataclass
class ExperimentSection:
    """``[experiment]``: naming and seeds."""

    name: str = "experiment"
    method: str = ""  # label in run paths and tables; default: the active plugins joined by '+'
    seeds: list[int] = field(default_factory=lambda: [0])
    runs_dir: str = "runs"


@dataclass
class DataSection:
    """``[data]``: which bundled (or ``module:function``) dataset and tasks."""

    dataset: str = "office_caltech10_surf"
    tasks: list[str] = field(default_factory=lambda: ["amazon->webcam"])  # "source->target"
    source_val_fraction: float = 0.1  # stratified held-out source split for metrics/source_val_acc
    target_labels_per_class: int = 0  # k labelled target samples per class (semi-supervised DA); 0: UDA


@dataclass
class ModelSection:
    """``[model]``: the backbone (feature extractor); the head is one linear layer."""

    backbone: str = "auto"  # auto | mlp | lenet | module:function
    hidden: list[int] = field(default_factory=lambda: [256])  # mlp hidden sizes
    dropout: float = 0.5
    init_from: str = ""  # a run directory (or checkpoint.pt) whose backbone and head start this run


@dataclass
class TrainerSection:
    """``[trainer]``: optimisation, schedule, cadence and device."""

    steps: int = 2000
    batch_size: int = 32  # per domain
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["constant", "dann"] = "dann"  # dann: lr0 / (1 + 10 p) ** 0.75
    lr_mult: dict[str, float] = field(default_factory=dict)  # per module or submodule path, e.g. {backbone = 0.1}
    source_weight: float = 1.0  # weight of the source cross-entropy; 0 trains on labelled target samples only
    target_weight: float = 1.0  # weight of the labelled-target cross-entropy (data.target_labels_per_class > 0)
    replacement: bool = False  # sample batches with replacement
    eval_every: int = 500
    log_every: int = 50
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # CPU intra-op threads (torch.set_num_threads); 0 keeps torch's default
    progress: bool = True  # progress bar on a terminal
    checkpoint: bool = True  # write checkpoint.pt at the end


@dataclass
class Config:
    """A whole experiment; ``plugins`` maps plugin names to their raw option tables."""

    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain, JSON/TOML-serialisable data."""
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """8 hex digits identifying everything but the seeds and the runs directory, so that
        runs of one config with different seeds group together and other configs do not."""
        data = self.to_dict()
        data["experiment"] = {k: v for k, v in data["experiment"].items() if k not in ("seeds", "runs_dir")}
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def validate_dataclass(cls: type, data: dict[str, Any], where: str):
    """Build dataclass ``cls`` from ``data`` with strict type checks.

    Args:
        cls: a dataclass type.
        data: its field values; missing fields take their defaults.
        where: the config location for messages, e.g. ``"trainer"`` or ``"plugins.dann"``.

    Raises:
        ConfigError: for an unknown key (listing the valid keys) or a value of the
            wrong type (naming ``where.key``, the expected type and the value).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table, got {data!r}")
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in valid:
            raise ConfigError(f"unknown key {where}.{key}: valid keys are {', '.join(valid) or '(none)'}")
    hints = typing.get_type_hints(cls)
    values, problems = {}, []
    for key, value in data.items():
        try:
            values[key] = pydantic.TypeAdapter(hints[key]).validate_python(value, strict=True)
        except pydantic.ValidationError as err:
            for e in err.errors():
                loc = "".join(f"[{p!r}]" for p in e["loc"])
                problems.append(f"{where}.{key}{loc}: {e['msg']} (got {e['input']!r})")
    if problems:
        raise ConfigError("invalid config value: " + "; ".join(problems))
    return cls(**values)


def parse_value(text: str) -> Any:
    """Parse an override's value as a TOML value (``3``, ``0.1``, ``true``, ``[64, 64]``,
    ``"x"``); anything else that is not valid TOML is taken as a bare string.

    Raises:
        ConfigError: for text that starts like a TOML array, table or string
            (``[``, ``{``, a quote) but does not parse.
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as err:
        if text[:1] in "[{\"'":
            raise ConfigError(f"--set value {text!r} is not valid TOML: {err}") from None
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set dotted.key=value`` to raw config data, in place.

    Raises:
        ConfigError: if the assignment is not of the form ``key=value``.
    """
    key, sep, value = assignment.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key.strip()):
        raise ConfigError(f"--set expects dotted.key=value, got {assignment!r}")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a table")
        node = child
    node[leaf] = parse_value(value.strip())


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_toml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, resolving ``extends`` chains.

    Raises:
        ConfigError: for a missing file, invalid TOML, or an ``extends`` cycle.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"extends cycle: {' -> '.join(map(str, _seen + (path,)))}")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a file path string, got {parent!r}")
    if not (path.parent / parent).is_file():
        raise ConfigError(f"{path}: extends = {parent!r}, but {path.parent / parent} does not exist")
    return _merge(read_toml(path.parent / parent, _seen + (path,)), data)


def build_config(data: dict[str, Any]) -> Config:
    """Validate raw config data into a :class:`Config`.

    Raises:
        ConfigError: for unknown sections or keys, wrong types, or tasks not of
            the form ``"source->target"``.
    """
    for section in data:
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section [{section}]: valid sections are {', '.join(_SECTIONS)}")
    plugins = data.get("plugins", {})
    if not isinstance(plugins, dict) or not all(isinstance(v, dict) for v in plugins.values()):
        raise ConfigError("[plugins] must hold one table per plugin, e.g. [plugins.dann]")
    config = Config(
        experiment=validate_dataclass(ExperimentSection, data.get("experiment", {}), "experiment"),
        data=validate_dataclass(DataSection, data.get("data", {}), "data"),
        model=validate_dataclass(ModelSection, data.get("model", {}), "model"),
        trainer=validate_dataclass(TrainerSection, data.get("trainer", {}), "trainer"),
        plugins=plugins,
    )
    for task in config.data.tasks:
        parse_task(task)
    if not config.data.tasks:
        raise ConfigError("data.tasks is empty: expected at least one 'source->target' task")
    if not config.experiment.seeds:
        raise ConfigError("experiment.seeds is empty: expected at least one seed")
    t = config.trainer
    if t.threads < 0:
        raise ConfigError(f"trainer.threads must be >= 0, got {t.threads}")
    for key in ("steps", "batch_size", "eval_every", "log_every"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"trainer.{key} must be a positive integer, got {getattr(t, key)}")
    if t.lr <= 0:
        raise ConfigError(f"trainer.lr must be positive, got {t.lr}")
    if t.source_weight < 0 or t.target_weight < 0:
        raise ConfigError(f"trainer.source_weight and trainer.target_weight must be >= 0, "
                          f"got {t.source_weight} and {t.target_weight}")
    if t.source_weight == 0 and config.data.target_labels_per_class == 0:
        raise ConfigError("trainer.source_weight = 0 with data.target_labels_per_class = 0 leaves no supervised "
                          "loss: label some target samples per class")
    if config.data.target_labels_per_class < 0:
        raise ConfigError(f"data.target_labels_per_class must be >= 0, got {config.data.target_labels_per_class}")
    if not 0.0 <= config.data.source_val_fraction < 1.0:
        raise ConfigError(f"data.source_val_fraction must lie in [0, 1), got {config.data.source_val_fraction}")
    return config


def parse_task(task: str) -> tuple[str, str]:
    """Split ``"source->target"`` into its two domain names.

    Raises:
        ConfigError: if the string is not two non-empty names joined by ``->``.
    """
    source, sep, target = task.partition("->")
    if not sep or not source.strip() or not target.strip() or "->" in target:
        raise ConfigError(f"data.tasks entry {task!r}: expected 'source->target', e.g. 'amazon->webcam'")
    return source.strip(), target.strip()


def parse_seeds(text: str) -> list[int]:
    """Parse ``--seeds``: ``"3"``, ``"0-2"`` (inclusive) or ``"0,4,7"``.

    Raises:
        ConfigError: for anything else.
    """
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"--seeds expects e.g. '0', '0-2' or '0,3,5', got {text!r}")
        lo = int(m.group(1))
        seeds += list(range(lo, int(m.group(2) or lo) + 1))
    return seeds


def load_config(path: str | Path | None, overrides: list[str] = (), seeds: str | None = None) -> Config:
    """Read ``path`` (or start from defaults), apply ``--set`` overrides and ``--seeds``, validate.

    Raises:
        ConfigError: as :func:`read_toml`, :func:`apply_override` and :func:`build_config`.
    """
    data = read_toml(path) if path is not None else {}
    for assignment in overrides:
        apply_override(data, assignment)
    if seeds is not None:
        data.setdefault("experiment", {})["seeds"] = parse_seeds(seeds)
    return build_config(data)
