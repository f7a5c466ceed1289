"""MDD: margin disparity discrepancy with an adversarial auxiliary head.

Zhang, Liu, Long & Jordan, "Bridging Theory and Algorithm for Domain Adaptation",
ICML 2019. An auxiliary classifier head ``f'`` (same input as the main head) learns to
agree with the main head's predictions on the source and to disagree on the target; the
features, behind a gradient reversal layer, learn to make that impossible. The margin
``γ`` weighs the source agreement; a larger margin tightens the bound of the paper's
theory. The math is :func:`tladapt.losses.margin_disparity_discrepancy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import tladapt
from tladapt.errors import ConfigError
from tladapt.losses import grad_reverse, grl_coefficient, margin_disparity_discrepancy


def adversarial_head(in_features: int, num_classes: int, hidden: list[int], dropout: float) -> nn.Sequential:
    """The auxiliary head ``f'``: ``Linear -> ReLU -> Dropout`` per hidden size, then
    ``Linear(num_classes)``; ``hidden = []`` is a linear head like the trainer's.
    ``(b, in_features)`` float -> ``(b, num_classes)`` logits."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_features, size), nn.ReLU(), nn.Dropout(dropout)]
        in_features = size
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


class MDD:
    """The MDD plugin: an auxiliary head (module ``mdd_head``) and the adversarial term ``mdd``.

    Per step, ``f'`` reads the GRL-reversed features of both batches (coefficient
    ``λ_p = max_lambda * (2 / (1 + exp(-γ p)) - 1)``); the term is
    ``γ mean_s CE(f'(f_s), ŷ_s) + mean_t -log(1 - p'_t[ŷ_t])`` with ``ŷ`` the main head's
    argmax (no gradient): ``{"mdd": Term(value, weight)}``. The auxiliary head minimises
    it; the features, through the GRL, maximise it.

    Defaults: ``margin = 4`` and ``weight = 1`` are the authors' Office-31 values;
    ``max_lambda = 0.1`` follows TLlib's MDD (GRL warm-started to 0.1); ``hidden = []``
    makes ``f'`` the same hypothesis class as the trainer's linear head, as the theory asks
    (the authors' image models use two-layer 1024-wide heads for both).

    Stability: with a linear ``f'`` and margin 4, the reversed gradient can blow the
    features up at a large learning rate — LeNet on USPS→MNIST at lr 0.05 is non-finite by
    step 150, while margin 1, ``hidden = [1024, 1024]`` (the authors' and TLlib's head) or
    ``max_lambda = 0`` train at the same lr (experiments/algorithms.md, "MDD on digits").

    Logs ``mdd/lambda`` and ``mdd/disagreement_source`` / ``mdd/disagreement_target``, the
    fraction of each batch where ``f'`` and the main head predict different classes (the
    adversary's aim: low on the source, high on the target).
    """

    module_names = ("mdd_head",)  # what tladapt_setup registers (trainer.lr_mult is checked before any run)

    @dataclass
    class Options:
        """``[plugins.mdd]`` options."""

        weight: float = tladapt.option(1.0, "coefficient of the MDD term (the paper's trade-off, 1)", ge=0)
        margin: float = tladapt.option(4.0, "margin γ = exp(ρ) weighing the source agreement (4 on Office-31)", gt=0)
        gamma: float = tladapt.option(10.0, "steepness γ of the GRL schedule λ_p = 2/(1+exp(-γ p)) - 1", gt=0)
        max_lambda: float = tladapt.option(0.1, "λ_p is scaled by this value (TLlib's MDD: 0.1)", ge=0)
        hidden: list[int] = tladapt.option([], "hidden sizes of the auxiliary head ([]: linear, like the trainer's)",
                                           gt=0)
        dropout: float = tladapt.option(0.5, "dropout in the auxiliary head's hidden layers", ge=0, lt=1)
        lr_mult: float = tladapt.option(1.0, "learning-rate multiplier of the auxiliary head", ge=0)

    def __init__(self, options: Options):
        self.options = options

    @tladapt.hookimpl
    def tladapt_check(self, task):
        """Before any run: both domains are classified by one head.

        Raises:
            ConfigError: when the source and target have different label sets: the
                disparity compares predictions over one set of classes.
        """
        if not task.shared_head:
            raise ConfigError("plugins.mdd compares class predictions on both domains, which needs one label set; "
                              "data.source_classes and data.target_classes differ here")

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        """Build the auxiliary head ``mdd_head``."""
        o = self.options
        self.head = trainer.add_module(
            "mdd_head", adversarial_head(trainer.feature_dim, trainer.num_classes, o.hidden, o.dropout), o.lr_mult)

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        """``{"mdd": Term(γ CE_s + mean_t -log(1 - p'_t), weight)}``."""
        o = self.options
        lam = o.max_lambda * grl_coefficient(trainer.progress, o.gamma)
        b = out.features_s.shape[0]
        adv = self.head(grad_reverse(torch.cat([out.features_s, out.features_t]), lam))
        value = margin_disparity_discrepancy(out.logits_s, adv[:b], out.logits_t, adv[b:], o.margin)
        with torch.no_grad():
            trainer.log("mdd/lambda", lam)
            trainer.log("mdd/disagreement_source", (adv[:b].argmax(1) != out.logits_s.argmax(1)).float().mean())
            trainer.log("mdd/disagreement_target", (adv[b:].argmax(1) != out.logits_t.argmax(1)).float().mean())
        return {"mdd": tladapt.Term(value, o.weight)}
