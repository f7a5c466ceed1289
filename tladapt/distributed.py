"""One run over many processes: DistributedDataParallel under ``torchrun``.

::

    torchrun --nproc_per_node 4 -m tladapt run CONFIG            # 4 GPUs (or 4 CPU processes)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29400 --rdzv-id JOB -m tladapt run CONFIG   # on each of 2 machines

``torchrun`` (PyTorch's launcher and rendezvous) starts the processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; :func:`setup` joins the process group
(NCCL for CUDA tensors with gloo beside it for host objects, gloo alone on the CPU). Every
task and seed of the experiment is then one run trained by all processes together:

* **Batches.** ``trainer.batch_size`` is per process: each step trains on
  ``world * batch_size`` samples per domain. Every rank holds the domains (device-resident
  as usual) and draws the same global index batch from the same seeded stream, keeping its
  own slice (:class:`tladapt.data.pipeline.IndexStream` ``shard``), so the ranks' batches
  together are exactly what one process draws with ``world * batch_size``. Augmentation,
  dropout and other randomness of the step draw from per-rank generators.
* **Gradients.** The forward pass and every plugin's loss terms run inside one
  ``DistributedDataParallel`` module that holds all of ``trainer.modules`` (backbone, heads
  and every plugin module registered with ``trainer.add_module``), so every trained
  parameter's gradient is averaged over the ranks in the backward pass. For losses that are
  means over samples (cross-entropy, DANN's domain loss, ...) a step equals one process's
  step on the global batch, up to floating-point summation order (``tests/test_distributed.py``);
  batch statistics (MMD, CORAL, MCC, batch norm) are per rank, over its own slice, as in every
  DDP implementation.
* **Whole-dataset work** (``tladapt_fit_start``, validators, plugins' refreshes) runs on every
  rank with identical parameters and seeds, so every rank holds the same results; the
  trainer's accuracies are computed on a shard of each domain per rank and gathered
  (:func:`map_domain`), and buffers (batch-norm statistics) are taken from rank 0 before each
  evaluation.
* **Files.** Only rank 0 creates run directories and writes ``config.json``, ``status.json``,
  TensorBoard events, checkpoints, ``results.json`` and plots; other ranks log into running
  sums that are averaged with rank 0's at each flush (the logged losses are global-batch
  means). A checkpoint holds, besides rank 0's state, every rank's generators, index streams
  and pending log sums (``ranks``), so ``tladapt run --resume`` under ``torchrun`` with the same
  number of processes continues exactly; another number of processes is refused.
* **Stopping.** SIGINT/SIGTERM (``torchrun`` forwards them to every rank) stops all ranks at
  the same step: the ranks agree at the next log flush, then checkpoint and exit.

Refused before any run (:func:`check_config`): ``trainer.compile = "cudagraph"`` and
``trainer.batch_runs != 1`` under ``torchrun``, and more processes per machine than GPUs for a
CUDA run. Multi-node runs need the run directory on storage every node sees (rank 0 writes,
every rank reads checkpoints on resume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch
from torch import nn

from tladapt.errors import ConfigError

if TYPE_CHECKING:
    from tladapt.config import Config
    from tladapt.data.domain import Domain
    from tladapt.trainer import Trainer

__all__ = ["Context", "context", "setup", "shutdown", "check_config", "on_main", "DistributedLoss", "map_domain",
           "mean_over_ranks", "any_rank", "sync_buffers", "rank_states", "rank_checkpoint", "reseed"]

T = TypeVar("T")

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Context:
    """Where this process stands in a distributed run (one process: the defaults).

    Attributes:
        rank: this process's global rank, ``0 <= rank < world_size``.
        world_size: processes training each run together.
        local_rank: rank on this machine (the CUDA device index).
        local_world_size: processes on this machine (they share its CPU cores).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        """More than one process trains each run."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0

    def to_dict(self) -> dict[str, int]:
        """For ``results.json["distributed"]``."""
        return {"world_size": self.world_size, "local_world_size": self.local_world_size}


def context() -> Context:
    """This process's :class:`Context` from ``torchrun``'s environment variables
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); ``Context()`` when
    ``WORLD_SIZE`` is unset.

    Raises:
        ConfigError: a variable that is not an integer, or ranks out of range.
    """
    if "WORLD_SIZE" not in os.environ:
        return Context()
    values = {}
    for name in _ENV:
        raw = os.environ.get(name, "1" if name == "LOCAL_WORLD_SIZE" else "0")
        try:
            values[name] = int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r}: expected an integer (torchrun sets it)") from None
    ctx = Context(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
    if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size or not 0 <= ctx.local_rank < ctx.local_world_size:
        raise ConfigError(f"environment RANK={ctx.rank}, WORLD_SIZE={ctx.world_size}, LOCAL_RANK={ctx.local_rank}, "
                          f"LOCAL_WORLD_SIZE={ctx.local_world_size}: expected 0 <= RANK < WORLD_SIZE and "
                          "0 <= LOCAL_RANK < LOCAL_WORLD_SIZE")
    return ctx


def _uses_cuda(device: str) -> bool:
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def setup(device: str = "auto") -> Context:
    """Join the process group of a ``torchrun`` launch (once per process; later calls return
    the context). ``device`` is ``trainer.device``: a CUDA run uses NCCL for device tensors
    (gloo for host objects) and makes ``cuda:LOCAL_RANK`` this process's device.

    Raises:
        ConfigError: from :func:`context`, or for a CUDA run with more processes on this
            machine than GPUs.
    """
    ctx = context()
    if not ctx.active or torch.distributed.is_initialized():
        return ctx
    backend = "gloo"
    if _uses_cuda(device):
        if ctx.local_world_size > torch.cuda.device_count():
            raise ConfigError(f"{ctx.local_world_size} processes on this machine but {torch.cuda.device_count()} "
                              "GPU(s): pass torchrun --nproc_per_node at most the GPU count, or trainer.device = 'cpu'")
        torch.cuda.set_device(ctx.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    torch.distributed.init_process_group(backend)
    return ctx


def shutdown() -> None:
    """Leave the process group (end of a ``torchrun`` command); nothing outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_config(config: "Config") -> None:
    """Refuse what a distributed run cannot do, before any run starts (one process: nothing).

    Raises:
        ConfigError: ``trainer.compile = "cudagraph"`` (collectives are not captured) or
            ``trainer.batch_runs != 1`` (runs are distributed, not batched) under ``torchrun``.
    """
    ctx = context()
    if not ctx.active:
        return
    if config.trainer.compile == "cudagraph":
        raise ConfigError(f"trainer.compile = 'cudagraph' is not supported under torchrun ({ctx.world_size} "
                          "processes): use 'torch' or 'off'")
    if config.trainer.batch_runs != 1:
        raise ConfigError(f"trainer.batch_runs = {config.trainer.batch_runs} under torchrun: each run is trained by "
                          f"all {ctx.world_size} processes together; set trainer.batch_runs = 1")


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` computed on rank 0 and sent to every rank (for decisions that read or write
    files: new run directories, which runs to resume). One process: ``fn()``.

    Raises:
        whatever ``fn`` raised on rank 0, on every rank.
    """
    ctx = context()
    if not ctx.active:
        return fn()
    box: list[Any] = [None]
    if ctx.main:
        try:
            box[0] = ("ok", fn())
        except Exception as err:  # every rank raises it, instead of waiting forever
            box[0] = ("error", err)
    torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


class _Step(nn.Module):
    """``trainer.modules`` with the trainer's forward-and-losses as ``forward``: what DDP wraps,
    so that every module a plugin uses in its loss terms is inside the synchronised forward."""

    def __init__(self, modules: nn.Module, loss_terms: Callable):
        super().__init__()
        self.inner = modules
        self.loss_terms = loss_terms
        self.batch = self.terms = None

    def forward(self) -> torch.Tensor:
        total, self.terms = self.loss_terms(self.batch)
        return total


class DistributedLoss:
    """The trainer's ``loss_terms`` run through ``DistributedDataParallel``: same call
    (``batch -> (total, terms)``), gradients averaged over the ranks in the backward pass.

    ``find_unused_parameters=True``: a plugin's module may sit out a step (e.g. a term with
    weight 0 early in a schedule) without stalling the gradient reduction.

    Args:
        trainer: the run's trainer (its modules on its device, identical on every rank:
            DDP broadcasts rank 0's parameters and buffers when it is built).
        loss_terms: ``trainer.loss_terms`` or its compiled version.
    """

    def __init__(self, trainer: "Trainer", loss_terms: Callable):
        self.step_module = _Step(trainer.modules, loss_terms)
        self.ddp = nn.parallel.DistributedDataParallel(self.step_module, device_ids=None,
                                                       find_unused_parameters=True)

    def __call__(self, batch):
        """``(total, terms)`` of ``batch``, as ``Trainer.loss_terms``."""
        self.step_module.batch = batch
        try:
            total = self.ddp()
            return total, self.step_module.terms
        finally:
            self.step_module.batch = self.step_module.terms = None


def map_domain(domain: "Domain", fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``domain.map(fn)`` with the rows shared out among the ranks: rank ``r`` maps the ``r``-th of
    ``world`` contiguous shards and the shards are gathered in order, so every rank returns the
    whole ``(n, ...)`` result. One process: ``domain.map(fn)``. ``fn``'s output must have
    the same trailing shape and dtype on every rank."""
    ctx = context()
    if not ctx.active:
        return domain.map(fn)
    n = len(domain)
    bounds = [n * r // ctx.world_size for r in range(ctx.world_size + 1)]
    part = domain.subset(torch.arange(bounds[ctx.rank], bounds[ctx.rank + 1], device=domain.storage.device))
    mine = part.map(fn) if len(part) else None
    sizes = [bounds[r + 1] - bounds[r] for r in range(ctx.world_size)]
    if mine is None:  # an empty shard (fewer rows than ranks): learn the output's shape from one row
        probe = domain.subset(torch.zeros(1, dtype=torch.long, device=domain.storage.device)).map(fn)
        mine = probe[:0]
    # all_gather needs equal sizes: pad every shard to the largest
    pad = max(sizes)
    padded = torch.zeros((pad, *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
    padded[:len(mine)] = mine
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat([g[:size] for g, size in zip(gathered, sizes)])


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The elementwise mean of ``values`` over the ranks (``all_reduce``; the logger's sums at a
    flush). One process: ``values``."""
    ctx = context()
    if not ctx.active:
        return values
    values = values.clone()
    torch.distributed.all_reduce(values)
    return values / ctx.world_size


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (a stop requested by a signal; a host tensor, so over
    gloo: no device sync). One process: ``flag``."""
    if not context().active:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def sync_buffers(modules: nn.Module) -> None:
    """Make every rank's buffers (batch-norm running statistics, updated by each rank's own
    slice in training) rank 0's, before an evaluation, so that all ranks evaluate one model."""
    if not context().active:
        return
    for buffer in modules.buffers():
        torch.distributed.broadcast(buffer, src=0)


def _rank_state(trainer: "Trainer") -> dict:
    from tladapt.checkpoint import rng_state

    return {"rng": rng_state(), "pipeline": trainer.pipeline.state_dict(), "logger": trainer.logger.state_dict()}


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def rank_states(trainer: "Trainer") -> list[dict] | None:
    """Every rank's generators, index streams and pending log sums, gathered on rank 0 for its
    checkpoint (a list by rank there, None on the other ranks); None with one process.
    Every rank must call it at the same step."""
    ctx = context()
    if not ctx.active:
        return None
    mine = _to_cpu(_rank_state(trainer))
    out: list[Any] | None = [None] * ctx.world_size if ctx.main else None
    torch.distributed.gather_object(mine, out, dst=0)
    return out


def rank_checkpoint(state: dict, what: str) -> dict:
    """This rank's view of checkpoint ``state``: rank 0's state with this rank's generators,
    index streams and pending log sums (from ``state["ranks"]``).

    Raises:
        ConfigError: naming ``what``, when the checkpoint was written by another number of
            processes than this run has (the global batch and every rank's streams would change).
    """
    ctx = context()
    ranks = state.get("ranks")
    saved = 1 if ranks is None else len(ranks)
    if saved != ctx.world_size:
        raise ConfigError(f"{what} was written by a run over {saved} process(es); this one has {ctx.world_size}: "
                          f"resume it with {'torchrun --nproc_per_node ' + str(saved) if saved > 1 else 'one process'}")
    if ranks is None:
        return state
    return {**state, **ranks[ctx.rank]}


def reseed(seed: int) -> None:
    """Give rank ``r > 0`` its own global torch generator (dropout and other per-step draws)
    once the whole-dataset work that every rank must do alike is done; rank 0 keeps the run's
    stream. One process: nothing."""
    ctx = context()
    if ctx.active and ctx.rank:
        torch.manual_seed(seed + ctx.rank * 2**40)
