"""How a training step runs: eagerly, through ``torch.compile``, or replayed as one CUDA graph.

``trainer.compile`` chooses:

* ``"off"`` (default): the step runs op by op, as written.
* ``"torch"``: the forward pass and every plugin's loss terms (the trainer's
  ``loss_terms``, hooks included; pluggy's dispatch traces without a graph break) are
  compiled by ``torch.compile`` (TorchInductor; the backward through AOTAutograd), the
  optimizer step stays eager. Compilation happens at the first step and costs tens of
  seconds on a CPU (``benchmarks/compile_speed.py``): it pays only for long runs, which
  is why it is not the default. Dropout masks come from Inductor's generator, so a
  compiled run with dropout draws other (identically distributed) masks than an eager one.
* ``"cudagraph"`` (CUDA only): the whole step (the batch's index draws and gathers, the
  augmentation, forward, losses, backward, optimizer step and log accumulation) is
  captured once into a CUDA graph after three warm-up steps and replayed for every
  later step, so the host launches one graph instead of hundreds of kernels. What
  changes from step to step stays outside the graph or in device memory: the host
  keeps the epoch bookkeeping of the index streams (:meth:`PairedPipeline.prepare`,
  which draws a new epoch's permutation into the same buffer), the learning rates are
  device tensors of a fused optimizer updated in place by the schedule, training
  progress is ``trainer.progress_tensor``, and the logger adds into fixed buffers.
  Every active plugin must declare ``capture_safe = True`` (its per-step hooks do only
  device work whose shapes and Python-side values do not change between steps);
  ``tladapt_step_end`` hooks run eagerly after each replay.

:func:`check_compile` checks a config before any run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import torch

from tladapt.errors import ConfigError

if TYPE_CHECKING:
    from tladapt.config import Config
    from tladapt.manager import PluginInfo
    from tladapt.trainer import Trainer

__all__ = ["COMPILE_MODES", "check_compile", "make_optimizer", "compile_loss", "make_step", "EagerStep",
           "GraphStep"]

COMPILE_MODES = ("off", "torch", "cudagraph")


def check_compile(config: "Config", active: Iterable[tuple["PluginInfo", dict]]) -> None:
    """Check ``trainer.compile`` against the device, the data placement and the plugins.

    Raises:
        ConfigError: ``"cudagraph"`` without a CUDA device (``trainer.device`` cpu, or auto
            with no GPU), with ``data.placement = "host"``, or with an active plugin that
            does not declare ``capture_safe = True`` (named).
    """
    if config.trainer.compile != "cudagraph":
        return
    device = config.trainer.device
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        raise ConfigError("trainer.compile = 'cudagraph' captures CUDA graphs and needs a CUDA device "
                          f"(trainer.device = {device!r}{', no GPU here' if device == 'auto' else ''}); "
                          "use 'torch' or 'off' on a CPU")
    if config.data.placement == "host":
        raise ConfigError("trainer.compile = 'cudagraph' needs the domains on the device: data.placement = 'host' "
                          "copies every batch from host memory, which a CUDA graph cannot capture")
    unsafe = sorted(info.name for info, _ in active if not getattr(info.cls, "capture_safe", False))
    if unsafe:
        raise ConfigError(f"trainer.compile = 'cudagraph': plugin(s) {', '.join(unsafe)} do not declare "
                          "capture_safe = True (a captured step replays their hooks' device work unchanged); "
                          "use trainer.compile = 'torch' or 'off'")


def make_optimizer(config: "Config", groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """The run's optimizer over ``groups`` (``trainer.optimizer``, ``lr``, ``momentum``, ``weight_decay``).

    For ``trainer.compile = "cudagraph"`` it is torch's fused implementation with every
    group's learning rate a 0-dim device tensor, so that a captured step reads the rate
    the schedule wrote in place (a Python float would be frozen into the graph).
    """
    cfg = config.trainer
    captured = cfg.compile == "cudagraph"
    if captured:
        groups = [{**g, "lr": torch.tensor(g["lr"], dtype=torch.float32, device=device)} for g in groups]
    if cfg.optimizer == "sgd":
        extra = {"fused": True} if captured else {}
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **extra)
    extra = {"fused": True, "capturable": True} if captured else {}  # Adam keeps its step count on the device
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def compile_loss(trainer: "Trainer") -> Callable:
    """``trainer.loss_terms``, compiled by ``torch.compile`` for ``trainer.compile = "torch"``."""
    return torch.compile(trainer.loss_terms) if trainer.config.trainer.compile == "torch" else trainer.loss_terms


class EagerStep:
    """One step as written (``trainer.compile`` ``"off"`` or ``"torch"``): draw a batch, train on it."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer

    def __call__(self) -> None:
        """Run one training step."""
        self.trainer.train_step(self.trainer.pipeline.next())


class GraphStep:
    """``trainer.compile = "cudagraph"``: warm-up steps, one capture, then one replay per step.

    The first :attr:`WARMUP` steps run eagerly on a side stream (real training steps: they
    initialise the optimizer's state, cuBLAS and the logger's buffers, as capture
    requires); the next call captures the draw and ``train_step`` into a graph
    (registering the pipeline's device generators, so index draws with replacement and
    augmentation advance on every replay) and every call from then on replays it. The host
    side of each replay: the pipeline's epoch bookkeeping before it, the logger's counts
    after it.

    Args:
        trainer: the run's trainer, started, its pipeline capturable.
    """

    WARMUP = 3

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.graph: torch.cuda.CUDAGraph | None = None
        self.tallies: tuple[dict[str, int], dict[str, float]] = ({}, {})
        self._warm = 0
        self._side = torch.cuda.Stream(trainer.device)

    def _body(self) -> None:
        t = self.trainer
        t.train_step(t.pipeline.draw())

    def __call__(self) -> None:
        """Run one training step (warm-up, capture + replay, or replay)."""
        t = self.trainer
        t.pipeline.prepare()
        if self.graph is None and self._warm < self.WARMUP:
            self._side.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(self._side):
                self._body()
            torch.cuda.current_stream(t.device).wait_stream(self._side)
            self._warm += 1
            return
        if self.graph is None:
            self._capture()
        self.graph.replay()
        t.logger.add_host_tallies(*self.tallies)

    def _capture(self) -> None:
        t = self.trainer
        graph = torch.cuda.CUDAGraph()
        for generator in t.pipeline.generators.values():
            if generator.device.type == "cuda":
                graph.register_generator_state(generator)
        counts, floats = t.logger.host_tallies()
        t.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients in the graph's pool
        with torch.cuda.graph(graph):
            self._body()
        after_counts, after_floats = t.logger.host_tallies()
        # the capture ran the Python side once without running the kernels: undo its tallies,
        # and add them at every replay instead
        self.tallies = ({k: v - counts.get(k, 0) for k, v in after_counts.items() if v != counts.get(k, 0)},
                        {k: v - floats.get(k, 0.0) for k, v in after_floats.items() if v != floats.get(k, 0.0)})
        t.logger.add_host_tallies({k: -v for k, v in self.tallies[0].items()},
                                  {k: -v for k, v in self.tallies[1].items()})
        self.graph = graph


def make_step(trainer: "Trainer") -> Callable[[], None]:
    """The step runner for ``trainer.compile`` (call once the pipeline is final, in ``start``)."""
    if trainer.config.trainer.compile == "cudagraph":
        if trainer.device.type != "cuda" or not trainer.pipeline.capturable:
            raise ConfigError("trainer.compile = 'cudagraph' needs a CUDA device and every domain on it")
        return GraphStep(trainer)
    return EagerStep(trainer)
