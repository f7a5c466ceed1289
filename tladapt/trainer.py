"""The trainer: batches -> one forward pass -> hook losses -> backward -> step -> log.

The trainer is the only caller of hooks (:mod:`tladapt.hookspecs`). It owns the
backbone, the classifier head and every module a plugin registers, builds one
optimizer over them, computes the source classification loss, and evaluates.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pluggy
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

from tladapt.config import Config, ConfigError
from tladapt.data.domain import Domain, check_task
from tladapt.data.pipeline import Batch, PairedPipeline
from tladapt.errors import PluginError, TrainingDiverged
from tladapt.manager import call_each
from tladapt.models import build_backbone
from tladapt.plugin import Term
from tladapt.runs import RunLogger, save_checkpoint, write_json


@dataclass(frozen=True)
class Outputs:
    """The trainer's forward pass for one step, shared by all plugins.

    Attributes:
        features_s: backbone features of the source batch, ``(b, feature_dim)`` float32.
        features_t: backbone features of the target batch, ``(b, feature_dim)``.
        logits_s: classifier logits of the source batch, ``(b, num_classes)``.
        logits_t: classifier logits of the target batch, ``(b, num_classes)``.
        features_l, logits_l: the same for the labelled target batch
            (``data.target_labels_per_class > 0``), else None.
    """

    features_s: torch.Tensor
    features_t: torch.Tensor
    logits_s: torch.Tensor
    logits_t: torch.Tensor
    features_l: torch.Tensor | None = None
    logits_l: torch.Tensor | None = None


def resolve_device(name: str) -> torch.device:
    """Map the config's ``trainer.device`` to a device.

    Raises:
        ConfigError: for ``"cuda"`` when CUDA is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device = 'cuda' but CUDA is not available here: use 'auto' or 'cpu'")
    return torch.device(name)


def split_source(source: Domain, fraction: float, seed: int) -> tuple[Domain, Domain | None]:
    """Hold out a stratified, seeded ``fraction`` of the source for validation.

    Returns:
        ``(train, val)``; ``val`` is None when ``fraction == 0``.

    Raises:
        ConfigError: if some class has too few samples to be split.
    """
    if fraction == 0:
        return source, None
    index = np.arange(len(source))
    try:
        train, val = train_test_split(index, test_size=fraction, stratify=source.y.cpu().numpy(), random_state=seed)
    except ValueError as err:
        raise ConfigError(f"data.source_val_fraction={fraction}: cannot hold out a stratified split of "
                          f"source domain {source.name!r}: {err}") from None
    as_index = lambda a: torch.as_tensor(np.sort(a), device=source.x.device)  # noqa: E731
    return source.subset(as_index(train)), source.subset(as_index(val))


def split_target(target: Domain, per_class: int, seed: int) -> tuple[Domain | None, Domain]:
    """Draw ``per_class`` labelled samples of each class (seeded, stratified) from the target.

    A class keeps at least one sample in the rest, so a class with ``n_c`` samples
    gives ``min(per_class, n_c - 1)`` labelled ones. The rest stays unlabelled for
    training and is the test set of ``oracle/target_acc``.

    Returns:
        ``(labelled subset or None when per_class == 0, rest)``; both keep labels.
    """
    if per_class == 0:
        return None, target
    gen = torch.Generator().manual_seed(seed)
    y = target.y.cpu()
    picked = []
    for c in y.unique().tolist():
        members = (y == c).nonzero().squeeze(1)
        take = min(per_class, len(members) - 1)
        picked.append(members[torch.randperm(len(members), generator=gen)[:take]])
    chosen = torch.zeros(len(y), dtype=torch.bool)
    chosen[torch.cat(picked)] = True
    to = lambda mask: mask.nonzero().squeeze(1).to(target.x.device)  # noqa: E731
    return target.subset(to(chosen)), target.subset(to(~chosen))


class Trainer:
    """Trains one task with one seed and the active plugins.

    Args:
        config: the validated experiment config.
        source: labelled source domain (any device; moved to the training device).
        target: target domain; its labels are used only for oracle evaluation.
        pm: the run's plugin manager (:func:`tladapt.manager.make_plugin_manager`).
        run_dir: a fresh run directory (:func:`tladapt.runs.new_run_dir`).
        seed: seeds torch, numpy, ``random``, the source split and the samplers.

    Raises:
        ConfigError / ValueError: before any training, for an unavailable device,
            an invalid task (:func:`tladapt.data.check_task`), a batch size larger
            than a domain without replacement, or ``trainer.lr_mult`` naming an
            unknown module.

    Plugins use: ``device``, ``config``, ``seed``, ``source`` (training split),
    ``source_val``, ``target`` (unlabelled), ``target_labelled`` (the k-shot
    labelled target subset or None), ``backbone``, ``head``, ``modules``,
    ``feature_dim``, ``num_classes``, ``step``, ``progress``, ``add_module`` and
    ``log``.
    """

    def __init__(self, config: Config, source: Domain, target: Domain, pm: pluggy.PluginManager,
                 run_dir: str | Path, seed: int):
        self.config, self.pm, self.seed, self.run_dir = config, pm, seed, Path(run_dir)
        cfg = config.trainer
        self.device = resolve_device(cfg.device)
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)  # process-wide; small models run faster on one thread
        check_task(source, target)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

        source, self.source_val = split_source(source.to(self.device), config.data.source_val_fraction, seed)
        self.source = source
        self.target_labelled, target = split_target(target.to(self.device), config.data.target_labels_per_class, seed)
        self._target_labels = target.y
        self.target = target.unlabelled()
        self.num_classes = len(source.classes)
        try:  # the pipeline checks the batch size against the domains it will sample
            self.pipeline = self._make_pipeline()
        except ValueError as err:
            raise ConfigError(str(err)) from None

        m = config.model
        self.backbone = build_backbone(m.backbone, source.input_shape, m.hidden, m.dropout)
        self.feature_dim = self.backbone.out_features
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.modules = nn.ModuleDict({"backbone": self.backbone, "head": self.head}).to(self.device)
        if m.init_from:
            self._init_from(m.init_from)
        self._lr_mult = {"backbone": 1.0, "head": 1.0}
        self.step, self.progress = 0, 0.0
        self.logger = RunLogger(self.run_dir)

        pm.hook.tladapt_setup(trainer=self)
        groups = self._param_groups()
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.schedule == "dann":  # Ganin et al. JMLR 2016, §5.2.2: lr_p = lr0 / (1 + 10 p)^0.75
            decay = lambda step: (1.0 + 10.0 * step / cfg.steps) ** -0.75  # noqa: E731
        else:
            decay = lambda step: 1.0  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, decay)

    def _make_pipeline(self) -> PairedPipeline:
        cfg = self.config.trainer
        return PairedPipeline(self.source, self.target, cfg.batch_size, self.seed, cfg.replacement,
                              labelled=self.target_labelled)

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
        """Load backbone and head weights from an earlier run's checkpoint (``model.init_from``)."""
        file = Path(path) / "checkpoint.pt" if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise ConfigError(f"model.init_from={path!r}: no checkpoint.pt there (expected a run directory or file)")
        state = torch.load(file, map_location=self.device, weights_only=False)["modules"]
        state = {k: v for k, v in state.items() if k.split(".", 1)[0] in ("backbone", "head")}
        try:
            self.modules.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise ConfigError(f"model.init_from={path!r} does not fit this model: {err}") from None

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

    def log(self, tag: str, value: torch.Tensor | float) -> None:
        """Log a per-step scalar under ``tag``; averaged over ``log_every`` steps, no host sync."""
        self.logger.log(tag, value)

    # ------------------------------------------------------------------ training
    def forward(self, batch: Batch) -> Outputs:
        """One backbone + head pass over the concatenated source and target batch."""
        b = batch.x_s.shape[0]
        parts = [batch.x_s, batch.x_t] + ([] if batch.x_l is None else [batch.x_l])
        features = self.backbone(torch.cat(parts))
        logits = self.head(features)
        if batch.x_l is None:
            return Outputs(features[:b], features[b:], logits[:b], logits[b:])
        return Outputs(features[:b], features[b:2 * b], logits[:b], logits[b:2 * b], features[2 * b:], logits[2 * b:])

    def losses(self, batch: Batch, out: Outputs) -> dict[str, Term]:
        """The source loss and every plugin's terms for one step, by name.

        Raises:
            PluginError: if two plugins return source weights, two plugins return
                the same loss name (both named), or a plugin returns something that
                is not a ``{name: Term}`` dict.
        """
        hook = self.pm.hook
        weights = call_each(hook.tladapt_source_weights, trainer=self, batch=batch)
        if len(weights) > 1:
            raise PluginError(f"plugins {' and '.join(n for n, _ in weights)} both returned source weights")
        ce = F.cross_entropy(out.logits_s, batch.y_s, reduction="none")
        source_loss = (ce * weights[0][1]).mean() if weights else ce.mean()
        terms, owner = {"source": Term(source_loss, self.config.trainer.source_weight)}, {"source": "the trainer"}
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
                terms[name], owner[name] = term, plugin
        return terms

    def train_step(self, batch: Batch) -> torch.Tensor:
        """Forward, losses, backward and optimizer step for one batch; returns the total loss."""
        out = self.forward(batch)
        terms = self.losses(batch, out)
        total = sum(term.weight * term.value for _, term in sorted(terms.items()))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        for name, term in terms.items():
            self.log(f"loss/{name}", term.value)
        self.log("loss/total", total)
        self.log("train/lr", self.optimizer.param_groups[0]["lr"])
        self.scheduler.step()
        return total

    def start(self) -> None:
        """Whole-dataset plugin work (``tladapt_fit_start``), then the paired pipeline."""
        self.pm.hook.tladapt_fit_start(trainer=self)
        if self.pipeline.source is not self.source or self.pipeline.target is not self.target:
            self.pipeline = self._make_pipeline()  # a plugin replaced a domain (same length)
        self.modules.train()
        self.history: list[dict] = []
        self.steps_done = 0

    def advance(self) -> None:
        """One training step with its hooks, plus logging and evaluation when they are due."""
        cfg = self.config.trainer
        step = self.steps_done
        self.step, self.progress = step, step / cfg.steps
        self.train_step(self.pipeline.next())
        self.pm.hook.tladapt_step_end(trainer=self, step=step)
        done = self.steps_done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            means = self.logger.flush(done)
            bad = sorted(tag for tag, value in means.items() if tag.startswith("loss/") and not math.isfinite(value))
            if bad:
                self.logger.close()
                raise TrainingDiverged(f"{', '.join(bad)} became non-finite by step {done} (run {self.run_dir}): "
                                       f"lower trainer.lr or the loss weights")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            self.history.append({"step": done, **self.evaluate()})

    def fit(self) -> dict:
        """Run the whole training; return the results written to ``results.json``."""
        cfg = self.config.trainer
        self.start()
        bar = tqdm(range(cfg.steps), disable=None if cfg.progress else True, leave=False,
                   desc=f"{self.source.name}->{self.target.name} seed {self.seed}")
        for _ in bar:
            self.advance()
            if self.history and self.history[-1]["step"] == self.steps_done:
                bar.set_postfix(target_acc=f"{self.history[-1]['oracle/target_acc']:.1f}")
        bar.close()
        return self.finish()

    def finish(self) -> dict:
        """``tladapt_fit_end``, then ``results.json``, the checkpoint and the hparams entry."""
        cfg = self.config.trainer
        results = {
            "task": f"{self.source.name}->{self.target.name}",
            "method": self.config.experiment.method,
            "config_id": self.config.fingerprint(),
            "dataset": self.config.data.dataset,
            "seed": self.seed,
            "steps": cfg.steps,
            "final": self.history[-1],
            "history": self.history,
            "run_dir": str(self.run_dir),
        }
        self.pm.hook.tladapt_fit_end(trainer=self, results=results)
        write_json(self.run_dir / "results.json", results)
        if cfg.checkpoint:
            save_checkpoint(self.run_dir / "checkpoint.pt", self.state_dict())
        headline = {k: v for k, v in self.history[-1].items() if k == "oracle/target_acc" or k.startswith("metrics/")}
        self.logger.hparams(self._hparams(), headline)
        self.logger.close()
        return results

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, domain: Domain) -> torch.Tensor:
        """Predicted classes ``(n,)`` int64 for every sample of ``domain`` (chunked, no grad)."""
        return domain.map(lambda x: self.head(self.backbone(x)).argmax(1))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Accuracies in percent: ``metrics/source_val_acc`` (when a split exists) and the
        oracle ``oracle/target_acc``, plus whatever ``tladapt_evaluate`` adds; logged at
        the current step and returned as TensorBoard tag -> value."""
        self.modules.eval()
        metrics = {"target_acc": 100.0 * (self.predict(self.target) == self._target_labels).float().mean().item()}
        if self.source_val is not None:
            metrics["source_val_acc"] = 100.0 * (self.predict(self.source_val) == self.source_val.y).float().mean().item()
        self.pm.hook.tladapt_evaluate(trainer=self, metrics=metrics, target_labels=self._target_labels)
        self.modules.train()
        tagged = {}
        for key, value in metrics.items():
            tag = key if "/" in key else ("oracle/target_acc" if key == "target_acc" else f"metrics/{key}")
            tagged[tag] = float(value)
        self.logger.scalars(tagged, self.step + 1)
        return tagged

    def state_dict(self) -> dict:
        """Everything needed to restore the run: modules, optimizer, schedule, step, RNG, config."""
        return {
            "step": self.step + 1,
            "seed": self.seed,
            "modules": self.modules.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "config": self.config.to_dict(),
        }

    def _hparams(self) -> dict:
        flat = {}
        for section in ("data", "model", "trainer"):
            for key, value in getattr(self.config, section).__dict__.items():
                flat[f"{section}.{key}"] = value
        for plugin, table in self.config.plugins.items():
            for key, value in table.items():
                flat[f"plugins.{plugin}.{key}"] = value
        flat["seed"] = self.seed
        flat["method"] = self.config.experiment.method
        return flat
