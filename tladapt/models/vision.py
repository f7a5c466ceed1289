"""torchvision classification models as backbones, with weights from local files only.

``model.backbone = "torchvision:<name>"`` builds any model of
``torchvision.models.list_models(module=torchvision.models)`` (ResNets, ResNeXts,
Wide ResNets, DenseNets, VGG, MobileNets, EfficientNets, RegNets, ConvNeXts, ViTs,
Swin, ...) **without** weights (``weights=None``: nothing can be fetched), loads
``model.weights`` into it, and replaces its last linear layer (the ImageNet classifier)
by the identity, so the backbone's output, and the trainer's ``out.features_*``, are
the penultimate features (2048-d for ResNet-50, 512 for ResNet-18). SqueezeNet, whose
classifier is a convolution, ends in global average pooling instead (512-d).

``model.weights`` is a state-dict file (``torch.save(model.state_dict())``, also inside
a ``"state_dict"`` or ``"model"`` entry, a ``"module."`` prefix stripped), read with
``torch.load(weights_only=True)``; or the name of torchvision weights (``DEFAULT``,
``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ...) whose file is taken from torchvision's local
cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``), when it is
there. A missing file is an error that says which file to put where. Nothing is ever
downloaded.

torchvision is the optional ``[vision]`` extra: this module imports it only when such a
backbone is built or checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tladapt.errors import ConfigError

__all__ = ["PREFIX", "torchvision_backbone", "resolve_weights", "load_state_file", "check_torchvision_model"]

PREFIX = "torchvision:"

_AUX = ("googlenet", "inception_v3")  # built without their auxiliary classifiers


def _torchvision():
    try:
        import torchvision
    except ImportError as err:
        raise ConfigError("model.backbone 'torchvision:...' needs torchvision: pip install 'tladapt[vision]' "
                          f"(or scripts/install.sh --vision); importing it failed: {err}") from None
    return torchvision


def check_torchvision_model(name: str) -> None:
    """Check that ``name`` is a torchvision classification model.

    Raises:
        ConfigError: without torchvision, or for an unknown name (listing a few valid ones).
    """
    tv = _torchvision()
    models = tv.models.list_models(module=tv.models)
    if name not in models:
        raise ConfigError(f"model.backbone 'torchvision:{name}': not a torchvision classification model; "
                          f"expected one of {', '.join(sorted(models)[:12])}, ... ({len(models)} in all)")


def resolve_weights(name: str, weights: str) -> Path:
    """The file that ``model.weights`` names for model ``name``.

    Args:
        name: the torchvision model name, e.g. ``"resnet50"``.
        weights: a file path, or a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V2``, ...).

    Raises:
        ConfigError: for a path that is not a file, an unknown weights name, or
            torchvision weights whose file is not in the local cache; each message
            says where the file must go.
    """
    path = Path(weights).expanduser()
    looks_like_path = os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".ckpt"))
    if path.is_file():
        return path
    if looks_like_path:
        raise ConfigError(f"model.weights = {weights!r}: no such file. Put the state dict of a {name} there "
                          f"(torch.save(model.state_dict(), path)); tladapt never downloads weights")
    tv = _torchvision()
    enum = tv.models.get_model_weights(name)
    if weights not in enum.__members__ and weights != "DEFAULT":
        raise ConfigError(f"model.weights = {weights!r}: neither a file nor a weights name of {name} "
                          f"(expected a path, DEFAULT or one of {', '.join(enum.__members__)})")
    entry = getattr(enum, weights)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    file = cache / os.path.basename(entry.url)
    if not file.is_file():
        raise ConfigError(f"model.weights = {weights!r}: {entry} is not in torchvision's local cache. Put "
                          f"{file.name} into {cache} (it is {entry.url}; copy it from a machine that has it), "
                          f"or set model.weights to a state-dict file. tladapt never downloads weights")
    return file


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``weights_only=True``; ``state_dict``/``model`` entries and
    a DataParallel ``module.`` prefix unwrapped).

    Raises:
        ConfigError: when the file does not hold a dict of tensors.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with code, a truncated file, not a torch file
        raise ConfigError(f"model.weights: cannot read {path} as a state dict: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.weights: {path} does not hold a state dict (a dict of tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """The dotted name and module of the model's last ``nn.Linear`` (its classifier)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no linear classifier to remove")
    return last


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def torchvision_backbone(name: str, weights: str = "") -> nn.Module:
    """torchvision model ``name`` without its classifier, optionally with ``weights`` loaded.

    Args:
        name: a torchvision classification model, e.g. ``"resnet50"``.
        weights: ``""`` (PyTorch's default random initialisation, under the run's seed),
            a state-dict file, or a torchvision weights name read from the local cache
            (:func:`resolve_weights`).

    Returns:
        The model with its last linear layer replaced by ``nn.Identity`` (SqueezeNet:
        its classifier by global average pooling), mapping ``(b, 3, h, w)`` float32 images
        (ImageNet-normalised for pretrained weights) to ``(b, out_features)``; it has an
        int attribute ``out_features``.

    Raises:
        ConfigError: as :func:`check_torchvision_model` and :func:`resolve_weights`, or
            when the file's keys do not fit the model (listing missing and unexpected keys).
    """
    check_torchvision_model(name)
    tv = _torchvision()
    kwargs = {"aux_logits": False, "init_weights": True} if name in _AUX else {}
    model = tv.models.get_model(name, weights=None, **kwargs)  # never a weights enum: nothing to fetch
    if name.startswith("squeezenet"):
        head_name, out_features = "classifier", model.classifier[1].in_channels
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    else:
        head_name, linear = _classifier(model)
        out_features, head = linear.in_features, nn.Identity()
    if weights:
        path = resolve_weights(name, weights)
        state = load_state_file(path)
        if name in _AUX:
            state = {k: v for k, v in state.items() if not k.startswith("Aux")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(head_name + ".")]  # a file without the classifier is fine
        if missing or unexpected:
            raise ConfigError(f"model.weights {str(path)!r} does not fit torchvision:{name}: "
                              f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                              f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    _replace(model, head_name, head)
    model.out_features = out_features
    return model
