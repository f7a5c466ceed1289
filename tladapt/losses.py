"""Adversarial and entropy losses: the gradient reversal layer and DANN's domain loss.

Discrepancy measures (MMD, JMMD, CORAL) live in :mod:`tladapt.discrepancy`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors (bf16 autocast outputs) upcast to float32; float32/64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float | torch.Tensor) -> torch.Tensor:
    """Gradient reversal layer (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016).

    Forward: the identity, ``y = x`` (any shape and float dtype). Backward: the
    incoming gradient times ``-coeff``. ``coeff`` is λ ≥ 0, a Python float or a
    0-dim tensor on ``x``'s device (a tensor keeps a schedule free of host syncs).
    """
    return _GradReverse.apply(x, coeff)


def grl_coefficient(progress: float, gamma: float = 10.0) -> float:
    """DANN's GRL schedule ``λ_p = 2 / (1 + exp(-γ p)) - 1`` (Ganin et al., JMLR 2016, §5.2.2).

    Args:
        progress: p, the fraction of training done, in [0, 1].
        gamma: γ > 0, the steepness (10 in the paper).

    Returns:
        λ_p in [0, 1): 0 at p = 0, ``tanh(γ/4)`` at p = 0.5, ``tanh(γ/2)`` at p = 1.

    Raises:
        ValueError: if ``progress`` lies outside [0, 1] or ``gamma`` is not positive.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must lie in [0, 1], got {progress}")
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def domain_adversarial_loss(
    d_source: torch.Tensor, d_target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DANN's domain-classification loss and the discriminator's accuracy.

    Binary cross-entropy with source labelled 0 and target labelled 1, averaged
    within each domain and summed over the two domains, ``mean_s BCE(d_s, 0) +
    mean_t BCE(d_t, 1)``: the empirical domain risk of Ganin et al. (JMLR 2016,
    Eq. 9) with each domain's term normalised by its batch size. This equals
    pytorch-adapt's DANN domain loss (``src_domain_loss + target_domain_loss``).

    Args:
        d_source: discriminator logits for source samples, shape ``(n_s,)`` or
            ``(n_s, 1)``, float.
        d_target: discriminator logits for target samples, shape ``(n_t,)`` or ``(n_t, 1)``.

    Returns:
        ``(loss, accuracy)``: 0-dim tensors, float32 for half-precision logits; accuracy (fraction in [0, 1],
        threshold at logit 0) is detached and meant for logging.
    """
    d_source, d_target = _full_precision(d_source.reshape(-1)), _full_precision(d_target.reshape(-1))
    loss = F.binary_cross_entropy_with_logits(
        d_source, torch.zeros_like(d_source)
    ) + F.binary_cross_entropy_with_logits(d_target, torch.ones_like(d_target))
    with torch.no_grad():
        correct = (d_source < 0).sum() + (d_target >= 0).sum()
        accuracy = correct / (d_source.numel() + d_target.numel())
    return loss, accuracy


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the softmax of ``logits`` (Grandvalet & Bengio, NIPS 2005).

    Args:
        logits: shape ``(n, num_classes)``, float.

    Returns:
        0-dim tensor (float32 for half-precision logits),
        ``-mean_i sum_k p_ik log p_ik``, in [0, log num_classes].
    """
    log_p = F.log_softmax(_full_precision(logits), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()
