"""SimCLR: learn the backbone from unlabelled inputs by contrasting two random views.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020: two random views of each sample go through the backbone and a
projection MLP; the NT-Xent loss (:func:`tladapt.selfsup.nt_xent`) pulls a sample's two
projections together and pushes the other ``2b - 2`` away. The views are made on the device:

* feature vectors: SCARF's corruption (Bahri et al., ICLR 2022), a ``corruption`` fraction of
  the features replaced by draws from their batch marginal (:func:`tladapt.selfsup.corrupt_features`);
* images ``(c, h, w)``: a random zoom, rotation and shift plus pixel noise
  (:func:`tladapt.selfsup.jitter_images`).

For self-taught learning (Raina et al., ICML 2007) run it on an unlabelled source
(``data.source_labels = false``) and transfer the backbone (``--init-from``, or feature-based).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

import tladapt
from tladapt.errors import ConfigError
from tladapt.selfsup import corrupt_features, jitter_images, nt_xent
from tladapt_plugins.autoencoder import domain_inputs, mlp


class SimCLR:
    """The ``simclr`` plugin: loss term ``contrastive`` (NT-Xent over two views of each input).

    Registers the module ``projection`` (``feature_dim -> hidden -> out``). No labels are read.
    """

    module_names = ("projection",)  # what tladapt_setup registers (trainer.lr_mult is checked before any run)

    @dataclass
    class Options:
        """``[plugins.simclr]`` options."""

        weight: float = tladapt.option(1.0, "coefficient of the contrastive loss", ge=0)
        temperature: float = tladapt.option(0.5, "NT-Xent temperature τ", gt=0)
        hidden: list[int] = tladapt.option([256], "projection head hidden sizes", gt=0)
        out: int = tladapt.option(64, "projection dimension", gt=0)
        corruption: float = tladapt.option(0.6, "vectors: fraction of features replaced (SCARF)", ge=0, lt=1)
        scale: list[float] = tladapt.option([0.7, 1.0], "images: range of the zoom's side fraction", gt=0, le=1)
        rotation: float = tladapt.option(15.0, "images: maximum rotation in degrees", ge=0, le=180)
        shift: float = tladapt.option(0.125, "images: maximum shift as a fraction of the side", ge=0, le=1)
        noise: float = tladapt.option(0.05, "images: std of the additive pixel noise", ge=0)
        on: Literal["source", "target", "both"] = tladapt.option(
            "source", "whose unlabelled inputs it contrasts: the source (self-taught), the target, or both")

    def __init__(self, options: Options):
        if len(options.scale) != 2 or options.scale[0] > options.scale[1]:
            raise ConfigError(f"plugins.simclr.scale must be [low, high] with low <= high, got {options.scale}")
        self.options = options

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        o = self.options
        self.images = len(trainer.source.input_shape) == 3
        self.projection = trainer.add_module("projection", mlp(trainer.feature_dim, o.hidden, o.out))

    def view(self, x):
        """One random view of a batch (device tensor ops)."""
        o = self.options
        if self.images:
            return jitter_images(x, tuple(o.scale), o.rotation, o.shift, o.noise)
        return corrupt_features(x.flatten(1), o.corruption).view_as(x)

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, batch):
        x = domain_inputs(batch, self.options.on)
        z1, z2 = self.projection(trainer.backbone(torch.cat([self.view(x), self.view(x)]))).chunk(2)
        return {"contrastive": tladapt.Term(nt_xent(z1, z2, self.options.temperature), self.options.weight)}
