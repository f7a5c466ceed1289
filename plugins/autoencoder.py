"""Denoising autoencoder: learn the backbone from unlabelled inputs by reconstructing them.

Self-taught learning (Raina, Battle, Lee, Packer & Ng, "Self-taught Learning: Transfer
Learning from Unlabeled Data", ICML 2007) learns a representation from unlabelled data of
another distribution and transfers it to a labelled target task. Raina et al. used sparse
coding; this plugin uses the denoising autoencoder of Vincent, Larochelle, Bengio &
Manzagol ("Extracting and Composing Robust Features with Denoising Autoencoders", ICML
2008): corrupt the input (masking noise, or Gaussian noise), encode it with the backbone,
decode it with a small MLP, and regress the clean input (mean squared error).

Typical use is a pre-training run on an unlabelled source (``data.source_labels = false``,
``trainer.source_weight`` unused), saved as a run whose backbone a target run starts from
(``--init-from``) or whose features a linear classifier uses (feature-based transfer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import tladapt
from tladapt.selfsup import mask_noise


def mlp(in_features: int, hidden: list[int], out_features: int) -> nn.Sequential:
    """``Linear -> ReLU`` per hidden size, then ``Linear(out_features)``:
    ``(b, in_features)`` float -> ``(b, out_features)``."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_features, size), nn.ReLU()]
        in_features = size
    return nn.Sequential(*layers, nn.Linear(in_features, out_features))


def domain_inputs(batch, on: str) -> torch.Tensor:
    """The step's unlabelled inputs of ``on`` (``source``, ``target`` or ``both``), ``(b or 2b, *shape)``."""
    if on == "both":
        return torch.cat([batch.x_s, batch.x_t])
    return batch.x_s if on == "source" else batch.x_t


class Autoencoder:
    """The ``autoencoder`` plugin: loss term ``reconstruction`` (MSE of the decoded corrupted input).

    Registers the module ``decoder`` (``feature_dim -> hidden -> prod(input_shape)``). No
    labels are read. Logs nothing besides its loss.
    """

    module_names = ("decoder",)  # what tladapt_setup registers (trainer.lr_mult is checked before any run)

    @dataclass
    class Options:
        """``[plugins.autoencoder]`` options."""

        weight: float = tladapt.option(1.0, "coefficient of the reconstruction loss", ge=0)
        noise: Literal["mask", "gaussian"] = tladapt.option(
            "mask", "corruption: mask (zero entries) or gaussian (add N(0, level^2))")
        level: float = tladapt.option(0.3, "masking probability, or the Gaussian noise's std", ge=0, lt=1)
        hidden: list[int] = tladapt.option([256], "decoder hidden sizes", gt=0)
        on: Literal["source", "target", "both"] = tladapt.option(
            "source", "whose unlabelled inputs it reconstructs: the source (self-taught), the target, or both")

    def __init__(self, options: Options):
        self.options = options

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        self.shape = trainer.source.input_shape
        self.decoder = trainer.add_module("decoder", mlp(trainer.feature_dim, self.options.hidden, math.prod(self.shape)))

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, batch):
        o = self.options
        x = domain_inputs(batch, o.on)
        noisy = mask_noise(x, o.level) if o.noise == "mask" else x + o.level * torch.randn_like(x)
        recon = self.decoder(trainer.backbone(noisy))
        return {"reconstruction": tladapt.Term(F.mse_loss(recon, x.flatten(1)), o.weight)}
