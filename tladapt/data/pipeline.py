"""The paired source/target pipeline: device-resident, static shapes, no host sync per step.

Both domains live on the training device for the whole run. Each step draws an
index tensor per domain on the device, gathers the rows and applies the domain's
training view (its augmentation, drawn from the pipeline's generator, or its
``transform``) as tensor ops: no host-to-device copy, no Python work per sample,
no ``.item()``.

A domain kept in host memory (``data.placement = "host"``, :meth:`Domain.to` with
``host=True``) is sampled by a :class:`HostSampler` instead: indices are drawn on the
CPU, the rows gathered into pinned memory and copied to the device on a side stream
one step ahead, so the copy of batch ``t + 1`` overlaps step ``t`` and the step
itself still waits on nothing but a stream event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tladapt.data.domain import Domain


@dataclass(frozen=True)
class DomainBatch:
    """One step's batch of an extra labelled domain (:meth:`tladapt.trainer.Trainer.add_domain`).

    Attributes:
        x: inputs ``(b_e, *input_shape)`` float32, the domain's training view, with
            ``b_e = min(batch_size, n)``.
        y: labels ``(b_e,)`` int64.
        idx: ``(b_e,)`` int64 row indices into the domain.
    """

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor


@dataclass(frozen=True)
class Batch:
    """One training step's data. Target labels are deliberately absent.

    Attributes:
        x_s: source inputs, ``(b, *input_shape)`` float32; None in a source-free run
            (``data.source_free``), as are ``y_s``, ``idx_s`` and ``rows_s``.
        y_s: source labels, ``(b,)`` int64; None for an unlabelled source (``data.source_labels = false``).
        idx_s: ``(b,)`` int64 row indices into the trainer's ``source`` domain.
        x_t: target inputs, ``(b, *input_shape)`` float32.
        idx_t: ``(b,)`` int64 row indices into the trainer's ``target`` domain.
        x_l: inputs of the few labelled target samples (semi-supervised DA),
            ``(b_l, *input_shape)`` float32 with ``b_l = min(b, n_labelled)``; None
            when the task has no labelled target subset.
        y_l: their labels, ``(b_l,)`` int64, or None.
        rows_s, rows_t: the gathered stored rows ``x[idx]`` before any view was
            applied (``(b, *stored_shape)``, the stored dtype, on the device), from
            which :meth:`PairedPipeline.view` draws further views; None when the
            batch was built by hand.
        extra: one :class:`DomainBatch` per extra labelled domain of the run, by name
            (empty unless a plugin called ``trainer.add_domain``).
    """

    x_s: torch.Tensor | None
    y_s: torch.Tensor | None
    idx_s: torch.Tensor | None
    x_t: torch.Tensor
    idx_t: torch.Tensor
    x_l: torch.Tensor | None = None
    y_l: torch.Tensor | None = None
    rows_s: torch.Tensor | None = None
    rows_t: torch.Tensor | None = None
    extra: dict[str, DomainBatch] = field(default_factory=dict)


class IndexStream:
    """An endless stream of index batches for one domain, drawn on the device.

    Without replacement, each epoch is a fresh random permutation of ``range(n)``
    cut into ``n // batch_size`` batches (the remainder is dropped, a different
    one every epoch), so a batch never repeats an index and every batch has the
    same shape; a small domain simply starts epochs more often. With replacement,
    each batch is ``batch_size`` uniform draws.

    With ``shard = (rank, world)`` (one run over ``world`` processes,
    :mod:`tladapt.distributed`) every process draws the same global batches of
    ``world * batch_size`` indices (the same generator seed) and keeps its own slice
    ``[rank * batch_size, (rank + 1) * batch_size)``: the ranks' batches together are
    exactly the batch a single process draws with ``world * batch_size``.

    Args:
        n: domain size.
        batch_size: indices per batch (per process when sharded).
        generator: a ``torch.Generator`` on the device where indices are made.
        replacement: sample with replacement.
        shard: ``(rank, world)``; ``(0, 1)`` for one process.

    Raises:
        ValueError: if ``n`` or ``batch_size`` is not positive, or
            ``world * batch_size > n`` without replacement.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, replacement: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        if n <= 0:
            raise ValueError(f"cannot sample from an empty domain (n={n})")
        if batch_size <= 0:
            raise ValueError(f"trainer.batch_size must be positive, got {batch_size}")
        rank, world = shard
        if batch_size * world > n and not replacement:
            size = f"{batch_size} x {world} processes = {batch_size * world}" if world > 1 else f"{batch_size}"
            raise ValueError(
                f"trainer.batch_size={size} exceeds the domain's {n} samples: "
                f"expected batch_size <= {n // world}, or set trainer.replacement = true"
            )
        self.n, self.batch_size, self.replacement = n, batch_size, replacement
        self.rank, self.world = rank, world
        self.global_size = batch_size * world
        self.generator = generator
        device = generator.device
        # The epoch's permutation lives in one buffer for the whole run and the position of
        # the next batch in a device counter, so that a draw is device ops only (capturable
        # in a CUDA graph); the host counts the batches left to know when an epoch ends.
        self._per_epoch = n // self.global_size
        self._perm = torch.empty(0 if replacement else n, dtype=torch.long, device=device)
        self._epoch = self._perm[: self._per_epoch * self.global_size].view(-1, self.global_size)
        self._pos = torch.zeros(1, dtype=torch.long, device=device)
        self._left = 0

    def prepare(self) -> None:
        """Host-side bookkeeping before each :meth:`draw`: when the epoch is used up, the next
        epoch's permutation is drawn into the same buffer and the device position reset."""
        if self.replacement:
            return
        if self._left == 0:
            torch.randperm(self.n, generator=self.generator, device=self.generator.device, out=self._perm)
            self._pos.zero_()
            self._left = self._per_epoch
        self._left -= 1

    def draw(self) -> torch.Tensor:
        """The batch after :meth:`prepare`, by device ops only (no host sync, static shapes)."""
        if self.replacement:
            idx = torch.randint(self.n, (self.global_size,), generator=self.generator, device=self.generator.device)
        else:
            idx = torch.index_select(self._epoch, 0, self._pos).view(-1)
            self._pos.add_(1)
        if self.world > 1:
            idx = idx[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return idx

    def next(self) -> torch.Tensor:
        """The next ``(batch_size,)`` int64 index tensor, on the generator's device."""
        self.prepare()
        return self.draw()

    def state_dict(self) -> dict:
        """Where the stream stands: the generator's state (``uint8`` CPU tensor), the current
        epoch's ``(batches, world * batch_size)`` int64 permutation (``(0, batch_size)`` when the next
        draw starts a new epoch) and the next batch's position in it."""
        if self.replacement or self._left == 0:
            epoch = self._epoch[:0].clone()
        else:
            epoch = self._epoch.clone()
        return {"generator": self.generator.get_state(), "epoch": epoch,
                "next": 0 if epoch.shape[0] == 0 else self._per_epoch - self._left}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where :meth:`state_dict` was taken (tensors may come from the CPU).
        The permutation and position are copied into this stream's own buffers, whose
        addresses a captured CUDA graph holds.

        Raises:
            ValueError: if the saved epoch does not fit this stream's batch size.
        """
        epoch = state["epoch"].to(self.generator.device)
        if epoch.ndim != 2 or epoch.shape[1] != self.global_size or epoch.shape[0] not in (0, self._per_epoch) \
                or (self.replacement and epoch.shape[0]):
            raise ValueError(f"saved index stream of shape {tuple(epoch.shape)} does not fit batch size "
                             f"{self.global_size}")
        self.generator.set_state(state["generator"].cpu())
        if epoch.shape[0] == 0:
            self._left = 0
        else:
            self._epoch.copy_(epoch)
            self._pos.fill_(int(state["next"]))
            self._left = self._per_epoch - int(state["next"])


class HostSampler:
    """Batches of a domain kept in host memory, copied to the device one step ahead.

    Indices come from ``stream`` (a CPU generator); the rows are gathered with one
    ``index_select`` into a pinned buffer and copied, with the indices, to ``device``
    on a side CUDA stream. :meth:`next` returns the batch fetched at the previous call
    (after making the current stream wait for its copy, without blocking the host)
    and starts fetching the following one. On a CPU device the same logic runs with
    plain memory and no streams.

    Args:
        domain: the domain, its storage a CPU tensor (pinned for CUDA).
        stream: the domain's :class:`IndexStream`, on the CPU.
        device: the training device.
    """

    def __init__(self, domain: Domain, stream: IndexStream, device: torch.device):
        self.x, self.index, self.stream, self.device = domain.storage, domain.index, stream, device
        self._side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ahead = self._fetch()

    def _fetch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.stream.next()
        rows = torch.empty((idx.shape[0], *self.x.shape[1:]), dtype=self.x.dtype, pin_memory=self._side is not None)
        torch.index_select(self.x, 0, idx if self.index is None else self.index[idx], out=rows)
        if self._side is None:
            return idx, rows
        idx = idx.pin_memory()
        with torch.cuda.stream(self._side):
            return idx.to(self.device, non_blocking=True), rows.to(self.device, non_blocking=True)

    def prepare(self) -> None:
        """Nothing: the host sampler draws its indices when it fetches (it is not capturable)."""

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx, rows)`` on the device: ``(b,)`` int64 and ``(b, *x.shape[1:])``."""
        idx, rows = self._ahead
        if self._side is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._side)
            idx.record_stream(current)
            rows.record_stream(current)
        self._ahead = self._fetch()
        return idx, rows

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`draw` (the batch fetched at the previous call)."""
        return self.draw()

    def state_dict(self) -> dict:
        """The index stream's state and the indices of the batch fetched ahead."""
        return {"stream": self.stream.state_dict(), "ahead": self._ahead[0].cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Continue where :meth:`state_dict` was taken: the stream, and the batch ahead fetched again."""
        self.stream.load_state_dict(state["stream"])
        idx = state["ahead"].cpu()
        rows = torch.empty((idx.shape[0], *self.x.shape[1:]), dtype=self.x.dtype, pin_memory=self._side is not None)
        torch.index_select(self.x, 0, idx if self.index is None else self.index[idx], out=rows)
        self._ahead = (idx, rows) if self._side is None else (idx.to(self.device), rows.to(self.device))


class _DeviceSampler:
    """Batches of a device-resident domain: indices drawn and rows gathered on the device."""

    def __init__(self, domain: Domain, stream: IndexStream):
        self.domain, self.stream = domain, stream

    def prepare(self) -> None:
        self.stream.prepare()

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.stream.draw()
        return idx, self.domain.rows(idx)

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])


class PairedPipeline:
    """Draws source and target batches independently from device-resident domains.

    Args:
        source: source domain (labelled unless the run's source is unlabelled), already on the
            training device; None for a target-only (source-free) pipeline, whose batches
            have no source tensors.
        target: target domain on the training device; its labels, if any, are never read.
        batch_size: samples per domain per step.
        seed: seeds the index streams (independent generators).
        replacement: sample with replacement (needed when a domain is smaller
            than ``batch_size``).
        labelled: optional labelled target subset (k-shot); each batch then also
            holds ``min(batch_size, len(labelled))`` of its samples, drawn without
            replacement by epochs like the others.
        extra: optional further labelled domains by name (multi-task learning); each
            batch holds ``min(batch_size, n)`` samples of each, drawn like ``labelled``
            (index generators ``extra:<name>_index``, seeded ``3 seed + 3 + i``).
        shard: ``(rank, world)`` for one run over ``world`` processes
            (:mod:`tladapt.distributed`): each index stream draws the global batch of
            ``world * batch_size`` (``world * min(batch_size, n // world)`` for the labelled
            and extra domains) and keeps this rank's slice (:class:`IndexStream`), and the
            augmentation generators of rank ``r > 0`` are seeded ``r * 2**40`` higher, so
            each rank augments its slice with draws of its own.

    Every random draw comes from a generator of the pipeline seeded from ``seed``
    (:attr:`generators`): the index streams (``3 seed + 0, 1, 2``; on the CPU for a
    domain kept on the host) and one augmentation generator per domain on the
    device (``2**32 + 3 seed + 0, 1, 2``), so a run's batches and views repeat.

    Raises:
        ValueError: from :class:`IndexStream` for empty domains or a batch size
            larger than a domain without replacement, naming the domain.
    """

    def __init__(self, source: Domain | None, target: Domain, batch_size: int, seed: int, replacement: bool = False,
                 labelled: Domain | None = None, extra: dict[str, Domain] | None = None,
                 shard: tuple[int, int] = (0, 1)):
        device = target.device
        rank, world = shard
        self.generators: dict[str, torch.Generator] = {}

        def sampler(role, dom, offset, size, replace):
            gen = torch.Generator(device="cpu" if dom.host is not None else device).manual_seed(3 * seed + offset)
            self.generators[f"{role}_index"] = gen
            self.generators[f"{role}_augment"] = torch.Generator(device=device).manual_seed(
                2**32 + 3 * seed + offset + rank * 2**40)
            try:
                stream = IndexStream(len(dom), size, gen, replace, shard)
            except ValueError as err:
                raise ValueError(f"{role} domain {dom.name!r}: {err}") from None
            return _DeviceSampler(dom, stream) if dom.host is None else HostSampler(dom, stream, device)

        self._samplers = {"target": sampler("target", target, 1, batch_size, replacement)}
        if source is not None:
            self._samplers["source"] = sampler("source", source, 0, batch_size, replacement)
        if labelled is not None:
            self._samplers["labelled"] = sampler("labelled", labelled, 2, self._share(batch_size, labelled, world),
                                                 False)
        self.extra = dict(extra or {})
        for i, (name, dom) in enumerate(self.extra.items()):
            self._samplers[f"extra:{name}"] = sampler(f"extra:{name}", dom, 3 + i, self._share(batch_size, dom, world),
                                                      False)
        self.source, self.target, self.labelled = source, target, labelled

    @staticmethod
    def _share(batch_size: int, domain: Domain, world: int) -> int:
        """Per-process batch of a small labelled domain: ``min(batch_size, n // world)`` (at least 1)."""
        return max(1, min(batch_size, len(domain) // world))

    def state_dict(self) -> dict:
        """Where every random draw stands: each sampler's index stream (and batch fetched ahead)
        and each augmentation generator's state, by role."""
        return {"samplers": {role: s.state_dict() for role, s in self._samplers.items()},
                "augment": {name: g.get_state() for name, g in self.generators.items() if name.endswith("_augment")}}

    def load_state_dict(self, state: dict) -> None:
        """Continue every draw exactly where :meth:`state_dict` was taken.

        Raises:
            ValueError: if the saved pipeline has other domains (roles) than this one.
        """
        if set(state["samplers"]) != set(self._samplers):
            raise ValueError(f"saved pipeline samples {sorted(state['samplers'])}, this one {sorted(self._samplers)}")
        for role, sampler in self._samplers.items():
            sampler.load_state_dict(state["samplers"][role])
        for name, gen_state in state["augment"].items():
            self.generators[name].set_state(gen_state.cpu())

    def _draw(self, role: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx, rows = self._samplers[role].draw()
        dom = self.extra[role.removeprefix("extra:")] if role.startswith("extra:") else getattr(self, role)
        return idx, rows, dom.view(rows, self.generators[f"{role}_augment"])

    @property
    def labelled_batch_size(self) -> int:
        """Labelled target samples per batch (0 without a labelled subset)."""
        return self._samplers["labelled"].stream.batch_size if "labelled" in self._samplers else 0

    @property
    def capturable(self) -> bool:
        """Whether :meth:`draw` is device work only (no domain is kept in host memory)."""
        return not any(isinstance(s, HostSampler) for s in self._samplers.values())

    def prepare(self) -> None:
        """Host-side bookkeeping of every index stream before :meth:`draw` (new epochs)."""
        for sampler in self._samplers.values():
            sampler.prepare()

    def next(self) -> Batch:
        """:meth:`prepare`, then :meth:`draw`: the next batch."""
        self.prepare()
        return self.draw()

    def draw(self) -> Batch:
        """Gather the next :class:`Batch` (device tensors only; with every domain on the device,
        device ops only, so that a CUDA graph can capture it)."""
        idx_s = rows_s = x_s = y_s = x_l = y_l = None
        if self.source is not None:
            idx_s, rows_s, x_s = self._draw("source")
            y_s = None if self.source.y is None else self.source.y[idx_s]
        idx_t, rows_t, x_t = self._draw("target")
        if self.labelled is not None:
            idx_l, _, x_l = self._draw("labelled")
            y_l = self.labelled.y[idx_l]
        extra = {}
        for name, dom in self.extra.items():
            idx_e, _, x_e = self._draw(f"extra:{name}")
            extra[name] = DomainBatch(x_e, dom.y[idx_e], idx_e)
        return Batch(x_s=x_s, y_s=y_s, idx_s=idx_s, x_t=x_t, idx_t=idx_t, x_l=x_l, y_l=y_l,
                     rows_s=rows_s, rows_t=rows_t, extra=extra)

    def view(self, batch: Batch, role: str = "target", policy: str = "strong") -> torch.Tensor:
        """Another view of the batch's source or target rows, e.g. FixMatch's strong view.

        Args:
            batch: a batch from :meth:`next`.
            role: ``"source"`` or ``"target"``.
            policy: ``"weak"`` (a fresh draw of the training augmentation) or
                ``"strong"`` (:meth:`tladapt.data.augment.Augmentation.strong`).

        Returns:
            ``(b, *input_shape)`` float32 on the device, row ``i`` a view of the same
            sample as ``batch.x_t[i]`` (resp. ``x_s``); drawn from the domain's
            augmentation generator, so it is seeded by the run.

        Raises:
            ValueError: an unknown role or policy, a batch without rows, or
                ``"strong"`` for a domain without augmentation (features).
        """
        if role not in ("source", "target"):
            raise ValueError(f"unknown role {role!r}: expected 'source' or 'target'")
        rows = batch.rows_s if role == "source" else batch.rows_t
        if rows is None:
            raise ValueError("this batch holds no stored rows (it was not drawn by PairedPipeline.next)")
        return getattr(self, role).view(rows, self.generators[f"{role}_augment"], policy)


def resolve_placement(placement: str, domains: tuple[Domain, ...], device: torch.device) -> bool:
    """Whether the domains stay in host memory (``data.placement``).

    ``"device"``: no; ``"host"``: yes; ``"auto"``: on CUDA, yes when their stored
    samples and labels take more than half of the device's free memory (the rest is
    left to the model's weights, activations and optimizer state), else no; on the
    CPU, no (host and device memory are one).
    """
    if placement != "auto":
        return placement == "host"
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    need = sum(d.storage.nbytes + (0 if d.y is None else d.y.nbytes) for d in domains)
    return need > free // 2
