"""The pytorch-adapt bridge: any loss layer of pytorch-adapt as a tladapt loss term, from a config.

pytorch-adapt (Musgrave, Belongie & Lim, "PyTorch Adapt", 2022;
https://github.com/KevinMusgrave/pytorch-adapt) implements many domain-adaptation losses
as ``torch.nn.Module`` layers in ``pytorch_adapt.layers``. This plugin builds the layers
a config names, with their keyword arguments, calls each on the outputs of the trainer's
forward pass it asks for, and adds the result as a loss term, so that trying one of
pytorch-adapt's losses needs no code::

    [plugins.pytorch_adapt.terms.afn]
    layer = "AdaptiveFeatureNorm"          # or its alias "AFNLoss"
    kwargs = { step_size = 1.0 }
    inputs = ["features_s"]                # one positional argument per entry
    weight = 0.05

    [plugins.pytorch_adapt.terms.jmmd]
    layer = "MMDLoss"
    kwargs = { kernel_scales = { tensor = [0.5, 1.0, 2.0] }, mmd_type = "quadratic" }
    inputs = [["features_s", "softmax_s"], ["features_t", "softmax_t"]]   # lists: JMMD

pytorch-adapt is an optional extra (``pip install 'tladapt[pytorch-adapt]'``); the core
never imports it, and without it a config naming this plugin fails before any run with
a message saying how to install it.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import tladapt
from tladapt.errors import ConfigError, PluginError
from tladapt.options import validate_dataclass

#: What a term may read, by name: the trainer's :class:`~tladapt.trainer.Outputs` and
#: the softmax of their logits (computed by the plugin when asked for).
INPUTS = ("features_s", "features_t", "logits_s", "logits_t", "softmax_s", "softmax_t")

#: The names the field uses for two layers (pytorch-adapt's hooks are ``AFNHook``, ``BSPHook``).
ALIASES = {"AFNLoss": "AdaptiveFeatureNorm", "BSPLoss": "BatchSpectralLoss"}

INSTALL = ("plugins.pytorch_adapt needs the pytorch-adapt package, an optional extra of tladapt: "
           "pip install 'tladapt[pytorch-adapt]' (on a CPU-only machine, scripts/install.sh --test installs it "
           "with --no-deps, so that its torchvision requirement does not replace the CPU torch)")


def pytorch_adapt_layers():
    """The ``pytorch_adapt.layers`` module.

    Raises:
        ConfigError: when pytorch-adapt is not installed (or cannot be imported),
            saying how to install it.
    """
    try:
        from pytorch_adapt import layers
    except ImportError as err:
        raise ConfigError(f"{INSTALL}; importing it failed: {err}") from None
    return layers


def loss_layer_names(layers) -> list[str]:
    """The ``nn.Module`` classes of ``pytorch_adapt.layers`` (the bridge accepts any of them)."""
    return sorted(name for name, obj in vars(layers).items()
                  if inspect.isclass(obj) and issubclass(obj, nn.Module) and not name.startswith("_"))


@dataclass
class BridgeTerm:
    """One ``[plugins.pytorch_adapt.terms.<name>]`` table: a layer, its arguments, its inputs, its weight."""

    layer: str = tladapt.option("", "class name in pytorch_adapt.layers, e.g. 'MCCLoss' (aliases: AFNLoss, BSPLoss)")
    kwargs: dict[str, Any] = tladapt.option(
        {}, "keyword arguments of the layer's constructor; {tensor = [...]} passes a tensor")
    inputs: list[str | list[str]] = tladapt.option(
        [], f"one positional argument per entry, each one of {', '.join(INPUTS)} or a list of them (a list "
            f"argument, e.g. MMDLoss's JMMD)")
    weight: float = tladapt.option(1.0, "coefficient of the term in the total loss", ge=0)


def _tensorise(value: Any) -> Any:
    """``{tensor = [...]}`` becomes ``torch.tensor([...])`` (e.g. MMDLoss's ``kernel_scales``); the rest
    is passed as it is (TOML gives numbers, strings, booleans, lists and tables)."""
    if isinstance(value, dict) and set(value) == {"tensor"}:
        return torch.tensor(value["tensor"])
    return value


class PytorchAdapt:
    """The bridge plugin: one loss term per ``[plugins.pytorch_adapt.terms.<name>]`` table.

    Each step, for each term: its ``inputs`` are gathered from the trainer's forward pass
    (``features_*``, ``logits_*`` as they are, ``softmax_*`` = ``softmax(logits_*)``), the
    layer is called with them as positional arguments, and its value becomes
    ``{name: Term(value, weight)}``, logged as ``loss/<name>``. A layer with parameters or
    buffers is registered with the trainer as module ``pytorch_adapt_<name>`` (optimised,
    checkpointed, on the device).

    The plugin runs source-free (``data.source_free``) when every term reads target
    outputs only. What a layer does inside is pytorch-adapt's: tladapt checks neither its
    math nor whether it reads values back to the host (tests/test_pytorch_adapt_bridge.py
    compares each offered layer with a direct call, and with tladapt's own version where
    there is one).

    Raises:
        ConfigError: at construction, without pytorch-adapt (how to install it), for no
            terms, an unknown layer (listing the layers), kwargs the layer rejects, or an
            unknown or missing input, each naming ``plugins.pytorch_adapt.terms.<name>``.
        PluginError: at a step, when a layer returns something other than one number.
    """

    @dataclass
    class Options:
        """``[plugins.pytorch_adapt]`` options."""

        terms: dict[str, dict[str, Any]] = tladapt.option(
            {}, "one table per loss term, [plugins.pytorch_adapt.terms.<name>] with layer, kwargs, inputs, weight")

    def __init__(self, options: Options):
        layers = pytorch_adapt_layers()
        if not options.terms:
            raise ConfigError("plugins.pytorch_adapt has no terms: add a table [plugins.pytorch_adapt.terms.<name>] "
                              "with layer = '<a pytorch_adapt.layers class>' and inputs = [...]")
        self.terms: dict[str, BridgeTerm] = {}
        self.layers: dict[str, nn.Module] = {}
        for name, table in options.terms.items():
            where = f"plugins.pytorch_adapt.terms.{name}"
            term = validate_dataclass(BridgeTerm, table, where)
            self.layers[name] = self._build(layers, term, where)
            self._check_inputs(term, where)
            self.terms[name] = term
        #: what tladapt_setup registers (trainer.lr_mult is checked before any run): the layers with state
        self.module_names = tuple(f"pytorch_adapt_{name}" for name, layer in self.layers.items() if _has_state(layer))
        used = {i for t in self.terms.values() for i in _flatten(t.inputs)}
        self.source_free = all(i.endswith("_t") for i in used)

    @staticmethod
    def _build(layers, term: BridgeTerm, where: str) -> nn.Module:
        name = ALIASES.get(term.layer, term.layer)
        known = loss_layer_names(layers)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{where}.layer = {term.layer!r} is not a layer of pytorch_adapt.layers{hint}: "
                              f"expected one of {', '.join(known)} or an alias {', '.join(ALIASES)}")
        kwargs = {k: _tensorise(v) for k, v in term.kwargs.items()}
        try:
            return getattr(layers, name)(**kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}.kwargs: pytorch_adapt.layers.{name}({', '.join(kwargs)}) failed: {err}") from None

    @staticmethod
    def _check_inputs(term: BridgeTerm, where: str) -> None:
        if not term.inputs:
            raise ConfigError(f"{where}.inputs is empty: name the outputs the layer takes, from {', '.join(INPUTS)}")
        unknown = [i for i in _flatten(term.inputs) if i not in INPUTS]
        if unknown:
            raise ConfigError(f"{where}.inputs: unknown output(s) {', '.join(map(repr, unknown))}: expected "
                              f"{', '.join(INPUTS)}")

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        """Register layers that hold parameters or buffers; check that the run has the inputs.

        Raises:
            ConfigError: a term reading source outputs in a source-free run (also refused
                earlier, before any run, through ``source_free``).
        """
        if trainer.source is None and not self.source_free:
            raise ConfigError("plugins.pytorch_adapt reads source outputs, but the run is source-free")
        for name, layer in self.layers.items():
            if _has_state(layer):
                self.layers[name] = trainer.add_module(f"pytorch_adapt_{name}", layer)

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        """``{name: Term(layer(*inputs), weight)}`` for every configured term."""
        cache: dict[str, torch.Tensor] = {}

        def get(key: str) -> torch.Tensor:
            if key not in cache:
                part = "logits" + key[len("softmax"):] if key.startswith("softmax") else key
                value = getattr(out, part)
                cache[key] = value.softmax(dim=1) if key.startswith("softmax") else value
            return cache[key]

        terms = {}
        for name, term in self.terms.items():
            args = [[get(k) for k in a] if isinstance(a, list) else get(a) for a in term.inputs]
            value = self.layers[name](*args)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise PluginError(f"plugins.pytorch_adapt.terms.{name}: {term.layer} returned {shape}, expected one "
                                  f"number (a loss; e.g. EntropyLoss needs return_mean = true)")
            terms[name] = tladapt.Term(value.reshape(()), term.weight)
        return terms


def _has_state(layer: nn.Module) -> bool:
    """Whether a layer holds parameters or buffers (it is registered with the trainer then)."""
    return any(True for _ in layer.parameters()) or any(True for _ in layer.buffers())


def _flatten(inputs: list) -> list[str]:
    return [k for a in inputs for k in (a if isinstance(a, list) else [a])]


__all__ = ["PytorchAdapt", "BridgeTerm", "INPUTS", "ALIASES", "pytorch_adapt_layers", "loss_layer_names"]
