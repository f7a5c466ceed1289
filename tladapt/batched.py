"""Many runs of one task trained together: one batched model over a leading run dimension.

The seeds of a task (and runs whose configs differ only in scalars the batched step
vectorises) are :class:`~tladapt.trainer.Trainer` s as usual: each has its own run
directory, splits, index streams, plugin instances, logger, evaluation and results. What
they share is the training step: their parameters are stacked along a new leading
dimension (:func:`torch.func.stack_module_state`) and one call of
``vmap(grad(loss))`` (:func:`torch.func.vmap`, :func:`torch.func.functional_call` on the
first run's modules and plugins) computes every run's loss terms and gradients, so a step
launches the ops of one run for all of them. On a GPU, where a small model's step is
launch-bound, that is most of the cost; on a CPU the arithmetic dominates and the gain is
the per-op overhead (``benchmarks/runs_per_hour.py``, ``benchmarks/RESULTS.md``).

Same seeds give the same numbers as sequential runs where the batched math allows:

* every run draws its batches from its own index streams (the same generators and epochs
  as alone), gathered for all runs at once from the shared storage (index views);
* dropout masks come from each run's own copy of the global generator as it stands when
  the run would start training alone, drawn as ``torch.nn.functional.dropout`` draws them
  (on a CPU the masks are bit-identical to a sequential run's; CUDA's fused dropout kernel
  draws differently, so there they are identically distributed, not identical);
* the optimizer is the trainer's SGD or Adam applied elementwise to the stacked tensors,
  with each run's learning rate, momentum and weight decay.

What still differs is floating-point association in the batched matrix products (a few
ulps per step, growing as training amplifies them): ``tests/test_batched.py`` bounds it.

A plugin joins a batch only if its class declares ``batch_safe = True``: its per-step hooks
do device work only from the trainer's config, ``progress``/``progress_tensor``, the batch
and the outputs (no per-run Python state, no randomness, no reading of module parameters
in ``tladapt_step_end``). Plugin options that may differ between the runs of one batch
are listed in the class attribute ``batch_scalars`` (used arithmetically in the hooks;
they are set to each run's value as a 0-dim tensor inside the batched call).
:func:`batch_blockers` names what keeps a set of runs apart; :func:`fit_together` trains runs
together when nothing does (``tladapt run`` uses it for the new seeds of a task when
``trainer.batch_runs`` asks, and trains them one after another otherwise).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from tladapt import checkpoint, signals
from tladapt.data.pipeline import Batch, HostSampler
from tladapt.errors import RunInterrupted
from tladapt.progress import Progress
from tladapt.threads import ThreadChoice, auto_threads, available_cores, run_threads

__all__ = ["VECTOR_KEYS", "RunSpec", "batch_blockers", "BatchedRuns", "fit_together"]

#: Config keys that may differ between the runs of one batch, besides the seed.
VECTOR_KEYS = ("trainer.lr", "trainer.momentum", "trainer.weight_decay")

_BATCH_FIELDS = ("x_s", "y_s", "idx_s", "x_t", "idx_t", "x_l", "y_l", "rows_s", "rows_t")
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


@dataclass(frozen=True)
class RunSpec:
    """One new run to train: what a :class:`~tladapt.trainer.Trainer` is built from.

    Attributes:
        config: the prepared config (:func:`tladapt.experiment.prepare`).
        task: the ``"source->target"`` entry.
        source, target: the task's domains (:func:`tladapt.data.tasks.load_task`).
        active: the active plugins with their option tables (from ``prepare``).
        seed: the run's seed.
        run_dir: its fresh run directory (:func:`tladapt.runs.new_run_dir`).
    """

    config: Any
    task: str
    source: Any
    target: Any
    active: list
    seed: int
    run_dir: Path


def _flat(config) -> dict[str, Any]:
    flat = {}
    for section, values in config.to_dict().items():
        if section == "plugins":
            for plugin, table in values.items():
                for key, value in table.items():
                    flat[f"plugins.{plugin}.{key}"] = value
        else:
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
    flat.pop("experiment.seeds", None)
    return flat


def _plugin_classes(trainer) -> dict[str, type]:
    return {name: type(plugin) for name, plugin in trainer.pm.list_name_plugin() if name in trainer.config.plugins}


def batch_blockers(trainers: list) -> list[str]:
    """Why these trainers (one task, built but not started) cannot train as one batch; [] if they can.

    Checked: at least two runs; the same domains (names and sizes); configs equal but for
    the seed, :data:`VECTOR_KEYS` and plugin options in their plugin's ``batch_scalars``;
    ``trainer.compile = "off"``; a source and no extra domains; every active plugin
    ``batch_safe``; no module buffers
    (batch norm statistics); every domain on the device; dropout modules of the torch
    kinds only.
    """
    if len(trainers) < 2:
        return ["a batch needs at least two runs"]
    first = trainers[0]
    reasons = []
    classes = _plugin_classes(first)
    unsafe = sorted(name for name, cls in classes.items() if not getattr(cls, "batch_safe", False))
    if unsafe:
        reasons.append(f"plugin(s) {', '.join(unsafe)} do not declare batch_safe = True")
    scalars = {f"plugins.{name}.{key}" for name, cls in classes.items() for key in getattr(cls, "batch_scalars", ())}
    base = _flat(first.config)
    for t in trainers[1:]:
        other = _flat(t.config)
        differ = sorted(k for k in base.keys() | other.keys()
                        if base.get(k) != other.get(k) and k not in VECTOR_KEYS and k not in scalars)
        if differ:
            reasons.append(f"configs differ in {', '.join(differ)}")
            break
    if first.config.trainer.compile != "off":
        reasons.append(f"trainer.compile = {first.config.trainer.compile!r}")
    if first.source is None:
        reasons.append("source-free runs (data.source_free)")
    elif getattr(first, "extra_domains", None):
        reasons.append("extra domains (trainer.add_domain)")
    else:
        for t in trainers:
            if (t.source.name, t.target.name, len(t.source), len(t.target)) != \
                    (first.source.name, first.target.name, len(first.source), len(first.target)):
                reasons.append("runs of different tasks or splits")
                break
    if any(True for _ in first.modules.buffers()):
        reasons.append("the model has buffers (batch norm statistics), which a batched step does not update")
    if any(isinstance(s, HostSampler) for s in first.pipeline._samplers.values()):
        reasons.append("data.placement = 'host'")
    odd = sorted({type(m).__name__ for m in first.modules.modules()
                  if "Dropout" in type(m).__name__ and not isinstance(m, _DROPOUTS)})
    if odd:
        reasons.append(f"dropout modules {', '.join(odd)} (only torch's Dropout/Dropout1d/2d/3d are batched)")
    return reasons


class _MaskedDropout(nn.Module):
    """Dropout with its mask given from outside (each run's own, drawn by :class:`_Masks`).

    In eval mode the identity, like ``nn.Dropout``. In training mode ``x * mask`` with the
    mask set for the current call; while probing it records its input's (static) shape and
    returns ``x``.

    Raises:
        RuntimeError: in training mode without a mask (a layer the probe never reached).
    """

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original, self.p = original, original.p
        self.feature = not isinstance(original, nn.Dropout)  # Dropout1d/2d/3d: one draw per channel
        self.mask: torch.Tensor | None = None
        self.shape: tuple[int, ...] | None = None
        self.probing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.probing:
            self.shape = tuple(x.shape[:2]) + (1,) * (x.dim() - 2) if self.feature else tuple(x.shape)
            return x
        if self.mask is None:
            raise RuntimeError("a dropout layer of a batched run was reached without its mask")
        return x * self.mask


class _Masks:
    """The runs' dropout masks: every run's generator a copy of the global generator as the run
    would start training alone; masks drawn as ``F.dropout`` draws them (``bernoulli_(1 - p)``
    then ``div_(1 - p)``), layer by layer in forward order."""

    def __init__(self, layers: list[_MaskedDropout], states: list[dict], device: torch.device):
        self.layers, self.device = layers, device
        self.generators = [torch.Generator(device=device) for _ in states]
        for gen, state in zip(self.generators, states):
            self.load(gen, state)

    def load(self, gen: torch.Generator, state: dict) -> None:
        """Set ``gen`` to the part of a :func:`tladapt.checkpoint.rng_state` that the device draws use."""
        gen.set_state(state["torch"] if self.device.type != "cuda" else state["cuda"][self.device.index or 0])

    def store(self, gen: torch.Generator, state: dict) -> dict:
        """``state`` with the device draws' part replaced by ``gen``'s state."""
        state = dict(state)
        if self.device.type != "cuda":
            state["torch"] = gen.get_state()
        else:
            cuda = list(state["cuda"])
            cuda[self.device.index or 0] = gen.get_state()
            state["cuda"] = cuda
        return state

    def draw(self) -> tuple[torch.Tensor, ...]:
        """One ``(R, *shape)`` mask per dropout layer (empty tuple without dropout)."""
        masks = []
        for layer in self.layers:
            if layer.p == 0 or layer.shape is None:  # never applied in training (no draw either)
                masks.append(torch.ones((len(self.generators), 1), device=self.device))
                continue
            keep = 1.0 - layer.p
            masks.append(torch.stack([torch.empty(layer.shape, device=self.device).bernoulli_(keep, generator=g).div_(keep)
                                      for g in self.generators]))
        return tuple(masks)


class _Draw:
    """Every run's next batch, drawn from the runs' own index streams, gathered for all at once.

    Without replacement the runs' epochs share one ``(R, n)`` permutation buffer (each row
    drawn from that run's generator exactly as its :class:`~tladapt.data.pipeline.IndexStream`
    would) and one device position; with replacement each run draws from its generator.
    Rows come in one gather when the runs share a storage and no augmentation, else per run.
    """

    def __init__(self, trainers: list, role: str):
        self.role = role
        self.streams = [t.pipeline._samplers[role].stream for t in trainers]
        self.domains = [getattr(t.pipeline, role) for t in trainers]
        self.augment_generators = [t.pipeline.generators[f"{role}_augment"] for t in trainers]
        first, dom = self.streams[0], self.domains[0]
        self.n, self.b, self.replacement = first.n, first.batch_size, first.replacement
        device = dom.storage.device
        self.shared = all(d.storage is dom.storage and d.augment is None and d.transform is dom.transform
                          for d in self.domains)
        if self.shared:
            rows = [torch.arange(len(d), device=device) if d.index is None else d.index for d in self.domains]
            self.rows = torch.stack(rows)
        self.labels = None if dom.y is None else torch.stack([d.y for d in self.domains])
        if not self.replacement:
            self.per_epoch = self.n // self.b
            self.perm = torch.empty(len(self.streams), self.n, dtype=torch.long, device=device)
            self.epochs = self.perm[:, : self.per_epoch * self.b].view(len(self.streams), self.per_epoch, self.b)
            self.pos = torch.zeros(1, dtype=torch.long, device=device)
            self.left = 0

    def write_back(self) -> None:
        """Give every run's own index stream this draw's state (permutation, position, batches
        left), so that its checkpoint continues where the batch stands."""
        if self.replacement:
            return  # the runs' generators were drawn from directly
        for r, stream in enumerate(self.streams):
            stream._perm.copy_(self.perm[r])
            stream._pos.copy_(self.pos)
            stream._left = self.left

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(idx (R, b), rows (R, b, *stored), inputs (R, b, *input), labels (R, b) or None)``."""
        if self.replacement:
            idx = torch.stack([torch.randint(self.n, (self.b,), generator=s.generator, device=s.generator.device)
                               for s in self.streams])
        else:
            if self.left == 0:
                for r, s in enumerate(self.streams):
                    torch.randperm(self.n, generator=s.generator, device=s.generator.device, out=self.perm[r])
                self.pos.zero_()
                self.left = self.per_epoch
            self.left -= 1
            idx = torch.index_select(self.epochs, 1, self.pos).squeeze(1)
            self.pos.add_(1)
        if self.shared:
            dom = self.domains[0]
            rows = dom.storage[self.rows.gather(1, idx)]
            inputs = dom.transform(rows.flatten(0, 1)).unflatten(0, idx.shape)
        else:
            rows = torch.stack([d.rows(i) for d, i in zip(self.domains, idx)])
            inputs = torch.stack([d.view(r, g) for d, r, g in zip(self.domains, rows, self.augment_generators)])
        labels = None if self.labels is None else self.labels.gather(1, idx)
        return idx, rows, inputs, labels


class _Optimizer:
    """The trainer's SGD or Adam (torch's update rules, dampening 0, no Nesterov, no AMSGrad)
    on the stacked parameters, with per-run hyperparameters of shape ``(R, 1, ...)``.

    Args:
        params: stacked trainable parameters by name, ``(R, *shape)``.
        groups: for each parameter name, its group index in the runs' optimizers.
        trainers: the runs (their optimizers give each run's group learning rates, momentum,
            weight decay and betas).
    """

    def __init__(self, params: dict[str, torch.Tensor], groups: dict[str, int], trainers: list):
        self.params, self.groups = params, groups
        self.kind = trainers[0].config.trainer.optimizer
        device = next(iter(params.values())).device

        def per_run(key, group):
            return torch.tensor([t.optimizer.param_groups[group][key] for t in trainers], device=device,
                                dtype=torch.float32)

        n_groups = len(trainers[0].optimizer.param_groups)
        self.base_lr = [per_run("initial_lr", g) for g in range(n_groups)]
        self.wd = [per_run("weight_decay", g) for g in range(n_groups)]
        self.momentum = [per_run("momentum", g) for g in range(n_groups)] if self.kind == "sgd" else None
        if self.kind == "adam":
            self.betas = trainers[0].optimizer.param_groups[0]["betas"]
            self.eps = trainers[0].optimizer.param_groups[0]["eps"]
        self.lr = [lr.clone() for lr in self.base_lr]
        self.state: dict[str, dict[str, torch.Tensor]] = {name: {} for name in params}
        self.steps = 0

    @staticmethod
    def _view(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return vector.view(-1, *([1] * (like.dim() - 1)))

    def set_decay(self, decay: float) -> None:
        """Learning rates ``initial_lr * decay`` (the schedule's factor at this step)."""
        for lr, base in zip(self.lr, self.base_lr):
            torch.mul(base, decay, out=lr)

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor]) -> None:
        """One update of every stacked parameter from its stacked gradient."""
        self.steps += 1
        for name, p in self.params.items():
            g_index = self.groups[name]
            grad = grads[name]
            wd = self._view(self.wd[g_index], p)
            grad = grad + wd * p
            lr = self._view(self.lr[g_index], p)
            state = self.state[name]
            if self.kind == "sgd":
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(self._view(self.momentum[g_index], p)).add_(grad)
                p.sub_(lr * state["momentum_buffer"])
            else:
                b1, b2 = self.betas
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                state["exp_avg"].lerp_(grad, 1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                bias1, bias2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(bias2)).add_(self.eps)
                p.sub_((lr / bias1) * state["exp_avg"] / denom)

    def run_state(self, r: int, name: str) -> dict[str, torch.Tensor]:
        """Run ``r``'s optimizer state of one parameter, in torch's ``state_dict`` layout."""
        state = self.state[name]
        if self.kind == "sgd":
            return {"momentum_buffer": state["momentum_buffer"][r].clone()} if state else {}
        if not state:
            return {}
        return {"step": torch.tensor(float(self.steps)), "exp_avg": state["exp_avg"][r].clone(),
                "exp_avg_sq": state["exp_avg_sq"][r].clone()}


class BatchedRuns:
    """Trains runs of one task together (see the module docstring).

    Args:
        trainers: built, not started, with nothing in :func:`batch_blockers`.
        rng_states: each run's global generator states right after its trainer was built
            (:func:`tladapt.checkpoint.rng_state`, as :func:`fit_together` records them): the
            source of its dropout masks, and the states its evaluations and checkpoints see.

    Raises:
        ValueError: naming the blockers, if the runs cannot train together.
    """

    def __init__(self, trainers: list, rng_states: list[dict]):
        reasons = batch_blockers(trainers)
        if reasons:
            raise ValueError("these runs cannot train as one batch: " + "; ".join(reasons))
        self.trainers, self.rng_states = trainers, rng_states
        self.first = trainers[0]

    # ------------------------------------------------------------------ set-up
    def _start(self) -> None:
        states = []
        for t, state in zip(self.trainers, self.rng_states):
            checkpoint.set_rng_state(state)  # what the global generators hold when this run starts alone
            t.start()
            states.append(checkpoint.rng_state())
        self.run_rng = states
        first = self.first
        first.logger.queued = True  # values logged inside the batched call come out of it
        self.layers = []
        for parent in list(first.modules.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, _DROPOUTS):
                    masked = _MaskedDropout(child)
                    setattr(parent, name, masked)
                    self.layers.append(masked)
        named = [dict(t.modules.named_parameters()) for t in self.trainers]
        self.trainable = [n for n, p in named[0].items() if p.requires_grad]
        self.frozen = [n for n, p in named[0].items() if not p.requires_grad]
        params, _ = stack_module_state([t.modules for t in self.trainers])
        self.params = {n: params[n].detach().requires_grad_(False) for n in named[0]}
        group_of = {id(p): g for g, group in enumerate(first.optimizer.param_groups) for p in group["params"]}
        self.optimizer = _Optimizer({n: self.params[n] for n in self.trainable},
                                    {n: group_of[id(named[0][n])] for n in self.trainable}, self.trainers)
        self.draws = {role: _Draw(self.trainers, role) for role in first.pipeline._samplers}
        self.scalars = self._scalars()
        self._call = vmap(grad_and_value(self._run_loss, has_aux=True), randomness="error")
        self._probe()
        self.masks = _Masks(self.layers, states, first.device)
        self.sums: dict[str, torch.Tensor] = {}
        self.floats: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        for t in self.trainers:
            t.batched = {"runs": len(self.trainers), "seeds": [u.seed for u in self.trainers],
                         "run_dirs": [str(u.run_dir) for u in self.trainers]}

    def _choose_threads(self) -> None:
        """The batch's thread count: the rule on the summed step work of the runs (the runs'
        configured count otherwise); recorded in every run's ``results.json``."""
        first = self.first
        if first.threads.chosen_by == "rule":
            flops = sum(t.threads.step_flops for t in self.trainers)
            first.threads = ThreadChoice(auto_threads(flops, available_cores()), "rule", flops, available_cores())
        for t in self.trainers:
            t.threads = first.threads

    def _scalars(self) -> dict[tuple[str, str], torch.Tensor]:
        """Plugin options (``batch_scalars``) that differ between the runs, as ``(R,)`` tensors."""
        out = {}
        device = self.first.device
        for name, cls in _plugin_classes(self.first).items():
            for key in getattr(cls, "batch_scalars", ()):
                values = [t.config.plugins[name][key] for t in self.trainers]
                if len(set(values)) > 1:
                    out[(name, key)] = torch.tensor([float(v) for v in values], device=device)
        return out

    def _probe(self) -> None:
        """One forward and loss computation with the dropout layers recording their input
        shapes (static over the run); nothing is drawn, what it logs is dropped."""
        first = self.first
        batch = self._batch_of(0, self._draw_all(peek=True))
        for layer in self.layers:
            layer.probing = True
        try:
            with torch.no_grad():
                first.loss_terms(batch)
            first.contract.first_step = False  # the probe was the contract's checked pass (tladapt.contract)
        finally:
            for layer in self.layers:
                layer.probing = False
            first.logger.take_queue()

    # ------------------------------------------------------------------ the step
    def _draw_all(self, peek: bool = False) -> dict[str, torch.Tensor | None]:
        if peek:  # the probe: shapes only, no generator advanced
            out = {}
            for role, key in (("source", "s"), ("target", "t"), ("labelled", "l")):
                if role in self.draws:
                    d = self.draws[role]
                    idx = torch.zeros(len(self.trainers), d.b, dtype=torch.long, device=self.first.device)
                    rows = torch.stack([dom.rows(i) for dom, i in zip(d.domains, idx)])
                    out[f"x_{key}"] = torch.stack([dom.inputs(i) for dom, i in zip(d.domains, idx)])
                    out[f"idx_{key}"], out[f"rows_{key}"] = idx, rows
                    out[f"y_{key}"] = None if d.labels is None else d.labels.gather(1, idx)
            return out
        out = {}
        for role, key in (("source", "s"), ("target", "t"), ("labelled", "l")):
            if role in self.draws:
                idx, rows, inputs, labels = self.draws[role].next()
                out[f"idx_{key}"], out[f"rows_{key}"], out[f"x_{key}"], out[f"y_{key}"] = idx, rows, inputs, labels
        return out

    @staticmethod
    def _batch_of(r: int | None, fields: dict) -> Batch:
        def pick(name):
            value = fields.get(name)
            return value if value is None or r is None else value[r]
        return Batch(x_s=pick("x_s"), y_s=pick("y_s"), idx_s=pick("idx_s"), x_t=pick("x_t"), idx_t=pick("idx_t"),
                     x_l=pick("x_l"), y_l=pick("y_l"), rows_s=pick("rows_s"), rows_t=pick("rows_t"))

    def _run_loss(self, trainable, frozen, masks, scalars, batch_fields):
        """One run's total loss (the function ``vmap(grad(...))`` transforms) and its logs."""
        first = self.first
        for layer, mask in zip(self.layers, masks):
            layer.mask = mask
        saved = []
        for (name, key), value in scalars.items():
            options = first.pm.get_plugin(name).options
            saved.append((options, key, getattr(options, key)))
            setattr(options, key, value)
        try:
            total, terms = functional_call(_LossOf(first), {**{f"m.{k}": v for k, v in trainable.items()},
                                                            **{f"m.{k}": v for k, v in frozen.items()}},
                                           (Batch(**{k: batch_fields.get(k) for k in _BATCH_FIELDS}),))
        finally:
            for options, key, value in saved:
                setattr(options, key, value)
            for layer in self.layers:
                layer.mask = None
        logged = {f"loss/{name}": term.value.detach() for name, term in terms.items()}
        logged["loss/total"] = total.detach()
        floats = {}
        for tag, value in first.logger.take_queue():
            if isinstance(value, torch.Tensor):
                logged[tag] = logged[tag] + value.detach() if tag in logged else value.detach()
            else:
                floats[tag] = floats.get(tag, 0.0) + value
        self._floats_seen = floats
        return total, logged

    def _update(self, step: int) -> None:
        fields = self._draw_all()
        masks = self.masks.draw()
        trainable = {n: self.params[n] for n in self.trainable}
        frozen = {n: self.params[n] for n in self.frozen}
        present = {k: v for k, v in fields.items() if v is not None}
        grads, (_, logged) = self._call(trainable, frozen, masks, self.scalars, present)
        self.optimizer.set_decay(self.first.scheduler.lr_lambdas[0](step))
        self.optimizer.step(grads)
        logged["train/lr"] = self.optimizer.lr[0]
        for tag, values in logged.items():
            if tag in self.sums:
                self.sums[tag].add_(values)
            else:
                self.sums[tag] = values.detach().to(torch.float32, copy=True)
            self.counts[tag] = self.counts.get(tag, 0) + 1
        for tag, value in self._floats_seen.items():
            self.floats[tag] = self.floats.get(tag, 0.0) + value
            self.counts[tag] = self.counts.get(tag, 0) + 1

    # ------------------------------------------------------------------ per-run bookkeeping
    def _push_logs(self) -> None:
        """Hand each run its sums since the last flush (the trainers' own flush writes them)."""
        for r, t in enumerate(self.trainers):
            for tag, sums in self.sums.items():
                if self.counts.get(tag):
                    t.logger.log(tag, sums[r], count=self.counts[tag])
            for tag, value in self.floats.items():
                t.logger.log(tag, value * 1.0, count=self.counts[tag])
        for sums in self.sums.values():
            sums.zero_()
        self.floats.clear()
        self.counts.clear()

    @torch.no_grad()
    def _sync(self) -> None:
        """Make every run's trainer hold its own state, as if it had trained alone: the logs
        since the last push, the stacked parameters, the optimizer state and the index
        streams' positions (for evaluations, checkpoints and the end of the run)."""
        self._push_logs()
        for r, t in enumerate(self.trainers):
            named = dict(t.modules.named_parameters())
            for name, stacked in self.params.items():
                named[name].copy_(stacked[r])
            state = {}
            for name in self.trainable:
                run_state = self.optimizer.run_state(r, name)
                if run_state:
                    state[named[name]] = run_state
            t.optimizer.state.clear()
            t.optimizer.state.update(state)
        for draw in self.draws.values():
            draw.write_back()

    def _each(self, fn: Callable[[Any], Any]) -> list:
        """``fn(trainer)`` for every run with the global generators set to that run's own states
        (what its evaluation and checkpoint would see alone), read back afterwards."""
        out = []
        for r, t in enumerate(self.trainers):
            gen = self.masks.generators[r]
            checkpoint.set_rng_state(self.masks.store(gen, self.run_rng[r]))
            out.append(fn(t))
            self.run_rng[r] = checkpoint.rng_state()
            self.masks.load(gen, self.run_rng[r])
        return out

    def fit(self, progress: Progress | None = None) -> list[dict]:
        """Train every run for ``trainer.steps`` steps; return their results (as ``results.json``).

        Args:
            progress: the command's progress display; None: one of the batch's own.

        Raises:
            RunInterrupted: after SIGINT or SIGTERM, at the end of the step under way, after a
                checkpoint of every run (each resumes on its own, :func:`tladapt.experiment.resume_runs`).
        """
        cfg = self.first.config.trainer
        own = progress is None
        if own:
            progress = Progress(len(self.trainers), cfg.steps * len(self.trainers), enabled=cfg.progress)
        first = self.first
        progress.start_run(f"{first.source_name}->{first.target.name}", first.config.experiment.method,
                           [t.seed for t in self.trainers])
        self._choose_threads()
        every = first.checkpoint_every
        try:
            with run_threads(first.threads.threads), signals.stop_signals(), warnings.catch_warnings():
                # the runs' own schedulers step for their state; their optimizers do not (this one does)
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self._start()
                for _ in range(cfg.steps):
                    step = None
                    for t in self.trainers:
                        step = t.begin_step()
                    started = time.perf_counter()
                    self._update(step)
                    for t in self.trainers:
                        t.scheduler.step()
                    for t in self.trainers:  # each run's provenance: the wall time of the shared step
                        t.wall["train"] += time.perf_counter() - started
                    done = step + 1
                    if done % cfg.eval_every == 0 or done == cfg.steps or (every and done % every == 0):
                        self._sync()
                        self._each(lambda t: t.end_step(step))
                    else:
                        if done % cfg.log_every == 0:
                            self._push_logs()
                        for t in self.trainers:
                            t.end_step(step)
                    evaluated = first.history and first.history[-1]["step"] == first.steps_done
                    progress.step(first.history[-1] if evaluated else None, runs=len(self.trainers))
                    if signals.requested() is not None and done < cfg.steps:
                        self._sync()
                        self._each(lambda t: (t.save_checkpoint(), t.logger.close()))
                        raise RunInterrupted(signals.requested(), first.run_dir, done, cfg.steps)
                self._sync()
                self._restore()
                results = self._each(lambda t: t.finish())
        finally:
            if own:
                progress.close()
        progress.end_run(results[0]["final"])
        return results

    def _restore(self) -> None:
        """Put the first run's dropout modules back and stop queueing its logs."""
        first = self.first
        for parent in list(first.modules.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, _MaskedDropout):
                    setattr(parent, name, child.original)
        first.logger.queued = False


class _LossOf(nn.Module):
    """``trainer.loss_terms`` as a module whose parameters are the trainer's (``m.<name>``),
    for :func:`torch.func.functional_call`."""

    def __init__(self, trainer):
        super().__init__()
        self.m = trainer.modules
        object.__setattr__(self, "_trainer", trainer)  # not a submodule

    def forward(self, batch: Batch):
        return self._trainer.loss_terms(batch)


def fit_together(specs: list[RunSpec], make_trainer: Callable[[RunSpec], Any], progress: Progress | None = None,
                 on_run: Callable[[Any, dict], None] | None = None) -> list[dict] | None:
    """Train new runs as one batch, or return None when something keeps them apart.

    Builds every run (``make_trainer``), recording the global generator states each would
    start from alone, and checks :func:`batch_blockers`: if any, it warns naming them and
    returns None (nothing was trained; the caller trains the runs one by one, in their
    directories); else it trains them with :class:`BatchedRuns`.

    Args:
        specs: the runs, e.g. the new seeds of one task, or a sweep's configs of one task.
        make_trainer: builds a :class:`~tladapt.trainer.Trainer` in ``spec.run_dir``.
        progress: the command's progress display (None: the batch shows its own).
        on_run: called with each finished run's trainer and results (as ``run_experiment``'s).

    Returns:
        The runs' results in the order of ``specs``, or None.
    """
    trainers, states = [], []
    for spec in specs:
        trainers.append(make_trainer(spec))
        states.append(checkpoint.rng_state())
    blockers = batch_blockers(trainers)
    if blockers:
        warnings.warn(f"trainer.batch_runs: training {len(specs)} runs one after another: {'; '.join(blockers)}",
                      stacklevel=2)
        for t in trainers:
            t.logger.close()
        return None
    results = BatchedRuns(trainers, states).fit(progress)
    if on_run is not None:
        for trainer, result in zip(trainers, results):
            on_run(trainer, result)
    return results
