"""Multi-task learning: one shared backbone, one head per labelled task, weighted task losses.

Hard parameter sharing (Caruana, "Multitask Learning", Machine Learning 28, 1997): every
task trains the shared backbone through its own classifier head, and all tasks are meant to
improve together rather than one transferring to another. The run's tasks are

* ``source``: the source domain (its labelled training split; head ``source_head``; its
  held-out split is ``metrics/source_val_acc``);
* ``target``: the labelled target samples (``data.target_labels_per_class > 0``; head
  ``head``; test set: the target's rest, ``oracle/target_acc``), when there are any;
* one task per domain of ``domains`` (more domains of ``data.dataset``): ``labels_per_class``
  labelled samples per class drawn like the target's (seeded, stratified), registered with
  ``trainer.add_domain`` so they ride in the trainer's one forward pass, a head
  ``head_<domain>`` each, a loss term ``task_<domain>``; test set: the domain's rest,
  ``oracle/<domain>_acc``.

Per-task test accuracies read held-out labels, so they are tagged ``oracle/`` like the
target's; nothing selects on them during training. ``oracle/mean_task_acc`` averages the
target and extra tasks' ones.

Weighting (``weighting``):

* ``fixed``: the trainer's ``trainer.source_weight`` / ``trainer.target_weight`` and this
  plugin's ``weights`` (per extra domain, default 1);
* ``uncertainty``: Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
  Losses for Scene Geometry and Semantics", CVPR 2018, eq. (10) for classification: with a
  learnt log-variance ``s_i = log σ_i²`` per task, the total is
  ``Σ_i exp(-s_i) L_i + s_i / 2`` (weights ``exp(-s_i)`` through ``tladapt_balance_losses``,
  the regulariser as term ``uncertainty_reg``). The ``s_i`` live in the module
  ``task_log_vars`` (optimised with the rest, weight decay included); ``multitask/weight_<task>``
  logs each weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import tladapt
from tladapt.data.datasets import load_domain
from tladapt.data.tasks import MIN_CLASSES, select_classes, split_target
from tladapt.errors import ConfigError


class LogVariances(nn.Module):
    """One learnt log-variance ``s_i`` per task, ``(n_tasks,)`` float32, initialised to ``init``."""

    def __init__(self, n_tasks: int, init: float):
        super().__init__()
        self.s = nn.Parameter(torch.full((n_tasks,), float(init)))


class MultiTask:
    """The ``multitask`` plugin: extra labelled tasks with their own heads, fixed or uncertainty weights.

    Loss terms: ``task_<domain>`` per extra domain, ``uncertainty_reg`` with uncertainty
    weighting. Metrics: ``oracle/<domain>_acc`` per extra domain, ``oracle/mean_task_acc``.
    """

    @dataclass
    class Options:
        """``[plugins.multitask]`` options."""

        domains: list[str] = tladapt.option([], "more labelled domains of data.dataset, one task (and head) each")
        labels_per_class: int = tladapt.option(
            0, "labelled samples per class of each extra domain (0: data.target_labels_per_class)", ge=0)
        classes: list[str | int] = tladapt.option([], "class subset of the extra domains (empty: all)")
        weighting: Literal["fixed", "uncertainty"] = tladapt.option(
            "fixed", "fixed weights, or Kendall et al.'s learnt uncertainty weights")
        weights: dict[str, float] = tladapt.option({}, "fixed weight per extra domain (default 1)", ge=0)
        init_log_var: float = tladapt.option(0.0, "uncertainty weighting: initial s = log σ² of every task")

    def __init__(self, options: Options):
        unknown = sorted(set(options.weights) - set(options.domains))
        if unknown:
            raise ConfigError(f"plugins.multitask.weights names {', '.join(unknown)}, which are not in "
                              f"plugins.multitask.domains ({', '.join(options.domains) or 'none'})")
        if len(set(options.domains)) != len(options.domains):
            raise ConfigError(f"plugins.multitask.domains lists a domain twice: {options.domains}")
        self.options = options
        #: what tladapt_setup registers (trainer.lr_mult is checked before any run)
        self.module_names = tuple(f"head_{name}" for name in options.domains) + (
            ("task_log_vars",) if options.weighting == "uncertainty" else ())

    @tladapt.hookimpl
    def tladapt_check(self, config, task):
        """Before any run: at least two labelled tasks, one head per task, extra domains of the
        dataset other than the run's source and target, with the task's input shape, the
        selected classes (at least two) and labelled samples.

        Raises:
            ConfigError: naming the option and what was expected.
        """
        o = self.options
        source_labelled = task.source is not None and task.source.y is not None
        tasks = ["source"] * source_labelled + ["target"] * (task.target_labelled is not None)
        tasks += [f"task_{name}" for name in o.domains]
        if len(tasks) < 2:
            why = [] if source_labelled else ["the source is unlabelled (data.source_labels = false)" if task.source
                                              is not None else "a source-free run has no source task"]
            why += [] if task.target_labelled is not None else ["no target sample is labelled "
                                                                "(data.target_labels_per_class = 0)"]
            why += [] if o.domains else ["plugins.multitask.domains is empty"]
            raise ConfigError(f"plugins.multitask needs at least two labelled tasks, but this run has "
                              f"{len(tasks)} ({', '.join(tasks) or 'none'}): {'; '.join(why)}. Label the target "
                              f"(data.target_labels_per_class > 0) or add domains (plugins.multitask.domains), "
                              f"or remove [plugins.multitask] for a single-task run")
        if source_labelled and task.target_labelled is not None and task.shared_head:
            raise ConfigError("plugins.multitask trains one head per task, but source and target share one "
                              "(their classes agree): set model.shared_head = false")
        k = o.labels_per_class or config.data.target_labels_per_class
        if o.domains and k == 0:
            raise ConfigError("plugins.multitask.domains need labelled samples: set plugins.multitask."
                              "labels_per_class or data.target_labels_per_class > 0")
        busy = {d.name for d in (task.source, task.target) if d is not None}
        for name in o.domains:
            if name in busy:
                raise ConfigError(f"plugins.multitask.domains: {name!r} is already the run's source or target")
            domain = self._domain(config.data.dataset, name)
            if domain.input_shape != task.target.input_shape:
                raise ConfigError(f"plugins.multitask.domains: {name!r} has input shape {domain.input_shape}, "
                                  f"expected the task's {task.target.input_shape}")

    def _domain(self, dataset: str, name: str):
        """Extra domain ``name`` of ``dataset`` with ``classes`` applied (labelled, CPU).

        Raises:
            ConfigError: for a domain the dataset does not have, a class selection that does
                not fit it (:func:`tladapt.data.tasks.select_classes`) or keeps fewer than
                :data:`tladapt.data.tasks.MIN_CLASSES` classes.
        """
        try:
            domain = load_domain(dataset, name)
        except (ValueError, KeyError) as err:
            raise ConfigError(f"plugins.multitask.domains: {err}") from None
        domain = select_classes(domain, self.options.classes, "plugins.multitask.classes")
        if len(domain.classes) < MIN_CLASSES:
            raise ConfigError(f"plugins.multitask.classes keeps {len(domain.classes)} class of domain {name!r} "
                              f"({', '.join(domain.classes)}): expected at least {MIN_CLASSES}, since a head of "
                              f"one class is right on every sample")
        return domain

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        o, data = self.options, trainer.config.data
        k = o.labels_per_class or data.target_labels_per_class
        self.tests: dict[str, tuple] = {}
        self.heads: dict[str, nn.Module] = {}
        for name in o.domains:
            labelled, rest = split_target(self._domain(data.dataset, name), k, trainer.seed)
            trainer.add_domain(name, labelled)
            rest = rest.to(trainer.device)
            self.tests[name] = (rest.unlabelled(), rest.y)
            self.heads[name] = trainer.add_module(f"head_{name}", nn.Linear(trainer.feature_dim, len(rest.classes)))
        self.tasks = ["source"] * (trainer.source.y is not None) + ["target"] * (trainer.target_labelled is not None)
        self.tasks += [f"task_{name}" for name in o.domains]
        if o.weighting == "uncertainty":
            self.log_vars = trainer.add_module("task_log_vars", LogVariances(len(self.tasks), o.init_log_var))

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, batch, out):
        terms = {}
        for name, head in self.heads.items():
            loss = F.cross_entropy(head(out.features_extra[name]), batch.extra[name].y)
            terms[f"task_{name}"] = tladapt.Term(loss, self.options.weights.get(name, 1.0))
        if self.options.weighting == "uncertainty":
            terms["uncertainty_reg"] = tladapt.Term(0.5 * self.log_vars.s.sum(), 1.0)
        return terms

    @tladapt.hookimpl
    def tladapt_balance_losses(self, trainer, terms):
        if self.options.weighting != "uncertainty":
            return None
        weights = torch.exp(-self.log_vars.s)
        out = {}
        for i, task in enumerate(self.tasks):
            out[task] = tladapt.Term(terms[task].value, weights[i])
            trainer.log(f"multitask/weight_{task}", weights[i])
        return out

    @tladapt.hookimpl
    def tladapt_evaluate(self, trainer, metrics):
        accs = [metrics["target_acc"]] if "target_acc" in metrics and trainer.target_labelled is not None else []
        for name, (rest, y) in self.tests.items():
            head = self.heads[name]
            acc = 100.0 * (rest.map(lambda x: head(trainer.backbone(x)).argmax(1)) == y).float().mean().item()
            metrics[f"oracle/{name}_acc"] = acc
            accs.append(acc)
        if accs:
            metrics["oracle/mean_task_acc"] = sum(accs) / len(accs)

    @tladapt.hookimpl
    def tladapt_fit_end(self, trainer, results):
        results["multitask"] = {"tasks": self.tasks, "weighting": self.options.weighting,
                                "domains": {n: len(trainer.extra_domains[n]) for n in self.heads}}
        if self.options.weighting == "uncertainty":
            results["multitask"]["log_vars"] = dict(zip(self.tasks, self.log_vars.s.detach().cpu().tolist()))
