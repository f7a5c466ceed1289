"""What ``model.init_from`` loads from an earlier run's checkpoint into a new model.

One rule, applied twice with the same function: before any run directory exists
(:mod:`tladapt.preflight`, on the model's ``meta``-device shapes) and when the trainer
loads the weights (:meth:`tladapt.trainer.Trainer._init_from`), so what was checked is
what loads:

* **the backbone loads whole or not at all**: the checkpoint's ``backbone.*`` entries
  must be exactly the model's (every parameter and buffer, same shapes). A backbone
  that another ``model.backbone`` / ``hidden`` / ``bottleneck`` / input shape built is
  refused, naming the entries this model lacks, those the checkpoint lacks, and the
  shapes that differ; nothing loads half a network silently.
* **a head loads only from the checkpoint's head that predicts the same class names**,
  in the same order (the checkpoint's ``classes``; a checkpoint without ``classes``, from
  before they were recorded, offers its ``head`` for the model's ``head``). Every other
  head of the model starts new, and the report says why. A matched head must have the
  model's head's shape.
* **other modules of the checkpoint are left behind**, and listed: a self-taught run's
  autoencoder ``decoder`` or SimCLR ``projection``, a discriminator, a multi-task head,
  an untrained or other-class head. They belong to the pre-training objective, not to
  the model a new run builds (whose plugins register their own modules after this).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from tladapt.errors import ConfigError

__all__ = ["InitPlan", "matching_head", "plan_init"]

#: Entries named in a message before "and N more".
_SHOWN = 6


@dataclass(frozen=True)
class InitPlan:
    """What ``model.init_from`` loads, per module of the new model.

    Attributes:
        states: module name (``"backbone"``, ``"head"``, ``"source_head"``) -> the
            ``state_dict`` it loads (keys relative to the module, CPU tensors); a module
            not in it keeps its fresh initialisation.
        report: ``results.json["init_from"]``: ``checkpoint`` (the file), one entry per
            backbone and head (``"<module> of <file>"``, or ``"new: <why>"`` for a head),
            and ``not_loaded`` (the checkpoint's modules that started nothing, sorted).
    """

    states: dict[str, dict[str, torch.Tensor]]
    report: dict[str, str | list[str]]





def matching_head(saved: Mapping[str, object], classes: tuple[str, ...] | None) -> str | None:
    """The name of a checkpoint's head that predicts ``classes``: the same class names in the
    same order (``saved`` is a checkpoint's ``"classes"``: head name -> class names, None for a
    head not trained on labels). None when no head does, or ``classes`` is None."""
    if classes is None:
        return None
    return next((name for name, c in saved.items() if c is not None and tuple(c) == tuple(classes)), None)


def plan_init(spec: str, file: Path, checkpoint: Mapping, shapes: Mapping[str, tuple[int, ...]],
              classes: Mapping[str, tuple[str, ...] | None]) -> InitPlan:
    """Match a checkpoint's modules to a model by the module docstring's rule.

    Args:
        spec: the ``model.init_from`` string (for messages).
        file: the checkpoint file it resolved to (:func:`tladapt.runs.find_checkpoint`).
        checkpoint: the loaded checkpoint (:func:`tladapt.checkpoint.load`): its
            ``modules`` (flat ``state_dict``, keys ``<module>.<path>``) and ``classes``.
        shapes: the new model's flat ``state_dict`` key -> shape (``meta`` tensors do).
        classes: the new model's head name -> the class names it predicts, None for a
            head nothing in the run trains (``Trainer.classes``).

    Returns:
        The :class:`InitPlan`.

    Raises:
        ConfigError: naming ``model.init_from``, the run and the entries, when the
            checkpoint's backbone is not exactly the model's, or a head matched by its
            classes has another shape.
    """
    state = checkpoint["modules"]
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, _, rest = key.partition(".")
        modules.setdefault(name, {})[rest] = value
    saved = checkpoint.get("classes", {"head": classes.get("head")})
    model = {name: {k.partition(".")[2]: s for k, s in shapes.items() if k.partition(".")[0] == name}
             for name in ("backbone", *classes)}
    states = {"backbone": modules.get("backbone", {})}
    report: dict[str, str | list[str]] = {"checkpoint": str(file), "backbone": f"backbone of {file}"}
    sources = {"backbone": "backbone"}  # model module -> the checkpoint's module it loads
    for name, wanted in classes.items():
        match = matching_head(saved, wanted)
        if match is None:
            report[name] = "new: " + ("nothing in this run trains it" if wanted is None else
                                      f"no head of the checkpoint predicts these classes (it has {_heads(saved)})")
            continue
        states[name], sources[name], report[name] = modules.get(match, {}), match, f"{match} of {file}"
    report["not_loaded"] = sorted(set(modules) - set(sources.values()))
    problems = _misfits("backbone", states["backbone"], model["backbone"], "backbone")
    built = {k: v for k, v in checkpoint.get("config", {}).get("model", {}).items()
             if k in ("backbone", "hidden", "bottleneck")}
    hint = (" The backbone loads whole: build the model as that run did"
            + (f" ({', '.join(f'model.{k} = {v!r}' for k, v in built.items())})" if built else "")
            + ", on inputs of the same shape.")
    if not problems:  # (a head's misfit follows from the backbone's, so it is told only after)
        hint = ""
        problems = [p for name in states if name != "backbone"
                    for p in _misfits(name, states[name], model[name], sources[name])]
    if problems:
        run = "" if Path(spec) in (file, file.parent) else f" ({file})"
        raise ConfigError(f"model.init_from={spec!r}{run} does not fit this model: {'; '.join(problems)}.{hint}")
    return InitPlan(states, report)


def _misfits(name: str, loaded: Mapping[str, torch.Tensor], wanted: Mapping[str, tuple[int, ...]],
             source: str) -> list[str]:
    """What keeps ``loaded`` (the entries of the checkpoint's module ``source``) from loading
    into the model's module ``name``, whose entries are ``wanted`` (key -> shape)."""
    where = "" if source == name else f" (from its {source})"
    lacks = [f"{name}.{k} {tuple(wanted[k])}" for k in wanted if k not in loaded]
    extra = [f"{name}.{k} {tuple(loaded[k].shape)}" for k in loaded if k not in wanted]
    shape = [f"{name}.{k}{where}: {tuple(v.shape)} there, {tuple(wanted[k])} here"
             for k, v in loaded.items() if k in wanted and tuple(v.shape) != tuple(wanted[k])]
    return ([f"the checkpoint lacks {_listed(lacks)}, which this model has"] if lacks else []) + \
           ([f"the checkpoint has {_listed(extra)}{where}, which this model lacks"] if extra else []) + shape


def _listed(items: list[str]) -> str:
    more = len(items) - _SHOWN
    return ", ".join(items[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _heads(saved: Mapping[str, object]) -> str:
    """The checkpoint's heads and their classes, for the report: ``head: a, b, c``."""
    def names(c):
        if c is None:
            return "never trained"
        shown = ", ".join(map(str, list(c)[:_SHOWN]))
        return shown + (f", ... ({len(c)} classes)" if len(c) > _SHOWN else "")
    return "; ".join(f"{name}: {names(c)}" for name, c in saved.items())
