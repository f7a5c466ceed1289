"""What a validator is, how plugins contribute them, and the set one run computes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import pluggy
import torch
from threadpoolctl import threadpool_limits

from tladapt.errors import ConfigError, PluginError
from tladapt.manager import call_each
from tladapt.validators.outputs import EvalOutputs, Subsamples, collect_outputs

Direction = Literal["max", "min"]

#: The TensorBoard tag (and evaluation-record key) prefix of validator scores.
TAG = "validator/"


class Validator:
    """A label-free model-selection score, computed from one :class:`EvalOutputs` bundle.

    Subclass it (a frozen dataclass when it has parameters), set the class attributes and
    implement ``__call__``; return instances from a plugin's ``tladapt_validators`` hook.
    The docstring of a subclass names its paper and gives its exact formula; its first line
    is what ``tladapt plugins`` shows.

    Attributes:
        name: the validator's name, unique among the run's validators; its scores are logged
            as ``validator/<name>``. Lower-case letters, digits and ``_``.
        direction: ``"max"`` when a higher score means a better model, ``"min"`` when lower.
        needs_source_val: True when it reads the labelled held-out source split (it is then
            skipped, or refused when named, in runs without one: ``data.source_val_fraction =
            0`` or ``data.source_labels = false``).
    """

    name: ClassVar[str]
    direction: ClassVar[Direction]
    needs_source_val: ClassVar[bool] = False

    def __call__(self, out: EvalOutputs) -> float:
        """The score of the model that produced ``out`` (a float; NaN when undefined)."""
        raise NotImplementedError


def better(a: float, b: float, direction: Direction) -> bool:
    """Whether score ``a`` is strictly better than ``b`` in ``direction``; NaN is never better,
    and anything finite is better than NaN."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if direction == "max" else a < b


def tag_direction(tag: str, directions: dict[str, Direction], what: str) -> Direction:
    """The direction in which a recorded tag improves: the validator's own for
    ``validator/<name>``, ``"max"`` for accuracies (``metrics/*_acc``, ``oracle/*_acc``).

    Args:
        tag: e.g. ``"validator/im"``.
        directions: ``{name: direction}`` of the run's validators.
        what: the option naming the tag, for the error (``"trainer.keep_best"``).

    Raises:
        ConfigError: for a tag that is neither one of the validators nor an accuracy.
    """
    name = tag.removeprefix(TAG)
    if tag.startswith(TAG) and name in directions:
        return directions[name]
    if tag.split("/")[0] in ("metrics", "oracle") and tag.endswith("_acc"):
        return "max"
    raise ConfigError(f"{what} = {tag!r}: expected 'validator/<name>' with one of the run's validators "
                      f"({', '.join(directions) or 'none'}) or an accuracy tag such as 'metrics/source_val_acc'")


@dataclass(frozen=True)
class Contributed:
    """A validator with the plugin that contributed it (``"tladapt"`` for the built-in ones)."""

    validator: Validator
    plugin: str


def available_validators(pm: pluggy.PluginManager) -> dict[str, Contributed]:
    """Every validator the plugins registered in ``pm`` contribute through
    ``tladapt_validators``, by name, in registration order.

    Raises:
        PluginError: for a hook result that is not a list of :class:`Validator`, a malformed
            name or direction, or two validators of the same name (naming both plugins).
    """
    found: dict[str, Contributed] = {}
    for plugin, result in reversed(call_each(pm.hook.tladapt_validators)):
        if not isinstance(result, (list, tuple)):
            raise PluginError(f"plugin {plugin!r}: tladapt_validators must return a list of "
                              f"tladapt.validators.Validator, got {type(result).__name__}")
        for v in result:
            if not isinstance(v, Validator):
                raise PluginError(f"plugin {plugin!r}: tladapt_validators returned {v!r}, "
                                  f"not a tladapt.validators.Validator")
            name = getattr(v, "name", "")
            if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum() or name != name.lower():
                raise PluginError(f"plugin {plugin!r}: validator name {name!r} must be lower-case letters, digits and _")
            if getattr(v, "direction", None) not in ("max", "min"):
                raise PluginError(f"plugin {plugin!r}: validator {name!r} has direction "
                                  f"{getattr(v, 'direction', None)!r}, expected 'max' or 'min'")
            if name in found:
                raise PluginError(f"validator {name!r} is contributed by both {found[name].plugin!r} and {plugin!r}")
            found[name] = Contributed(v, plugin)
    return found


def choose_validators(available: dict[str, Contributed], names: list[str], has_source_val: bool) -> list[Validator]:
    """The validators a run computes: ``names`` (``validation.validators``), or every available
    one when ``names`` is empty (those needing a source split only when there is one).

    Raises:
        ConfigError: for an unknown name (listing the available ones), or a named validator
            that needs the held-out source split in a run without one.
    """
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"validation.validators names unknown validator(s) {', '.join(unknown)}: "
                          f"available are {', '.join(available) or '(none)'}")
    if not names:
        return [c.validator for c in available.values() if has_source_val or not c.validator.needs_source_val]
    missing = [n for n in names if available[n].validator.needs_source_val and not has_source_val]
    if missing:
        raise ConfigError(f"validation.validators {', '.join(missing)} read the labelled held-out source split, "
                          f"but there is none (data.source_val_fraction = 0 or data.source_labels = false): "
                          f"hold one out or drop them")
    return [available[n].validator for n in names]


class RunValidators:
    """The validators of one run and the fixed subsamples they read.

    Args:
        validators: from :func:`choose_validators`.
        max_samples: the subsample size per domain (``validation.max_samples``).
        seed: the run's seed (subsamples and the validators' own randomness).
    """

    def __init__(self, validators: list[Validator], max_samples: int, seed: int):
        self.validators, self.max_samples, self.seed = validators, max_samples, seed
        self._subsamples: Subsamples | None = None

    @property
    def directions(self) -> dict[str, Direction]:
        """``{name: direction}`` of the run's validators (recorded in ``results.json``)."""
        return {v.name: v.direction for v in self.validators}

    def scores(self, trainer) -> dict[str, float]:
        """``{"validator/<name>": score}`` of the current model (call in eval mode, no grad).

        The subsamples are drawn at the first call, after ``tladapt_fit_start`` may have
        replaced the domains, and kept for the rest of the run.

        Raises:
            PluginError: when a validator fails or returns something that is not a number.
        """
        if not self.validators:
            return {}
        if self._subsamples is None:
            self._subsamples = Subsamples.draw(trainer.source, trainer.source_val, trainer.target,
                                               self.max_samples, self.seed)
        out = collect_outputs(trainer.backbone, trainer.head, trainer.source_head, trainer.source, trainer.source_val,
                              trainer.target, self._subsamples, self.seed)
        scores = {}
        # scikit-learn's BLAS uses the run's thread count too (torch's, set from trainer.threads):
        # on a busy CPU, unbounded BLAS threads made DEV's logistic regression 100x slower
        with threadpool_limits(limits=torch.get_num_threads()):
            for v in self.validators:
                scores[TAG + v.name] = self._score(v, out)
        return scores

    @staticmethod
    def _score(v: Validator, out: EvalOutputs) -> float:
        try:
            value = v(out)
        except Exception as err:
            raise PluginError(f"validator {v.name!r} failed: {type(err).__name__}: {err}") from err
        if not isinstance(value, (int, float)):
            raise PluginError(f"validator {v.name!r} returned {type(value).__name__}, expected a float")
        return float(value)
