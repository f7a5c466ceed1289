"""Domains and tasks: the tensors a run adapts between, checked once before training."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from tladapt.data.augment import Augmentation, ImageFormat


def _to_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float()


@dataclass(frozen=True)
class Domain:
    """One domain of a benchmark: inputs, optional labels, a name and class names.

    Attributes:
        name: the domain's name as used in configs, e.g. ``"webcam"``.
        storage: stored samples, shape ``(N, *stored_shape)``, in the smallest dtype
            that keeps them exact (``uint8`` pixels, ``float32`` features, ...); the
            domain's samples are ``storage[index]`` (all of them when ``index`` is None).
            Passed as the second positional argument (the constructor's ``x``).
        y: labels, shape ``(n,)``, ``int64`` in ``0 .. len(classes) - 1``; ``None``
            for an unlabelled domain.
        classes: class names, index ``k`` names label ``k``.
        transform: maps a gathered batch of ``x`` (any leading size ``b``) to the
            model's ``float32`` input of shape ``(b, *input_shape)``, using tensor
            ops only so that it runs on the training device. Defaults to a cast.
            It is the evaluation view; training uses ``augment`` when set.
        augment: the training-time augmentation of an image domain
            (:class:`tladapt.data.augment.Augmentation`: ``weak`` and ``strong`` views
            drawn with the pipeline's generator), or None: training uses ``transform``.
        image: how the stored pixels of an image domain read
            (:class:`tladapt.data.augment.ImageFormat`), or None for a feature domain.
            Only domains with an ``image`` get the run's ``[augment]`` views.
        host: None when ``x`` lives on the training device; for a domain kept in
            host memory (``data.placement = "host"``), the training device, where
            ``y``, the inputs of :meth:`inputs` and :meth:`map` and the pipeline's
            batches go while ``x`` stays in (pinned) CPU memory.
        index: ``(n,)`` int64 rows of ``storage`` (on ``storage``'s device) that form this
            domain, or None for all of them. :meth:`subset` makes such index views, so a
            run's splits (source train / validation, k-shot target) hold each sample
            once, in the loaded domain's storage, instead of copying it.

    ``x`` is the domain's samples ``(n, *stored_shape)``: ``storage`` itself without an
    index, a gathered copy for an index view (for whole-domain work; per-batch code uses
    :meth:`rows`, :meth:`inputs` and :meth:`map`, which gather only what they need).

    The dataset loaders (:mod:`tladapt.data.datasets`) apply each benchmark's
    whole-domain preprocessing (e.g. per-domain z-scores) before building the
    ``Domain``; ``transform`` holds only what can be done per batch.
    """

    name: str
    storage: torch.Tensor
    y: torch.Tensor | None
    classes: tuple[str, ...]
    transform: Callable[[torch.Tensor], torch.Tensor] = field(default=_to_float32, repr=False)
    augment: "Augmentation | None" = field(default=None, repr=False)
    image: "ImageFormat | None" = field(default=None, repr=False)
    host: torch.device | None = field(default=None, repr=False)
    index: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.storage.shape[0] if self.index is None else self.index.shape[0]

    @property
    def x(self) -> torch.Tensor:
        """The domain's stored samples ``(n, *stored_shape)`` (a gathered copy for an index view)."""
        return self.storage if self.index is None else self.storage[self.index]

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Stored samples at ``index`` (``(m,)`` int64 positions in this domain, on ``storage``'s
        device): one gather from the storage, through the view's index if any."""
        return self.storage[index if self.index is None else self.index[index]]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input, without the sample dimension (an image domain's
        evaluation view may crop its stored samples)."""
        if self.image is None:
            return tuple(self.storage.shape[1:])
        return tuple(self.transform(self.storage[:1]).shape[1:])

    @property
    def device(self) -> torch.device:
        """The training device of this domain's inputs (the storage's device unless kept on the host)."""
        return self.storage.device if self.host is None else self.host

    def to(self, device: torch.device | str, host: bool = False) -> "Domain":
        """A copy whose tensors live on ``device`` (one host-to-device copy), or with
        ``host = True`` whose ``x`` stays in CPU memory (pinned when ``device`` is CUDA)
        and whose labels and inputs go to ``device``."""
        device = torch.device(device)
        y = None if self.y is None else self.y.to(device)
        if not host:
            index = None if self.index is None else self.index.to(device)
            return replace(self, storage=self.storage.to(device), y=y, host=None, index=index)
        x = self.storage.cpu()
        if device.type == "cuda" and not x.is_pinned():
            x = x.pin_memory()
        return replace(self, storage=x, y=y, host=device, index=None if self.index is None else self.index.cpu())

    def subset(self, index: torch.Tensor) -> "Domain":
        """The samples at ``index`` (``int64``, shape ``(m,)``) as a new domain: an index view
        of the same storage (no sample is copied; the labels are gathered)."""
        y = None if self.y is None else self.y[index.to(self.y.device)]
        index = index.to(self.storage.device)
        return replace(self, y=y, index=index if self.index is None else self.index[index])

    def _on_device(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.host is None else rows.to(self.host, non_blocking=True)

    def unlabelled(self) -> "Domain":
        """The same inputs without labels: what plugins see of the target domain."""
        return replace(self, y=None)

    def inputs(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Model inputs ``(m, *input_shape)`` ``float32`` for ``index`` (all samples if None):
        the evaluation view."""
        rows = self.x if index is None else self.rows(index.to(self.storage.device))
        return self.transform(self._on_device(rows))

    def view(self, rows: torch.Tensor, generator: torch.Generator, policy: str = "weak") -> torch.Tensor:
        """Training inputs ``(b, *input_shape)`` float32 of gathered rows ``x[index]``.

        Args:
            rows: stored samples, ``(b, *x.shape[1:])``, on the training device.
            generator: the pipeline's generator for this domain (same device).
            policy: ``"weak"`` (the training augmentation; ``transform`` for a domain
                without one) or ``"strong"`` (:meth:`Augmentation.strong`).

        Raises:
            ValueError: ``"strong"`` for a domain without augmentation, or an unknown policy.
        """
        if policy == "weak":
            return self.transform(rows) if self.augment is None else self.augment.weak(rows, generator)
        if policy == "strong":
            if self.augment is None:
                raise ValueError(f"domain {self.name!r} has no augmentation: a strong view needs an image domain")
            return self.augment.strong(rows, generator)
        raise ValueError(f"unknown view policy {policy!r}: expected 'weak' or 'strong'")

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], chunk: int = 2048) -> torch.Tensor:
        """``fn`` applied to the model inputs ``chunk`` rows at a time, concatenated along dim 0.

        For whole-domain inference (evaluation, feature extraction) in bounded memory;
        call it under ``torch.no_grad()`` when no gradient is wanted.
        """
        def part(i: int) -> torch.Tensor:
            rows = self.storage[i:i + chunk] if self.index is None else self.storage[self.index[i:i + chunk]]
            return fn(self.transform(self._on_device(rows)))

        return torch.cat([part(i) for i in range(0, len(self), chunk)])


def check_task(source: Domain | None, target: Domain, labelled_target: bool = False,
               source_labels: bool = True) -> None:
    """Check that ``source`` and ``target`` form a valid task.

    ``source = None`` is a source-free (target-only) task: the target alone is checked,
    its labels (for the oracle) against its own class list.

    Args:
        source, target: the task's domains.
        labelled_target: the run draws labelled target samples (``data.target_labels_per_class
            > 0``), so a target with classes of its own can train its own head.
        source_labels: False when the source is unlabelled on purpose (``data.source_labels =
            false``: self-taught or unsupervised pre-training); its label checks are skipped.

    Raises:
        ValueError: naming the offending argument when a domain is empty, the source has
            no labels (unless ``source_labels`` is False), labels are not 1-D ``int64`` of the
            right length, a domain's labels fall outside its class list, the input shapes
            differ, or the target has classes outside the source's (by name) and no labelled
            target samples: unsupervised DA needs the target's classes among the source's.
    """
    for role, dom in (("source", source), ("target", target)):
        if dom is None:
            continue
        if len(dom) == 0:
            raise ValueError(f"{role} domain {dom.name!r} is empty: expected at least one sample")
        if dom.y is not None:
            if dom.y.dtype != torch.int64 or dom.y.shape != (len(dom),):
                raise ValueError(
                    f"{role} domain {dom.name!r}: labels must be int64 of shape ({len(dom)},), "
                    f"got {dom.y.dtype} of shape {tuple(dom.y.shape)}"
                )
    if source is None:
        if target.y is not None and (int(target.y.min()) < 0 or int(target.y.max()) >= len(target.classes)):
            raise ValueError(f"target domain {target.name!r}: labels {int(target.y.min())}..{int(target.y.max())} "
                             f"fall outside its classes 0..{len(target.classes) - 1}")
        return
    if source.input_shape != target.input_shape:
        raise ValueError(
            f"target domain {target.name!r} has input shape {target.input_shape}, "
            f"expected the source's {source.input_shape} (domain {source.name!r})"
        )
    if source.y is None:
        if source_labels:
            raise ValueError(f"source domain {source.name!r} has no labels: UDA needs a labelled source "
                             "(data.source_labels = false for a deliberately unlabelled source)")
        return
    n_classes = len(source.classes)
    if int(source.y.min()) < 0 or int(source.y.max()) >= n_classes:
        raise ValueError(
            f"source domain {source.name!r}: labels must lie in 0..{n_classes - 1} "
            f"(its {n_classes} classes), got {int(source.y.min())}..{int(source.y.max())}"
        )
    if target.y is not None and (int(target.y.min()) < 0 or int(target.y.max()) >= len(target.classes)):
        where = "the source class set" if target.classes == source.classes else "its classes"
        raise ValueError(
            f"target domain {target.name!r}: labels {int(target.y.min())}..{int(target.y.max())} "
            f"fall outside {where} 0..{len(target.classes) - 1} ({source.name!r})"
        )
    outside = [c for c in target.classes if c not in set(source.classes)]
    if outside and not labelled_target:
        shown = ", ".join(map(repr, outside[:5])) + (", ..." if len(outside) > 5 else "")
        raise ValueError(
            f"target domain {target.name!r} has classes outside the source class set ({shown}): unsupervised "
            f"DA needs the target's classes among the source's. For a different target task, label some "
            f"target samples (data.target_labels_per_class > 0) to train its new head"
        )
