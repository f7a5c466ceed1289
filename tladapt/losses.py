"""Adversarial and entropy losses: the gradient reversal layer, DANN's and CDAN's domain losses, MDD.

Discrepancy measures (MMD, JMMD, CORAL) live in :mod:`tladapt.discrepancy`; losses on a
batch of predictions alone (MCC, BNM, information maximisation, FixMatch) in
:mod:`tladapt.prediction_losses`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors (bf16 autocast outputs) upcast to float32; float32/64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _GradReverse(torch.autograd.Function):
    generate_vmap_rule = True  # works under torch.func transforms (batched runs: tladapt.batched)

    @staticmethod
    def forward(x, coeff):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        coeff = inputs[1]
        if isinstance(coeff, torch.Tensor):
            ctx.save_for_backward(coeff)
        else:
            ctx.coeff = coeff

    @staticmethod
    def backward(ctx, grad):
        coeff = ctx.saved_tensors[0] if ctx.saved_tensors else ctx.coeff
        return -coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float | torch.Tensor) -> torch.Tensor:
    """Gradient reversal layer (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016).

    Forward: the identity, ``y = x`` (any shape and float dtype). Backward: the
    incoming gradient times ``-coeff``. ``coeff`` is λ ≥ 0, a Python float or a
    0-dim tensor on ``x``'s device (a tensor keeps a schedule free of host syncs).
    """
    return _GradReverse.apply(x, coeff)


def grl_coefficient(progress: float | torch.Tensor, gamma: float = 10.0) -> float | torch.Tensor:
    """DANN's GRL schedule ``λ_p = 2 / (1 + exp(-γ p)) - 1`` (Ganin et al., JMLR 2016, §5.2.2).

    Args:
        progress: p, the fraction of training done, in [0, 1]: a float, or a 0-dim tensor
            (e.g. ``trainer.progress_tensor``) for a schedule computed on the device without
            a host sync (a tensor is not range-checked: that would read it back).
        gamma: γ > 0, the steepness (10 in the paper).

    Returns:
        λ_p in [0, 1): 0 at p = 0, ``tanh(γ/4)`` at p = 0.5, ``tanh(γ/2)`` at p = 1; a
        0-dim tensor for a tensor ``progress``.

    Raises:
        ValueError: if a float ``progress`` lies outside [0, 1] or ``gamma`` is not positive.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    if isinstance(progress, torch.Tensor):
        return 2.0 / (1.0 + torch.exp(-gamma * progress)) - 1.0
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must lie in [0, 1], got {progress}")
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def domain_adversarial_loss(
    d_source: torch.Tensor, d_target: torch.Tensor,
    w_source: torch.Tensor | None = None, w_target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DANN's (and CDAN's) domain-classification loss and the discriminator's accuracy.

    Binary cross-entropy with source labelled 0 and target labelled 1, averaged
    within each domain and summed over the two domains, ``mean_s BCE(d_s, 0) +
    mean_t BCE(d_t, 1)``: the empirical domain risk of Ganin et al. (JMLR 2016,
    Eq. 9) with each domain's term normalised by its batch size. This equals
    pytorch-adapt's DANN domain loss (``src_domain_loss + target_domain_loss``).

    With per-sample weights (CDAN+E's entropy conditioning, Long et al., NeurIPS 2018,
    Eq. 9), each domain's mean becomes a weighted mean,
    ``sum_i w_i BCE_i / sum_i w_i``, as in the authors' code (which halves the sum of the
    two; we keep DANN's scale so that CDAN and CDAN+E losses compare with DANN's).

    Args:
        d_source: discriminator logits for source samples, shape ``(n_s,)`` or
            ``(n_s, 1)``, float.
        d_target: discriminator logits for target samples, shape ``(n_t,)`` or ``(n_t, 1)``.
        w_source, w_target: optional non-negative weights ``(n_s,)`` / ``(n_t,)``, taken
            as constants (detached); give both or neither.

    Returns:
        ``(loss, accuracy)``: 0-dim tensors, float32 for half-precision logits; accuracy (fraction in [0, 1],
        threshold at logit 0) is detached and meant for logging.

    Raises:
        ValueError: for logits of another shape than ``(n,)`` or ``(n, 1)`` (e.g. a
            discriminator with two outputs, which ``reshape(-1)`` would silently mix).
    """
    for name, d in (("d_source", d_source), ("d_target", d_target)):
        if not (d.ndim == 1 or (d.ndim == 2 and d.shape[1] == 1)):
            raise ValueError(f"{name}: a domain discriminator's logits must have shape (n,) or (n, 1), one logit "
                             f"per sample; got {tuple(d.shape)}")
    d_source, d_target = _full_precision(d_source.reshape(-1)), _full_precision(d_target.reshape(-1))
    bce_s = F.binary_cross_entropy_with_logits(d_source, torch.zeros_like(d_source), reduction="none")
    bce_t = F.binary_cross_entropy_with_logits(d_target, torch.ones_like(d_target), reduction="none")
    if w_source is None:
        loss = bce_s.mean() + bce_t.mean()
    else:
        w_source, w_target = w_source.detach(), w_target.detach()
        loss = (w_source * bce_s).sum() / w_source.sum() + (w_target * bce_t).sum() / w_target.sum()
    with torch.no_grad():
        correct = (d_source < 0).sum() + (d_target >= 0).sum()
        accuracy = correct / (d_source.numel() + d_target.numel())
    return loss, accuracy


def multilinear_map(features: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """CDAN's multilinear conditioning ``T⊗(f, g) = g ⊗ f``, flattened (Long et al., NeurIPS 2018, Eq. 5).

    Args:
        features: ``(b, d)`` float, f.
        predictions: ``(b, K)`` float, g (class probabilities in CDAN).

    Returns:
        ``(b, K * d)``: row i is ``vec(g_i f_iᵀ)``, entry ``k * d + j`` = ``g_ik f_ij``
        (the order of the authors' ``torch.bmm(g.unsqueeze(2), f.unsqueeze(1))``).
    """
    return (predictions[:, :, None] * features[:, None, :]).flatten(1)


class RandomizedMultilinearMap(nn.Module):
    """CDAN's randomized multilinear map ``T⊙(f, g) = (R_f f) ⊙ (R_g g) / sqrt(r)`` (Long et al., NeurIPS 2018, Eq. 6).

    An unbiased, low-dimensional estimate of the multilinear map's inner products,
    ``E[<T⊙(f, g), T⊙(f', g')>] = <f, f'><g, g'>``, for when ``d * K`` is too large. ``R_f``
    (``(d, r)``) and ``R_g`` (``(K, r)``) are drawn once from a standard normal (from the
    global torch generator: the run's seed) and kept as buffers, so they are saved in
    checkpoints and never trained. Equals pytorch-adapt's ``RandomizedDotProduct([d, K], r)``
    given the same matrices.

    Args:
        feature_dim: d.
        num_classes: K.
        out_dim: r (1024 in the paper).
    """

    def __init__(self, feature_dim: int, num_classes: int, out_dim: int = 1024):
        super().__init__()
        self.register_buffer("r_features", torch.randn(feature_dim, out_dim))
        self.register_buffer("r_predictions", torch.randn(num_classes, out_dim))
        self.out_dim = out_dim

    def forward(self, features: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        """``(b, d)`` and ``(b, K)`` float -> ``(b, r)``."""
        return (features @ self.r_features) * (predictions @ self.r_predictions) / math.sqrt(self.out_dim)


def entropy_weights(probabilities: torch.Tensor) -> torch.Tensor:
    """CDAN+E's sample weights ``w = 1 + exp(-H(g))`` (Long et al., NeurIPS 2018, Eq. 9).

    Confident predictions (low entropy) weigh up to 2, uniform ones ``1 + 1/K``.

    Args:
        probabilities: ``(b, K)`` rows summing to 1.

    Returns:
        ``(b,)`` tensor in ``[1 + 1/K, 2]``.
    """
    h = -torch.special.xlogy(probabilities, probabilities).sum(dim=1)
    return 1.0 + torch.exp(-h)


def margin_disparity_discrepancy(logits_s: torch.Tensor, logits_adv_s: torch.Tensor, logits_t: torch.Tensor,
                                 logits_adv_t: torch.Tensor, margin: float = 4.0) -> torch.Tensor:
    """MDD's adversarial objective, the loss the auxiliary head minimises (Zhang, Liu, Long & Jordan, ICML 2019, Eq. 29-30).

    With ``ŷ = argmax`` of the main head's logits (no gradient) and ``p'`` the auxiliary
    head's softmax::

        γ · mean_s CE(z'_s, ŷ_s)  +  mean_t -log(1 - p'_t[ŷ_t])

    The auxiliary head learns to agree with the main head on the source and to disagree
    on the target; the features, behind a gradient reversal layer, learn the opposite, so
    the margin disparity discrepancy ``D_γ`` between the domains shrinks. ``1 - p'`` is
    clamped at ``1e-15`` before the log, as in the authors' code.

    Args:
        logits_s, logits_t: ``(b, K)`` main-head logits of the source / target batch.
        logits_adv_s, logits_adv_t: ``(b, K)`` auxiliary-head logits of the same samples.
        margin: γ > 0 (``exp(ρ)`` in the paper; 4 in the authors' Office-31 experiments).

    Returns:
        0-dim tensor, ``>= 0``.
    """
    y_s, y_t = logits_s.detach().argmax(dim=1), logits_t.detach().argmax(dim=1)
    source = F.cross_entropy(logits_adv_s, y_s)
    target = F.nll_loss(torch.log(torch.clamp(1.0 - F.softmax(logits_adv_t, dim=1), min=1e-15)), y_t)
    return margin * source + target


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
