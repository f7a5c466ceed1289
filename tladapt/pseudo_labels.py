"""Whole-domain pseudo-labels from feature clusters: SHOT's weighted-centroid labelling.

Computed between training steps on all target samples (not per batch), on the device,
without a host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["centroid_pseudo_labels"]


def centroid_pseudo_labels(features: torch.Tensor, probabilities: torch.Tensor, rounds: int = 1,
                           min_count: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SHOT's self-supervised pseudo-labels (Liang, Hu & Feng, ICML 2020, Eqs. 4-6).

    Each feature gets a constant 1 appended and is l2-normalised (the authors' code does
    this for the cosine distance). Class centroids are the prediction-weighted means of
    the features, ``c_k = sum_i p_ik f_i / sum_i p_ik``, and every sample takes the class of
    its nearest centroid in cosine distance ``1 - cos(f_i, c_k)``. Then, ``rounds`` times,
    the centroids are recomputed from these hard labels (one k-means step) and the samples
    relabelled. Only classes that are the argmax of more than ``min_count`` samples are
    candidates (SHOT's ``threshold``, 0 in the paper), so a class the model never predicts
    cannot attract samples.

    Args:
        features: ``(n, d)`` float, the backbone features of every target sample.
        probabilities: ``(n, K)`` float, the model's softmax on the same samples.
        rounds: hard-label refinement rounds, ``>= 0`` (1 in the paper).
        min_count: a class is a candidate when more than this many samples predict it.

    Returns:
        ``(labels, centroids)``: ``(n,)`` int64 and ``(K, d + 1)`` float (the last
        round's centroids, in the normalised, extended feature space).

    Raises:
        ValueError: if the shapes disagree or ``rounds < 0``.
    """
    if features.ndim != 2 or probabilities.ndim != 2 or features.shape[0] != probabilities.shape[0]:
        raise ValueError(f"features (n, d) and probabilities (n, K) must have the same n, got "
                         f"{tuple(features.shape)} and {tuple(probabilities.shape)}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    k = probabilities.shape[1]
    f = torch.cat([features, torch.ones_like(features[:, :1])], dim=1)
    f = F.normalize(f, dim=1)
    predicted = F.one_hot(probabilities.argmax(dim=1), k).sum(dim=0)
    candidate = predicted > min_count
    weights = probabilities.to(f.dtype)
    for _ in range(rounds + 1):
        centroids = weights.T @ f / (1e-8 + weights.sum(dim=0)[:, None])
        distance = 1.0 - f @ F.normalize(centroids, dim=1).T
        labels = distance.masked_fill(~candidate, float("inf")).argmin(dim=1)
        weights = F.one_hot(labels, k).to(f.dtype)
    return labels, centroids
