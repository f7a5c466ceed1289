"""Checkpoints: everything a run's future depends on, written atomically, read without running code.

A checkpoint is one dict of tensors and plain Python containers, which is all that
``torch.load(..., weights_only=True)`` reads back (and all :func:`load` accepts)::

    format       FORMAT (an int)
    step         optimizer steps done
    seed         the run's seed
    config_id    the config's fingerprint (Config.fingerprint())
    config       the resolved config (Config.to_dict())
    modules      state_dict of every module (backbone, head, each trainer.add_module)
    optimizer    optimizer.state_dict()
    scheduler    the learning-rate schedule's state_dict()
    history      the evaluations so far (what results.json's history will hold)
    classes      the class names each head predicts (model.init_from matches heads by them)
    init_from    what model.init_from started where (results.json's init_from)
    pipeline     each index stream: generator state, current epoch permutation, position
    logger       the run logger's sums and counts not yet written to TensorBoard
    best         trainer.keep_best's best value and step, or None
    plugins      {plugin name: what its tladapt_state_dict returned}
    wall         wall seconds per phase so far (results.json's provenance)
    rng          torch CPU (and CUDA) generator states, numpy's and Python's, as tensors
    ranks        under torchrun only: each rank's {rng, pipeline, logger}, by rank
                 (tladapt.distributed.rank_states; rank_checkpoint picks a rank's view)

:func:`capture` takes one from a trainer after a step; :func:`restore` puts one back
into a freshly built and started trainer of the same config, task and seed, so the
resumed run is bit for bit the uninterrupted one on the CPU.
"""

from __future__ import annotations

import collections
import pickle
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tladapt.errors import ConfigError, PluginError
from tladapt.manager import call_each
from tladapt.runs import atomic_write_bytes

if TYPE_CHECKING:
    from tladapt.trainer import Trainer

__all__ = ["FORMAT", "capture", "restore", "save", "load", "rng_state", "set_rng_state", "check_plain",
           "BestCheckpoint", "best_direction"]

#: Version of the checkpoint layout; :func:`restore` refuses other versions.
FORMAT = 1

_SCALARS = (bool, int, float, str, type(None), torch.dtype, torch.device)


# ------------------------------------------------------------------ random number generators
def rng_state() -> dict[str, Any]:
    """The global generators' states as tensors and plain values (``weights_only``-loadable).

    Returns:
        ``{"torch": uint8 tensor, "numpy": {...}, "python": {...}}`` plus ``"cuda"``
        (a list of uint8 tensors, one per device) once CUDA is initialised. numpy's
        MT19937 key and Python's Mersenne-Twister state are int64 tensors.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (the CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------------ plain data
def check_plain(obj: Any, where: str) -> None:
    """Check that ``obj`` is what ``torch.load(..., weights_only=True)`` reads back.

    Allowed: tensors, ``bool``, ``int``, ``float``, ``str``, ``None``, ``torch.dtype``,
    ``torch.device``, and ``dict`` / ``OrderedDict`` (str or int keys), ``list`` and
    ``tuple`` of these. Subclasses (numpy scalars, named tuples, dataclasses) are not.

    Raises:
        TypeError: naming the position inside ``where`` and the offending type.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _SCALARS:
        return
    if type(obj) in (dict, collections.OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; keys must be str or int")
            check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: a checkpoint holds only "
                    f"tensors, numbers, strings, None and dicts/lists/tuples of them (weights_only=True); "
                    f"convert it, e.g. torch.as_tensor(array) or float(x)")


# ------------------------------------------------------------------ capture and restore
def capture(trainer: Trainer) -> dict[str, Any]:
    """A checkpoint of ``trainer`` after its last finished step (layout: module docstring).

    Raises:
        PluginError: if a plugin's ``tladapt_state_dict`` returns something that is not a
            dict of plain data (:func:`check_plain`), naming the plugin.
    """
    plugins = {}
    for name, state in call_each(trainer.pm.hook.tladapt_state_dict, trainer=trainer):
        try:
            if type(state) is not dict:
                raise TypeError(f"it returned a {type(state).__name__}, expected a dict or None")
            check_plain(state, "state")
        except TypeError as err:
            raise PluginError(f"plugin {name!r}: tladapt_state_dict: {err}") from None
        plugins[name] = state
    return {
        "format": FORMAT,
        "step": trainer.steps_done,
        "seed": trainer.seed,
        "config_id": trainer.config.fingerprint(),
        "config": trainer.config.to_dict(),
        "modules": trainer.modules.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "history": trainer.history,
        "classes": {name: None if c is None else list(c) for name, c in trainer.classes.items()},
        "init_from": dict(trainer.init_report),
        "pipeline": trainer.pipeline.state_dict(),
        "logger": trainer.logger.state_dict(),
        "best": None if trainer.best is None else trainer.best.state_dict(),
        "plugins": plugins,
        "wall": dict(trainer.wall),
        "rng": rng_state(),
    }


def restore(trainer: Trainer, state: dict[str, Any]) -> None:
    """Put checkpoint ``state`` back into ``trainer``, which was built for the same config,
    task and seed and started (``Trainer.start``): modules, optimizer, schedule, history,
    index streams, pending log sums, the best-checkpoint tracker, each plugin's state
    (``tladapt_load_state_dict``, tensors on the CPU) and, last, every RNG.

    Raises:
        ConfigError: for a checkpoint of another layout version, seed or config, or one
            whose modules do not fit this model.
        PluginError: for a plugin state with no plugin to take it (inactive, or without
            ``tladapt_load_state_dict``).
    """
    if state.get("format") != FORMAT:
        raise ConfigError(f"checkpoint format {state.get('format')!r} is not this tladapt's {FORMAT}")
    if state["seed"] != trainer.seed or state["config_id"] != trainer.config.fingerprint():
        raise ConfigError(f"the checkpoint is of config {state['config_id']} seed {state['seed']}, not of the run "
                          f"resuming it (config {trainer.config.fingerprint()} seed {trainer.seed}): the config or "
                          f"a plugin's options changed since the run started")
    try:
        trainer.modules.load_state_dict(state["modules"])
    except RuntimeError as err:
        raise ConfigError(f"the checkpoint's modules do not fit this model: {err}") from None
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    steps = trainer.steps_done = int(state["step"])
    trainer.step = max(steps - 1, 0)  # as after the last finished step
    trainer.progress = trainer.step / trainer.config.trainer.steps
    trainer.history = list(state["history"])
    trainer.init_report = dict(state["init_from"])
    for phase, seconds in state["wall"].items():  # a resumed run's time is that of all its processes
        trainer.wall[phase] = trainer.wall.get(phase, 0.0) + seconds
    trainer.pipeline.load_state_dict(state["pipeline"])
    trainer.logger.load_state_dict(state["logger"], trainer.device)
    if trainer.best is not None and state["best"] is not None:
        trainer.best.load_state_dict(state["best"])
    loaders = {impl.plugin_name: impl for impl in trainer.pm.hook.tladapt_load_state_dict.get_hookimpls()}
    for name, plugin_state in state["plugins"].items():
        if name not in loaders:
            raise PluginError(f"the checkpoint holds a state of plugin {name!r}, which is not active or does "
                              f"not implement tladapt_load_state_dict")
        impl = loaders[name]
        impl.function(*[{"trainer": trainer, "state": plugin_state}[arg] for arg in impl.argnames])
    set_rng_state(state["rng"])


# ------------------------------------------------------------------ files
def save(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a checkpoint (a crash leaves the previous file intact)."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load(path: str | Path, what: str) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(..., weights_only=True, map_location="cpu")``.

    Nothing in the file is executed: a pickle that names a Python callable (which an
    unrestricted ``torch.load`` would call) is refused.

    Args:
        path: the checkpoint file.
        what: where the path came from, for messages (e.g. ``"model.init_from"``).

    Raises:
        ConfigError: naming ``what`` and the file, for a missing file, a file holding
            Python objects that ``weights_only`` refuses, or one that is not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: no checkpoint file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines()]
        detail = next((line for line in lines if "GLOBAL" in line or "global" in line), "")
        if not detail:
            reason = next((line for line in lines if line.startswith("Unsupported")), "")
            raise ConfigError(f"{what}: {path} was refused: it is not a checkpoint that torch.load(weights_only=True) "
                              f"reads{f' ({reason})' if reason else ''}") from None
        raise ConfigError(f"{what}: {path} was refused: it holds Python objects, and loading it could run code "
                          f"(tladapt loads files only with torch.load(weights_only=True); its checkpoints hold "
                          f"tensors and plain data): {detail}") from None
    except Exception as err:  # torch raises many kinds for a file that is not a checkpoint
        raise ConfigError(f"{what}: {path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "modules" not in state:
        raise ConfigError(f"{what}: {path} is not a tladapt checkpoint (no 'modules' entry)")
    return state


# ------------------------------------------------------------------ the best checkpoint
def best_direction(tag: str, mode: str, directions: dict[str, str]) -> str:
    """The direction in which ``trainer.keep_best``'s tag improves.

    Args:
        tag: the tag (``""``: none, gives ``"max"``).
        mode: ``trainer.keep_best_mode``: ``"max"``/``"min"`` are taken as given (any tag);
            ``"auto"`` is :func:`tladapt.validators.tag_direction`: a validator's own
            direction for ``validator/<name>``, ``"max"`` for accuracies.
        directions: the run's validators, name -> direction.

    Raises:
        ConfigError: with ``"auto"``, for a tag that is neither a validator of the run nor an
            accuracy.
    """
    from tladapt.validators import tag_direction

    if mode != "auto":
        return mode
    if not tag:
        return "max"
    try:
        return tag_direction(tag, directions, "trainer.keep_best")
    except ConfigError as err:
        raise ConfigError(f"{err}; for another tag give its direction: trainer.keep_best_mode = 'max' or 'min'") \
            from None


class BestCheckpoint:
    """Tracks ``trainer.keep_best``: the evaluation with the best value of one metric tag.

    Args:
        tag: a metric tag of the evaluations, e.g. ``"validator/im"`` or ``"metrics/source_val_acc"``.
        direction: ``"max"`` or ``"min"`` (:func:`best_direction`).

    Ties keep the earlier evaluation; NaN is never best
    (:func:`tladapt.validators.better`).
    """

    def __init__(self, tag: str, direction: str):
        self.tag, self.direction = tag, direction
        self.value: float | None = None
        self.step: int | None = None

    def update(self, metrics: dict[str, float]) -> bool:
        """Consider one evaluation (``{"step": k, tag: value, ...}``); True when it is the new best.

        Raises:
            ConfigError: if the evaluation has no value for the tag, listing those it has.
        """
        from tladapt.validators import better

        if self.tag not in metrics:
            raise ConfigError(f"trainer.keep_best = {self.tag!r} is not a metric of this run: the evaluation at "
                              f"step {metrics.get('step')} gives {', '.join(sorted(k for k in metrics if k != 'step'))}")
        value = float(metrics[self.tag])
        if self.step is not None and not better(value, self.value, self.direction):
            return False
        self.value, self.step = value, int(metrics["step"])
        return True

    def state_dict(self) -> dict[str, Any]:
        """The best value and its step so far."""
        return {"value": self.value, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.value, self.step = state["value"], state["step"]

    def summary(self) -> dict[str, Any]:
        """For ``results.json["best"]``: the tag, its direction, and the step and value of ``best.pt``."""
        return {"tag": self.tag, "direction": self.direction, "step": self.step, "value": self.value}
