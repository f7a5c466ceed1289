"""The bundle of evaluation outputs every validator reads, computed once per evaluation point."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

import torch
import torch.nn.functional as F

from tladapt.data.domain import Domain


@dataclass(frozen=True)
class EvalOutputs:
    """What the current model outputs on the data validators may see, at one evaluation point.

    Everything here is label-free on the target side: the target labels never enter it.
    All tensors are on the training device.

    Attributes:
        source_val_logits: logits on the held-out source split, ``(n_v, C_s)`` float32 (by
            the source's head), or None without a labelled held-out split.
        source_val_features: backbone features on it, ``(n_v, d)`` float32, or None.
        source_val_labels: its labels, ``(n_v,)`` int64, or None.
        source_features: features of a subsample of the source training split,
            ``(n_s, d)`` float32 (DEV's domain classifier is fitted on them); None in a
            source-free run (``data.source_free``).
        target_logits: logits on a subsample of the (unlabelled) target, ``(n_t, C)``.
        target_features: features on the same subsample, ``(n_t, d)``.
        target_inputs: the model inputs of the same subsample, ``(n_t, *input_shape)``
            float32 (for validators that probe the model on new inputs, e.g. MixVal).
        classify: maps model inputs ``(m, *input_shape)`` to logits ``(m, C)``, in eval
            mode without gradient.
        seed: the run's seed; validators with randomness (k-means, permutations) seed
            themselves from it, so a score is a deterministic function of the model.
    """

    source_val_logits: torch.Tensor | None
    source_val_features: torch.Tensor | None
    source_val_labels: torch.Tensor | None
    source_features: torch.Tensor | None
    target_logits: torch.Tensor
    target_features: torch.Tensor
    target_inputs: torch.Tensor
    classify: Callable[[torch.Tensor], torch.Tensor]
    seed: int

    @property
    def target_probs(self) -> torch.Tensor:
        """Softmax of ``target_logits``, ``(n_t, C)`` float32."""
        return F.softmax(self.target_logits.float(), dim=1)

    @cached_property
    def source_val_weights(self) -> np.ndarray:
        """Importance weights ``p_t / p_s`` of the held-out source samples, ``(n_v,)`` float64,
        from a domain classifier on features (:func:`tladapt.validators.scores.density_ratio`,
        fitted on ``source_features`` vs ``target_features``); computed once per bundle and
        shared by the validators that need it (DEV, DEVN)."""
        from tladapt.validators.scores import density_ratio

        return density_ratio(self.source_features, self.target_features, self.source_val_features, self.seed)


def subsample_index(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``min(n, size)`` distinct indices of ``range(n)``, sorted, drawn with ``generator``
    (``int64``, CPU). All indices when ``n <= size``."""
    if n <= size:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:size].sort().values


@dataclass
class Subsamples:
    """The fixed, seeded subsamples a run's validators read at every evaluation.

    Drawn once per run (the same samples at every evaluation point, so that the scores of
    one run's checkpoints compare), with a generator of its own seeded by the run's seed:
    drawing them does not touch the global RNG that training uses.

    Attributes:
        source: indices into the source training split, ``(n_s,)`` int64; None in a
            source-free run.
        source_val: indices into the held-out source split, or None without one.
        target: indices into the target domain, ``(n_t,)`` int64.
    """

    source: torch.Tensor | None
    source_val: torch.Tensor | None
    target: torch.Tensor

    @classmethod
    def draw(cls, source: Domain | None, source_val: Domain | None, target: Domain, size: int,
             seed: int) -> "Subsamples":
        """At most ``size`` samples of each domain, drawn with ``torch.Generator().manual_seed(seed)``
        (``source`` is None in a source-free run)."""
        gen = torch.Generator().manual_seed(seed)
        device = target.storage.device
        own = None if source is None else subsample_index(len(source), size, gen).to(device)
        val = None if source_val is None else subsample_index(len(source_val), size, gen).to(device)
        return cls(own, val, subsample_index(len(target), size, gen).to(device))


@torch.no_grad()
def collect_outputs(backbone: torch.nn.Module, head: torch.nn.Module, source_head: torch.nn.Module, source: Domain,
                    source_val: Domain | None, target: Domain, subsamples: Subsamples, seed: int) -> EvalOutputs:
    """Run the model (already in eval mode) once over each subsample and bundle the outputs.

    Args:
        backbone, head: the run's feature extractor and the target's classifier.
        source_head: the classifier of the source's label set (``head`` itself unless the
            target task has other classes); source-validation logits come from it.
        source: the source training split; source_val: the held-out split or None;
        target: the unlabelled target domain.
        subsamples: from :meth:`Subsamples.draw`.
        seed: stored in the bundle for the validators' own randomness.
    """

    def run(domain: Domain, index: torch.Tensor, classifier: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        features = domain.subset(index).map(backbone)
        return features, classifier(features)

    source_features = None if source is None else source.subset(subsamples.source).map(backbone)
    target_features, target_logits = run(target, subsamples.target, head)
    if source_val is None or source_val.y is None:
        val_features = val_logits = val_labels = None
    else:
        val_features, val_logits = run(source_val, subsamples.source_val, source_head)
        val_labels = source_val.y[subsamples.source_val]
    return EvalOutputs(
        source_val_logits=val_logits, source_val_features=val_features, source_val_labels=val_labels,
        source_features=source_features, target_logits=target_logits, target_features=target_features,
        target_inputs=target.inputs(subsamples.target), classify=lambda x: head(backbone(x)), seed=seed,
    )
