"""The trainer: batches -> one forward pass -> hook losses -> backward -> step -> log.

The trainer is the only caller of hooks (:mod:`tladapt.hookspecs`). It owns the
backbone, the classifier head and every module a plugin registers, builds one
optimizer over them, computes the source classification loss, and evaluates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pluggy
import torch
import torch.nn.functional as F
from torch import nn

from tladapt import checkpoint, distributed, provenance, signals
from tladapt.config import Config, ConfigError
from tladapt.contract import Contract
from tladapt.data.augment import attach
from tladapt.data.domain import Domain
from tladapt.data.pipeline import Batch, PairedPipeline, resolve_placement
from tladapt.data.tasks import split_source, split_target, split_task  # noqa: F401  (split_*: re-exported)
from tladapt.errors import PluginError, RunInterrupted, TrainingDiverged
from tladapt.init_from import plan_init
from tladapt.manager import call_each
from tladapt.models import build_backbone
from tladapt.plugin import Term
from tladapt.plots import scalars_layout
from tladapt.progress import Progress
from tladapt.runs import RunLogger, find_checkpoint, write_json, write_status
from tladapt.validators import RunValidators, available_validators, choose_validators
from tladapt.steps import compile_loss, make_optimizer, make_step
from tladapt.threads import choose_threads, run_threads, step_flops


@dataclass(frozen=True)
class Outputs:
    """The trainer's forward pass for one step, shared by all plugins.

    Attributes:
        features_s: backbone features of the source batch, ``(b, feature_dim)`` float32;
            None in a source-free run (``data.source_free``).
        features_t: backbone features of the target batch, ``(b, feature_dim)``.
        logits_s: classifier logits of the source batch, ``(b, num_classes)``; None in a
            source-free run.
        logits_t: classifier logits of the target batch, ``(b, num_classes)``.
        features_l, logits_l: the same for the labelled target batch
            (``data.target_labels_per_class > 0``), else None.
        features_extra: backbone features ``(b_e, feature_dim)`` of each extra labelled
            domain's batch (:meth:`Trainer.add_domain`), by name; the plugin that added a
            domain applies its own head.
    """

    features_s: torch.Tensor | None
    features_t: torch.Tensor
    logits_s: torch.Tensor | None
    logits_t: torch.Tensor
    features_l: torch.Tensor | None = None
    logits_l: torch.Tensor | None = None
    features_extra: dict[str, torch.Tensor] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """Map the config's ``trainer.device`` to a device.

    Under ``torchrun`` a CUDA device is ``cuda:LOCAL_RANK`` (:mod:`tladapt.distributed`).

    Raises:
        ConfigError: for ``"cuda"`` when CUDA is not available.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device = 'cuda' but CUDA is not available here: use 'auto' or 'cpu'")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    ctx = distributed.context()
    return torch.device("cuda", ctx.local_rank) if device.type == "cuda" and ctx.active else device


def nothing_to_train(config: Config, found: str) -> ConfigError:
    """The error of a run with no supervised loss (``data.source_free = true`` or ``data.source_labels
    = false``, and ``data.target_labels_per_class = 0``) where no plugin ``found`` a loss term:
    raised before any run when no active plugin implements ``tladapt_losses``
    (:func:`tladapt.experiment.prepare`), and at a step where none returned a term."""
    why = "data.source_free = true" if config.data.source_free else "data.source_labels = false"
    return ConfigError(f"nothing to train: {why} and data.target_labels_per_class = 0 leave no supervised loss, "
                       f"and no active plugin {found} (enable a plugin that trains without labels, e.g. "
                       "[plugins.shot] source-free, [plugins.autoencoder] or [plugins.simclr] for an unlabelled "
                       "source)")


class Trainer:
    """Trains one task with one seed and the active plugins.

    Args:
        config: the validated experiment config.
        source: labelled source domain (any device; moved to the training device).
        target: target domain; its labels are used only for oracle evaluation.
        pm: the run's plugin manager (:func:`tladapt.manager.make_plugin_manager`).
        run_dir: a fresh run directory (:func:`tladapt.runs.new_run_dir`), or the
            directory of the run that ``resume`` continues.
        seed: seeds torch, numpy, ``random``, the source split and the samplers.
        resume: a checkpoint of this run (:func:`tladapt.checkpoint.load`) to continue
            from; :meth:`fit` restores it after ``tladapt_fit_start``.

    Raises:
        ConfigError / ValueError: before any training, for an unavailable device,
            an invalid task (:func:`tladapt.data.check_task`), a batch size larger
            than a domain without replacement, or ``trainer.lr_mult`` naming an
            unknown module.

    Source-free (target-only) runs (``data.source_free = true``, e.g. SHOT): pass
    ``source=None`` and the source's name as ``source_name``; no source sample exists in
    the run (``source``, ``source_val``, the batch's source tensors and the outputs'
    source features and logits are None), there is no ``source`` loss term, and the model
    starts from ``model.init_from``.

    Plugins use: ``device``, ``config``, ``seed``, ``source`` (training split; None in a
    source-free run), ``source_name``, ``source_val``, ``target`` (unlabelled),
    ``target_labelled`` (the k-shot
    labelled target subset or None), ``backbone``, ``head`` (the target's head, also
    the source's when their classes agree), ``source_head`` (``head``, or the source's
    own head for a target task with other classes), ``classes`` (head name -> class
    names, None for a head nothing trains), ``modules``, ``feature_dim``,
    ``num_classes`` (the target head's classes), ``step``, ``progress`` (and
    ``progress_tensor``, the same fraction as a 0-dim device tensor for schedules computed on
    the device, which capture-safe plugins use),
    ``add_module``, ``log`` (per-step scalars), ``histogram`` (whole-dataset tensors) and
    ``resuming`` (True while a resumed run is built and started: a plugin may skip
    expensive ``tladapt_fit_start`` work whose result its ``tladapt_load_state_dict``
    restores) and ``dist`` (:class:`tladapt.distributed.Context`: rank and number of
    processes under ``torchrun``; ``dist.main`` is the rank that writes files).
    """

    def __init__(self, config: Config, source: Domain | None, target: Domain, pm: pluggy.PluginManager,
                 run_dir: str | Path, seed: int, source_name: str = "", resume: dict | None = None):
        started = time.perf_counter()
        self.config, self.pm, self.seed, self.run_dir = config, pm, seed, Path(run_dir)
        self._resume, self.resuming = resume, resume is not None
        cfg = config.trainer
        self.dist = distributed.setup(cfg.device)  # one process: Context(); under torchrun: this rank
        self.device = resolve_device(cfg.device)
        if (source is None) != config.data.source_free:
            raise ValueError("a source domain must be given unless data.source_free = true, and none when it is")
        self.source_name = source_name if source is None else source.name
        source = None if source is None else attach(source, config.augment)
        target = attach(target, config.augment)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

        host = resolve_placement(config.data.placement, tuple(d for d in (source, target) if d), self.device)
        splits = split_task(config.data, source, target, seed, self.device, host)
        self.source, self.source_val, self.target_labelled = splits.source, splits.source_val, splits.target_labelled
        self._target_labels = splits.target_rest.y
        self.target = splits.target_rest.unlabelled()
        self.split_counts = splits.counts(config.data.target_labels_per_class)  # results.json["splits"]
        self.num_classes = len(self.target.classes)
        pm.hook.tladapt_transform_domains(trainer=self)  # may change the input space (JDA, TCA, BDA)
        self._check_transformed(splits)
        try:  # the pipeline checks the batch size against the domains it will sample
            self.pipeline = self._make_pipeline()
        except ValueError as err:
            raise ConfigError(str(err)) from None

        m = config.model
        self.backbone = build_backbone(m.backbone, self.target.input_shape, m.hidden, m.dropout, m.weights, m.bottleneck)
        if cfg.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.feature_dim = self.backbone.out_features
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.modules = nn.ModuleDict({"backbone": self.backbone, "head": self.head})
        # Which classes each head predicts; None: nothing trains it (an unlabelled source, no target labels).
        self.classes: dict[str, tuple[str, ...] | None] = splits.head_classes(m.shared_head)
        self.source_head = self.head
        if "source_head" in self.classes:  # a head per label set (a different target task) or per task
            self.source_head = self.modules["source_head"] = nn.Linear(self.feature_dim, len(self.source.classes))
        self.modules.to(self.device)
        self.init_report: dict[str, str | list[str]] = {}
        if m.init_from and not self.resuming:  # a resumed run restores its own weights
            self._init_from(m.init_from)
        self._lr_mult = {name: 1.0 for name in self.modules}
        if m.weights:  # a pretrained feature extractor trains slower than the new layers (TLlib, DANN: 0.1)
            self._lr_mult["backbone.net" if m.bottleneck else "backbone"] = m.pretrained_lr_mult
        self.step, self.progress = 0, 0.0
        self.progress_tensor = torch.zeros((), device=self.device)  # = progress, for device-side schedules
        self._loss_terms = self.loss_terms
        labelled_val = self.source_val is not None and self.source_val.y is not None
        self.validators = RunValidators(  # none when nothing trains the target's head: nothing to select
            choose_validators(available_validators(pm), config.validation.validators, labelled_val)
            if self.classes["head"] is not None else [],
            config.validation.max_samples, seed)
        self.best = None if not cfg.keep_best else checkpoint.BestCheckpoint(
            cfg.keep_best, checkpoint.best_direction(cfg.keep_best, cfg.keep_best_mode, self.validators.directions))
        every = cfg.checkpoint_every
        self.checkpoint_every = max(1, math.ceil(cfg.steps / 10)) if every == "auto" else every
        self.batched: dict | None = None  # set when tladapt.batched trains this run with others
        self.run_dir.mkdir(parents=True, exist_ok=True)  # new_run_dir made it; a test or script may not have
        self.logger = RunLogger(self.run_dir, purge_step=None if resume is None else resume["step"] + 1,
                                write=self.dist.main, reduce=distributed.mean_over_ranks if self.dist.active else None)
        self.logger.writer.add_custom_scalars(scalars_layout())  # TensorBoard opens the run on what matters

        self.extra_domains: dict[str, Domain] = {}
        self.contract = Contract(pm)
        pm.hook.tladapt_setup(trainer=self)
        if self.extra_domains:
            self.pipeline = self._make_pipeline()
        self.optimizer = make_optimizer(config, self._param_groups(), self.device)
        if cfg.schedule == "dann":  # Ganin et al. JMLR 2016, §5.2.2: lr_p = lr0 / (1 + 10 p)^0.75
            decay = lambda step: (1.0 + 10.0 * step / cfg.steps) ** -0.75  # noqa: E731
        else:
            decay = lambda step: 1.0  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, decay)
        self.threads = choose_threads(cfg.threads, self.device, self._step_flops, self.dist.local_world_size)
        #: Wall seconds per phase of the run (results.json's provenance; summed over a resumed run's processes).
        self.wall = dict.fromkeys(("setup", "fit_start", "train", "evaluate", "checkpoint"), 0.0)
        self.wall["setup"] = time.perf_counter() - started

    @contextlib.contextmanager
    def _timed(self, phase: str):
        """Add the enclosed block's wall time to ``self.wall[phase]``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.wall[phase] += time.perf_counter() - started

    def _check_transformed(self, splits) -> None:
        """After ``tladapt_transform_domains``: every domain kept its length and they share one
        input shape.

        Raises:
            PluginError: naming the domain that changed length or shape.
        """
        before = {"source": splits.source, "source_val": splits.source_val, "target": splits.target_rest,
                  "target_labelled": splits.target_labelled}
        shape = self.target.input_shape
        for role, old in before.items():
            new = getattr(self, role)
            if (old is None) != (new is None) or (new is not None and len(new) != len(old)):
                raise PluginError(f"tladapt_transform_domains changed trainer.{role}: a transform must keep every "
                                  f"domain's samples (same length, same order)")
            if new is not None and new.input_shape != shape:
                raise PluginError(f"tladapt_transform_domains left trainer.{role} with input shape {new.input_shape}, "
                                  f"the target's is {shape}: every domain must share one input shape")

    def _step_flops(self) -> float:
        """The thread rule's estimate of one step's work (:func:`tladapt.threads.step_flops`)."""
        domains = 1 if self.source is None else 2  # a source-free run draws target batches only
        samples = domains * self.config.trainer.batch_size + self.pipeline.labelled_batch_size
        others = [m for name, m in self.modules.items() if name not in ("backbone", "head")]
        return step_flops(self.backbone, self.head, others, self.target.input_shape, samples, self.device)

    def _make_pipeline(self) -> PairedPipeline:
        cfg = self.config.trainer
        return PairedPipeline(self.source, self.target, cfg.batch_size, self.seed, cfg.replacement,
                              labelled=self.target_labelled, extra=getattr(self, "extra_domains", None),
                              shard=(self.dist.rank, self.dist.world_size))

    def _param_groups(self) -> list[dict]:
        """One optimizer group per learning-rate multiplier key.

        Keys are module names (``backbone``, ``head``, plugin modules) or dotted
        submodule paths (``backbone.0``); each trainable parameter joins the group of
        the longest key that prefixes its name. Frozen parameters
        (``requires_grad = False``, e.g. set by a fine-tuning plugin in
        ``tladapt_setup``) join no group, so the optimizer never touches them.
        """
        cfg = self.config.trainer
        mults = {**self._lr_mult, **cfg.lr_mult}
        names = [n for n, _ in self.modules.named_parameters()]
        unknown = [k for k in cfg.lr_mult if not any(n == k or n.startswith(k + ".") for n in names)]
        if unknown:
            raise ConfigError(f"trainer.lr_mult names unknown module(s) {', '.join(sorted(unknown))}: "
                              f"modules are {', '.join(self.modules)} (or dotted paths inside them)")
        groups: dict[str, list] = {}
        for name, param in self.modules.named_parameters():
            if param.requires_grad:
                key = max((k for k in mults if name == k or name.startswith(k + ".")), key=len)
                groups.setdefault(key, []).append(param)
        return [{"params": params, "lr": cfg.lr * mults[key], "name": key} for key, params in groups.items()]

    def _init_from(self, path: str) -> None:
        """Start the backbone, and each head whose classes match, from an earlier run (``model.init_from``).

        The rule is :func:`tladapt.init_from.plan_init`'s (the preflight checked the same):
        the whole backbone loads, a head loads from the checkpoint's head that predicts the
        same class names in the same order, every other head is new, the checkpoint's other
        modules stay behind. ``self.init_report`` (``results.json["init_from"]``) says what
        started where and why.

        Raises:
            ConfigError: no checkpoint at ``path``, a backbone that is not exactly this
                model's, or a matched head of another shape.
        """
        file = find_checkpoint(path, f"{self.source_name}->{self.target.name}", self.seed)
        shapes = {k: tuple(v.shape) for k, v in self.modules.state_dict().items()}
        plan = plan_init(path, file, checkpoint.load(file, f"model.init_from={path!r}"), shapes, self.classes)
        for name, state in plan.states.items():
            self.modules[name].load_state_dict(state)  # strict: plan_init checked every entry
        self.init_report = plan.report

    # ------------------------------------------------------------------ plugin API
    def add_module(self, name: str, module: nn.Module, lr_mult: float = 1.0) -> nn.Module:
        """Register a plugin's module: moved to the device, optimised, checkpointed.

        Call from ``tladapt_setup``. The module's learning rate is
        ``trainer.lr * lr_mult`` (``trainer.lr_mult.<name>`` in the config wins).

        Raises:
            ValueError: if ``name`` is already registered.
        """
        if name in self.modules:
            raise ValueError(f"module name {name!r} is already registered; modules are {', '.join(self.modules)}")
        self.modules[name] = module.to(self.device)
        self._lr_mult[name] = lr_mult
        return self.modules[name]

    def add_domain(self, name: str, domain: Domain) -> Domain:
        """Register an extra labelled domain: each step's batch then holds
        ``min(trainer.batch_size, len(domain))`` of its samples (``batch.extra[name]``, drawn
        without replacement by epochs, seeded by the run) and the trainer's one forward pass
        gives their features (``out.features_extra[name]``). For multi-task learning and any
        method that trains on more than two domains; the plugin owns the domain's head and loss.

        Call from ``tladapt_setup``. Returns the domain on the training device.

        Raises:
            ValueError: if ``name`` is registered already, the domain has no labels, or its
                input shape is not the source's.
        """
        if name in self.extra_domains:
            raise ValueError(f"domain {name!r} is already registered; extra domains are {', '.join(self.extra_domains)}")
        if domain.y is None:
            raise ValueError(f"extra domain {name!r} has no labels: add_domain takes labelled domains")
        if domain.input_shape != self.target.input_shape:
            raise ValueError(f"extra domain {name!r} has input shape {domain.input_shape}, expected the task's "
                             f"{self.target.input_shape}")
        self.extra_domains[name] = domain.to(self.device)
        return self.extra_domains[name]

    def log(self, tag: str, value: torch.Tensor | float) -> None:
        """Log a per-step scalar under ``tag``; averaged over ``log_every`` steps, no host sync.

        Raises:
            PluginError: when two plugins (or a plugin and the trainer) write the same tag.
        """
        self.contract.tag(tag)
        self.logger.log(tag, value)

    def histogram(self, tag: str, values: torch.Tensor) -> None:
        """Write a TensorBoard histogram of ``values`` (any shape, flattened) under ``tag`` at the
        current step. It reads ``values`` to the host: call it from whole-dataset hooks
        (``tladapt_fit_start``, ``tladapt_evaluate``, ``tladapt_fit_end``), not every step."""
        self.logger.histogram(tag, values, self.step + 1)

    # ------------------------------------------------------------------ training
    def forward(self, batch: Batch) -> Outputs:
        """One backbone + head pass over the concatenated source, target, labelled target and
        extra-domain batches; a source-free run has no source part. With ``model.batchnorm =
        "separate"`` one backbone pass per part (per-domain BatchNorm statistics)."""
        parts = (batch.x_s, batch.x_t, batch.x_l, *(e.x for e in batch.extra.values()))
        sizes = [0 if x is None else x.shape[0] for x in parts]
        present = [self._layout(x) for x in parts if x is not None]
        if self.config.model.batchnorm == "separate":
            features = torch.cat([self.backbone(x) for x in present])
        else:
            features = self.backbone(torch.cat(present))
        features = features.float()  # under bf16 autocast the network's outputs are bfloat16: plugins get float32
        f_s, f_t, f_l, *f_extra = features.split(sizes)
        if self.source_head is self.head:
            z_s, z_t, z_l = self.head(torch.cat([f_s, f_t, f_l])).split(sizes[:3])
        else:  # a head per label set (or per task): the source batch goes through the source's own head
            z_s, (z_t, z_l) = self.source_head(f_s), self.head(torch.cat([f_t, f_l])).split(sizes[1:3])
        z_s, z_t, z_l = z_s.float(), z_t.float(), z_l.float()
        keep = lambda x, part: None if x is None else part  # noqa: E731
        return Outputs(keep(batch.x_s, f_s), f_t, keep(batch.x_s, z_s), z_t, keep(batch.x_l, f_l), keep(batch.x_l, z_l),
                       features_extra=dict(zip(batch.extra, f_extra)))

    def losses(self, batch: Batch, out: Outputs) -> dict[str, Term]:
        """The source loss and every plugin's terms for one step, by name, as weighted by
        a ``tladapt_balance_losses`` plugin if one is active.

        Raises:
            PluginError: if two plugins return source weights, two plugins return
                the same loss name (both named), a plugin returns something that
                is not a ``{name: Term}`` dict, two plugins balance the terms, or a
                balancing plugin changes a term's value.
            ConfigError: if there is no term at all.
        """
        hook = self.pm.hook
        weights = call_each(hook.tladapt_source_weights, trainer=self, batch=batch)
        if len(weights) > 1:
            raise PluginError(f"plugins {' and '.join(n for n, _ in weights)} both returned source weights")
        terms: dict[str, Term] = {}
        owner: dict[str, str] = {}
        if weights:
            self.contract.source_weights(*weights[0], batch.x_s.shape[0])
        if batch.y_s is not None:  # none when data.source_labels = false
            ce = F.cross_entropy(out.logits_s, batch.y_s, reduction="none",
                                 label_smoothing=self.config.trainer.label_smoothing)
            source_loss = (ce * weights[0][1]).mean() if weights else ce.mean()
            terms["source"], owner["source"] = Term(source_loss, self.config.trainer.source_weight), "the trainer"
        if out.logits_l is not None:  # the few labelled target samples (semi-supervised DA)
            terms["target"] = Term(F.cross_entropy(out.logits_l, batch.y_l), self.config.trainer.target_weight)
            owner["target"] = "the trainer"
        for plugin, result in call_each(hook.tladapt_losses, trainer=self, batch=batch, out=out):
            if not isinstance(result, dict):
                raise PluginError(f"plugin {plugin!r}: tladapt_losses must return a dict of Term, got {type(result).__name__}")
            for name, term in result.items():
                if name in terms:
                    raise PluginError(f"loss term {name!r} is returned by both {owner[name]!r} and {plugin!r}")
                if not isinstance(term, Term):
                    raise PluginError(f"plugin {plugin!r}: loss term {name!r} must be a tladapt.Term, got {type(term).__name__}")
                self.contract.term(plugin, name, term)
                terms[name], owner[name] = term, plugin
        balanced = call_each(hook.tladapt_balance_losses, trainer=self, terms=dict(terms))
        if len(balanced) > 1:
            raise PluginError(f"plugins {' and '.join(n for n, _ in balanced)} both balance the loss terms")
        for plugin, result in balanced:
            if not isinstance(result, dict):
                raise PluginError(f"plugin {plugin!r}: tladapt_balance_losses must return a dict of Term, "
                                  f"got {type(result).__name__}")
            for name, term in result.items():
                if not isinstance(term, Term):
                    raise PluginError(f"plugin {plugin!r}: balanced term {name!r} must be a tladapt.Term")
                if name in terms and term.value is not terms[name].value:
                    raise PluginError(f"plugin {plugin!r} changed the value of loss term {name!r}: "
                                      "tladapt_balance_losses may change weights and add terms only")
                terms[name] = term
        if not terms:
            raise nothing_to_train(self.config, "returned a loss term")
        return terms

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """Image batches in channels-last memory format when ``trainer.channels_last``."""
        if self.config.trainer.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        """The training step's autocast context: bfloat16 with ``trainer.precision = "bf16"``
        (CUDA or CPU), else disabled. Evaluation runs in float32."""
        bf16 = self.config.trainer.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def loss_terms(self, batch: Batch) -> tuple[torch.Tensor, dict[str, Term]]:
        """The forward pass and :meth:`losses` under :meth:`autocast`: ``(total, terms)``, the
        total the weighted sum of the terms (what ``trainer.compile = "torch"`` compiles)."""
        with self.autocast():
            out = self.forward(batch)
            terms = self.losses(batch, out)
        return sum(term.weight * term.value for _, term in sorted(terms.items())), terms

    def train_step(self, batch: Batch) -> torch.Tensor:
        """Forward, losses, backward and optimizer step for one batch; returns the total loss.

        Forward and losses run under :meth:`autocast`; the backward and the optimizer step
        (float32 parameters and gradients) outside it. (The learning-rate schedule steps in
        :meth:`advance`, outside a captured step.)
        """
        total, terms = self._loss_terms(batch)
        self.logger.drain()  # what plugins logged inside a compiled loss_terms
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        for name, term in terms.items():
            self.log(f"loss/{name}", term.value)
        self.log("loss/total", total)
        self.log("train/lr", self.optimizer.param_groups[0]["lr"])
        self.contract.first_step = False  # shapes are static: the contract's shape checks are done
        return total

    def start(self) -> None:
        """Whole-dataset plugin work (``tladapt_fit_start``), then the paired pipeline."""
        with self._timed("fit_start"):
            self.pm.hook.tladapt_fit_start(trainer=self)
        if self.pipeline.source is not self.source or self.pipeline.target is not self.target:
            self.pipeline = self._make_pipeline()  # a plugin replaced a domain (same length)
        if self.config.trainer.plots and self.dist.main and not self.resuming:  # a resumed run has its start plots
            self.plot("start", 0)
        self.modules.train()
        self.history: list[dict] = []
        self.steps_done = 0
        self._loss_terms, self._step = compile_loss(self), make_step(self)  # trainer.compile
        if self.dist.active:  # torchrun: gradients averaged over the ranks, per-rank dropout from here on
            self._loss_terms = distributed.DistributedLoss(self, self._loss_terms)
            distributed.reseed(self.seed)

    def advance(self) -> None:
        """One training step with its hooks, plus logging and evaluation when they are due."""
        step = self.begin_step()
        with self._timed("train"):
            self._step()
            self.scheduler.step()
        self.end_step(step)

    def begin_step(self) -> int:
        """Set ``step``, ``progress`` and ``progress_tensor`` for the next step; return the step."""
        step = self.steps_done
        self.step, self.progress = step, step / self.config.trainer.steps
        self.progress_tensor.fill_(self.progress)
        return step

    def end_step(self, step: int) -> None:
        """After the optimizer step: ``tladapt_step_end``, then the log flush and the
        evaluation when they are due (:meth:`advance`; batched runs call it per run)."""
        cfg = self.config.trainer
        with self._timed("train"):
            self.pm.hook.tladapt_step_end(trainer=self, step=step)
        done = self.steps_done = step + 1
        means: dict[str, float] = {}
        if done % cfg.log_every == 0 or done == cfg.steps:
            with self._timed("train"):
                means = self.logger.flush(done)
            bad = sorted(tag for tag, value in means.items() if tag.startswith("loss/") and not math.isfinite(value))
            if bad:
                self.logger.close()
                raise TrainingDiverged(f"{', '.join(bad)} became non-finite by step {done} (run {self.run_dir}): "
                                       f"lower trainer.lr or the loss weights")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            with self._timed("evaluate"):  # the record: the scalars written at this step, evaluation last
                self.history.append({"step": done, **means, **self.evaluate()})
            if self.best is not None and self.best.update(self.history[-1]) and self.dist.main:
                with self._timed("checkpoint"):
                    checkpoint.save(self.run_dir / "best.pt", checkpoint.capture(self))
        if self.checkpoint_every and done % self.checkpoint_every == 0 and done < cfg.steps:
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (atomically, replacing the last one) after the last finished
        step, with the TensorBoard events so far handed to the OS first, and record its step
        in ``status.json``. Under ``torchrun`` every rank calls it at the same step: rank 0 writes,
        with every rank's generators, streams and log sums (:func:`tladapt.distributed.rank_states`)."""
        with self._timed("checkpoint"):
            ranks = distributed.rank_states(self)
            if not self.dist.main:
                return
            self.logger.flush_to_disk()
            state = checkpoint.capture(self)
            if ranks is not None:
                state["ranks"] = ranks
            checkpoint.save(self.run_dir / "checkpoint.pt", state)
        write_status(self.run_dir, "running", step=self.steps_done, steps=self.config.trainer.steps)

    def fit(self, progress: Progress | None = None) -> dict:
        """Run the whole training (or the rest of it, when resuming) with the run's intra-op
        thread count (``self.threads``, restored afterwards); return the results written to
        ``results.json``.

        Args:
            progress: the command's progress display (:class:`tladapt.progress.Progress`);
                None: one of this run's own (when ``trainer.progress``).

        Raises:
            RunInterrupted: after SIGINT or SIGTERM, at the end of the step under way and
                after a checkpoint (:mod:`tladapt.signals`).
        """
        cfg = self.config.trainer
        own = progress is None
        if own:
            progress = Progress(1, cfg.steps, enabled=cfg.progress and self.dist.main)
        progress.start_run(f"{self.source_name}->{self.target.name}", self.config.experiment.method, self.seed)
        try:
            with run_threads(self.threads.threads), signals.stop_signals():
                self.start()
                if self._resume is not None:
                    state = distributed.rank_checkpoint(self._resume, f"the checkpoint of {self.run_dir}")
                    checkpoint.restore(self, state)
                    self._resume, self.resuming = None, False
                    progress.advance(self.steps_done)
                while self.steps_done < cfg.steps:
                    self.advance()
                    evaluated = self.history and self.history[-1]["step"] == self.steps_done
                    progress.step(self.history[-1] if evaluated else None)
                    if self.steps_done < cfg.steps and self._stop_requested():
                        self.save_checkpoint()
                        self.logger.close()
                        raise RunInterrupted(signals.requested() or signal.SIGTERM, self.run_dir, self.steps_done,
                                             cfg.steps)
                results = self.finish()
        finally:
            if own:
                progress.close()
        progress.end_run(results["final"])
        return results

    def _stop_requested(self) -> bool:
        """Whether SIGINT/SIGTERM asked the run to stop after this step; under ``torchrun`` the
        ranks agree at each log flush (a signal seen by any rank stops all of them there)."""
        requested = signals.requested() is not None
        if not self.dist.active:
            return requested
        return self.steps_done % self.config.trainer.log_every == 0 and distributed.any_rank(requested)

    def finish(self) -> dict:
        """The final checkpoint, ``tladapt_fit_end``, then ``results.json`` and the hparams entry
        (``checkpoint.pt`` is deleted afterwards with ``trainer.checkpoint = false``)."""
        cfg = self.config.trainer
        results = {
            "task": f"{self.source_name}->{self.target.name}",
            "method": self.config.experiment.method,
            "config_id": self.config.fingerprint(),
            "dataset": self.config.data.dataset,
            "seed": self.seed,
            "steps": cfg.steps,
            "final": self.history[-1],
            "history": self.history,
            "validators": self.validators.directions,
            "run_dir": str(self.run_dir),
            "classes": {name: None if c is None else list(c) for name, c in self.classes.items()},
            "splits": self.split_counts,
            "threads": self.threads.to_dict(),
        }
        if self.init_report:
            results["init_from"] = self.init_report
        if self.best is not None:
            results["best"] = self.best.summary()
        if self.batched is not None:
            results["batched"] = self.batched
        if self.dist.active:
            results["distributed"] = {**self.dist.to_dict(), "global_batch_size": cfg.batch_size * self.dist.world_size}
        self.save_checkpoint()
        self.pm.hook.tladapt_fit_end(trainer=self, results=results)
        results["provenance"] = provenance.run_record(self, {**self.wall, "total": sum(self.wall.values())})
        if self.dist.main:
            write_json(self.run_dir / "results.json", results)
        if cfg.plots and self.dist.main:
            self.plot("end", self.steps_done)
        headline = {k: v for k, v in self.history[-1].items() if k == "oracle/target_acc" or k.startswith("metrics/")}
        self.logger.hparams(self._hparams(), headline)
        self.logger.close()
        if not cfg.checkpoint and self.dist.main:
            (self.run_dir / "checkpoint.pt").unlink(missing_ok=True)
        self.modules.eval()  # a trained model is used for inference from here on
        return results

    def plot(self, stage: str, step: int) -> None:
        """``trainer.plots``: the feature t-SNE of this stage (and the oracle confusion matrix at
        the end) into the run directory and TensorBoard (:func:`tladapt.plots.write_plots`)."""
        from tladapt.plots import write_plots

        self.modules.eval()
        title = f"{self.source_name}->{self.target.name} {self.config.experiment.method} seed {self.seed}, step {step}"
        write_plots(self.logger.writer, self.run_dir, self.backbone, self.head, self.source, self.target,
                    self._target_labels, stage, step, self.seed, title)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, domain: Domain, head: nn.Module | None = None) -> torch.Tensor:
        """Predicted classes ``(n,)`` int64 for every sample of ``domain`` (chunked, no grad),
        by ``head`` (default: the target's head, ``self.head``)."""
        head = self.head if head is None else head
        return distributed.map_domain(domain, lambda x: head(self.backbone(x)).argmax(1))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Accuracies in percent: ``metrics/source_val_acc`` (when a labelled split exists,
        by the source's head) and the oracle ``oracle/target_acc`` (when something trains
        the target's head), the run's validator scores ``validator/<name>``, plus whatever
        ``tladapt_evaluate`` adds; logged at the current step and returned as TensorBoard
        tag -> value."""
        self.modules.eval()
        distributed.sync_buffers(self.modules)  # torchrun: every rank evaluates rank 0's model
        metrics = {}
        if self.classes["head"] is not None:
            metrics["target_acc"] = 100.0 * (self.predict(self.target) == self._target_labels).float().mean().item()
        if self.source_val is not None and self.source_val.y is not None:
            hits = self.predict(self.source_val, self.source_head) == self.source_val.y
            metrics["source_val_acc"] = 100.0 * hits.float().mean().item()
        metrics.update(self.validators.scores(self))
        self.contract.evaluate(metrics, trainer=self, target_labels=self._target_labels)
        self.modules.train()
        tagged = {}
        for key, value in metrics.items():
            tag = key if "/" in key else ("oracle/target_acc" if key == "target_acc" else f"metrics/{key}")
            self.contract.metric_tag(key, tag)
            tagged[tag] = float(value)
        self.logger.scalars(tagged, self.step + 1)
        return tagged

    def state_dict(self) -> dict:
        """Everything the run's future depends on (:func:`tladapt.checkpoint.capture`)."""
        return checkpoint.capture(self)

    def _hparams(self) -> dict:
        flat = {"task": f"{self.source_name}->{self.target.name}"}  # this run's task, not the experiment's list
        for section in ("data", "model", "trainer"):
            for key, value in dataclasses.asdict(getattr(self.config, section)).items():
                if (section, key) != ("data", "tasks"):
                    flat[f"{section}.{key}"] = value
        for plugin, table in self.config.plugins.items():
            for key, value in table.items():
                flat[f"plugins.{plugin}.{key}"] = value
        flat["seed"] = self.seed
        flat["method"] = self.config.experiment.method
        return flat
