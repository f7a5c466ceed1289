"""Backbones (feature extractors): the small ones, torchvision models, a bottleneck.

Every backbone maps ``(b, *input_shape)`` float32 inputs to ``(b, out_features)``
features and exposes ``out_features``; the trainer puts one linear classifier head
on top (the adversarial methods' :class:`DomainDiscriminator` is here too).
:func:`build_backbone` is the one place a config's ``model.backbone`` becomes
a module:

* ``mlp`` / ``lenet`` (:mod:`tladapt.models.small`), trained from scratch;
* ``torchvision:<name>`` (:mod:`tladapt.models.vision`), optionally from ``model.weights``;
* ``module:function``, a user factory.

With ``model.bottleneck = k > 0`` the features go through ``Linear -> BatchNorm1d ->
ReLU`` to ``k`` dimensions (:class:`WithBottleneck`), as TLlib's ``ImageClassifier``
and the DANN / CDAN image experiments (k = 256).
"""

from __future__ import annotations

import importlib
import math

from torch import nn

from tladapt.errors import ConfigError
from tladapt.models.discriminator import DomainDiscriminator
from tladapt.models.small import MLP, LeNet
from tladapt.models.vision import PREFIX, check_torchvision_model, resolve_weights, torchvision_backbone

__all__ = ["MLP", "LeNet", "DomainDiscriminator", "Bottleneck", "WithBottleneck", "build_backbone", "check_model"]


class Bottleneck(nn.Sequential):
    """``Linear(in_features, k) -> BatchNorm1d(k) -> ReLU``: ``(b, in_features)`` -> ``(b, k)``.

    The bottleneck of TLlib's ``ImageClassifier`` (``bottleneck_dim = 256``) and of
    CDAN (Long et al., NeurIPS 2018).
    """

    def __init__(self, in_features: int, k: int):
        super().__init__(nn.Linear(in_features, k), nn.BatchNorm1d(k), nn.ReLU())
        self.out_features = k


class WithBottleneck(nn.Module):
    """A backbone ``net`` followed by a :class:`Bottleneck`; ``out_features`` is the bottleneck's.

    Parameter paths are ``net.*`` and ``bottleneck.*`` (so ``trainer.lr_mult`` can give the
    pretrained ``backbone.net`` its own multiplier).
    """

    def __init__(self, net: nn.Module, k: int):
        super().__init__()
        self.net = net
        self.bottleneck = Bottleneck(net.out_features, k)
        self.out_features = k

    def forward(self, x):
        """``(b, *input_shape)`` -> ``(b, k)``."""
        return self.bottleneck(self.net(x))


def build_backbone(name: str, input_shape: tuple[int, ...], hidden: list[int], dropout: float,
                   weights: str = "", bottleneck: int = 0) -> nn.Module:
    """Build the feature extractor named by the config's ``model.backbone``.

    Args:
        name: ``"auto"`` (``mlp`` for vector inputs, ``lenet`` for images),
            ``"mlp"``, ``"lenet"``, ``"torchvision:<model>"``, or ``"module:function"``
            naming a user function called as ``function(input_shape=..., hidden=...,
            dropout=...)`` that returns an ``nn.Module`` with an ``out_features`` attribute.
        input_shape: one input's shape, e.g. ``(800,)`` or ``(1, 16, 16)``.
        hidden: MLP hidden sizes.
        dropout: dropout probability (mlp, lenet).
        weights: ``model.weights`` (torchvision backbones only; see
            :func:`tladapt.models.vision.torchvision_backbone`).
        bottleneck: ``model.bottleneck``: 0, or the width of a :class:`Bottleneck` on top.

    Raises:
        ValueError: for an unknown name, an unimportable ``module:function``, or a
            module without an integer ``out_features``.
        ConfigError: for torchvision backbones, as ``torchvision_backbone``; ``weights``
            with another backbone.
    """
    _weights_need_torchvision(name, weights)
    net = _feature_extractor(name, input_shape, hidden, dropout, weights)
    return WithBottleneck(net, bottleneck) if bottleneck else net


def _weights_need_torchvision(name: str, weights: str) -> None:
    if weights and not name.startswith(PREFIX):
        raise ConfigError(f"model.weights needs a torchvision backbone, got model.backbone = {name!r} "
                          "(model.init_from starts from an earlier tladapt run)")


def _feature_extractor(name, input_shape, hidden, dropout, weights) -> nn.Module:
    if name == "auto":
        name = "mlp" if len(input_shape) == 1 else "lenet"
    if name == "mlp":
        return MLP(math.prod(input_shape), hidden, dropout)
    if name == "lenet":
        return LeNet(input_shape, dropout)
    if name.startswith(PREFIX):
        return torchvision_backbone(name[len(PREFIX):], weights)
    if ":" not in name:
        raise ValueError(
            f"unknown model.backbone {name!r}: expected 'auto', 'mlp', 'lenet', 'torchvision:<model>' "
            "or 'module:function'"
        )
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model.backbone {name!r} could not be imported: {err}") from err
    if not callable(factory):
        raise ValueError(f"model.backbone {name!r} names a {type(factory).__name__}, expected a function (or an "
                         f"nn.Module class) called as {attr}(input_shape=..., hidden=..., dropout=...)")
    try:
        backbone = factory(input_shape=tuple(input_shape), hidden=list(hidden), dropout=dropout)
    except Exception as err:  # the user's code: say which key ran it
        raise ValueError(f"model.backbone {name!r}: {attr}(input_shape={tuple(input_shape)}, ...) raised "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(backbone, nn.Module) or not isinstance(getattr(backbone, "out_features", None), int):
        raise ValueError(
            f"model.backbone {name!r} must return an nn.Module with an int attribute out_features"
        )
    return backbone


def check_model(model) -> None:
    """Check ``[model]`` before any run: a torchvision backbone exists and its weights file is there.

    Raises:
        ConfigError: as :func:`tladapt.models.vision.check_torchvision_model` and
            :func:`tladapt.models.vision.resolve_weights`, or ``model.weights`` with a
            backbone that is not a torchvision one.
    """
    _weights_need_torchvision(model.backbone, model.weights)
    if not model.backbone.startswith(PREFIX):
        return
    name = model.backbone[len(PREFIX):]
    check_torchvision_model(name)
    if model.weights:
        resolve_weights(name, model.weights)
