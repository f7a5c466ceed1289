"""FixMatch-style consistency on the target: confident weak-view predictions teach the strong view.

Sohn, Berthelot, Li, Zhang, Carlini, Cubuk, Kurakin, Zhang & Raffel, "FixMatch:
Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020; used
for domain adaptation on the unlabelled target by Berthelot et al., "AdaMatch" (ICLR 2022)
and TLlib's self-training baselines. The model's prediction on a weakly perturbed target
sample becomes a hard pseudo-label when its confidence reaches ``threshold``; the same
sample, strongly perturbed, is trained to predict it. The math is
:func:`tladapt.prediction_losses.fixmatch_loss`.

Two kinds of views:

* ``views = "image"`` (image domains with augmentation, ``[augment] train = "standard"``):
  the weak view is the trainer's own target batch (random resized crop and flip) and the
  strong view :meth:`tladapt.data.pipeline.PairedPipeline.view` ``(batch, "target",
  "strong")``: the weak crop plus RandAugment ops and Cutout (FixMatch's policy, issue 11's
  device augmentation). This is FixMatch proper.
* ``views = "feature"`` (any domain, meant for feature vectors such as SURF or
  bag-of-words): the weak view is the trainer's own target batch (its only perturbation is
  the backbone's dropout); the strong view is the same inputs with input dropout
  (``strong_dropout``, inverted scaling) and Gaussian noise of ``strong_noise`` times the
  target domain's per-feature standard deviation. No published FixMatch uses these views;
  they are the feature-space analogue (dropout/noise consistency as in Π-model / UDA-style
  input noise), documented as such.

``"auto"`` picks ``image`` when the target domain has image augmentation, else ``feature``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

import tladapt
from tladapt.errors import ConfigError
from tladapt.prediction_losses import fixmatch_loss


def feature_strong_view(x: torch.Tensor, scale: torch.Tensor, dropout: float, noise: float) -> torch.Tensor:
    """The feature-space strong view: ``dropout(x) + noise * scale * ε`` with ``ε ~ N(0, 1)``.

    Dropout zeroes each input entry with probability ``dropout`` and divides the rest by
    ``1 - dropout`` (inverted dropout, so the expectation is ``x``); both draws use the
    global torch generator (seeded by the run, saved with its RNG state).

    Args:
        x: ``(b, *input_shape)`` float inputs.
        scale: ``input_shape`` float, per-entry noise scale (the target's standard deviation).
        dropout: in ``[0, 1)``.
        noise: ``>= 0``.

    Returns:
        A tensor shaped like ``x``.
    """
    out = torch.nn.functional.dropout(x, dropout, training=True) if dropout > 0 else x
    return out + noise * scale * torch.randn_like(x) if noise > 0 else out


class FixMatch:
    """The FixMatch plugin: term ``fixmatch``, the masked cross-entropy of the strong view.

    Per step: the weak logits are the trainer's target logits ``out.logits_t`` (detached);
    the strong view (see the module docstring) goes through ``trainer.backbone`` and
    ``trainer.head`` once more; ``{"fixmatch": Term((1/b) sum_i 1[conf_i >= τ] CE(z_s,i,
    ŷ_i), weight)}``. Uses the target only, so it also composes with a source-free run.

    Logs ``fixmatch/mask_rate`` (fraction of the batch above the threshold) and
    ``fixmatch/confidence`` (mean max-probability of the weak view).

    Raises:
        ConfigError: in ``tladapt_setup``, ``views = "image"`` on a domain without image
            augmentation.
    """

    source_free = True

    module_names = ()  # what tladapt_setup registers (trainer.lr_mult is checked before any run)

    @dataclass
    class Options:
        """``[plugins.fixmatch]`` options."""

        weight: float = tladapt.option(1.0, "coefficient λ_u of the consistency loss (1 in FixMatch)", ge=0)
        threshold: float = tladapt.option(0.95, "confidence τ a weak prediction needs to be a pseudo-label (0.95)",
                                          ge=0, le=1)
        views: Literal["auto", "image", "feature"] = tladapt.option(
            "auto", "image: RandAugment+Cutout strong view of image domains; feature: input dropout + noise; "
                    "auto: image when the target has image augmentation")
        strong_dropout: float = tladapt.option(0.5, "views='feature': input dropout of the strong view", ge=0, lt=1)
        strong_noise: float = tladapt.option(
            0.5, "views='feature': Gaussian noise of the strong view, in target standard deviations", ge=0)

    def __init__(self, options: Options):
        self.options = options
        self.scale: torch.Tensor | None = None

    @tladapt.hookimpl
    def tladapt_check(self, config, task):
        """Before any run: image views need a target domain with an augmentation to draw from.

        Raises:
            ConfigError: ``views = 'image'`` on a target without image augmentation.
        """
        if self.options.views == "image" and getattr(task.target, "augment", None) is None:
            raise ConfigError(f"plugins.fixmatch.views = 'image' needs an image target domain with augmentation "
                              f"([augment] train = 'standard'); data.dataset = {config.data.dataset!r} has "
                              f"none here: use views = 'feature'")

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        """Resolve the views (``auto``: image views when the target has image augmentation)."""
        o = self.options
        augmented = getattr(trainer.target, "augment", None) is not None
        self.views = o.views if o.views != "auto" else ("image" if augmented else "feature")

    @tladapt.hookimpl(trylast=True)  # after transforms of the domains (e.g. closed-form CORAL, JDA)
    def tladapt_fit_start(self, trainer):
        """The per-entry noise scale of the feature views: the target's standard deviation."""
        if self.views == "feature":
            self.scale = trainer.target.map(lambda x: x).std(dim=0)

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, batch, out):
        """``{"fixmatch": Term(masked CE of the strong view, weight)}``."""
        o = self.options
        if self.views == "image":
            strong = trainer.pipeline.view(batch, "target", "strong")
        else:
            strong = feature_strong_view(batch.x_t, self.scale, o.strong_dropout, o.strong_noise)
        logits_strong = trainer.head(trainer.backbone(strong))
        loss, mask, _ = fixmatch_loss(logits_strong, out.logits_t, o.threshold)
        with torch.no_grad():
            trainer.log("fixmatch/mask_rate", mask.float().mean())
            trainer.log("fixmatch/confidence", out.logits_t.softmax(dim=1).max(dim=1).values.mean())
        return {"fixmatch": tladapt.Term(loss, o.weight)}
