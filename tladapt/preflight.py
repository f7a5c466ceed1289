"""Every check that can be made before training, for every task of a config, before any run directory.

:func:`check_tasks` loads each task's domains (on the CPU), splits them as a run
would, checks the batch size against every domain a run samples, builds the backbone
and head on PyTorch's ``meta`` device (no memory, no weights) and passes a batch's
shapes through them, checks ``model.init_from`` against that model, builds the
optimizer, and calls every active plugin's ``tladapt_check`` hook with a
:class:`TaskPreview` for its own cross-field checks. A seed changes which samples a
split holds, never how many, so one seed stands for all. When a plugin transforms the
domains (``tladapt_transform_domains``, e.g. JDA's embedding), the model's input shape is
known only once the transform ran in the run: the model checks are left to the run (the
plugin checks what decides the shape in its own ``tladapt_check``).

What cannot be known before training stays with the run: metric tags that plugins add
at evaluation (``trainer.keep_best`` on a plugin's tag), learning-rate multipliers of paths
inside modules that plugins register in ``tladapt_setup`` (their top-level names are checked
against the plugins' ``module_names``), a loss that diverges.
"""

from __future__ import annotations

from dataclasses import dataclass
import pluggy
import torch
from torch import nn

from tladapt import checkpoint
from tladapt.config import Config, ConfigError
from tladapt.data.augment import attach
from tladapt.data.domain import Domain
from tladapt.data.pipeline import PairedPipeline
from tladapt.data.tasks import load_task, split_task
from tladapt.init_from import plan_init
from tladapt.models import build_backbone
from tladapt.runs import find_checkpoint

__all__ = ["TaskPreview", "check_tasks", "check_task"]


@dataclass(frozen=True)
class TaskPreview:
    """What a plugin's ``tladapt_check`` sees of one task before any run starts.

    The domains are the splits a run of this task trains on, on the CPU, with the
    trainer's attribute names; the model is built on the ``meta`` device (shapes only:
    parameters hold no values and cannot be read).

    Attributes:
        task: ``"source->target"``.
        source: the source training split (unlabelled with ``data.source_labels = false``;
            None in a source-free run).
        source_val: the held-out source split, or None.
        target: the unlabelled target (what plugins train on).
        target_labelled: the k-shot labelled target subset, or None.
        backbone: the backbone on the meta device; ``backbone.out_features`` is ``feature_dim``.
        head: the target's classifier head (``nn.Linear``) on the meta device.
        modules: ``nn.ModuleDict(backbone=..., head=...)`` (plus ``source_head`` when the
            source has a head of its own), as ``trainer.modules`` before any plugin registers
            its own.
        feature_dim: the backbone's output size.
            (``backbone``, ``head``, ``modules`` and ``feature_dim`` are None when a plugin
            implements ``tladapt_transform_domains``: the model is built on its output.)
        num_classes: the target head's classes.
        shared_head: True when the source and target are classified by one head
            (``trainer.source_head is trainer.head``); False for a different target task
            or ``model.shared_head = false``.
    """

    task: str
    source: Domain | None
    source_val: Domain | None
    target: Domain
    target_labelled: Domain | None
    backbone: nn.Module | None
    head: nn.Module | None
    modules: nn.ModuleDict | None
    feature_dim: int | None
    num_classes: int
    shared_head: bool


def check_tasks(config: Config, pm: pluggy.PluginManager) -> None:
    """:func:`check_task` for every task of ``config``.

    Raises:
        ConfigError: the first problem, naming the task, the key and what was expected.
    """
    for task in config.data.tasks:
        check_task(config, pm, task)


def check_task(config: Config, pm: pluggy.PluginManager, task: str) -> TaskPreview:
    """Check one task of ``config`` as a run of it would use it (module docstring).

    Args:
        config: the resolved config (``prepare``).
        pm: a plugin manager with the config's active plugins (their ``tladapt_check``).
        task: one of ``config.data.tasks``.

    Returns:
        The :class:`TaskPreview` the plugins were given.

    Raises:
        ConfigError: naming ``task`` and the key: domains that do not load or do not form a
            task, a batch size larger than a domain, a backbone that cannot be built or does
            not map a batch of inputs to ``(b, out_features)``, an optimizer that rejects its
            options, ``model.init_from`` or ``trainer.lr_mult`` not fitting the model, or a
            plugin's own check.
    """
    data, cfg = config.data, config.trainer
    try:
        source, target = load_task(data, task)
        source = None if source is None else attach(source, config.augment)
        target = attach(target, config.augment)
        splits = split_task(data, source, target, config.experiment.seeds[0])
        target_rest = splits.target_rest.unlabelled()
        PairedPipeline(splits.source, target_rest, cfg.batch_size, 0, cfg.replacement, labelled=splits.target_labelled)
    except ConfigError as err:
        raise ConfigError(f"task {task!r}: {err}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"task {task!r} of data.dataset = {data.dataset!r}: {err}") from None
    _check_optimizer(config)
    backbone = head = modules = None
    classes = splits.head_classes(config.model.shared_head)
    if not pm.hook.tladapt_transform_domains.get_hookimpls():  # else the inputs' shape is known only in the run
        backbone, head = _meta_model(config, target_rest.input_shape, len(target_rest.classes))
        modules = nn.ModuleDict({"backbone": backbone, "head": head})
        if "source_head" in classes:  # as the trainer builds it
            with torch.device("meta"):
                modules["source_head"] = nn.Linear(backbone.out_features, len(classes["source_head"]))
        _check_lr_mult(config, modules, pm)
        if config.model.init_from:
            _check_init_from(config.model.init_from, task, config.experiment.seeds, modules, classes)
    preview = TaskPreview(task, splits.source, splits.source_val, target_rest, splits.target_labelled,
                          backbone, head, modules, None if backbone is None else backbone.out_features,
                          len(target_rest.classes), "source_head" not in classes)
    try:
        pm.hook.tladapt_check(config=config, task=preview)
    except ConfigError as err:
        raise ConfigError(f"task {task!r}: {err}") from None
    return preview


def _meta_model(config: Config, input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Backbone and head on the meta device, with a batch's shapes passed through them."""
    m = config.model
    try:
        with torch.device("meta"):
            backbone = build_backbone(m.backbone, input_shape, m.hidden, m.dropout, "", m.bottleneck)  # weights: checked by prepare
            head = nn.Linear(backbone.out_features, num_classes)
    except ConfigError:
        raise
    except Exception as err:  # a user's module:function backbone may raise anything
        raise ConfigError(f"model.backbone = {m.backbone!r} cannot be built for inputs of shape {input_shape}: "
                          f"{type(err).__name__}: {err}") from None
    batch = torch.empty((2, *input_shape), device="meta")
    try:
        features = backbone.eval()(batch)
    except Exception as err:
        raise ConfigError(f"model.backbone = {m.backbone!r} does not take inputs of shape {input_shape}: "
                          f"{type(err).__name__}: {err}") from None
    if tuple(features.shape) != (2, backbone.out_features):
        raise ConfigError(f"model.backbone = {m.backbone!r} maps a batch of 2 inputs of shape {input_shape} to "
                          f"{tuple(features.shape)}, expected (2, out_features) = (2, {backbone.out_features})")
    return backbone, head


def _check_lr_mult(config: Config, modules: nn.ModuleDict, pm: pluggy.PluginManager) -> None:
    """``trainer.lr_mult`` paths into the trainer's modules exist, and every other key names a
    module a plugin registers. Plugins register modules in ``tladapt_setup`` and declare their
    names in ``module_names``; a path inside a plugin's module, and any key when some plugin
    with ``tladapt_setup`` declares nothing, are checked when the modules are registered."""
    names = [n for n, _ in modules.named_parameters()]
    declared: set[str] = set()
    undeclared = []
    for impl in pm.hook.tladapt_setup.get_hookimpls():
        got = getattr(impl.plugin, "module_names", None)
        if got is None:
            undeclared.append(impl.plugin_name)
        else:
            declared |= set(got)
    for key in config.trainer.lr_mult:
        top = key.split(".")[0]
        if top in modules and not any(n == key or n.startswith(key + ".") for n in names):
            raise ConfigError(f"trainer.lr_mult names unknown module {key!r}: the model's parameters are under "
                              f"{', '.join(sorted({n.rsplit('.', 1)[0] for n in names}))}")
        if top not in modules and top not in declared and not undeclared:
            raise ConfigError(f"trainer.lr_mult names unknown module {key!r}: the run's modules are "
                              f"{', '.join([*modules, *sorted(declared)])} (or dotted paths inside them)")


def _check_optimizer(config: Config) -> None:
    """The run's optimizer accepts its options (built over one parameter on the meta device)."""
    cfg = config.trainer
    params = [nn.Parameter(torch.empty(1, device="meta"))]
    try:
        if cfg.optimizer == "sgd":
            torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    except ValueError as err:
        raise ConfigError(f"trainer.optimizer = {cfg.optimizer!r} rejects its options: {err}") from None


def _check_init_from(path: str, task: str, seeds: list[int], modules: nn.ModuleDict,
                     classes: dict[str, tuple[str, ...] | None]) -> None:
    """Each seed's ``model.init_from`` checkpoint loads safely and fits the model as the trainer
    will load it (:func:`tladapt.init_from.plan_init`: the whole backbone, heads by class names;
    that every task and seed has its checkpoint is checked by ``prepare``)."""
    shapes = {k: tuple(v.shape) for k, v in modules.state_dict().items()}
    for file in dict.fromkeys(find_checkpoint(path, task, seed) for seed in seeds):  # each file once
        plan_init(path, file, checkpoint.load(file, f"model.init_from={path!r}"), shapes, classes)
