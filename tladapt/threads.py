"""CPU intra-op threads per run: the measured rule behind ``trainer.threads = 0``, scoped to the run.

Small models train fastest on one thread: a step of the bundled models is a few
MFLOP, and the fork/join of a second intra-op thread (plus, on a busy machine, a
thread that waits for a core) costs more than it saves (measured: a 1500-step SURF
DANN run took 330 s on torch's default of 2 threads against 15 s on one, on a busy
2-core machine; ``benchmarks/thread_rule.py``, ``benchmarks/RESULTS.md``). The rule
gives each thread at least :data:`FLOPS_PER_THREAD` of work per training step::

    threads = clamp(floor(step_flops / FLOPS_PER_THREAD), 1, cores)

where ``step_flops`` is :func:`step_flops` (forward + backward of every module over
the step's samples) and ``cores`` the CPUs this process may run on. It depends only
on the model, the batch and the machine, never on the momentary load, so a config
runs with the same thread count (hence the same floating-point reduction order) every
time on a machine. :func:`run_threads` applies a count for the length of a run and
restores the previous one afterwards.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FLOPS_PER_THREAD", "ThreadChoice", "available_cores", "step_flops", "auto_threads", "choose_threads",
           "run_threads"]

#: Work per training step (FLOP) that one more intra-op thread needs to pay for itself.
#: Measured on the shared 2-core machine of benchmarks/RESULTS.md ("Thread rule"): no
#: step up to 123 GFLOP (a 4096-4096 MLP at batch 512) ran faster on 2 threads than on 1
#: (median t(1)/t(2) 0.09 for the bundled SURF MLP, 0.79 at 123 GFLOP), so the threshold
#: sits just above the largest step measured.
FLOPS_PER_THREAD: float = 1.25e11


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count of one run and why; recorded in ``results.json``.

    Attributes:
        threads: ``torch.set_num_threads`` value for the run (>= 1).
        chosen_by: ``"config"`` (``trainer.threads > 0``), ``"rule"`` (``trainer.threads
            = 0`` on a CPU run) or ``"torch"`` (``trainer.threads = 0`` on a GPU run: the
            CPU only launches kernels, so torch's default is kept).
        step_flops: the rule's estimate of one step's work in FLOP (0 when not computed).
        cores: CPUs available to the process.
    """

    threads: int
    chosen_by: str
    step_flops: float
    cores: int

    def to_dict(self) -> dict:
        """Plain JSON-serialisable fields."""
        return asdict(self)


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _forward_flops(module: nn.Module, sample: torch.Tensor) -> float:
    """FLOP of ``module(sample)`` per row of ``sample``, counted by torch's FlopCounterMode
    (matrix products and convolutions) in eval mode without gradient."""
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(sample)
    finally:
        module.train(was_training)
    return counter.get_total_flops() / sample.shape[0]


def step_flops(backbone: nn.Module, head: nn.Module, others: list[nn.Module], input_shape: tuple[int, ...],
               samples: int, device: torch.device) -> float:
    """Estimated FLOP of one training step: forward + backward (3x the forward) over ``samples`` rows.

    The backbone and head are counted exactly (one forward on two zero inputs of
    ``input_shape``); other modules (a plugin's discriminator, ...) whose inputs are not
    known here count ``2 * parameters`` per row, exact for linear layers.

    Args:
        backbone, head: the run's feature extractor and classifier head.
        others: the plugin modules.
        input_shape: one input's shape, e.g. ``(800,)`` or ``(1, 16, 16)``.
        samples: rows through the model per step (``2 * batch_size`` for source + target,
            plus the labelled target rows).
        device: where the modules live.
    """
    per_row = _forward_flops(nn.Sequential(backbone, head), torch.zeros(2, *input_shape, device=device))
    per_row += sum(2.0 * p.numel() for m in others for p in m.parameters())
    return 3.0 * per_row * samples


def auto_threads(flops: float, cores: int) -> int:
    """The rule: one thread per :data:`FLOPS_PER_THREAD` of step work, at least 1, at most ``cores``."""
    return max(1, min(cores, math.floor(flops / FLOPS_PER_THREAD)))


def choose_threads(configured: int, device: torch.device, flops_fn, processes: int = 1) -> ThreadChoice:
    """The thread count of a run.

    Args:
        configured: ``trainer.threads`` (0: choose).
        device: the training device; the rule applies to CPU runs.
        flops_fn: called without arguments for the step's FLOP estimate (only when the
            rule needs it, so a GPU run or a configured count costs nothing).
        processes: processes of one run sharing this machine's cores (``torchrun``'s
            ``LOCAL_WORLD_SIZE``): each gets ``cores // processes`` of them (at least 1).
    """
    cores = max(1, available_cores() // processes)
    if configured:
        return ThreadChoice(configured, "config", 0.0, cores)
    if device.type != "cpu":
        return ThreadChoice(torch.get_num_threads(), "torch", 0.0, cores)
    flops = float(flops_fn())
    return ThreadChoice(auto_threads(flops, cores), "rule", flops, cores)


@contextmanager
def run_threads(threads: int) -> Iterator[None]:
    """Set torch's intra-op threads for a block and restore the previous count afterwards
    (also on an exception), so a run's choice never leaks into the next run or test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
