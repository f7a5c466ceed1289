"""CDAN and CDAN+E: conditional adversarial domain adaptation.

Long, Cao, Wang & Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018.
As DANN, a domain discriminator behind a gradient reversal layer tells source from
target, but it sees the features *conditioned on the predictions*: the multilinear map
``g ⊗ f`` of the classifier's softmax ``g`` (detached, as in the authors' code) and the
features ``f``, so that aligning the domains aligns their class-conditional structure,
not only the marginal feature distributions. When ``d * K`` is large the randomized
multilinear map ``(R_f f) ⊙ (R_g g) / sqrt(r)`` replaces it. CDAN+E (``entropy = true``)
weighs each sample's domain loss by ``1 + exp(-H(g))``, so that uncertain predictions
count less. The math is :mod:`tladapt.losses` (:func:`~tladapt.losses.multilinear_map`,
:class:`~tladapt.losses.RandomizedMultilinearMap`, :func:`~tladapt.losses.entropy_weights`,
:func:`~tladapt.losses.domain_adversarial_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

import tladapt
from tladapt.errors import ConfigError
from tladapt.losses import (RandomizedMultilinearMap, domain_adversarial_loss, entropy_weights, grad_reverse,
                            grl_coefficient, multilinear_map)
from tladapt.models import DomainDiscriminator
from tladapt_plugins.dann import DANN


class ConditionalDiscriminator(nn.Module):
    """The conditioning map followed by an MLP domain discriminator.

    ``(b, d)`` features and ``(b, K)`` probabilities -> ``(b,)`` domain logits (positive
    means "target"). With ``randomized_dim = 0`` the input is the multilinear map
    (``K * d`` wide), else the randomized map (``randomized_dim`` wide, its random matrices
    buffers of this module, so they are checkpointed and never trained).
    """

    def __init__(self, feature_dim: int, num_classes: int, randomized_dim: int, hidden: list[int], dropout: float):
        super().__init__()
        self.randomized = RandomizedMultilinearMap(feature_dim, num_classes, randomized_dim) if randomized_dim else None
        width = randomized_dim or feature_dim * num_classes
        self.net = DomainDiscriminator(width, hidden, dropout)

    def forward(self, features: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """Domain logits ``(b,)``."""
        if self.randomized is None:
            return self.net(multilinear_map(features, probabilities))
        return self.net(self.randomized(features, probabilities))


class CDAN:
    """The CDAN plugin: a conditional domain discriminator and the adversarial term ``cdan``.

    Per step: ``g = softmax(logits)`` (detached) and the backbone features of the source
    and target batches go through the GRL (coefficient ``λ_p = max_lambda * (2 / (1 +
    exp(-γ p)) - 1)`` at training progress ``p``, as DANN) into the
    :class:`ConditionalDiscriminator`; the term is DANN's domain loss
    (:func:`tladapt.losses.domain_adversarial_loss`), with CDAN+E's entropy weights per
    domain when ``entropy = true``. Returns ``{"cdan": Term(loss, weight)}``.

    The map: ``"multilinear"``, ``"randomized"``, or ``"auto"`` = multilinear when
    ``feature_dim * num_classes <= 4096`` and randomized (``randomized_dim``, 1024 in the
    paper) otherwise, the paper's rule.

    Logs ``cdan/lambda``, ``cdan/disc_acc`` (discriminator accuracy on the step's batches,
    in [0, 1]) and, for CDAN+E, ``cdan/weight_source`` / ``cdan/weight_target`` (mean
    entropy weight per domain, in ``[1 + 1/K, 2]``).

    Differences from references (tests/test_prediction_losses.py shows each): the domain
    loss is ``mean_s + mean_t`` as in tladapt's DANN (the authors' code halves it); CDAN+E's
    weights are normalised to a weighted mean per domain as in the authors' code, while
    pytorch-adapt's ``CDANEHook`` divides them by their maximum and takes a plain mean; the
    weights carry no gradient (pytorch-adapt's default; the authors' code back-propagates a
    reversed gradient into them).
    """

    module_names = ("cdan_discriminator",)  # what tladapt_setup registers (trainer.lr_mult is checked before any run)

    @dataclass
    class Options(DANN.Options):
        """``[plugins.cdan]`` options: DANN's (weight, GRL schedule, discriminator) and the conditioning."""

        entropy: bool = tladapt.option(False, "CDAN+E: weigh each sample's domain loss by 1 + exp(-H(g))")
        map: Literal["auto", "multilinear", "randomized"] = tladapt.option(
            "auto", "conditioning: multilinear g ⊗ f, randomized (R_f f) ⊙ (R_g g) / sqrt(r), or auto "
                    "(multilinear when d * K <= 4096, as in the paper)")
        randomized_dim: int = tladapt.option(1024, "output width r of the randomized map (1024 in the paper)", gt=0)

    #: The paper's threshold on ``d * K`` above which the randomized map is used.
    MULTILINEAR_MAX = 4096

    def __init__(self, options: Options):
        self.options = options

    @tladapt.hookimpl
    def tladapt_check(self, task):
        """Before any run: both domains are classified by one head.

        Raises:
            ConfigError: when the source and target have different label sets (a head each):
                CDAN conditions both domains on predictions over one set of classes.
        """
        if not task.shared_head:
            raise ConfigError("plugins.cdan conditions the discriminator on class predictions, which needs one label "
                              "set for both domains; data.source_classes and data.target_classes differ here")

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        """Build the conditional discriminator (``cdan_discriminator``) for the run's sizes."""
        o = self.options
        d, k = trainer.feature_dim, trainer.num_classes
        randomized = o.map == "randomized" or (o.map == "auto" and d * k > self.MULTILINEAR_MAX)
        self.discriminator = trainer.add_module(
            "cdan_discriminator",
            ConditionalDiscriminator(d, k, o.randomized_dim if randomized else 0, o.hidden, o.dropout), o.lr_mult)

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        """``{"cdan": Term(conditional domain loss, weight)}``."""
        o = self.options
        lam = o.max_lambda * grl_coefficient(trainer.progress, o.gamma)
        features = torch.cat([out.features_s, out.features_t])
        probabilities = torch.cat([out.logits_s, out.logits_t]).detach().softmax(dim=1)
        logits = self.discriminator(grad_reverse(features, lam), probabilities)
        b = out.features_s.shape[0]
        weights = (None, None)
        if o.entropy:
            w = entropy_weights(probabilities)
            weights = (w[:b], w[b:])
            trainer.log("cdan/weight_source", weights[0].mean())
            trainer.log("cdan/weight_target", weights[1].mean())
        loss, accuracy = domain_adversarial_loss(logits[:b], logits[b:], *weights)
        trainer.log("cdan/lambda", lam)
        trainer.log("cdan/disc_acc", accuracy)
        return {"cdan": tladapt.Term(loss, o.weight)}
