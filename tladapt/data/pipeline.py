"""The paired source/target pipeline: device-resident, static shapes, no host sync per step.

Both domains live on the training device for the whole run. Each step draws an
index tensor per domain on the device, gathers the rows and applies the domain's
``transform`` as tensor ops: no host-to-device copy, no Python work per sample,
no ``.item()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tladapt.data.domain import Domain


@dataclass(frozen=True)
class Batch:
    """One training step's data. Target labels are deliberately absent.

    Attributes:
        x_s: source inputs, ``(b, *input_shape)`` float32.
        y_s: source labels, ``(b,)`` int64; None for an unlabelled source (``data.source_labels = false``).
        idx_s: ``(b,)`` int64 row indices into the trainer's ``source`` domain.
        x_t: target inputs, ``(b, *input_shape)`` float32.
        idx_t: ``(b,)`` int64 row indices into the trainer's ``target`` domain.
        x_l: inputs of the few labelled target samples (semi-supervised DA),
            ``(b_l, *input_shape)`` float32 with ``b_l = min(b, n_labelled)``; None
            when the task has no labelled target subset.
        y_l: their labels, ``(b_l,)`` int64, or None.
    """

    x_s: torch.Tensor
    y_s: torch.Tensor | None
    idx_s: torch.Tensor
    x_t: torch.Tensor
    idx_t: torch.Tensor
    x_l: torch.Tensor | None = None
    y_l: torch.Tensor | None = None


class IndexStream:
    """An endless stream of index batches for one domain, drawn on the device.

    Without replacement, each epoch is a fresh random permutation of ``range(n)``
    cut into ``n // batch_size`` batches (the remainder is dropped, a different
    one every epoch), so a batch never repeats an index and every batch has the
    same shape; a small domain simply starts epochs more often. With replacement,
    each batch is ``batch_size`` uniform draws.

    Args:
        n: domain size.
        batch_size: indices per batch.
        generator: a ``torch.Generator`` on the device where indices are made.
        replacement: sample with replacement.

    Raises:
        ValueError: if ``n`` or ``batch_size`` is not positive, or
            ``batch_size > n`` without replacement.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, replacement: bool = False):
        if n <= 0:
            raise ValueError(f"cannot sample from an empty domain (n={n})")
        if batch_size <= 0:
            raise ValueError(f"trainer.batch_size must be positive, got {batch_size}")
        if batch_size > n and not replacement:
            raise ValueError(
                f"trainer.batch_size={batch_size} exceeds the domain's {n} samples: "
                f"expected batch_size <= {n}, or set trainer.replacement = true"
            )
        self.n, self.batch_size, self.replacement = n, batch_size, replacement
        self.generator = generator
        self._epoch = torch.empty(0, batch_size, dtype=torch.long, device=generator.device)
        self._next = 0

    def next(self) -> torch.Tensor:
        """The next ``(batch_size,)`` int64 index tensor, on the generator's device."""
        device = self.generator.device
        if self.replacement:
            return torch.randint(self.n, (self.batch_size,), generator=self.generator, device=device)
        if self._next == self._epoch.shape[0]:
            per_epoch = self.n // self.batch_size
            perm = torch.randperm(self.n, generator=self.generator, device=device)
            self._epoch = perm[: per_epoch * self.batch_size].view(per_epoch, self.batch_size)
            self._next = 0
        self._next += 1
        return self._epoch[self._next - 1]


class PairedPipeline:
    """Draws source and target batches independently from device-resident domains.

    Args:
        source: source domain (labelled unless the run's source is unlabelled), already on the
            training device.
        target: target domain on the same device; its labels, if any, are never read.
        batch_size: samples per domain per step.
        seed: seeds the index streams (independent generators).
        replacement: sample with replacement (needed when a domain is smaller
            than ``batch_size``).
        labelled: optional labelled target subset (k-shot); each batch then also
            holds ``min(batch_size, len(labelled))`` of its samples, drawn without
            replacement by epochs like the others.

    Raises:
        ValueError: from :class:`IndexStream` for empty domains or a batch size
            larger than a domain without replacement, naming the domain.
    """

    def __init__(self, source: Domain, target: Domain, batch_size: int, seed: int, replacement: bool = False,
                 labelled: Domain | None = None):
        device = source.x.device

        def stream(role, dom, offset, size, replace):
            gen = torch.Generator(device=device).manual_seed(3 * seed + offset)
            try:
                return IndexStream(len(dom), size, gen, replace)
            except ValueError as err:
                raise ValueError(f"{role} domain {dom.name!r}: {err}") from None

        self._source_stream = stream("source", source, 0, batch_size, replacement)
        self._target_stream = stream("target", target, 1, batch_size, replacement)
        self._labelled_stream = None
        if labelled is not None:
            self._labelled_stream = stream("labelled target", labelled, 2, min(batch_size, len(labelled)), False)
        self.source, self.target, self.labelled = source, target, labelled

    def next(self) -> Batch:
        """Gather the next :class:`Batch` (device tensors only)."""
        idx_s, idx_t = self._source_stream.next(), self._target_stream.next()
        x_l = y_l = None
        if self._labelled_stream is not None:
            idx_l = self._labelled_stream.next()
            x_l, y_l = self.labelled.inputs(idx_l), self.labelled.y[idx_l]
        return Batch(
            x_s=self.source.inputs(idx_s),
            y_s=None if self.source.y is None else self.source.y[idx_s],
            idx_s=idx_s,
            x_t=self.target.inputs(idx_t),
            idx_t=idx_t,
            x_l=x_l,
            y_l=y_l,
        )
