"""SHOT: source-free adaptation by hypothesis transfer.

Liang, Hu & Feng, "Do We Really Need to Access the Source Data? Source Hypothesis
Transfer for Unsupervised Domain Adaptation", ICML 2020. A model trained on the source
(``model.init_from``) is adapted with target data alone: its classifier head (the source
hypothesis) is frozen and the backbone learns features that make the head's target
predictions confident and diverse (information maximisation), plus a cross-entropy on
self-supervised pseudo-labels from weighted feature centroids, refreshed once per target
epoch. Run it source-free (``data.source_free = true``) for the paper's setting; in a
normal run the source loss is simply added.

The math: :func:`tladapt.prediction_losses.information_maximization` and
:func:`tladapt.pseudo_labels.centroid_pseudo_labels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import tladapt
from tladapt.errors import ConfigError
from tladapt.prediction_losses import information_maximization
from tladapt.pseudo_labels import centroid_pseudo_labels


class SHOT:
    """The SHOT plugin: terms ``im`` (information maximisation) and ``pseudo_label``.

    Per step on the target batch's logits ``z_t``: ``im = mean H(p) - H(mean p)`` (weight
    ``weight_im``; without ``diversity``, the entropy alone: SHOT's ablation) and
    ``pseudo_label = CE(z_t, ŷ[idx_t])`` (weight ``weight_pseudo_label``; 0 is SHOT-IM),
    where ``ŷ`` holds every target sample's centroid pseudo-label, computed before the
    first step and then every ``refresh_every`` steps from the whole target domain with the
    model in eval mode (features of ``trainer.backbone``, softmax of ``trainer.head``).

    In ``tladapt_setup`` the classifier head is frozen (``freeze_head``), as in the paper:
    the source hypothesis stays, the features move to it.

    Logs ``shot/pseudo_label_change`` (fraction of target samples whose pseudo-label
    changed at the last refresh) and ``shot/clusters`` (classes predicted at least once,
    the candidate centroids); at each evaluation the ORACLE ``oracle/shot_pseudo_label_acc``
    (accuracy in percent of the current pseudo-labels against the hidden target labels).

    State (``tladapt_state_dict``): the pseudo-labels and the step of their last refresh.

    Raises:
        ConfigError: in ``tladapt_setup`` without ``model.init_from``: SHOT adapts a
            source model, a random head is no hypothesis to transfer.
    """

    source_free = True

    module_names = ()  # what tladapt_setup registers (trainer.lr_mult is checked before any run)

    @dataclass
    class Options:
        """``[plugins.shot]`` options."""

        weight_im: float = tladapt.option(1.0, "coefficient of the information-maximisation loss (ent_par, 1)", ge=0)
        diversity: bool = tladapt.option(True, "subtract the entropy of the batch's mean prediction (SHOT's gent)")
        weight_pseudo_label: float = tladapt.option(
            0.3, "coefficient of the pseudo-label cross-entropy (cls_par, 0.3; 0: SHOT-IM)", ge=0)
        refresh_every: int = tladapt.option(
            0, "steps between pseudo-label refreshes; 0: once per target epoch, ceil(n_target / batch_size)", ge=0)
        rounds: int = tladapt.option(1, "hard-label k-means rounds after the weighted centroids (1 in the paper)",
                                     ge=0)
        min_count: int = tladapt.option(0, "a class is a cluster when more samples than this predict it (0)", ge=0)
        freeze_head: bool = tladapt.option(True, "freeze the source classifier head (the hypothesis), as in SHOT")

    def __init__(self, options: Options):
        self.options = options
        self.labels: torch.Tensor | None = None
        self.refreshed_at = -1

    @tladapt.hookimpl
    def tladapt_check(self, config):
        """Before any run: SHOT needs a source model (``model.init_from``).

        Raises:
            ConfigError: without ``model.init_from``.
        """
        if not config.model.init_from:
            raise ConfigError("plugins.shot adapts a source model: set model.init_from to the source run "
                              "(and data.source_free = true for SHOT's source-free setting)")

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        """Freeze the source model's head (``freeze_head``)."""
        if self.options.freeze_head:
            trainer.head.requires_grad_(False)
        batch = trainer.config.trainer.batch_size
        self.every = self.options.refresh_every or math.ceil(len(trainer.target) / batch)

    @tladapt.hookimpl
    def tladapt_fit_start(self, trainer):
        """Pseudo-labels of the source model, before the first step."""
        if self.labels is None:
            self.refresh(trainer, step=-1)

    @torch.no_grad()
    def refresh(self, trainer, step: int) -> None:
        """Recompute every target sample's centroid pseudo-label (models in eval mode)."""
        was_training = trainer.modules.training
        trainer.modules.eval()
        features = trainer.target.map(trainer.backbone)
        probabilities = F.softmax(trainer.head(features), dim=1)
        labels, _ = centroid_pseudo_labels(features, probabilities, self.options.rounds, self.options.min_count)
        if was_training:
            trainer.modules.train()
        if self.labels is not None:
            trainer.log("shot/pseudo_label_change", (labels != self.labels).float().mean())
        predicted = F.one_hot(probabilities.argmax(1), trainer.num_classes).sum(0) > self.options.min_count
        trainer.log("shot/clusters", predicted.sum().float())
        self.labels, self.refreshed_at = labels, step

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, batch, out):
        """``{"im": ..., "pseudo_label": ...}`` (the latter only with a positive weight)."""
        o = self.options
        terms = {"im": tladapt.Term(information_maximization(out.logits_t, o.diversity), o.weight_im)}
        if o.weight_pseudo_label > 0:
            terms["pseudo_label"] = tladapt.Term(F.cross_entropy(out.logits_t, self.labels[batch.idx_t]),
                                                 o.weight_pseudo_label)
        return terms

    @tladapt.hookimpl
    def tladapt_step_end(self, trainer, step):
        """Refresh the pseudo-labels every ``refresh_every`` steps (SHOT: each target epoch)."""
        if self.options.weight_pseudo_label > 0 and (step + 1) % self.every == 0:
            self.refresh(trainer, step)

    @tladapt.hookimpl
    def tladapt_evaluate(self, trainer, metrics, target_labels):
        """ORACLE accuracy of the current pseudo-labels (percent)."""
        metrics["oracle/shot_pseudo_label_acc"] = 100.0 * (self.labels == target_labels).float().mean().item()

    @tladapt.hookimpl
    def tladapt_state_dict(self, trainer):
        """The pseudo-labels (``(n_target,)`` int64) and the step they were computed at."""
        return {"labels": self.labels, "refreshed_at": self.refreshed_at}

    @tladapt.hookimpl
    def tladapt_load_state_dict(self, trainer, state):
        """Restore the pseudo-labels on the device."""
        self.labels = state["labels"].to(trainer.device)
        self.refreshed_at = state["refreshed_at"]
