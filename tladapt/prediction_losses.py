"""Losses on a batch of class predictions: MCC, BNM, information maximisation, FixMatch consistency.

None of them needs a label or a second domain, so each applies to the target batch
alone (MCC, BNM, SHOT, FixMatch) and composes with any alignment loss. Shapes: logits are
``(b, K)`` floats for ``b`` samples and ``K`` classes; every loss returns a 0-dim tensor on
the logits' device, differentiable in the logits, computed without a host sync. MCC and
BNM run in float32 with autocast off (their matrix products and singular values are
precision-sensitive); the others are softmax-based, which autocast already keeps in float32.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

def _full_precision(fn):
    """Run ``fn(logits, ...)`` in float32 with autocast off: the confusion matrix and the
    singular values lose too much in bfloat16 (``trainer.precision = "bf16"``)."""

    @functools.wraps(fn)
    def wrapped(logits: torch.Tensor, *args, **kwargs):
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        with torch.autocast(logits.device.type, enabled=False):
            return fn(logits, *args, **kwargs)

    return wrapped


__all__ = ["class_confusion", "minimum_class_confusion", "batch_nuclear_norm", "marginal_entropy",
           "information_maximization", "fixmatch_loss"]


@_full_precision
def class_confusion(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """MCC's normalised class-confusion matrix (Jin, Wang, Long & Wang, ECCV 2020, Eqs. 1-6).

    ``Ŷ = softmax(Z / T)``; each sample weighs ``W_ii = b (1 + e^{-H(Ŷ_i)}) / sum_j (1 + e^{-H(Ŷ_j)})``
    (entropy weighting, detached as in the authors' code); ``C = Ŷᵀ W Ŷ`` and each row is
    divided by its sum, ``C̃_jj' = C_jj' / sum_j'' C_jj''``. (The authors' code divides column
    ``j'`` by row sum ``j'``; ``C`` is symmetric, so the loss below is the same.)

    Args:
        logits: ``(b, K)`` float, ``b >= 1``.
        temperature: T > 0 (2.5 in the paper).

    Returns:
        ``(K, K)`` tensor, each row summing to 1.
    """
    log_p = F.log_softmax(logits / temperature, dim=1)
    p = log_p.exp()
    with torch.no_grad():
        h = -(p * log_p).sum(dim=1)
        w = 1.0 + torch.exp(-h)
        w = w * (p.shape[0] / w.sum())
    confusion = (p * w[:, None]).T @ p
    return confusion / confusion.sum(dim=1, keepdim=True)


def minimum_class_confusion(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """The MCC loss ``(1/K) sum_{j != j'} C̃_jj'`` (Jin et al., ECCV 2020, Eq. 7).

    The off-diagonal mass of :func:`class_confusion`, averaged over the ``K`` classes: 0 when
    every sample is predicted with certainty, at most ``(K - 1) / K``. Equals pytorch-adapt's
    ``MCCLoss(T)`` (which adds a tiny epsilon inside the entropy's log).

    Args:
        logits: ``(b, K)`` float.
        temperature: T > 0.

    Returns:
        0-dim tensor in ``[0, (K - 1) / K]``.
    """
    c = class_confusion(logits, temperature)
    return (c.sum() - torch.diagonal(c).sum()) / c.shape[0]


@_full_precision
def batch_nuclear_norm(logits: torch.Tensor) -> torch.Tensor:
    """The BNM loss ``-||softmax(Z)||_* / b`` (Cui et al., CVPR 2020, Eq. 12).

    The nuclear norm (sum of singular values) of the ``(b, K)`` prediction matrix grows
    with both the confidence and the diversity of the predictions; minimising its negative
    maximises both. Divided by the batch size as in the paper and in pytorch-adapt's
    ``BNMLoss``; the authors' code takes the *mean* singular value instead, i.e. divides by
    ``min(b, K)`` (a constant factor ``b / min(b, K)`` on the loss).

    Args:
        logits: ``(b, K)`` float.

    Returns:
        0-dim tensor in ``[-sqrt(min(b, K) / b), 0)`` (each row has l2 norm at most 1);
        ``-1`` when ``b <= K`` and the predictions are one-hot on distinct classes.
    """
    p = F.softmax(logits, dim=1)
    return -torch.linalg.svdvals(p).sum() / p.shape[0]


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the batch's mean prediction, ``H(p̄) = -sum_k p̄_k log p̄_k``.

    Large when the batch's predictions spread over the classes (diversity); ``log K`` at
    most. pytorch-adapt's ``DiversityLoss`` is its negative.

    Args:
        logits: ``(b, K)`` float.

    Returns:
        0-dim tensor in ``[0, log K]``.
    """
    mean = F.softmax(logits, dim=1).mean(dim=0)
    return -torch.special.xlogy(mean, mean).sum()


def information_maximization(logits: torch.Tensor, diversity: bool = True) -> torch.Tensor:
    """SHOT's information-maximisation loss ``mean_i H(p_i) - H(p̄)`` (Liang, Hu & Feng, ICML 2020, Eq. 2-3).

    Minimising it makes each prediction confident (low conditional entropy) and the batch's
    predictions diverse (high marginal entropy), i.e. maximises the mutual information
    between inputs and predicted classes. The authors' code adds ``1e-5`` inside both logs;
    this is the exact value (pytorch-adapt's ``EntropyLoss() + DiversityLoss()``).

    Args:
        logits: ``(b, K)`` float.
        diversity: subtract ``H(p̄)`` (SHOT's ``gent``); without it, plain entropy minimisation.

    Returns:
        0-dim tensor in ``[-log K, log K]``.
    """
    log_p = F.log_softmax(logits, dim=1)
    loss = -(log_p.exp() * log_p).sum(dim=1).mean()
    return loss - marginal_entropy(logits) if diversity else loss


def fixmatch_loss(logits_strong: torch.Tensor, logits_weak: torch.Tensor,
                  threshold: float = 0.95) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's consistency loss (Sohn et al., NeurIPS 2020, Eq. 4).

    The weak view's prediction, detached, is a hard pseudo-label ``ŷ_i = argmax p_w,i``
    where its confidence ``max p_w,i`` reaches ``threshold``; the strong view is trained
    to predict it: ``(1/b) sum_i 1[max p_w,i >= τ] CE(z_s,i, ŷ_i)``. The mean is over the
    whole batch as in the paper (not over the selected samples), so the loss grows as more
    samples pass. Unselected samples are removed with ``torch.where``, so a non-finite CE of
    one of them cannot leak a NaN.

    Args:
        logits_strong: ``(b, K)`` float, logits of the strongly perturbed view (with grad).
        logits_weak: ``(b, K)`` float, logits of the weak view (detached here).
        threshold: τ in [0, 1] (0.95 in the paper).

    Returns:
        ``(loss, mask, pseudo_labels)``: 0-dim tensor; ``(b,)`` bool; ``(b,)`` int64.
    """
    with torch.no_grad():
        confidence, pseudo = F.softmax(logits_weak.detach().float(), dim=1).max(dim=1)
        mask = confidence >= threshold
    ce = F.cross_entropy(logits_strong, pseudo, reduction="none")
    loss = torch.where(mask, ce, torch.zeros_like(ce)).sum() / ce.shape[0]
    return loss, mask, pseudo
