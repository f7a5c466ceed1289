"""Tasks: the two domains of a ``source->target`` entry, their class subsets, and the splits a run uses.

A task's domains may have different label sets. ``data.source_classes`` /
``data.target_classes`` keep a subset of a dataset's classes (by name or index), and a
``module:function`` dataset may give its domains different class lists. The run's
*label space* follows from the class names:

* the target's classes are among the source's (closed-set or partial DA): the target's
  labels are re-expressed as indices into the source's class list and one classifier
  head serves both domains; the target may be unlabelled (UDA);
* otherwise (a different target task, the inductive setting of Pan & Yang, TKDE 2010):
  the target gets its own head sized for its classes, which only labelled target
  samples can train, so ``data.target_labels_per_class`` must be > 0.

:func:`split_task` is the one place that turns a task's two domains into the splits a
run trains and evaluates on; the trainer and the feature-based transfer both call it,
so their splits are identical by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from tladapt.config import DataSection, parse_task
from tladapt.data.datasets import DATASETS, load_domain
from tladapt.data.domain import Domain, check_task
from tladapt.data.images import ImageOptions
from tladapt.errors import ConfigError

__all__ = ["TaskSplits", "class_selection", "select_classes", "load_task", "check_same_domain",
           "shares_label_space", "to_source_labels", "split_source", "split_target", "split_task",
           "check_class_options", "MIN_CLASSES"]

#: Classes a classifier head, or a clustering score, needs: one class makes every prediction
#: right (a 1-way head scores 100 %, one cluster scores NMI = ARI = 1).
MIN_CLASSES = 2


def class_selection(classes: tuple[str, ...], selection: list[str | int], key: str) -> list[int]:
    """Indices into ``classes`` of a ``data.source_classes``-style selection, in the domain's order.

    Args:
        classes: the domain's class names (index ``k`` names label ``k``).
        selection: class names or 0-based indices (mixed is allowed); empty keeps every class.
        key: the config key, for messages (``"data.source_classes"``).

    Returns:
        Sorted, distinct indices into ``classes`` (sorted so that two selections of the
        same classes give the same labels whatever order they were written in).

    Raises:
        ConfigError: for an unknown name, an index outside ``0 .. len(classes) - 1``, or a
            class named twice, listing the valid names.
    """
    if not selection:
        return list(range(len(classes)))
    index = {name: k for k, name in enumerate(classes)}
    picked = []
    for item in selection:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ConfigError(f"{key}: expected class names or indices, got {item!r}")
        k = item if isinstance(item, int) else index.get(item)
        if k is None or not 0 <= k < len(classes):
            raise ConfigError(f"{key}: unknown class {item!r}: expected a name of {', '.join(classes)} "
                              f"or an index 0..{len(classes) - 1}")
        if k in picked:
            raise ConfigError(f"{key}: class {classes[k]!r} is selected twice")
        picked.append(k)
    return sorted(picked)


def select_classes(domain: Domain, selection: list[str | int], key: str = "data.classes") -> Domain:
    """The samples of ``domain`` whose class is selected, relabelled ``0 .. m - 1``.

    Labels follow the domain's class order (:func:`class_selection`); ``classes`` becomes
    the selected names. An empty selection returns ``domain`` itself.

    Raises:
        ConfigError: as :func:`class_selection`, or for an unlabelled domain.
    """
    if not selection:
        return domain
    if domain.y is None:
        raise ConfigError(f"{key}: domain {domain.name!r} has no labels to select classes by")
    keep = class_selection(domain.classes, selection, key)
    relabel = torch.full((len(domain.classes),), -1, dtype=torch.int64, device=domain.y.device)
    relabel[keep] = torch.arange(len(keep), device=domain.y.device)
    rows = (relabel[domain.y] >= 0).nonzero().squeeze(1)
    sub = domain.subset(rows)
    return replace(sub, y=relabel[sub.y], classes=tuple(domain.classes[k] for k in keep))


def load_task(data: DataSection, task: str) -> tuple[Domain | None, Domain]:
    """The ``(source, target)`` domains of a ``"source->target"`` task, with the class subsets
    of ``data.source_classes`` / ``data.target_classes`` applied (CPU tensors). The source is
    None, and never read, in a source-free run (``data.source_free``).

    Raises:
        ConfigError: as :func:`select_classes` and :func:`tladapt.config.parse_task`;
            ValueError / TypeError: as :func:`tladapt.data.datasets.load_domain`.
    """
    s, t = parse_task(task)
    images = ImageOptions.of(data)
    source = None if data.source_free else load_domain(data.dataset, s, images=images)  # never read source-free
    target = source if source is not None and s == t else load_domain(data.dataset, t, images=images)
    if s == t:
        check_same_domain(data, task, target.classes)
    source = None if source is None else select_classes(source, data.source_classes, "data.source_classes")
    return source, select_classes(target, data.target_classes, "data.target_classes")


def check_same_domain(data: DataSection, task: str, classes: tuple[str, ...]) -> None:
    """Refuse a task whose source and target are one domain and share a class.

    Both selections are resolved to the domain's classes (:func:`class_selection`: names
    and indices alike, ``[]`` as every class), so ``[0, 1]`` and ``['0', '1']`` are the same
    classes. A shared class means the target's samples of it *are* source training samples:
    ``oracle/target_acc`` would test on samples the model was trained on with their labels.
    Disjoint classes of one domain (e.g. MNIST 0-4 -> MNIST 5-9) are a different target task
    and pass. ``data.allow_same_domain = true`` lets the overlap through, for a deliberate
    in-domain reference (its ``oracle/target_acc`` is then accuracy on training data; the
    held-out in-domain number is ``metrics/source_val_acc``).

    Args:
        data: the config's ``[data]`` section.
        task: ``"source->target"`` (a no-op unless both name one domain).
        classes: the domain's class names (index ``k`` names label ``k``).

    Raises:
        ConfigError: naming the task, the shared classes and ``data.allow_same_domain``; or as
            :func:`class_selection`.
    """
    source, target = parse_task(task)
    if source != target or data.allow_same_domain:
        return
    shared = sorted(set(class_selection(classes, data.source_classes, "data.source_classes"))
                    & set(class_selection(classes, data.target_classes, "data.target_classes")))
    if shared:
        names = ", ".join(classes[k] for k in shared)
        raise ConfigError(f"data.tasks entry {task!r}: the source and the target are the same domain and share "
                          f"{len(shared)} of their classes ({names}; data.source_classes and data.target_classes "
                          f"resolved to the domain's classes): the target's samples of these classes are source "
                          f"training samples, so oracle/target_acc would test on samples trained on with their "
                          f"labels. Select disjoint classes (a different target task), or set "
                          f"data.allow_same_domain = true for an in-domain reference that knowingly tests on "
                          f"training data")


def shares_label_space(source: Domain, target: Domain) -> bool:
    """Whether every target class is a source class (by name): one head serves both."""
    return set(target.classes) <= set(source.classes)


def to_source_labels(source: Domain, target: Domain) -> Domain:
    """``target`` with its labels re-expressed as indices into ``source.classes`` and its
    ``classes`` set to the source's; ``target`` itself when the class lists are equal.

    Raises:
        ValueError: if a target class is not a source class, or target labels fall
            outside the target's own class list.
    """
    if target.classes == source.classes:
        return target
    if not shares_label_space(source, target):
        raise ValueError(f"target domain {target.name!r} has classes outside the source's")
    y = target.y
    if y is not None:
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(target.classes)):
            raise ValueError(f"target domain {target.name!r}: labels {int(y.min())}..{int(y.max())} fall outside "
                             f"its classes 0..{len(target.classes) - 1}")
        where = {name: k for k, name in enumerate(source.classes)}
        to = torch.tensor([where[name] for name in target.classes], dtype=torch.int64, device=y.device)
        y = to[y]
    return replace(target, y=y, classes=source.classes)


def split_source(source: Domain, fraction: float, seed: int) -> tuple[Domain, Domain | None]:
    """Hold out a seeded ``fraction`` of the source for validation.

    Stratified by class when the source has labels; a plain seeded random split when it
    has none (``data.source_labels = false``), so that nothing about the split depends on
    labels the run must not read.

    Returns:
        ``(train, val)``; ``val`` is None when ``fraction == 0``.

    Raises:
        ConfigError: if some class has too few samples to be split.
    """
    if fraction == 0:
        return source, None
    index = np.arange(len(source))
    stratify = None if source.y is None else source.y.cpu().numpy()
    try:
        train, val = train_test_split(index, test_size=fraction, stratify=stratify, random_state=seed)
    except ValueError as err:
        raise ConfigError(f"data.source_val_fraction={fraction}: cannot hold out a stratified split of "
                          f"source domain {source.name!r}: {err}") from None
    as_index = lambda a: torch.as_tensor(np.sort(a), device=source.device)  # noqa: E731
    return source.subset(as_index(train)), source.subset(as_index(val))


def split_target(target: Domain, per_class: int, seed: int) -> tuple[Domain | None, Domain]:
    """Draw ``per_class`` labelled samples of each class (seeded, stratified) from the target.

    A class keeps at least one sample in the rest, so a class with ``n_c`` samples
    gives ``min(per_class, n_c - 1)`` labelled ones. The rest stays unlabelled for
    training and is the test set of ``oracle/target_acc``.

    Returns:
        ``(labelled subset or None when per_class == 0, rest)``; both keep labels.
    """
    if per_class == 0:
        return None, target
    gen = torch.Generator().manual_seed(seed)
    y = target.y.cpu()
    picked = []
    for c in y.unique().tolist():
        members = (y == c).nonzero().squeeze(1)
        take = min(per_class, len(members) - 1)
        picked.append(members[torch.randperm(len(members), generator=gen)[:take]])
    chosen = torch.zeros(len(y), dtype=torch.bool)
    chosen[torch.cat(picked)] = True
    to = lambda mask: mask.nonzero().squeeze(1).to(target.device)  # noqa: E731
    return target.subset(to(chosen)), target.subset(to(~chosen))


@dataclass(frozen=True)
class TaskSplits:
    """The splits one run (task and seed) trains and evaluates on.

    Attributes:
        source: the source training split; unlabelled when ``data.source_labels = false``;
            None in a source-free run (``data.source_free``).
        source_val: the held-out source split (labels as ``source``), or None.
        target_labelled: the k-shot labelled target subset, or None when k = 0.
        target_rest: the rest of the target, **with** its labels: the test set of
            ``oracle/target_acc`` (the trainer gives plugins only its inputs).
        shared_head: True when the target's labels are indices into the source's classes
            (one head for both domains); False for a different target task, whose head is
            sized for ``target_rest.classes``.
    """

    source: Domain | None
    source_val: Domain | None
    target_labelled: Domain | None
    target_rest: Domain
    shared_head: bool

    def counts(self, per_class: int) -> dict:
        """How many samples each split holds (``results.json["splits"]``).

        Args:
            per_class: ``data.target_labels_per_class`` (k).

        Returns:
            ``{"source_train", "source_val", "target_labelled", "target_test"}`` sample counts
            (None for a split the run does not have; ``target_test`` is the test set of
            ``oracle/target_acc``), ``"target_labels_per_class"``: k, and ``"clamped"``: the
            names of the target classes that got fewer than k labelled samples (a class of
            ``n_c`` samples gives ``min(k, n_c - 1)``, :func:`split_target`), in class order.
        """
        size = lambda d: None if d is None else len(d)  # noqa: E731
        clamped: list[str] = []
        if self.target_labelled is not None:
            n = len(self.target_rest.classes)
            rest = torch.bincount(self.target_rest.y.cpu(), minlength=n)  # every class keeps >= 1 in the rest
            labelled = torch.bincount(self.target_labelled.y.cpu(), minlength=n)
            clamped = [self.target_rest.classes[c] for c in ((rest > 0) & (labelled < per_class)).nonzero().flatten()]
        return {"source_train": size(self.source), "source_val": size(self.source_val),
                "target_labelled": size(self.target_labelled), "target_test": len(self.target_rest),
                "target_labels_per_class": per_class, "clamped": clamped}

    def head_classes(self, one_head: bool = True) -> dict[str, tuple[str, ...] | None]:
        """The classifier heads a run of these splits has and the class names each predicts
        (``Trainer.classes``; ``model.init_from`` matches heads by them).

        ``head`` is the target's; None when nothing trains it (no labelled target sample and
        no labelled source sharing it, e.g. self-taught pre-training). ``source_head`` is there
        when a labelled source has a head of its own: a target task with other classes, or
        ``one_head = False`` (``model.shared_head = false``). In a source-free run the source
        model's head predicts the target's classes.

        Args:
            one_head: ``model.shared_head``: one head for source and target when their label
                spaces agree.
        """
        source = self.source
        labelled_source = source is not None and source.y is not None
        trained = self.target_labelled is not None or (
            self.shared_head and (source is None or (labelled_source and one_head)))
        classes = {"head": self.target_rest.classes if trained else None}
        if labelled_source and not (self.shared_head and one_head):
            classes["source_head"] = source.classes
        return classes


def split_task(data: DataSection, source: Domain | None, target: Domain, seed: int,
               device: torch.device | str | None = None, host: bool = False) -> TaskSplits:
    """Check a task, align its label spaces and split it for one seed.

    Order: ``data.source_labels = false`` drops the source labels first (nothing after
    reads them); :func:`tladapt.data.check_task`; the target's labels are re-expressed in
    the source's label space when its classes are among the source's; the source is split
    (:func:`split_source`), its training split cut to ``data.source_labels_per_class``
    samples per class when that is > 0 (drawn like the target's, so ``min(k, n_c - 1)``),
    and ``data.target_labels_per_class`` target samples per class are drawn
    (:func:`split_target`). A source-free task (``source = None``, ``data.source_free``)
    only checks and splits the target; its head is the source model's, so ``shared_head``
    is True.

    Args:
        data: the config's ``[data]`` section.
        source, target: the task's domains (:func:`load_task`, or any :class:`Domain`).
        seed: seeds both splits.
        device: where the returned domains live (default: where they are).
        host: keep the inputs in host memory (``data.placement = "host"``, :meth:`Domain.to`).

    Raises:
        ValueError: for an invalid task (:func:`tladapt.data.check_task`), including a target
            whose classes are not the source's with no labelled target samples (UDA).
        ConfigError: as :func:`split_source`; for a labelled source, or a target with a head of
            its own, of fewer than :data:`MIN_CLASSES` classes.
    """
    if source is None:
        target = target if device is None else target.to(device, host)
        check_task(None, target)
        target_labelled, rest = split_target(target, data.target_labels_per_class, seed)
        return TaskSplits(None, None, target_labelled, rest, True)
    if device is not None:
        source, target = source.to(device, host), target.to(device, host)
    if not data.source_labels:
        source = source.unlabelled()
    labelled = data.target_labels_per_class > 0
    check_task(source, target, labelled_target=labelled, source_labels=data.source_labels)
    shared = source.y is not None and shares_label_space(source, target)
    _check_class_counts(source, target, shared)
    if shared:
        target = to_source_labels(source, target)
    source, source_val = split_source(source, data.source_val_fraction, seed)
    if data.source_labels_per_class and source.y is not None:  # a few-shot source (multi-task learning)
        source, _ = split_target(source, data.source_labels_per_class, seed)
    target_labelled, rest = split_target(target, data.target_labels_per_class, seed)
    return TaskSplits(source, source_val, target_labelled, rest, shared)


def _check_class_counts(source: Domain, target: Domain, shared: bool) -> None:
    """A head sized for a domain's classes needs :data:`MIN_CLASSES` of them: the source's when it
    is labelled, the target's when it gets a head of its own (a target among the source's
    classes is scored by the source-sized head, so one target class is partial DA, not trivial).

    Raises:
        ConfigError: naming ``data.source_classes`` / ``data.target_classes``.
    """
    heads = [("source", source, "data.source_classes")] * (source.y is not None)
    heads += [("target", target, "data.target_classes")] * (not shared)
    for role, domain, key in heads:
        if len(domain.classes) < MIN_CLASSES:
            raise ConfigError(f"{key}: the {role} domain {domain.name!r} keeps {len(domain.classes)} class "
                              f"({', '.join(domain.classes)}): expected at least {MIN_CLASSES} classes, since a "
                              f"classifier of one class is right on every sample")


def check_class_options(data: DataSection) -> None:
    """Check ``data.source_classes`` / ``data.target_classes`` of a bundled dataset from its
    registry (no data is read), before any run starts: the names or indices exist, and a
    target whose classes are not among the source's has labelled samples to train its head.
    User (``module:function``) datasets are checked when their domains load.

    Raises:
        ConfigError: naming the key and what was expected.
    """
    info = DATASETS.get(data.dataset)
    if info is None:
        return
    source = {info.classes[k] for k in class_selection(info.classes, data.source_classes, "data.source_classes")}
    target = {info.classes[k] for k in class_selection(info.classes, data.target_classes, "data.target_classes")}
    if data.source_labels and not target <= source and data.target_labels_per_class == 0:
        outside = [c for c in info.classes if c in target - source]
        raise ConfigError(f"data.target_classes has classes outside data.source_classes ({', '.join(outside)}): "
                          "unsupervised DA needs the target's classes among the source's. For a different "
                          "target task, label some target samples (data.target_labels_per_class > 0) to "
                          "train its new head")
