"""Self-training with pseudo-labels: fixed-threshold or class-balanced (CBST) selection.

The model (or an exponential-moving-average teacher of it) labels the unlabelled
target samples with its most probable class; the confident ones are then used as
if they were labelled, through a cross-entropy term on the target logits. An
optional entropy-minimisation term sharpens every target prediction.

Papers:

* Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method
  for Deep Neural Networks", ICML 2013 Workshop on Challenges in Representation
  Learning: hard pseudo-labels from the current model.
* Zou, Yu, Kumar & Wang, "Unsupervised Domain Adaptation for Semantic
  Segmentation via Class-Balanced Self-Training", ECCV 2018 (CBST): one
  confidence threshold per class, at the top-p portion of that class's
  predictions, so that easy classes do not take over the pseudo-labels.
* Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017,
  and French, Mackiewicz & Fisher, "Self-ensembling for visual domain
  adaptation", ICLR 2018: the EMA teacher.
* Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization",
  NIPS 2005: the entropy term.

Per-sample target state (:class:`PseudoLabelBank`) holds a pseudo-label, its
confidence and the step it was computed at for every target index, on the
device; a sample's pseudo-label is recomputed only when it is at least
``refresh_every`` steps old. Nothing in a training step reads a value back to
the host.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import tladapt
from tladapt.losses import entropy

TEACHERS = ("model", "ema")
SELECTIONS = ("threshold", "class_balanced")

__all__ = [
    "SelfTraining",
    "PseudoLabelBank",
    "pseudo_label_loss",
    "class_balanced_thresholds",
    "select",
    "ema_update",
    "ramp_weight",
]


# ---------------------------------------------------------------------- the math
def pseudo_label_loss(logits: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the selected samples, averaged over the selected ones (Lee, ICML-W 2013).

    ``L = sum_i m_i * CE(logits_i, y_i) / max(sum_i m_i, 1)``: the mean over the
    selected samples, and exactly 0 (with a zero gradient) when none is
    selected. (FixMatch-style code divides by the batch size instead, which
    shrinks the loss when few samples pass the threshold; we do not.)
    Unselected samples are removed with ``torch.where``, not multiplied by 0, so
    a non-finite CE of an unselected sample cannot leak a NaN into the loss.

    Args:
        logits: ``(b, num_classes)`` float, the student's target logits (with grad).
        pseudo_labels: ``(b,)`` int64 targets in ``0 .. num_classes - 1``; they
            carry no gradient (integers).
        mask: ``(b,)`` bool, True for a selected sample.

    Returns:
        0-dim float tensor on ``logits``' device.

    Raises:
        RuntimeError / IndexError (from PyTorch): for mismatched shapes or labels
            out of range.
    """
    ce = F.cross_entropy(logits, pseudo_labels, reduction="none")
    selected = torch.where(mask, ce, torch.zeros_like(ce)).sum()
    return selected / mask.sum().clamp(min=1).to(ce.dtype)


def class_balanced_thresholds(
    confidence: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    fraction: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """CBST's per-class confidence thresholds λ_k (Zou et al., ECCV 2018, §3.3).

    For each class k, take the confidences of the (valid) samples whose
    pseudo-label is k, sorted in decreasing order, ``c_(1) >= c_(2) >= ...``
    (``n_k`` of them); λ_k is ``c_(m_k)`` with ``m_k = max(1, ceil(fraction * n_k))``,
    so that the top ``fraction`` of each class's predictions (at least its most
    confident one) reach the threshold. A class with no sample gets λ_k = +inf:
    it cannot select anything and produces no NaN. ``ceil`` is taken with a
    1e-9 tolerance so ``0.3 * 10`` counts as 3, not 4. (The authors' code uses
    ``floor`` and gives a class with ``floor(p n_k) = 0`` the threshold 1.0;
    we keep the most confident sample of every predicted class instead.)

    Computed with sorts and scatters on the device: no host sync, ``O(n log n)``.

    Args:
        confidence: ``(n,)`` float, the probability of each sample's pseudo-label.
        labels: ``(n,)`` int64 pseudo-labels in ``0 .. num_classes - 1``.
        num_classes: K ≥ 1.
        fraction: p in (0, 1].
        valid: optional ``(n,)`` bool; samples with False are ignored (e.g. target
            samples that have no pseudo-label yet).

    Returns:
        ``(num_classes,)`` tensor of ``confidence``'s dtype and device.

    Raises:
        ValueError: if ``fraction`` is outside (0, 1], ``num_classes < 1`` or the
            shapes of ``confidence`` and ``labels`` (and ``valid``) differ.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if confidence.dim() != 1 or confidence.shape != labels.shape or (valid is not None and valid.shape != labels.shape):
        raise ValueError(
            f"confidence, labels (and valid) must have the same 1-d shape, got {tuple(confidence.shape)}, "
            f"{tuple(labels.shape)}" + ("" if valid is None else f", {tuple(valid.shape)}")
        )
    n, device = confidence.shape[0], confidence.device
    if n == 0:
        return torch.full((num_classes,), math.inf, dtype=confidence.dtype, device=device)
    bucket = labels if valid is None else torch.where(valid, labels, torch.full_like(labels, num_classes))
    # Group by class (invalid samples last, in bucket K), decreasing confidence within a class.
    order = torch.argsort(confidence, descending=True, stable=True)
    order = order[torch.argsort(bucket[order], stable=True)]
    sorted_conf = confidence[order]
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=device)
    counts.scatter_add_(0, bucket, torch.ones_like(bucket))  # bincount would sync on CUDA
    counts = counts[:num_classes]
    starts = torch.cumsum(counts, 0) - counts
    m = torch.ceil(counts.double() * fraction - 1e-9).long().clamp(min=1)
    at = (starts + m - 1).clamp(max=n - 1)
    inf = torch.full((num_classes,), math.inf, dtype=confidence.dtype, device=device)
    return torch.where(counts > 0, sorted_conf[at], inf)


def select(confidence: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor | float) -> torch.Tensor:
    """The selection mask ``confidence >= threshold`` (per class when ``thresholds`` is a tensor).

    A fixed threshold is the usual pseudo-label rule (Lee 2013; FixMatch); a
    per-class tensor is CBST's (Zou et al., ECCV 2018).

    Args:
        confidence: ``(n,)`` float.
        labels: ``(n,)`` int64 pseudo-labels, used to pick each sample's class threshold.
        thresholds: a float (fixed threshold) or a ``(num_classes,)`` tensor
            (:func:`class_balanced_thresholds`).

    Returns:
        ``(n,)`` bool.
    """
    if isinstance(thresholds, torch.Tensor):
        return confidence >= thresholds[labels]
    return confidence >= thresholds


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """Exponential moving average of the weights, in place (Tarvainen & Valpola, NeurIPS 2017).

    Every floating-point parameter becomes ``θ'_t = decay * θ'_{t-1} + (1 - decay) * θ_t``;
    buffers (e.g. BatchNorm running statistics, integer counters) are copied
    from the student.

    Args:
        teacher: the EMA copy, same architecture as ``student`` (e.g. ``copy.deepcopy``).
        student: the trained module.
        decay: α in [0, 1]; 0 copies the student, 1 freezes the teacher.

    Raises:
        ValueError: if the two modules' parameter or buffer lists differ in length or shape.
    """
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    t_bufs, s_bufs = list(teacher.buffers()), list(student.buffers())
    if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
        raise ValueError("teacher and student have different parameter or buffer lists")
    for t, s in zip(t_params, s_params):
        if t.shape != s.shape:
            raise ValueError(f"teacher parameter of shape {tuple(t.shape)} does not match "
                             f"the student's {tuple(s.shape)}")
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(t_bufs, s_bufs):
        t.copy_(s)


def ramp_weight(step: int, warmup_steps: int, ramp_steps: int) -> float:
    """The pseudo-label loss's schedule factor in [0, 1] at training step ``step`` (from 0).

    0 for ``step < warmup_steps``; then ``min(1, (step - warmup_steps + 1) / ramp_steps)``,
    a linear ramp reaching 1 after ``ramp_steps`` steps; 1 right away when
    ``ramp_steps == 0``. A plain Python float: no device work.
    """
    if step < warmup_steps:
        return 0.0
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, (step - warmup_steps + 1) / ramp_steps)


# ---------------------------------------------------------------------- state
class PseudoLabelBank:
    """Per-sample pseudo-labels of the target domain, on the device, indexed by ``batch.idx_t``.

    What makes ``refresh_every > 1`` real: a sample keeps its pseudo-label until
    it is ``refresh_every`` steps old, and CBST's per-class thresholds are taken
    over the whole bank, not just the batch.

    Attributes:
        labels: ``(n,)`` int64, the last pseudo-label of each target index (0 when none).
        confidence: ``(n,)`` float32, the teacher's probability of that label (0 when none).
        stamp: ``(n,)`` int64, the step the label was computed at; -1 when none yet.

    Args:
        n: number of target samples (``len(trainer.target)``).
        device: the training device.

    Raises:
        ValueError: if ``n < 1``.
    """

    def __init__(self, n: int, device: torch.device | str):
        if n < 1:
            raise ValueError(f"the target domain is empty (n={n})")
        self.labels = torch.zeros(n, dtype=torch.long, device=device)
        self.confidence = torch.zeros(n, dtype=torch.float32, device=device)
        self.stamp = torch.full((n,), -1, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def valid(self) -> torch.Tensor:
        """``(n,)`` bool: the samples that have a pseudo-label."""
        return self.stamp >= 0

    def refresh(self, idx: torch.Tensor, pred: torch.Tensor, conf: torch.Tensor, step: int,
                every: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the teacher's fresh predictions for the stale samples of a batch.

        A sample is stale when it has no pseudo-label or its label was computed
        ``every`` or more steps ago (``step - stamp >= every``); stale samples get
        ``pred``/``conf`` and ``stamp = step``, the others keep what they have.

        Args:
            idx: ``(b,)`` int64 target indices (``batch.idx_t``).
            pred: ``(b,)`` int64, the teacher's argmax class per sample.
            conf: ``(b,)`` float, the teacher's probability of ``pred``.
            step: the current training step.
            every: ``refresh_every`` ≥ 1.

        Returns:
            ``(labels, confidence)`` of the batch after the refresh, each ``(b,)``.
        """
        stamp = self.stamp[idx]
        stale = (stamp < 0) | (step - stamp >= every)
        labels = torch.where(stale, pred, self.labels[idx])
        confidence = torch.where(stale, conf.to(self.confidence.dtype), self.confidence[idx])
        self.labels[idx] = labels
        self.confidence[idx] = confidence
        self.stamp[idx] = torch.where(stale, torch.full_like(stamp, step), stamp)
        return labels, confidence


# ---------------------------------------------------------------------- the plugin
class SelfTraining:
    """Self-training on target pseudo-labels: loss terms ``pseudo_label`` and ``entropy``.

    ``pseudo_label``: cross-entropy of the student's target logits against the
    selected pseudo-labels (:func:`pseudo_label_loss`), weighted by
    ``weight * ramp_weight(step)``. ``entropy``: the mean prediction entropy of
    the target batch, weighted by ``entropy_weight`` (only when it is > 0).

    Logs per step ``self_training/mask_rate`` (fraction of the target batch
    selected), ``self_training/confidence`` (mean teacher confidence) and
    ``self_training/ramp``; at each evaluation ``self_training/count_class_<k>``
    (selected pseudo-labels per class over the whole target state),
    ``self_training/labelled_frac``, ``self_training/selected_frac`` and the ORACLE tags
    ``oracle/pseudo_label_acc`` (accuracy in percent of the selected pseudo-labels
    against the hidden target labels; absent while none is selected),
    ``oracle/pseudo_label_acc_all`` (of all stored pseudo-labels) and, with the
    EMA teacher, ``oracle/teacher_target_acc``.

    Papers: Lee (ICML-W 2013, pseudo-labels); Zou et al. (ECCV 2018, CBST
    class-balanced thresholds); Tarvainen & Valpola (NeurIPS 2017) and French et
    al. (ICLR 2018) for the EMA teacher; Grandvalet & Bengio (NIPS 2005) for the
    entropy term.

    Args:
        options: the validated ``[plugins.self_training]`` table (defaults if None).

    Raises:
        ConfigError: for option values out of range, naming ``plugins.self_training.<key>``.
        RuntimeError: from ``tladapt_fit_start`` if another plugin changed the
            target domain's size after setup.
    """

    #: Uses target outputs only, so it may run in a source-free run (``data.source_free``).
    source_free = True

    module_names = ()  # what tladapt_setup registers (trainer.lr_mult is checked before any run)

    @dataclass
    class Options:
        """``[plugins.self_training]`` options."""

        weight: float = tladapt.option(1.0, "coefficient of the pseudo-label loss (after warm-up and ramp)", ge=0)
        teacher: Literal["model", "ema"] = tladapt.option(
            "model", "who labels the target: 'model' (the current model's logits) or 'ema'")
        ema_decay: float = tladapt.option(
            0.99, "EMA teacher decay α in [0, 1]: θ' <- α θ' + (1-α) θ after every step", ge=0, le=1)
        refresh_every: int = tladapt.option(
            1, "recompute a target sample's pseudo-label when it is this many steps old", ge=1)
        selection: Literal["threshold", "class_balanced"] = tladapt.option(
            "threshold", "'threshold' (fixed) or 'class_balanced' (CBST per-class)")
        threshold: float = tladapt.option(
            0.9, "fixed confidence threshold in [0, 1] (selection = 'threshold')", ge=0, le=1)
        class_fraction: float = tladapt.option(
            0.5, "CBST portion p in (0, 1]: top fraction of each class selected", gt=0, le=1)
        warmup_steps: int = tladapt.option(0, "steps before the pseudo-label loss is used (its weight is 0)", ge=0)
        ramp_steps: int = tladapt.option(0, "steps of linear ramp of the pseudo-label weight after warm-up", ge=0)
        entropy_weight: float = tladapt.option(0.0, "coefficient of the target entropy term; 0 disables it", ge=0)

    def __init__(self, options: Options | None = None):
        o = options if options is not None else self.Options()
        self.options = o
        self.teacher: nn.Module | None = None
        self.bank: PseudoLabelBank | None = None

    # -------------------------------------------------------------- hooks
    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        """Make the EMA teacher (if any) and the per-sample state on the device."""
        # The student as one module (shares the trainer's backbone and head, copies nothing).
        self.student = nn.Sequential(trainer.backbone, trainer.head)
        if self.options.teacher == "ema":
            # Plugin state, deliberately not trainer.add_module: no optimizer group, no gradients.
            self.teacher = copy.deepcopy(self.student).to(trainer.device).requires_grad_(False).eval()
        self.bank = PseudoLabelBank(len(trainer.target), trainer.device)

    @tladapt.hookimpl
    def tladapt_fit_start(self, trainer):
        """Check that the target domain still matches the per-sample state."""
        if len(trainer.target) != len(self.bank):
            raise RuntimeError(f"self_training: the target domain changed size after setup "
                               f"({len(self.bank)} -> {len(trainer.target)})")

    def thresholds(self, num_classes: int) -> torch.Tensor | float:
        """The current selection thresholds: the fixed float, or CBST's ``(num_classes,)``
        tensor over every target sample that has a pseudo-label."""
        o = self.options
        if o.selection == "threshold":
            return o.threshold
        bank = self.bank
        return class_balanced_thresholds(bank.confidence, bank.labels, num_classes, o.class_fraction, bank.valid)

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, batch, out):
        """Refresh stale pseudo-labels, select, and return ``pseudo_label`` (and ``entropy``)."""
        o = self.options
        with torch.no_grad():
            if self.teacher is not None:
                teacher_logits = self.teacher(batch.x_t)
            else:
                teacher_logits = out.logits_t.detach()
            conf, pred = F.softmax(teacher_logits.float(), dim=1).max(dim=1)
            labels, conf = self.bank.refresh(batch.idx_t, pred, conf, trainer.step, o.refresh_every)
            mask = select(conf, labels, self.thresholds(trainer.num_classes))
        loss = pseudo_label_loss(out.logits_t, labels, mask)
        ramp = ramp_weight(trainer.step, o.warmup_steps, o.ramp_steps)
        trainer.log("self_training/mask_rate", mask.float().mean())
        trainer.log("self_training/confidence", conf.mean())
        trainer.log("self_training/ramp", ramp)
        terms = {"pseudo_label": tladapt.Term(loss, o.weight * ramp)}
        if o.entropy_weight > 0:
            terms["entropy"] = tladapt.Term(entropy(out.logits_t), o.entropy_weight)
        return terms

    @tladapt.hookimpl
    def tladapt_step_end(self, trainer):
        """EMA update of the teacher after the optimizer step."""
        if self.teacher is not None:
            ema_update(self.teacher, self.student, self.options.ema_decay)

    @tladapt.hookimpl
    def tladapt_state_dict(self):
        """The pseudo-label bank (labels, confidences, stamps) and the EMA teacher's weights."""
        bank = self.bank
        state = {"bank": {"labels": bank.labels, "confidence": bank.confidence, "stamp": bank.stamp}}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    @tladapt.hookimpl
    def tladapt_load_state_dict(self, state):
        """Put the saved bank and teacher back (tensors copied onto the training device)."""
        for name, value in state["bank"].items():
            getattr(self.bank, name).copy_(value)
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])

    @tladapt.hookimpl
    def tladapt_evaluate(self, trainer, metrics, target_labels):
        """Per-class counts, selected fraction and ORACLE pseudo-label accuracies (one host read)."""
        bank, k = self.bank, trainer.num_classes
        valid = bank.valid
        mask = select(bank.confidence, bank.labels, self.thresholds(k)) & valid
        counts = torch.zeros(k, dtype=torch.long, device=bank.labels.device)
        counts.scatter_add_(0, bank.labels, mask.long())
        correct = bank.labels == target_labels
        stats = torch.stack([
            mask.sum(), (correct & mask).sum(), valid.sum(), (correct & valid).sum(),
        ]).tolist()  # one host transfer per evaluation
        n_sel, n_sel_ok, n_valid, n_valid_ok = stats
        for cls, count in enumerate(counts.tolist()):
            metrics[f"self_training/count_class_{cls}"] = float(count)
        metrics["self_training/labelled_frac"] = n_valid / len(bank)
        metrics["self_training/selected_frac"] = n_sel / len(bank)
        if n_sel:
            metrics["oracle/pseudo_label_acc"] = 100.0 * n_sel_ok / n_sel
        if n_valid:
            metrics["oracle/pseudo_label_acc_all"] = 100.0 * n_valid_ok / n_valid
        if self.teacher is not None:
            preds = trainer.target.map(lambda x: self.teacher(x).argmax(1))
            metrics["oracle/teacher_target_acc"] = 100.0 * (preds == target_labels).float().mean().item()
