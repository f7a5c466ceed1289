"""Checks of what plugins hand the trainer: shapes of source weights and loss terms, owners of tags.

Shapes are static in a run, so the checks of values' shapes run on each process's first
training step only (:attr:`Contract.first_step`) and read no tensor: they cost nothing
afterwards and never sync with the device. Code that ``torch.compile`` traces
(``trainer.compile = "torch"``: the forward and loss terms) is not checked: the checks are
Python-side bookkeeping that would break the graph. ``"off"`` (the default) and the eager
warm-up steps of ``"cudagraph"`` check. Tags are owned by the first plugin (or the
trainer) that writes them; a second writer is an error naming both, found by looking up
which plugin's hook implementation is on the call stack when a tag is first written.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from tladapt.errors import PluginError
from tladapt.manager import hook_frames

if TYPE_CHECKING:
    import pluggy

    from tladapt.plugin import Term

__all__ = ["Contract", "TRAINER"]

#: The owner name of what the trainer itself writes.
TRAINER = "the trainer"


class Contract:
    """Boundary checks of one run's plugins.

    Args:
        pm: the run's plugin manager (its hook implementations identify the writers).
    """

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.first_step = True
        self._owners: dict[str, str] = {}

    # ------------------------------------------------------------------ values, first step only
    def source_weights(self, plugin: str, weights: Any, batch_size: int) -> None:
        """``tladapt_source_weights`` must return a floating ``(batch_size,)`` tensor (a ``(b, 1)``
        tensor would broadcast the per-sample losses to ``(b, b)``).

        Raises:
            PluginError: naming the plugin, the expected and the returned shape.
        """
        if not self.first_step or torch.compiler.is_compiling():
            return
        if not isinstance(weights, torch.Tensor) or not weights.is_floating_point() \
                or tuple(weights.shape) != (batch_size,):
            got = f"a {weights.dtype} tensor of shape {tuple(weights.shape)}" if isinstance(weights, torch.Tensor) \
                else f"a {type(weights).__name__}"
            raise PluginError(f"plugin {plugin!r}: tladapt_source_weights must return a floating tensor of shape "
                              f"({batch_size},), one weight per source sample of the batch; got {got}")

    def term(self, plugin: str, name: str, term: Term) -> None:
        """A loss term's value is a 0-dim floating tensor; its weight a number or a 0-dim tensor.

        Raises:
            PluginError: naming the plugin, the term and what it returned.
        """
        if not self.first_step or torch.compiler.is_compiling():
            return
        value, weight = term.value, term.weight
        if not isinstance(value, torch.Tensor) or value.ndim != 0 or not value.is_floating_point():
            got = f"shape {tuple(value.shape)}, {value.dtype}" if isinstance(value, torch.Tensor) \
                else type(value).__name__
            raise PluginError(f"plugin {plugin!r}: loss term {name!r} must be a 0-dim floating tensor (reduce it, "
                              f"e.g. .mean()), got {got}")
        if isinstance(weight, torch.Tensor) and weight.ndim != 0 or \
                not isinstance(weight, (int, float, torch.Tensor)) or isinstance(weight, bool):
            got = f"shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise PluginError(f"plugin {plugin!r}: loss term {name!r} must have a number or a 0-dim tensor as its "
                              f"weight, got {got}")

    # ------------------------------------------------------------------ tags
    def tag(self, tag: str, owner: str | None = None) -> None:
        """Record who writes ``tag`` (default: the plugin whose hook is on the call stack, else
        the trainer). Known tags are looked up only during the first step.

        Raises:
            PluginError: when a second writer writes an owned tag, naming both.
        """
        if (not self.first_step and tag in self._owners) or torch.compiler.is_compiling():
            return
        if owner is None:
            owner = self.writer(sys._getframe(2))
        first = self._owners.setdefault(tag, owner)
        if first != owner:
            raise PluginError(f"the tag {tag!r} is written by both {_who(first)} and {_who(owner)}: "
                              f"each writer needs its own tag (e.g. '<plugin>/<name>')")

    def writer(self, frame) -> str:
        """The plugin whose hook implementation is innermost on the stack above ``frame``."""
        found = hook_frames(self.pm, frame)
        return found[-1][0] if found else TRAINER

    def evaluate(self, metrics: dict[str, float], **kwargs) -> None:
        """Call every ``tladapt_evaluate`` implementation in pluggy's order, recording who adds
        each metric; a plugin that replaces a metric another writer set is an error.

        Raises:
            PluginError: naming the metric and both writers.
        """
        owners = {key: TRAINER for key in metrics}
        for impl in reversed(self.pm.hook.tladapt_evaluate.get_hookimpls()):
            before = dict(metrics)
            impl.function(*[kwargs["trainer"] if a == "trainer" else metrics if a == "metrics" else kwargs[a]
                            for a in impl.argnames])
            for key, value in metrics.items():
                if key in before and value is not before[key]:
                    raise PluginError(f"the metric {key!r} is written by both {_who(owners[key])} and "
                                      f"{_who(impl.plugin_name)}")
                owners.setdefault(key, impl.plugin_name)
        self._metric_owners = owners

    def metric_tag(self, key: str, tag: str) -> None:
        """The tag of metric ``key`` (after :meth:`evaluate`) belongs to the metric's writer."""
        self.tag(tag, getattr(self, "_metric_owners", {}).get(key, TRAINER))


def _who(owner: str) -> str:
    return owner if owner == TRAINER else f"plugin {owner!r}"
