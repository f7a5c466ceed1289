"""Experiment configs: TOML files mapped onto dataclasses, ``--set`` overrides, early errors.

A config file has the tables ``[experiment]``, ``[data]``, ``[augment]``, ``[model]``,
``[trainer]`` and one ``[plugins.<name>]`` table per active plugin; every key is
optional. ``extends = "base.toml"`` at the top merges the file over another one
(path relative to the file), so variants of an experiment do not repeat it.
Types are checked strictly by pydantic; unknown keys fail listing the valid keys.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import tomllib

from tladapt.errors import ConfigError
from tladapt.options import Checked, option, validate_dataclass

__all__ = ["ConfigError", "Config", "ExperimentSection", "DataSection", "AugmentSection", "ModelSection", "TrainerSection",
           "ValidationSection", "SECTIONS", "validate_dataclass", "build_config", "load_config", "load_configs",
           "read_toml", "apply_override", "parse_task",
           "parse_seeds", "parse_value"]


@dataclass
class ExperimentSection(Checked):
    """``[experiment]``: naming and seeds."""

    where: ClassVar[str] = "experiment"
    name: str = option("experiment", "experiment name: the first level below runs_dir")
    method: str = option("", "label in run paths and tables; default: the active plugins joined by '+'")
    seeds: list[int] = option([0], "seeds to run, each a separate run", ge=0)
    runs_dir: str = option("runs", "root folder of the run directories")


@dataclass
class DataSection(Checked):
    """``[data]``: which dataset (bundled, image folder or ``module:function``) and tasks."""

    where: ClassVar[str] = "data"
    dataset: str = option("office_caltech10_surf", "a bundled dataset (tladapt datasets), 'image_folder:/root' "
                          "(root/<domain>/<class>/<image>), 'image_list:/root' (TLlib lists "
                          "root/image_list/<domain>.txt) or 'module:function'")
    tasks: list[str] = option(["amazon->webcam"], "tasks as 'source->target' domain names")
    source_val_fraction: float = option(
        0.1, "stratified held-out source split for metrics/source_val_acc (0: none)", ge=0, lt=1)
    target_labels_per_class: int = option(
        0, "k labelled target samples per class (semi-supervised DA); 0: unsupervised DA", ge=0)
    source_classes: list[str | int] = option(
        [], "keep only these source classes (names or 0-based indices; labels follow the dataset's order); "
            "empty: all")
    target_classes: list[str | int] = option(
        [], "keep only these target classes; classes outside the source's make a different target task "
            "with its own head (needs target_labels_per_class > 0); empty: all")
    source_labels_per_class: int = option(
        0, "keep only k labelled source training samples per class (a few-shot source task); 0: all", ge=0)
    source_labels: bool = option(
        True, "false: the source is unlabelled (its labels are dropped at load: self-taught or "
              "unsupervised pre-training; a plugin supplies the loss)")
    source_free: bool = option(
        False, "target-only (source-free) adaptation, e.g. SHOT: no source sample reaches the run; the model "
               "starts from model.init_from, plugins must declare source_free, source_val_fraction is unused")
    image_size: int = option(256, "image datasets: side S of the decode-once uint8 cache", gt=0)
    image_resize: Literal["center_crop", "stretch"] = option(
        "center_crop", "image datasets: center_crop (shorter side to S, centre S x S) or stretch (to S x S, "
                       "as TLlib's ResizeImage)")
    cache_dir: str = option("", "image datasets: folder of the decoded caches; '': <root>/.tladapt-cache when "
                                "writable, else ~/.cache/tladapt")
    allow_same_domain: bool = option(
        False, "allow a task whose source and target are one domain with classes in common (an in-domain "
               "reference, not adaptation: the target's samples of those classes are source training samples, "
               "so oracle/target_acc is accuracy on training data; metrics/source_val_acc is the held-out one); "
               "refused by default. One domain with disjoint classes (a different target task) needs no flag")
    placement: Literal["auto", "device", "host"] = option(
        "auto", "where the domains live: device (on the training device), host (pinned memory, batches "
                "copied one step ahead on a side stream; CUDA), auto (device when both fit in half the free "
                "device memory)")


@dataclass
class AugmentSection(Checked):
    """``[augment]``: the views of image domains (ignored by feature datasets), computed on the device."""

    where: ClassVar[str] = "augment"
    train: Literal["auto", "none", "standard"] = option(
        "auto", "training augmentation: standard (random resized crop, flip, colour jitter), none (the "
                "evaluation view), auto (standard for image folders, none for bundled digits)")
    input_size: int = option(0, "model input side; 0: 7/8 of the stored side for image folders (224 from 256), "
                                "the stored side for bundled digits", ge=0)
    scale: list[float] = option([0.08, 1.0], "random resized crop: [min, max] fraction of the image area", gt=0, le=1)
    ratio: list[float] = option([3 / 4, 4 / 3], "random resized crop: [min, max] aspect ratio", gt=0)
    flip: bool = option(True, "random horizontal flip (probability 1/2)")
    color_jitter: list[float] = option(
        [0.0, 0.0, 0.0, 0.0], "[brightness, contrast, saturation, hue] strengths as torchvision's ColorJitter; "
                              "0: off", ge=0)
    mean: list[float] = option([], "normalisation mean per channel; []: the dataset's (ImageNet for image "
                                   "folders, none for digits)")
    std: list[float] = option([], "normalisation std per channel; []: the dataset's", gt=0)
    strong_ops: int = option(2, "strong view (FixMatch): RandAugment ops drawn per sample", ge=1)
    cutout: float = option(0.5, "strong view: Cutout side as a fraction of the input side", ge=0, le=1)


@dataclass
class ModelSection(Checked):
    """``[model]``: the backbone (feature extractor); the head is one linear layer."""

    where: ClassVar[str] = "model"
    backbone: str = option("auto", "auto | mlp | lenet | torchvision:<model> | module:function (auto: mlp for "
                                   "vectors, lenet for images)")
    hidden: list[int] = option([256], "mlp hidden sizes; the last is the feature dimension", gt=0)
    dropout: float = option(0.5, "dropout probability in the backbone", ge=0, lt=1)
    shared_head: bool = option(
        True, "one head for source and target when the target's classes are the source's; false: a head per "
              "domain (multi-task learning)")
    init_from: str = option("", "a run directory (or checkpoint.pt, or a folder of seed<k>-* runs) whose backbone "
                                "starts this run (it must be this model's backbone: same layers and shapes), and "
                                "each of its heads a head that predicts the same class names (other heads start new); "
                                "may hold {source}, {target}, {task}, {seed}")
    weights: str = option("", "torchvision backbones: a state-dict file, or a torchvision weights name (DEFAULT, "
                              "IMAGENET1K_V1, ...) read from $TORCH_HOME/hub/checkpoints; never downloaded; '': "
                              "random init")
    pretrained_lr_mult: float = option(
        0.1, "learning-rate multiplier of a backbone loaded from model.weights (TLlib, DANN: 0.1); the "
             "bottleneck and heads keep 1; trainer.lr_mult overrides", ge=0)
    bottleneck: int = option(0, "features through Linear -> BatchNorm1d -> ReLU to this width (TLlib, CDAN: "
                                "256); 0: none", ge=0)
    batchnorm: Literal["joint", "separate"] = option(
        "joint", "joint: one forward of source + target (BatchNorm statistics of the mixed batch, as TLlib); "
                 "separate: one forward per domain (per-domain batch statistics, as pytorch-adapt)")


@dataclass
class TrainerSection(Checked):
    """``[trainer]``: optimisation, schedule, cadence and device."""

    where: ClassVar[str] = "trainer"
    steps: int = option(2000, "optimizer steps per run", gt=0)
    batch_size: int = option(32, "samples per domain per step", gt=0)
    optimizer: Literal["sgd", "adam"] = option("sgd", "sgd (with momentum) or adam")
    lr: float = option(0.01, "base learning rate", gt=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = option(5e-4, "L2 weight decay of every optimised parameter", ge=0)
    schedule: Literal["constant", "dann"] = option("dann", "learning-rate schedule; dann: lr0 / (1 + 10 p) ** 0.75")
    lr_mult: dict[str, float] = option(
        {}, "learning-rate multiplier per module or submodule path, e.g. {backbone = 0.1}", ge=0)
    source_weight: float = option(
        1.0, "weight of the source cross-entropy; 0 trains on labelled target samples only", ge=0)
    target_weight: float = option(
        1.0, "weight of the labelled-target cross-entropy (data.target_labels_per_class > 0)", ge=0)
    label_smoothing: float = option(
        0.0, "label smoothing ε of the source cross-entropy (Szegedy et al. 2016; SHOT's source model: 0.1)",
        ge=0, lt=1)
    replacement: bool = option(False, "sample batches with replacement (needed when a domain is smaller than a batch)")
    eval_every: int = option(500, "steps between evaluations (and one at the end)", gt=0)
    log_every: int = option(50, "steps between TensorBoard scalar writes (means since the last)", gt=0)
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto: cuda when available, else cpu")
    threads: int = option(
        0, "CPU intra-op threads for the run (restored afterwards); 0 chooses by the step's size and the "
           "machine's cores (tladapt.threads: one thread for the bundled small models)", ge=0)
    compile: Literal["off", "torch", "cudagraph"] = option(
        "off", "off: eager; torch: torch.compile the forward and loss terms (pays for long runs only); "
               "cudagraph: capture the whole step in a CUDA graph (CUDA, capture-safe plugins)")
    batch_runs: int = option(
        1, "train up to this many seeds of a task together as one batched model (tladapt.batched; batch-safe "
           "plugins); 0: all seeds of a task; 1: one at a time. Pays where a step is launch-bound (GPU); "
           "measured no gain on a 2-core CPU", ge=0)
    progress: bool = option(True, "progress bar on a terminal (a line per finished run elsewhere)")
    plots: bool = option(False, "t-SNE of source and target features at the start and end of training and the "
                                "target confusion matrix (oracle) at the end: PNGs in the run directory, TensorBoard "
                                "images and projector (seconds per run)")
    checkpoint: bool = option(True, "keep checkpoint.pt when the run has finished (false: delete it then)")
    checkpoint_every: int | Literal["auto"] = option(
        "auto", "steps between checkpoints (checkpoint.pt, the last one, for resume); 'auto': a tenth of "
                "the run; 0: only at the end", ge=0)
    precision: Literal["fp32", "bf16"] = option(
        "fp32", "bf16: forward and losses under torch.autocast(bfloat16) on CUDA or CPU; CORAL, MMD kernels, "
                "entropies and cross-entropies are computed in float32")
    channels_last: bool = option(False, "channels-last memory format for convolutional backbones and image batches")
    keep_best: str = option(
        "", "keep best.pt, the checkpoint of the evaluation point with the best value of this tag, "
            "e.g. 'validator/im' or 'metrics/source_val_acc'; '': none")
    keep_best_mode: Literal["auto", "max", "min"] = option(
        "auto", "direction of keep_best; auto: a validator's own direction, max for accuracies; "
                "max or min: any tag")


@dataclass
class ValidationSection(Checked):
    """``[validation]``: the label-free validators computed at every evaluation point."""

    where: ClassVar[str] = "validation"
    validators: list[str] = option([], "validator names (tladapt plugins lists them); empty: every available one")
    max_samples: int = option(
        1000, "validators read a seeded subsample of at most this many samples per domain", ge=10)


@dataclass
class Config:
    """A whole experiment; ``plugins`` maps the enabled plugins' names to their option tables.

    Validated as a whole on construction (and so by ``dataclasses.replace``): each section
    must be its section class (which validates its own fields), every task must read
    ``'source->target'``, tasks and seeds must not be empty, and some supervised loss must
    remain. Plugin tables are checked against the plugins' options when a run is prepared
    (:func:`tladapt.experiment.prepare`), since that needs the installed plugins, and a task
    whose source and target are one domain against the dataset's classes when its domains
    load (:func:`tladapt.data.tasks.check_same_domain`), since that needs the class names.

    Raises:
        ConfigError: naming the key and what was expected.
    """

    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    model: ModelSection = field(default_factory=ModelSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"Config.{name} must be a {cls.__name__} (the [{name}] table), "
                                  f"got {type(getattr(self, name)).__name__}: build configs from data with "
                                  f"tladapt.build_config")
        if not isinstance(self.plugins, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in self.plugins.items()):
            raise ConfigError("[plugins] must hold one table per plugin, e.g. [plugins.dann]")
        if not self.data.tasks:
            raise ConfigError("data.tasks is empty: expected at least one 'source->target' task")
        for task in self.data.tasks:
            parse_task(task)  # a same-domain task is checked against the dataset's classes when it loads
        if not self.experiment.seeds:
            raise ConfigError("experiment.seeds is empty: expected at least one seed")
        _check_augment(self.augment)
        if self.data.source_free and not self.model.init_from:
            raise ConfigError("data.source_free = true needs model.init_from = a source run directory (or its "
                              "checkpoint.pt): a source-free run adapts a model trained on the source")
        if (self.trainer.source_weight == 0 and self.data.target_labels_per_class == 0 and self.data.source_labels
                and not self.data.source_free):
            raise ConfigError("trainer.source_weight = 0 with data.target_labels_per_class = 0 leaves no "
                              "supervised loss: label some target samples per class")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain, JSON/TOML-serialisable data."""
        return dataclasses.asdict(self)

    #: ``[trainer]`` keys that change how a run is watched and saved, never its numbers.
    UNSCORED_TRAINER_KEYS: ClassVar[tuple[str, ...]] = (
        "progress", "plots", "checkpoint", "checkpoint_every", "keep_best", "keep_best_mode")

    def fingerprint(self) -> str:
        """8 hex digits identifying everything but the seeds, the tasks, the runs directory,
        what is only measured (``[validation]``, ``trainer.plots``) and the keys of :attr:`UNSCORED_TRAINER_KEYS`,
        so that runs of one config with different seeds group together (and a run resumes
        under another checkpoint cadence) and other configs do not. A run's identity is
        (task, seed, fingerprint): a config listing one task or twelve trains that task the
        same way, so both give the same fingerprint."""
        data = self.to_dict()
        data["experiment"] = {k: v for k, v in data["experiment"].items() if k not in ("seeds", "runs_dir")}
        del data["data"]["tasks"]  # a run is one task: its task is a column of its own
        del data["validation"]  # what is measured about a run does not change the run
        data["trainer"] = {k: v for k, v in data["trainer"].items() if k not in self.UNSCORED_TRAINER_KEYS}
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


#: The config's sections (TOML tables) and their dataclasses, in file order.
SECTIONS = {"experiment": ExperimentSection, "data": DataSection, "augment": AugmentSection,
            "model": ModelSection, "trainer": TrainerSection, "validation": ValidationSection}


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


def parse_toml_file(path: Path, missing: str) -> dict[str, Any]:
    """The TOML document in ``path`` as nested dicts.

    Raises:
        ConfigError: ``missing`` when the file does not exist; the file and the parser's
            message (line and column) when it is not valid TOML.
    """
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(missing) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None


def read_toml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, resolving ``extends`` chains.

    Raises:
        ConfigError: for a missing file, invalid TOML, or an ``extends`` cycle.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"extends cycle: {' -> '.join(map(str, _seen + (path,)))}")
    data = parse_toml_file(path, f"config file not found: {path}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a file path string, got {parent!r}")
    if not (path.parent / parent).is_file():
        raise ConfigError(f"{path}: extends = {parent!r}, but {path.parent / parent} does not exist")
    return _merge(read_toml(path.parent / parent, _seen + (path,)), data)


def build_config(data: dict[str, Any]) -> Config:
    """Validate raw config data (as read from TOML) into a :class:`Config`.

    Raises:
        ConfigError: for unknown sections or keys, wrong types, values out of bounds, or
            the whole-config checks of :class:`Config`.
    """
    valid = [*SECTIONS, "plugins"]
    for section in data:
        if section not in valid:
            raise ConfigError(f"unknown config section [{section}]: valid sections are {', '.join(valid)}")
    sections = {name: validate_dataclass(cls, data.get(name, {}), name) for name, cls in SECTIONS.items()}
    return Config(**sections, plugins=data.get("plugins", {}))


def _check_augment(a: AugmentSection) -> None:
    for key in ("scale", "ratio"):
        pair = getattr(a, key)
        if len(pair) != 2 or pair[0] > pair[1]:
            raise ConfigError(f"augment.{key} must be [min, max] with min <= max, got {pair}")
    if len(a.color_jitter) != 4 or a.color_jitter[3] > 0.5:
        raise ConfigError(f"augment.color_jitter must be [brightness, contrast, saturation, hue] with hue <= 0.5, "
                          f"got {a.color_jitter}")
    if a.mean and a.std and len(a.mean) != len(a.std):
        raise ConfigError(f"augment.mean and augment.std must have the same length, got {a.mean} and {a.std}")


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


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config a run directory's ``config.json`` holds (its ``provenance`` entry aside).

    Raises:
        ConfigError: if there is no ``config.json`` or it does not validate.
    """
    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: no config.json (expected a run directory)") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON: {err}") from None
    data.pop("provenance", None)
    return build_config(data)


def _label(path: str | Path | dict | None) -> str:
    return "the defaults" if path is None else "the given data" if isinstance(path, dict) else Path(path).name


def load_configs(paths: Sequence[str | Path | dict | None], overrides: Sequence[str] = (), seeds: str | None = None,
                 enable: Sequence[str] = ()) -> list[Config]:
    """Read configs as the ``tladapt`` commands do: the files (None: the defaults), then
    ``--enable``, then ``--set`` overrides and ``--seeds``, then validation.

    Which plugins a config enables is decided by its ``[plugins.<name>]`` tables and by
    ``enable`` alone, so that a baseline stays a baseline:

    * ``enable`` adds an (empty) table for each name to every config that lacks one; a
      config that names its method (``experiment.method``) gets ``+<name>`` appended, so
      its runs are never labelled with a method they are not.
    * An override of ``plugins.<name>.<key>`` applies to the configs that enable
      ``<name>`` (after ``enable``) and leaves the others alone; it is an error when no
      config enables it. Overrides of ``plugins`` or ``plugins.<name>`` themselves are
      errors: they would enable, disable or replace a method.
    * Every other override applies to every config.

    Args:
        paths: config files, raw config data (dicts, as read from TOML; copied), or None
            for the built-in defaults (one config each).
        overrides: ``dotted.key=value`` strings (TOML values), applied in order.
        seeds: ``--seeds`` text (see :func:`parse_seeds`), or None to keep each config's.
        enable: plugin names to enable in every config.

    Returns:
        One validated :class:`Config` per path, in order.

    Raises:
        ConfigError: as :func:`read_toml`, :func:`apply_override` and :func:`build_config`;
            for a plugin override no config enables (naming the configs and how to
            enable the plugin) or an override of a whole plugin table.
    """
    raws = [copy.deepcopy(p) if isinstance(p, dict) else read_toml(p) if p is not None else {} for p in paths]
    for data in raws:
        tables = data.setdefault("plugins", {})
        if not isinstance(tables, dict):
            continue  # build_config reports it
        for name in enable:
            if name in tables:
                continue
            tables[name] = {}
            method = data.get("experiment", {}).get("method") if isinstance(data.get("experiment"), dict) else None
            if isinstance(method, str) and method:
                data["experiment"]["method"] = f"{method}+{name}"
    for assignment in overrides:
        key = assignment.partition("=")[0].strip()
        parts = key.split(".")
        targets = raws
        if parts[0] == "plugins":
            if len(parts) < 3:
                raise ConfigError(f"--set {key}: an override sets a plugin's option (plugins.NAME.KEY=VALUE) and "
                                  f"never enables, disables or replaces a plugin; enable one with a "
                                  f"[plugins.NAME] table in the config or with --enable NAME")
            name = parts[1]
            targets = [d for d in raws if isinstance(d.get("plugins"), dict) and name in d["plugins"]]
            if not targets:
                configs = ", ".join(_label(p) for p in paths)
                raise ConfigError(f"--set {key}: no config enables plugin {name!r} ({configs}), and an override "
                                  f"never switches a plugin on: add a [plugins.{name}] table to the config "
                                  f"or pass --enable {name}")
        for data in targets:
            apply_override(data, assignment)
    if seeds is not None:
        parsed = parse_seeds(seeds)
        for data in raws:
            data.setdefault("experiment", {})["seeds"] = parsed
    configs = []
    for path, data in zip(paths, raws):
        try:
            configs.append(build_config(data))
        except ConfigError as err:
            if len(raws) == 1 or path is None or isinstance(path, dict):
                raise
            raise ConfigError(f"{err} (in {path})") from None
    return configs


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), seeds: str | None = None,
                enable: Sequence[str] = ()) -> Config:
    """Read one config (None: the defaults) as :func:`load_configs` reads each: ``enable``
    and an override enable plugins the same way (an override never does).

    Raises:
        ConfigError: as :func:`load_configs`.
    """
    return load_configs([path], overrides, seeds, enable)[0]
