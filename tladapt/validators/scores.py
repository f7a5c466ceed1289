"""The math of the built-in validators: pure functions of tensors (and NumPy for the
scikit-learn parts), each with its paper and exact formula. Notation: ``P`` is the
``(n, C)`` matrix of softmax probabilities of ``n`` target samples, ``p_i`` its rows,
``H(q) = -sum_c q_c log q_c`` the Shannon entropy in nats (with ``0 log 0 = 0``)."""

from __future__ import annotations

import math
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_mutual_info_score
from sklearn.preprocessing import StandardScaler


def per_sample_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H(p_i)`` for every row of ``softmax(logits)``: ``(n, C)`` -> ``(n,)`` float32, nats.
    Computed from ``log_softmax`` so that a saturated row gives 0, not NaN."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1)


def mean_entropy(logits: torch.Tensor) -> float:
    """Mean prediction entropy ``(1/n) sum_i H(p_i)`` (nats), the entropy criterion of
    Grandvalet & Bengio, "Semi-supervised learning by entropy minimization", NeurIPS 2004.

    Args:
        logits: ``(n, C)`` float.
    """
    return per_sample_entropy(logits).mean().item()


def information_maximization(logits: torch.Tensor) -> float:
    """``IM = H(mean_i p_i) - mean_i H(p_i)`` (nats): diversity of the predictions minus their
    mean entropy (Gomes, Krause & Perona, "Discriminative clustering by regularized
    information maximization", NeurIPS 2010; as a UDA validator: Musgrave et al. 2022).
    In ``[0, log C]``; high when predictions are confident and spread over the classes.

    Args:
        logits: ``(n, C)`` float.
    """
    p = F.softmax(logits.float(), dim=1)
    mean_p = p.mean(0)
    diversity = -(mean_p * torch.log(mean_p.clamp_min(1e-30))).sum()
    return (diversity - per_sample_entropy(logits).mean()).item()


def batch_nuclear_norm(logits: torch.Tensor) -> float:
    """``||P||_* / n``, the nuclear norm (sum of singular values) of the softmax matrix over the
    number of samples (Cui et al., "Towards discriminability and diversity: batch nuclear-norm
    maximization under label insufficient situations", CVPR 2020; as a validator: Musgrave et
    al. 2022, pytorch-adapt's ``BNMValidator``). In ``(0, min(1, sqrt(C / n))]``: each row is
    a rank-one matrix of nuclear norm ``||p_i|| <= 1``; the bound is reached by one-hot
    predictions balanced over the classes. High when predictions are confident and diverse.

    Args:
        logits: ``(n, C)`` float.
    """
    p = F.softmax(logits.float(), dim=1)
    return (torch.linalg.matrix_norm(p.double(), ord="nuc") / p.shape[0]).item()


def soft_neighborhood_density(logits: torch.Tensor, temperature: float = 0.05) -> float:
    """Soft neighbourhood density (Saito et al., "Tune it the right way: unsupervised validation
    of domain adaptation via soft neighborhood density", ICCV 2021).

    ``q_i = p_i / ||p_i||``; for each ``i`` the similarities ``s_ij = q_i . q_j`` to every other
    sample ``j != i`` go through ``softmax_j(s_ij / T)``; SND is the mean over ``i`` of that
    distribution's entropy. High when each prediction has many close neighbours. The sample
    itself is left out of its row (as pytorch-adapt's ``SNDValidator``); skada's
    ``SoftNeighborhoodDensity`` instead keeps the diagonal with its sign flipped, so its
    values differ slightly.

    Args:
        logits: ``(n, C)`` float, ``n >= 2``.
        temperature: ``T > 0``; 0.05 as in the paper.
    """
    q = F.normalize(F.softmax(logits.float(), dim=1).double(), dim=1)
    n = q.shape[0]
    sim = (q @ q.T)[~torch.eye(n, dtype=torch.bool, device=q.device)].view(n, n - 1)
    log_s = F.log_softmax(sim / temperature, dim=1)
    return (-(log_s.exp() * log_s).sum(1)).mean().item()


def class_ami(features: torch.Tensor, predictions: torch.Tensor, num_classes: int, seed: int,
              n_init: int = 3) -> float:
    """ClassAMI (Musgrave et al., "Three new validators and a large-scale benchmark ranking for
    unsupervised domain adaptation", 2022): the adjusted mutual information between the
    predicted classes and a k-means clustering (``k = C``) of the same samples' features.
    High when the classifier's decision regions follow the clusters of the feature space.

    Args:
        features: ``(n, d)`` float target features.
        predictions: ``(n,)`` int64 predicted classes.
        num_classes: ``C``, the number of clusters.
        seed: k-means' ``random_state`` (k-means++ initialisation, ``n_init`` restarts).

    Returns:
        AMI in ``[-1, 1]`` (scikit-learn's ``adjusted_mutual_info_score``, arithmetic mean).
    """
    x = features.double().cpu().numpy()
    k = min(num_classes, len(x))
    clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return float(adjusted_mutual_info_score(predictions.cpu().numpy(), clusters))


def density_ratio(source: torch.Tensor, target: torch.Tensor, query: torch.Tensor, seed: int) -> np.ndarray:
    """Importance weights ``w(x) = p_t(x) / p_s(x)`` at ``query`` from a domain classifier.

    A logistic regression (scikit-learn, L2, ``C = 1``, on features standardised over the
    fitting set) separates ``source`` (label 1) from ``target`` (label 0); then
    ``w(x) = (n_s / n_t) * P(target | x) / P(source | x)`` (the class-prior correction, as
    in You et al. 2019, pytorch-adapt and skada). You et al. train an MLP; skada's
    ``DeepEmbeddedValidation`` uses a logistic regression as here.

    Args:
        source: ``(n_s, d)`` source features; target: ``(n_t, d)``; query: ``(m, d)``.
        seed: the classifier's ``random_state``.

    Returns:
        ``(m,)`` float64 weights.
    """
    xs, xt, xq = (t.double().cpu().numpy() for t in (source, target, query))
    x = np.concatenate([xs, xt])
    y = np.concatenate([np.ones(len(xs)), np.zeros(len(xt))])
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(scaler.transform(x), y)
    proba = clf.predict_proba(scaler.transform(xq))  # columns: classes_ = [0 (target), 1 (source)]
    return (len(xs) / len(xt)) * proba[:, 0] / proba[:, 1]


def dev_risk(weights: np.ndarray, losses: np.ndarray, normalization: Literal["none", "max"] = "none") -> float:
    """Deep embedded validation risk (You et al., "Towards accurate model selection in deep
    unsupervised domain adaptation", ICML 2019, Algorithm 1), a control-variate estimate of the
    importance-weighted source validation loss:

    ``R = mean(w l) + eta * mean(w) - eta``, ``eta = -Cov(w l, w) / Var(w)`` (sample
    covariance and variance, ``ddof = 1``). ``normalization = "max"`` is DEVN (Musgrave et
    al. 2022): first ``w <- w / max(w)``, then ``w <- w - mean(w) + 1``. When ``Var(w) = 0``
    ``eta = 0`` (as skada; pytorch-adapt returns NaN there). Lower is better.

    Args:
        weights: ``(m,)`` importance weights of the source validation samples.
        losses: ``(m,)`` their per-sample losses (cross-entropy).
        normalization: ``"none"`` (DEV) or ``"max"`` (DEVN).
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    loss = np.asarray(losses, dtype=np.float64)
    if normalization == "max":
        w /= w.max()
        w -= w.mean() - 1.0
    weighted = w * loss
    var_w = np.var(w, ddof=1)
    eta = 0.0 if var_w == 0 else -np.cov(weighted, w)[0, 1] / var_w
    return float(weighted.mean() + eta * w.mean() - eta)


def mixval(inputs: torch.Tensor, classify: Callable[[torch.Tensor], torch.Tensor], permutation: torch.Tensor,
           alpha: float = 0.55) -> float:
    """MixVal's interpolation consistency (Hu et al., "Mixed samples as probes for unsupervised
    model selection in domain adaptation", NeurIPS 2023).

    With pseudo-labels ``y_i = argmax classify(x_i)`` and a permutation ``pi``, the mixed
    inputs ``m_i = alpha x_i + (1 - alpha) x_pi(i)`` get the label of their dominant part
    (``y_i`` for ``alpha >= 0.5``). ICE is the accuracy of ``classify`` on them against those
    labels, separately over intra-cluster pairs (``y_i = y_pi(i)``) and inter-cluster pairs;
    the score is the mean of the two (the one defined when the other is empty). In
    ``[0, 1]``; higher is better. Equals skada's ``MixValScorer`` given the same permutation.

    Args:
        inputs: ``(n, *input_shape)`` float32 target inputs.
        classify: inputs -> logits ``(n, C)``.
        permutation: ``(n,)`` int64, a permutation of ``range(n)``.
        alpha: mixing weight of the first sample, in ``(0, 1)``; 0.55 as in the paper.
    """
    labels = classify(inputs).argmax(1)
    partner = labels[permutation]
    mixed = alpha * inputs + (1 - alpha) * inputs[permutation]
    target = labels if alpha >= 0.5 else partner
    correct = (classify(mixed).argmax(1) == target).double()
    same = labels == partner
    parts = [correct[mask].mean().item() for mask in (same, ~same) if mask.any()]
    return sum(parts) / len(parts) if parts else math.nan
