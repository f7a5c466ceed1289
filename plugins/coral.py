"""CORAL: correlation alignment, as a deep loss or as a closed-form re-colouring.

* Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation",
  ECCV 2016 Workshops (TASK-CV): ``mode = "deep"`` adds
  ``||C_s - C_t||_F^2 / (4 d^2)`` between the covariances of the source and
  target backbone features of each batch.
* Sun, Feng & Saenko, "Return of Frustratingly Easy Domain Adaptation", AAAI 2016
  (CORAL, Algorithm 1): ``mode = "closed_form"`` whitens the source inputs once
  and re-colours them with the target covariance,
  ``x_s <- x_s (C_s + λI)^{-1/2} (C_t + λI)^{1/2}``, before training; any
  classifier then trains on the aligned source and is evaluated on the
  untouched target inputs.

The math is :mod:`tladapt.discrepancy` (:func:`~tladapt.discrepancy.coral`,
:func:`~tladapt.discrepancy.covariance`, :func:`~tladapt.discrepancy.psd_power`,
equal to :func:`~tladapt.discrepancy.coral_transform`). No kernel is involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

import tladapt
from tladapt.config import ConfigError
from tladapt.data.domain import Domain
from tladapt.discrepancy import coral, covariance, psd_power
from tladapt.losses import grl_coefficient

__all__ = ["CORAL", "coral_matrix"]


def coral_matrix(source: torch.Tensor, target: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """The closed-form CORAL map ``A = (C_s + λI)^{-1/2} (C_t + λI)^{1/2}`` (Sun et al., AAAI 2016).

    ``source @ A`` is :func:`tladapt.discrepancy.coral_transform` ``(source, target, lam)``;
    having ``A`` lets the same map be applied to held-out source samples. Covariances are
    :func:`tladapt.discrepancy.covariance` (``n - 1`` normalised, computed in float64), the
    powers :func:`tladapt.discrepancy.psd_power` (symmetric eigendecomposition).

    Args:
        source: ``(n, d)`` floating tensor, ``n >= 2``.
        target: ``(m, d)`` floating tensor, ``m >= 2``, same ``d`` and device.
        lam: ``λ >= 0`` added to both covariances' diagonals (1 in the paper).

    Returns:
        ``(d, d)`` float64 tensor on the inputs' device.

    Raises:
        ValueError: inputs not 2-D floating tensors of the same width with at least 2
            rows each (from ``covariance``), or ``lam`` negative or not finite.
    """
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"source and target must be (n, d) and (m, d), got {tuple(source.shape)} and {tuple(target.shape)}")
    xs, xt = source.detach().double(), target.detach().double()
    eye = torch.eye(xs.shape[1], dtype=torch.float64, device=xs.device)
    return psd_power(covariance(xs) + lam * eye, -0.5) @ psd_power(covariance(xt) + lam * eye, 0.5)


class CORAL:
    """Correlation alignment: the Deep CORAL term ``coral``, or closed-form re-colouring of the source.

    ``mode = "deep"`` (Sun & Saenko, ECCV-W 2016): every step returns
    ``{"coral": Term(coral(features_s, features_t), weight)}`` where the features are
    the trainer's ``(b, feature_dim)`` float32 backbone outputs and
    ``coral = ||C_s - C_t||_F^2 / (4 d^2)`` (:func:`tladapt.discrepancy.coral`);
    the trainer logs the value as ``loss/coral``. Its coefficient is ``weight``, or with
    ``schedule = "progressive"`` ``weight * (2 / (1 + exp(-gamma p)) - 1)`` at training
    progress ``p`` (logged as ``coral/weight``).

    ``mode = "closed_form"`` (Sun, Feng & Saenko, AAAI 2016): in ``tladapt_fit_start``,
    ``A = coral_matrix(source inputs, target inputs, lam)`` is computed once from the
    whole training split of the source and the whole (unlabelled) target, and
    ``trainer.source`` is replaced by a :class:`~tladapt.data.Domain` whose inputs are
    ``x_s @ A`` (float32, ``(n, d)``), same labels, name and classes; the held-out
    ``trainer.source_val`` gets the same map, so ``metrics/source_val_acc`` measures the
    classifier on the space it trains in. ``trainer.target`` is not touched (the model
    is evaluated on the raw target inputs, as in the paper). Logs once
    ``coral/input_coral_before`` and ``coral/input_coral_after``: the CORAL distance
    between the source and target inputs before and after (diagnostic). Returns no loss.

    Raises:
        ConfigError: for a negative/non-finite ``weight`` or ``lam``, or a non-positive
            ``gamma`` (construction);
            ``mode = "closed_form"`` on a dataset whose inputs are not vectors
            ``(d,)`` (e.g. images), or ``mode = "deep"`` with
            ``trainer.batch_size < 2`` (setup, before training).
    """

    capture_safe = True  # per-step work: device ops of static shapes (trainer.compile = "cudagraph")
    batch_safe = True  # no per-run Python state in the step: seeds train as one batch (tladapt.batched)
    batch_scalars = ("weight", "gamma")  # may differ between the runs of one batch

    @dataclass
    class Options:
        """``[plugins.coral]`` options."""

        mode: Literal["deep", "closed_form"] = tladapt.option(
            "deep", "deep: CORAL loss on backbone features (Deep CORAL); closed_form: re-colour "
                    "the source inputs once before training (CORAL, vector datasets only)")
        weight: float = tladapt.option(1.0, "mode='deep': coefficient λ of the CORAL loss", ge=0)
        schedule: Literal["constant", "progressive"] = tladapt.option(
            "constant", "mode='deep': constant λ (Deep CORAL), or λ × (2/(1+exp(-γ p)) - 1) "
                        "ramped from 0 over training progress p (as JAN/DANN)")
        gamma: float = tladapt.option(10.0, "schedule='progressive': steepness γ of the ramp", gt=0)
        lam: float = tladapt.option(
            1.0, "mode='closed_form': λ added to both covariances' diagonals (the paper's 1)", ge=0)

    def __init__(self, options: Options):
        self.options = options
        self.matrix: torch.Tensor | None = None

    @tladapt.hookimpl
    def tladapt_check(self, config, task):
        """Check, before any run, that the mode suits the data and the batch size.

        Raises:
            ConfigError: ``closed_form`` on inputs that are not vectors ``(d,)``; ``deep``
                with ``trainer.batch_size < 2``.
        """
        o = self.options
        if o.mode == "closed_form" and len(task.source.input_shape) != 1:
            raise ConfigError(
                f"plugins.coral.mode = 'closed_form' re-colours input vectors and needs a feature "
                f"dataset with inputs of shape (d,); data.dataset = {config.data.dataset!r} "
                f"has inputs of shape {task.source.input_shape} (domain {task.source.name!r}): "
                f"use mode = 'deep' to align backbone features instead"
            )
        if o.mode == "deep" and config.trainer.batch_size < 2:
            raise ConfigError(
                f"plugins.coral (mode = 'deep') needs batch covariances, i.e. at least 2 samples "
                f"per domain, but trainer.batch_size = {config.trainer.batch_size}"
            )

    @tladapt.hookimpl(tryfirst=True)  # transform the data before other plugins measure it
    def tladapt_fit_start(self, trainer):
        """``closed_form``: re-colour ``trainer.source`` (and ``source_val``) once; else nothing.

        ``A`` (``(d, d)`` float64, kept as ``self.matrix``) comes from the training split of
        the source and the whole unlabelled target; the new domains hold float32 ``x @ A``.
        """
        if self.options.mode != "closed_form":
            return
        xs, xt = trainer.source.inputs(), trainer.target.inputs()
        self.matrix = coral_matrix(xs, xt, self.options.lam)
        self._raw = trainer.source, trainer.source_val  # kept to re-colour with a restored matrix
        trainer.source = self._recolour(trainer.source, xs)
        if trainer.source_val is not None:
            trainer.source_val = self._recolour(trainer.source_val, trainer.source_val.inputs())
        trainer.log("coral/input_coral_before", coral(xs, xt))
        trainer.log("coral/input_coral_after", coral(trainer.source.x, xt))

    @tladapt.hookimpl
    def tladapt_state_dict(self):
        """``closed_form``: the matrix ``A`` (``(d, d)`` float64); ``deep``: nothing."""
        return None if self.matrix is None else {"matrix": self.matrix}

    @tladapt.hookimpl
    def tladapt_load_state_dict(self, trainer, state):
        """Re-colour the raw source (and ``source_val``) with the saved ``A``, in place, so the
        pipeline built on ``trainer.source`` sees it."""
        self.matrix = state["matrix"].to(trainer.device)
        for raw, domain in zip(self._raw, (trainer.source, trainer.source_val)):
            if raw is not None:
                domain.x.copy_(self._recolour(raw, raw.inputs()).x)

    def _recolour(self, domain: Domain, inputs: torch.Tensor) -> Domain:
        """``domain`` with inputs ``inputs @ A`` (float32, default transform), same labels."""
        x = (inputs.double() @ self.matrix).to(torch.float32)
        return Domain(domain.name, x, domain.y, domain.classes)

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        """``deep``: ``{"coral": Term(coral(features_s, features_t), λ)}`` (0-dim float32,
        differentiable); ``closed_form``: None."""
        o = self.options
        if o.mode != "deep":
            return None
        weight = o.weight
        if o.schedule == "progressive":
            weight = o.weight * grl_coefficient(trainer.progress_tensor, o.gamma)
            trainer.log("coral/weight", weight)
        return {"coral": tladapt.Term(coral(out.features_s, out.features_t), weight)}
