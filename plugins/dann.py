"""DANN: domain-adversarial training through a gradient reversal layer.

Ganin, Ustinova, Ajakan, Germain, Larochelle, Laviolette, Marchand & Lempitsky,
"Domain-Adversarial Training of Neural Networks", JMLR 17(59), 2016.

A domain discriminator learns to tell source features (label 0) from target
features (label 1); the GRL between backbone and discriminator flips the sign of
its gradient, scaled by λ_p = 2 / (1 + exp(-γ p)) - 1, so the backbone learns
features the discriminator cannot separate. The discriminator's own parameters
get the ordinary (unreversed) gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import tladapt
from tladapt.losses import domain_adversarial_loss, grad_reverse, grl_coefficient
from tladapt.models import DomainDiscriminator


class DANN:
    """The DANN plugin: adds a domain discriminator and the adversarial domain loss ``domain``.

    Logs ``train/lambda`` (the GRL coefficient) and ``domain/disc_acc`` (the
    discriminator's accuracy on the step's source+target batch, in [0, 1]).
    λ is computed on the device from ``trainer.progress_tensor``, so the step is capture-safe.
    """

    capture_safe = True  # per-step work: device ops of static shapes (trainer.compile = "cudagraph")
    batch_safe = True  # no per-run Python state in the step: seeds train as one batch (tladapt.batched)
    batch_scalars = ("weight", "gamma", "max_lambda")  # may differ between the runs of one batch

    module_names = ("domain_discriminator",)  # what tladapt_setup registers (trainer.lr_mult is checked before any run)

    @dataclass
    class Options:
        """``[plugins.dann]`` options."""

        weight: float = tladapt.option(1.0, "coefficient of the domain loss in the total loss", ge=0)
        gamma: float = tladapt.option(10.0, "steepness γ of the GRL schedule λ_p = 2/(1+exp(-γ p)) - 1", gt=0)
        max_lambda: float = tladapt.option(1.0, "λ_p is scaled by this value (1 in the paper)", ge=0)
        hidden: list[int] = tladapt.option([1024, 1024], "hidden sizes of the domain discriminator", gt=0)
        dropout: float = tladapt.option(0.5, "dropout in the domain discriminator", ge=0, lt=1)
        lr_mult: float = tladapt.option(1.0, "learning-rate multiplier of the discriminator", ge=0)

    def __init__(self, options: Options):
        self.options = options

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        o = self.options
        self.discriminator = trainer.add_module(
            "domain_discriminator", DomainDiscriminator(trainer.feature_dim, o.hidden, o.dropout), o.lr_mult
        )

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        lam = self.options.max_lambda * grl_coefficient(trainer.progress_tensor, self.options.gamma)
        features = torch.cat([out.features_s, out.features_t])
        logits = self.discriminator(grad_reverse(features, lam))
        b = out.features_s.shape[0]
        loss, accuracy = domain_adversarial_loss(logits[:b], logits[b:])
        trainer.log("train/lambda", lam)
        trainer.log("domain/disc_acc", accuracy)
        return {"domain": tladapt.Term(loss, self.options.weight)}
