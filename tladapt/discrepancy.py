"""Feature-alignment discrepancies: MMD, JMMD, CORAL and closed-form CORAL.

Kernel convention (used by every function here)
------------------------------------------------
One Gaussian kernel is::

    k(x, y) = exp(-||x - y||^2 / (2 * sigma2))

and ``bandwidth`` always means ``sigma2`` (sigma squared, a variance, in the
squared units of the features), never sigma and never ``2 * sigma2``. A
multi-kernel (Long et al., DAN, ICML 2015) is the *uniform* average of ``K``
Gaussian kernels, ``k = (1/K) * sum_k exp(-||x - y||^2 / (2 * sigma2_k))``, so
``k(x, x) = 1`` for every kernel (DAN learns the weights; we keep them uniform,
as pytorch-adapt and the Transfer-Learning-Library do).

Bandwidth rules (``bandwidth`` / ``scales`` arguments)
------------------------------------------------------
``sigma2_k = base * scales[k]`` where ``base`` is

* a positive number (or a sequence of them, one kernel each): used exactly as
  given; ``scales`` defaults to ``(1.0,)`` so a fixed bandwidth is respected;
* ``"median"``: the median of the squared distances ``||z_i - z_j||^2`` over all
  unordered pairs ``i < j`` of the *pooled* batch ``z = cat(source, target)``
  (the median heuristic, Gretton et al., JMLR 2012; an even count averages the
  two middle values, as :func:`numpy.median`);
* ``"mean"``: the mean of the same squared distances (the rule of Long's DAN/JAN
  code), computed exactly in ``O(N d)`` from the centred pooled batch.

For the data-driven rules ``scales`` defaults to :data:`DAN_SCALES` =
``(2**-2, 2**-1, 1, 2, 2**2)``: DAN's five kernels around the base. (Long's
DAN/JAN reference code uses ``exp(-d^2 / (2**k * mean))`` for ``k = -2..2``,
which is ``bandwidth="mean", scales=(2**-3, ..., 2**1)`` in this convention;
pytorch-adapt's ``kernel_scales`` ``s`` means ``exp(-d^2 * s / median)``, i.e.
``sigma2 = median / (2 s)``.) A data-driven base is computed without gradient
(the bandwidth is a constant of the loss, the standard practice); a median of 0
(more than half the pairs coincide) falls back to the mean, and a mean of 0
(all points identical, so every kernel value is 1 whatever the bandwidth) falls
back to ``base = 1``. This never yields NaN.

Precision: inputs in float16/bfloat16, or under ``torch.autocast``, are
computed in float32 with autocast disabled (distances and covariances lose all
accuracy in 8-bit mantissas); float64 stays float64. The losses return a 0-dim
tensor of the computation dtype.

Memory is ``O(batch^2)`` (three distance blocks, ``n*n``, ``m*m``, ``n*m``), never
``O(dataset^2)``; the linear-time estimator evaluates only ``O(n)`` kernel values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Union

import torch

__all__ = [
    "DAN_SCALES",
    "ESTIMATORS",
    "pairwise_sq_dists",
    "gaussian_kernel",
    "kernel_bandwidths",
    "mmd",
    "jmmd",
    "covariance",
    "coral",
    "psd_power",
    "coral_transform",
]

#: DAN's five kernel scales (Long et al., ICML 2015), relative to the base sigma^2.
DAN_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)

#: MMD^2 estimators of Gretton et al. (JMLR 2012): V-statistic (Eq. 5, biased,
#: >= 0), U-statistic (Eq. 3 / Lemma 6, unbiased, can be negative) and the
#: linear-time statistic (Lemma 14, Section 6).
ESTIMATORS: tuple[str, ...] = ("biased", "unbiased", "linear")

Bandwidth = Union[str, float, Sequence[float], torch.Tensor]

_DATA_RULES = ("median", "mean")


# --------------------------------------------------------------------------- helpers


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def _no_autocast(t: torch.Tensor):
    """A context that disables autocast on ``t``'s device type (if it has one)."""
    try:
        return torch.autocast(device_type=t.device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return nullcontext()


def _check_features(t, name: str, min_rows: int = 1) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, features), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {t.shape[0]} sample(s); this needs at least {min_rows}"
        )


def _check_pair(source, target, s_name="source", t_name="target", min_rows=1) -> None:
    _check_features(source, s_name, min_rows)
    _check_features(target, t_name, min_rows)
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            f"{s_name} and {t_name} must have the same number of features, "
            f"got {source.shape[1]} and {target.shape[1]}"
        )
    if source.device != target.device:
        raise ValueError(f"{s_name} and {t_name} are on different devices")


def _sq_dists(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """||x_i - y_j||^2 as ``||x||^2 + ||y||^2 - 2 x.y`` in one GEMM, clamped at 0; zero diagonal if y is None."""
    same = y is None
    if same:
        y = x
    ones_x = x.new_ones(x.shape[0], 1)
    ones_y = ones_x if same else y.new_ones(y.shape[0], 1)
    xx = (x * x).sum(1, keepdim=True)
    yy = xx if same else (y * y).sum(1, keepdim=True)
    # [x, |x|^2, 1] @ [-2y, 1, |y|^2]^T: no extra (n, m) passes, forward or backward
    d = torch.cat([x, xx, ones_x], 1) @ torch.cat([-2.0 * y, ones_y, yy], 1).t()
    d = d.clamp_min(0)
    if same:
        d.diagonal().zero_()
    return d


def _offdiag(d: torch.Tensor) -> torch.Tensor:
    """The ``k * (k - 1)`` off-diagonal entries of a square ``(k, k)`` matrix, flattened."""
    k = d.shape[0]
    return d.reshape(-1)[1:].reshape(k - 1, k + 1)[:, :k].reshape(-1)


#: Pooled batches with at least this many ordered pairs use the bracketed selection.
_BRACKET_MIN_PAIRS = 1 << 16
_BRACKET_SAMPLE = 1 << 14


def _pooled_median(dxx: torch.Tensor, dyy: torch.Tensor, dxy: torch.Tensor) -> torch.Tensor:
    """Exact median of ``||z_i - z_j||^2`` over the ordered pairs ``i != j`` of the pooled batch.

    The pooled matrix is ``[[dxx, dxy], [dxy^T, dyy]]`` with zero diagonals; as every
    unordered pair appears twice, this is also the median over the pairs ``i < j``
    (mean of the two middle values, as the count of ordered pairs is even).
    """
    n, m = dxy.shape
    total = n * (n - 1) + m * (m - 1) + 2 * n * m
    k_lo, k_hi = total // 2 - 1, total // 2  # 0-based ranks of the two middle values
    if total >= _BRACKET_MIN_PAIRS and dxy.device.type == "cpu":  # its host reads are free only on CPU
        found = _bracketed_median(dxx, dyy, dxy, k_lo, k_hi)
        if found is not None:
            return found
    v = torch.cat([_offdiag(dxx), _offdiag(dyy), dxy.reshape(-1), dxy.reshape(-1)])
    lo = torch.kthvalue(v, k_lo + 1).values
    hi = torch.where(v > lo, v, torch.full_like(v, math.inf)).min()
    # ``lo`` repeated past the middle is also the upper middle value
    hi = torch.where((v <= lo).sum() > k_hi, lo, hi)
    return 0.5 * (lo + hi)


def _bracketed_median(dxx, dyy, dxy, k_lo: int, k_hi: int):
    """Floyd-Rivest style selection: bracket the middle ranks with a fixed pseudo-random
    sample, count what lies below the bracket, sort only what lies inside. Returns
    ``None`` (the caller then selects over everything) if the bracket misses."""
    npool = dxx.shape[0] + dyy.shape[0]
    blocks = ((dxx, 1), (dyy, 1), (dxy, 2))  # dxy stands for both off-diagonal blocks
    full = npool * npool  # with the diagonals' npool zeros
    gen = torch.Generator().manual_seed(0)
    sample = []
    for d, mult in blocks:
        k = max(1, round(_BRACKET_SAMPLE * mult * d.numel() / full))
        idx = torch.randint(d.numel(), (k,), generator=gen).to(d.device)
        sample.append(d.reshape(-1)[idx])
    srt = torch.cat(sample).sort().values
    s = srt.numel()
    q = (k_lo + npool) / full  # the diagonal zeros sit below every rank
    margin = 3.0 * math.sqrt(s)  # 6 standard deviations of the sample rank
    a = srt[max(int(q * s - margin), 0)]
    b = srt[min(int(q * s + margin) + 1, s - 1)]
    if not bool(a > 0):  # zeros in the bracket: leave ties with the diagonals to the exact path
        return None
    below = -npool  # the diagonals' zeros are below a > 0 but are not pairs
    inside = []
    for d, mult in blocks:
        lt = d < a
        below += mult * int(lt.sum())
        vals = d.masked_select((d <= b) & ~lt)
        inside.extend([vals] * mult)
    mid = torch.cat(inside)
    if not (below <= k_lo and below + mid.numel() > k_hi):
        return None
    lo = torch.kthvalue(mid, k_lo - below + 1).values
    hi = lo if k_hi == k_lo else torch.kthvalue(mid, k_hi - below + 1).values
    return 0.5 * (lo + hi)


def _positive(values, name: str, hint: str = "") -> list[float]:
    """Python numbers, checked finite and > 0 on the host (no device tensor is read)."""
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be a non-empty list of finite values > 0, got {values}{hint}")
    return values


#: Set on the tensors :func:`kernel_bandwidths` returns: finite and > 0 by construction, so
#: passing them on costs no check (and no host read inside a training step).
_CHECKED = "_tladapt_checked"


def _checked_tensor(t: torch.Tensor, name: str, hint: str = "") -> torch.Tensor:
    """``t`` if every value is finite and > 0 (one host read unless ``t`` is marked :data:`_CHECKED`).

    Raises:
        ValueError: as :func:`_positive` does for numbers.
    """
    if not getattr(t, _CHECKED, False):
        values = t.detach().reshape(-1)
        if values.numel() == 0 or not bool((torch.isfinite(values) & (values > 0)).all()):
            raise ValueError(f"{name} must be a non-empty list of finite values > 0, got "
                             f"{values.cpu().tolist()}{hint}")
    return t


def _fixed_base(bandwidth, device, dtype) -> torch.Tensor:
    if isinstance(bandwidth, torch.Tensor):
        bandwidth = _checked_tensor(bandwidth, "bandwidth (sigma^2)")
        return bandwidth.reshape(-1).to(device=device, dtype=dtype)
    values = _positive(bandwidth, "bandwidth (sigma^2)", "; use 'median' or 'mean' for a data-driven bandwidth")
    return _constant(tuple(values), torch.device(device), dtype)


def _scales(scales, data_driven: bool, device, dtype) -> torch.Tensor:
    if scales is None:
        scales = DAN_SCALES if data_driven else (1.0,)
    if isinstance(scales, torch.Tensor):
        return _checked_tensor(scales, "scales").reshape(-1).to(device=device, dtype=dtype)
    return _constant(tuple(_positive(scales, "scales")), torch.device(device), dtype)


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor made once per device and dtype, so a training step does not
    copy it from the host again on every call. Never modified in place."""
    return torch.tensor(values, device=device, dtype=dtype)


def _is_rule(bandwidth) -> bool:
    if isinstance(bandwidth, str):
        if bandwidth not in _DATA_RULES:
            raise ValueError(
                f"bandwidth must be a positive number, a sequence of them, 'median' or "
                f"'mean'; got {bandwidth!r}"
            )
        return True
    return False


def _data_base(rule: str, x: torch.Tensor, y: torch.Tensor, blocks=None, pooled=None) -> torch.Tensor:
    """Median or mean of the pooled off-diagonal squared distances, with the 0 fall-backs.

    ``blocks`` (``d_xx, d_yy, d_xy``) are the distances when the caller has them already;
    ``pooled`` is ``(zc, d)``, the centred pooled batch and its ``(N, N)`` distances
    (:func:`_pooled_sq_dists`).
    """
    with torch.no_grad():
        if pooled is None:
            z = torch.cat([x.detach(), y.detach()])
            zc = z - z.mean(0, keepdim=True)
        else:
            zc, d = (t.detach() for t in pooled)
        npool = zc.shape[0]
        # sum_{i<j} ||z_i - z_j||^2 = N * sum_i ||z_i - mean||^2
        mean = 2.0 * (zc * zc).sum() / (npool - 1)
        if rule == "mean":
            base = mean
        else:
            if blocks is None and pooled is None:  # distances are translation invariant: use the centred batch
                if _is_small(npool):
                    d = _pooled_sq_dists(zc)
                else:
                    n = x.shape[0]
                    blocks = (_sq_dists(zc[:n]), _sq_dists(zc[n:]), _sq_dists(zc[:n], zc[n:]))
            if blocks is None:
                base = _median(d.reshape(-1)[_upper_pairs(npool, d.device)])
            else:
                base = _pooled_median(*(b.detach() for b in blocks))
            base = torch.where(base > 0, base, mean)
        return torch.where(base > 0, base, torch.ones_like(base))


# ----------------------------------------------------------------- small batches
#
# At the batch sizes people train with (32-128 per domain) a call costs its number of
# ops, not its arithmetic. The pooled path (:class:`_PooledMMD`) works on one (N, N)
# matrix of the pooled batch z = [x; y] (N = n + m): one GEMM for the distances, the
# exact median over its upper triangle, the K kernels in one (K, N^2) exp and one small
# GEMM (:func:`_gauss_mix_broadcast`), the estimator's block sums from two tiny GEMMs,
# and a hand-written backward of one GEMM: about 8 top-level ops instead of ~90. The
# blocked path, with its cache-sized chunks, wins once the matrices outgrow the cache
# (measured in benchmarks/mmd_speed.py, RESULTS.md).

#: Pooled batches of at most this many samples (both domains together) take the pooled path.
POOLED_MAX = 256


def _is_small(npool: int) -> bool:
    return npool <= POOLED_MAX


def _pooled_sq_dists(z: torch.Tensor) -> torch.Tensor:
    """``||z_i - z_j||^2`` for the pooled batch ``z`` (N, d): one GEMM, clamped at 0, zero diagonal."""
    sq = (z * z).sum(1)
    d = torch.addmm(sq.unsqueeze(1) + sq, z, z.t(), alpha=-2.0).clamp_min(0)
    d.diagonal().zero_()
    return d


@functools.lru_cache(maxsize=64)
def _upper_pairs(npool: int, device: torch.device) -> torch.Tensor:
    """Flat indices ``i * N + j`` of the pairs ``i < j`` of an (N, N) matrix, made once per size."""
    i, j = torch.triu_indices(npool, npool, 1, device=device)
    return i * npool + j


def _median(v: torch.Tensor) -> torch.Tensor:
    """Exact median of a 1-D tensor; the mean of the two middle values for an even count
    (as :func:`numpy.median`). ``torch.median`` gives the lower middle value, and the
    lower median of ``-v`` is minus the upper one."""
    lo = torch.median(v)
    return lo if v.numel() % 2 else 0.5 * (lo - torch.median(-v))


def _pooled_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth, scales) -> torch.Tensor:
    """The multi-kernel matrix ``(N, N)`` of one layer over the pooled batch ``[x; y]``."""
    z = torch.cat([x, y])
    z = z - z.detach().mean(0, keepdim=True)  # translation invariant; better conditioned
    d = _pooled_sq_dists(z)
    sigma2 = _sigma2(bandwidth, scales, x, y, pooled=(z, d))
    return _kernel_from_sq(d, sigma2)


@functools.lru_cache(maxsize=64)
def _block_indicators(n: int, m: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(n + m, 2)`` columns marking the source rows and the target rows; made once per shape."""
    ind = torch.zeros(n + m, 2, dtype=dtype)
    ind[:n, 0] = ind[n:, 1] = 1
    return ind.to(device)


def _pooled_estimate(k: torch.Tensor, n: int, m: int, estimator: str) -> torch.Tensor:
    """The quadratic MMD^2 estimate from a pooled kernel matrix ``k`` (N, N) with a unit
    diagonal: the block sums come from two small GEMMs, ``I^T k I`` with the block
    indicators ``I``, and the unbiased estimate leaves out the diagonals by subtracting
    ``n`` and ``m``. Division by the counts, as in :func:`_quadratic`, so that a kernel
    matrix of ones gives exactly 0."""
    ind = _block_indicators(n, m, k.device, k.dtype)
    sums = ind.t() @ (k @ ind)  # [[S_xx, S_xy], [S_yx, S_yy]]
    sxx, sxy, syy = sums[0, 0], sums[0, 1], sums[1, 1]
    if estimator == "biased":
        return sxx / (n * n) + syy / (m * m) - 2.0 * sxy / (n * m)
    return (sxx - n) / (n * (n - 1)) + (syy - m) / (m * (m - 1)) - 2.0 * sxy / (n * m)


@functools.lru_cache(maxsize=64)
def _pooled_grad_weights(n: int, m: int, estimator: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``d MMD^2 / d k`` (N, N) for :func:`_pooled_estimate`, which reads the within-domain
    blocks and the upper cross block only; made once per shape, never modified."""
    w = torch.zeros(n + m, n + m, dtype=torch.float64)
    if estimator == "biased":
        w[:n, :n], w[n:, n:] = 1.0 / (n * n), 1.0 / (m * m)
    else:
        w[:n, :n], w[n:, n:] = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1))
    w[:n, n:] = -2.0 / (n * m)
    return w.to(device=device, dtype=dtype)


class _PooledMMD(torch.autograd.Function):
    """Quadratic MMD^2 of a small pooled batch with a hand-written backward.

    Forward as :func:`_pooled_kernel` + :func:`_pooled_estimate`, without autograd
    recording. With ``d_ij = |z_i|^2 + |z_j|^2 - 2 z_i.z_j`` and
    ``G = dMMD^2/dd`` (the estimator's weights times the kernel derivative, 0 where
    ``d`` was clamped or on the diagonal), the gradient is
    ``dMMD^2/dz = 2 (rowsum(G + G^T) * z - (G + G^T) z)``: one GEMM, against two for
    autograd through ``addmm`` plus a dozen small ops. The bandwidth is a constant. A
    double backward (``create_graph=True``) recomputes the loss with differentiable ops.
    """

    @staticmethod
    def forward(ctx, x, y, bandwidth, scales, estimator):
        n, m = x.shape[0], y.shape[0]
        z = torch.cat([x, y])
        z = z - z.mean(0, keepdim=True)  # translation invariant; better conditioned
        d = _pooled_sq_dists(z)
        sigma2 = _sigma2(bandwidth, scales, x, y, pooled=(z, d))
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        s, g = _gauss_mix(d, (-0.5 / sigma2).to(d.dtype), need_grad)
        if need_grad:
            g = g * (d > 0) * _pooled_grad_weights(n, m, estimator, d.device, d.dtype)
            ctx.save_for_backward(x, y, z, g, sigma2)
            ctx.estimator = estimator
        return _pooled_estimate(s, n, m, estimator)

    @staticmethod
    def backward(ctx, grad):
        x, y, z, g, sigma2 = ctx.saved_tensors
        n = x.shape[0]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable recomputation
            wanted = [t for t, need in zip((x, y), ctx.needs_input_grad) if need]
            value = _pooled_estimate(_pooled_kernel(x, y, sigma2, None), n, y.shape[0], ctx.estimator)
            grads = iter(torch.autograd.grad(value, wanted, grad, create_graph=True))
            return (next(grads) if ctx.needs_input_grad[0] else None,
                    next(grads) if ctx.needs_input_grad[1] else None, None, None, None)
        gs = g + g.t()
        gz = (z * gs.sum(1, keepdim=True) - gs @ z) * (2.0 * grad)
        return gz[:n], gz[n:], None, None, None


def _sigma2(bandwidth, scales, x, y, blocks=None, pooled=None) -> torch.Tensor:
    """The kernels' sigma^2 values, shape (K,), detached, dtype of x."""
    if _is_rule(bandwidth):
        base = _data_base(bandwidth, x, y, blocks, pooled).reshape(1)
        s = _scales(scales, True, x.device, x.dtype)
    else:
        base = _fixed_base(bandwidth, x.device, x.dtype)
        s = _scales(scales, False, x.device, x.dtype)
    return (base.unsqueeze(1) * s.unsqueeze(0)).reshape(-1)


#: Kernel stacks (elements x kernels) up to this size are formed in one broadcast.
_BROADCAST_MAX = 1 << 17


def _gauss_mix(d: torch.Tensor, coef: torch.Tensor, need_grad: bool):
    """``S = mean_k exp(c_k d)`` and, if ``need_grad``, ``G = dS/dd = mean_k c_k exp(c_k d)``
    (G is None otherwise), for squared distances ``d`` and kernel coefficients ``coef`` (K,)."""
    if d.numel() * coef.numel() <= _BROADCAST_MAX:
        return _gauss_mix_broadcast(d, coef, need_grad)
    return _gauss_mix_chunked(d, coef, need_grad)


def _gauss_mix_broadcast(d: torch.Tensor, coef: torch.Tensor, need_grad: bool):
    """S and G of :class:`_GaussMix` from one ``(numel, K)`` exp and one small GEMM: few ops,
    for small matrices (at the batch sizes people train with the op count dominates)."""
    w = 1.0 / coef.numel()
    e = torch.exp(coef.unsqueeze(1) * d.reshape(1, -1))  # (K, numel)
    if not need_grad:
        return e.sum(0).mul_(w).view_as(d), None
    sg = torch.stack([torch.full_like(coef, w), coef * w]) @ e  # (2, numel)
    return sg[0].view_as(d), sg[1].view_as(d)


def _gauss_mix_chunked(d: torch.Tensor, coef: torch.Tensor, need_grad: bool):
    """S and G of :class:`_GaussMix` one kernel at a time over cache-sized chunks (on CPU;
    one launch per kernel and pass on GPUs): memory bound, so each chunk stays in cache."""
    w = 1.0 / coef.numel()
    ks = [coef[k] for k in range(coef.numel())]
    wks = [c * w for c in ks]
    s = torch.zeros_like(d)
    g = torch.zeros_like(d) if need_grad else None
    flat_d, flat_s = d.reshape(-1), s.reshape(-1)
    flat_g = g.reshape(-1) if need_grad else None
    chunk = (1 << 18) if d.device.type == "cpu" else max(flat_d.numel(), 1)
    buf = torch.empty(min(chunk, flat_d.numel()), dtype=d.dtype, device=d.device)
    for start in range(0, flat_d.numel(), chunk):
        dd = flat_d[start : start + chunk]
        ss = flat_s[start : start + chunk]
        gg = flat_g[start : start + chunk] if need_grad else None
        e = buf[: dd.numel()]
        for c, wc in zip(ks, wks):
            torch.mul(dd, c, out=e)
            e.exp_()
            ss.add_(e, alpha=w)
            if need_grad:
                gg.addcmul_(e, wc)
    return s, g


class _GaussMix(torch.autograd.Function):
    """S = mean_k exp(c_k D), with G = dS/dD = mean_k c_k exp(c_k D) formed in the same pass.

    One exp per kernel and element (autograd would also keep the K exp matrices for the
    backward pass); the backward is ``grad_S * G``. For double backward
    (``create_graph=True``) G is recomputed from the saved D with differentiable ops.
    """

    @staticmethod
    def forward(ctx, d, coef):
        # coef stays a device tensor (its entries are used as 0-dim tensors): no host sync
        need_grad = ctx.needs_input_grad[0]
        s, g = _gauss_mix(d, coef, need_grad)
        if need_grad:
            ctx.save_for_backward(d, coef, g)
        return s

    @staticmethod
    def backward(ctx, grad_s):
        d, coef, g = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: keep G differentiable in D
            c = coef.to(d.dtype)
            g = (torch.exp(d.unsqueeze(-1) * c) * c).mean(-1)
        return grad_s * g, None


def _kernel_from_sq(d: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """Multi-Gaussian kernel matrix from squared distances ``d`` and bandwidths ``sigma2`` (K,)."""
    return _GaussMix.apply(d, (-0.5 / sigma2).to(d.dtype))


def _prepare(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    dtype = _compute_dtype(*tensors)
    return [t.to(dtype) for t in tensors]


def _check_estimator(estimator: str, n: int, m: int, s_name="source", t_name="target") -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "unbiased":
        for name, k in ((s_name, n), (t_name, m)):
            if k < 2:
                raise ValueError(
                    f"{name} has {k} sample(s); the 'unbiased' estimator needs at least 2 "
                    "per domain (use 'biased' for a single sample)"
                )
    elif estimator == "linear":
        if n != m:
            raise ValueError(
                f"the 'linear' estimator pairs samples and needs equal batch sizes; "
                f"{s_name} has {n} and {t_name} has {m}"
            )
        if n < 2:
            raise ValueError(
                f"{s_name} has {n} sample(s); the 'linear' estimator needs at least 2 per domain"
            )


def _quadratic(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor, estimator: str) -> torch.Tensor:
    n, m = kxy.shape
    if estimator == "biased":
        return kxx.sum() / (n * n) + kyy.sum() / (m * m) - 2.0 * kxy.sum() / (n * m)
    txx = kxx.sum() - kxx.diagonal().sum()
    tyy = kyy.sum() - kyy.diagonal().sum()
    return txx / (n * (n - 1)) + tyy / (m * (m - 1)) - 2.0 * kxy.sum() / (n * m)


def _linear_sq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared distances of the linear estimator's pairs, shape (4, n // 2)."""
    p = x.shape[0] // 2
    x1, x2 = x[0 : 2 * p : 2], x[1 : 2 * p : 2]
    y1, y2 = y[0 : 2 * p : 2], y[1 : 2 * p : 2]
    diffs = torch.stack([x1 - x2, y1 - y2, x1 - y2, x2 - y1])
    return (diffs * diffs).sum(-1)


def _linear_kernels(x, y, bandwidth, scales) -> torch.Tensor:
    """k(x1,x2), k(y1,y2), k(x1,y2), k(x2,y1) for each pair, shape (4, n // 2)."""
    sigma2 = _sigma2(bandwidth, scales, x, y)
    d = _linear_sq(x, y)
    return torch.exp(d.unsqueeze(-1) * (-0.5 / sigma2)).mean(-1)


def _layer_blocks(x, y, bandwidth, scales):
    """Kernel blocks (K_xx, K_yy, K_xy) of one layer."""
    c = torch.cat([x, y]).detach().mean(0, keepdim=True)  # translation invariant; better conditioned
    x, y = x - c, y - c
    blocks = (_sq_dists(x), _sq_dists(y), _sq_dists(x, y))
    sigma2 = _sigma2(bandwidth, scales, x, y, blocks)
    return tuple(_kernel_from_sq(b, sigma2) for b in blocks)


# --------------------------------------------------------------------------- public API


def pairwise_sq_dists(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances ``||x_i - y_j||^2``.

    The ``d^2`` of the Gaussian kernel ``exp(-d^2 / (2 sigma2))`` used throughout the
    module (MMD, Gretton et al., JMLR 2012).

    Args:
        x: ``(n, d)`` floating tensor.
        y: ``(m, d)`` floating tensor, or ``None`` for ``y = x`` (the diagonal is then
            exactly 0).

    Returns:
        ``(n, m)`` tensor of ``x``'s dtype, computed as ``||x||^2 + ||y||^2 - 2 x.y``
        (one matrix product, ``O(n m)`` memory) and clamped at 0 against rounding.
        Differentiable.

    Raises:
        TypeError: an input is not a ``torch.Tensor``.
        ValueError: inputs not 2-D floating tensors with the same feature size.
    """
    if y is None:
        _check_features(x, "x")
        return _sq_dists(x)
    _check_pair(x, y, "x", "y")
    return _sq_dists(x, y)


def gaussian_kernel(
    x: torch.Tensor, y: torch.Tensor | None = None, bandwidth: float | Sequence[float] = 1.0
) -> torch.Tensor:
    """Gaussian (multi-)kernel matrix ``(1/K) sum_k exp(-||x_i - y_j||^2 / (2 sigma2_k))``.

    The module's kernel convention (``bandwidth`` = sigma^2); several bandwidths make
    the uniformly weighted multi-kernel of DAN (Long et al., ICML 2015).

    Args:
        x: ``(n, d)`` floating tensor.
        y: ``(m, d)`` floating tensor, or ``None`` for ``y = x``.
        bandwidth: ``sigma2`` (sigma squared, not sigma), a positive number or a
            sequence/1-D tensor of them (one kernel each, averaged uniformly). Fixed
            values only: data-driven rules are computed by :func:`kernel_bandwidths`.

    Returns:
        ``(n, m)`` tensor of ``x``'s dtype (float32 for half inputs), values in ``(0, 1]``.

    Raises:
        TypeError: an input is not a ``torch.Tensor``.
        ValueError: bad shapes, or a bandwidth that is not finite and > 0.
    """
    if y is None:
        _check_features(x, "x")
        (x,) = _prepare([x])
        y_ = None
    else:
        _check_pair(x, y, "x", "y")
        x, y_ = _prepare([x, y])
    sigma2 = _fixed_base(bandwidth, x.device, x.dtype)
    with _no_autocast(x):
        return _kernel_from_sq(_sq_dists(x, y_), sigma2)


def kernel_bandwidths(
    source: torch.Tensor,
    target: torch.Tensor,
    bandwidth: Bandwidth = "median",
    scales: Sequence[float] | None = None,
) -> torch.Tensor:
    """The ``sigma2`` values (sigma squared) that :func:`mmd` uses on this batch.

    For the kernels ``exp(-||x - y||^2 / (2 sigma2_k))``, ``sigma2_k = base * scales[k]``;
    see the module docstring for the rules (fixed; ``"median"``, the median heuristic of
    Gretton et al., JMLR 2012, or ``"mean"``, as in Long's DAN code, of the pooled
    off-diagonal squared distances; fall-backs for a zero base; default scales, DAN's
    five kernels, Long et al., ICML 2015). Computed without gradient.

    Args:
        source: ``(n, d)`` floating tensor.
        target: ``(m, d)`` floating tensor.
        bandwidth: fixed ``sigma2`` (number or sequence, > 0), ``"median"`` or ``"mean"``.
        scales: multipliers of the base; default :data:`DAN_SCALES` for a data-driven
            base and ``(1.0,)`` for a fixed one.

    Returns:
        ``(K,)`` tensor (``K = len(base) * len(scales)``), computation dtype, detached.

    Raises:
        TypeError: an input is not a ``torch.Tensor``.
        ValueError: bad shapes, unknown rule, non-positive bandwidth or scale.
    """
    _check_pair(source, target)
    x, y = _prepare([source, target])
    with _no_autocast(x):
        sigma2 = _sigma2(bandwidth, scales, x.detach(), y.detach())
    setattr(sigma2, _CHECKED, True)  # passed on to mmd/jmmd, it is not checked (read) again
    return sigma2


def mmd(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    bandwidth: Bandwidth = "median",
    scales: Sequence[float] | None = None,
    estimator: str = "biased",
) -> torch.Tensor:
    """Squared (multi-kernel) maximum mean discrepancy, MMD^2 (Gretton et al., JMLR 2012).

    With the Gaussian multi-kernel ``k(a, b) = (1/K) sum_k exp(-||a - b||^2 / (2 sigma2_k))``
    (DAN, Long et al., ICML 2015) and ``x = source`` (n rows), ``y = target`` (m rows):

    * ``"biased"`` (V-statistic, Eq. 5): ``mean K_xx + mean K_yy - 2 mean K_xy``, always >= 0.
    * ``"unbiased"`` (U-statistic, Eq. 3): the within-domain means leave out the diagonal,
      ``sum_{i!=j} k(x_i,x_j)/(n(n-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 mean K_xy``.
      It can be negative (e.g. when the domains coincide); it is **not** clamped, so
      that it stays unbiased. Needs ``n >= 2`` and ``m >= 2``.
    * ``"linear"`` (Lemma 14, Section 6): pairs consecutive rows, ``(x_{2i}, x_{2i+1})``
      with ``(y_{2i}, y_{2i+1})`` for ``i < n // 2`` (an odd last row is dropped), and
      averages ``k(x_2i,x_2i+1) + k(y_2i,y_2i+1) - k(x_2i,y_2i+1) - k(x_2i+1,y_2i)``.
      Needs ``n == m >= 2``; evaluates ``O(n)`` kernel values (the ``"median"``
      bandwidth still looks at all ``O(n^2)`` pairs, without gradient: use ``"mean"``
      or a fixed bandwidth for a fully linear-time loss).

    The quadratic estimators accept ``n != m``. Identical batches give exactly 0 with
    ``"biased"`` and ``"linear"`` (the U-statistic is then <= 0; 0 if all points
    coincide); constant features and zero distances never give NaN.

    Args:
        source: ``(n, d)`` floating tensor (any float dtype; half precision and autocast
            are computed in float32).
        target: ``(m, d)`` floating tensor, same ``d``, device.
        bandwidth: ``sigma2`` rule: a fixed positive number or sequence (respected as
            given), ``"median"`` (default) or ``"mean"`` of the pooled squared distances,
            or a tensor of ``sigma2`` values: checked finite and > 0 like numbers (one
            host read), except the output of :func:`kernel_bandwidths`, passed on unread.
        scales: multipliers of the base ``sigma2``; default :data:`DAN_SCALES` for a
            data-driven base, ``(1.0,)`` for a fixed one.
        estimator: ``"biased"`` (default), ``"unbiased"`` or ``"linear"``.

    Returns:
        0-dim tensor (float64 for float64 inputs, else float32), differentiable w.r.t.
        both inputs with the data-driven bandwidth held constant.

    Raises:
        TypeError: an input is not a ``torch.Tensor``.
        ValueError: non-2-D or non-float inputs, feature sizes differ, an empty batch,
            fewer than 2 samples in ``source``/``target`` for ``"unbiased"``/``"linear"``,
            unequal batch sizes for ``"linear"``, unknown ``estimator`` or ``bandwidth``
            rule, a fixed bandwidth or scale that is not finite and > 0.
    """
    _check_pair(source, target)
    n, m = source.shape[0], target.shape[0]
    _check_estimator(estimator, n, m)
    x, y = _prepare([source, target])
    with _no_autocast(x):
        if estimator == "linear":
            k = _linear_kernels(x, y, bandwidth, scales)
            return (k[0] + k[1] - k[2] - k[3]).mean()
        if _is_small(n + m):
            return _PooledMMD.apply(x, y, bandwidth, scales, estimator)
        return _quadratic(*_layer_blocks(x, y, bandwidth, scales), estimator)


def _per_layer(value, n_layers: int, name: str, default):
    if value is None:
        return [default] * n_layers
    if isinstance(value, str):
        return [value] * n_layers
    value = list(value)
    if len(value) != n_layers:
        raise ValueError(
            f"{name} must give one entry per layer ({n_layers}), got {len(value)}"
        )
    return value


def jmmd(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    bandwidths: str | Sequence[Bandwidth] | None = None,
    scales: Sequence[Sequence[float] | None] | None = None,
    estimator: str = "biased",
) -> torch.Tensor:
    """Joint MMD^2 over several layers (Long et al., JAN, ICML 2017).

    The joint kernel is the product of one Gaussian multi-kernel per layer,
    ``k((a_1..a_L), (b_1..b_L)) = prod_l (1/K_l) sum_k exp(-||a_l - b_l||^2 / (2 sigma2_lk))``,
    each layer with its own ``sigma2`` rule (data-driven rules look at that layer's
    pooled batch); the estimators are those of :func:`mmd`, which ``jmmd`` equals for
    one layer. JAN pairs the features with the softmax outputs, e.g.
    ``bandwidths=["median", 0.92 ** 2]``, ``scales=[None, None]`` (JAN's code: DAN's
    kernels on the features and one kernel with ``sigma = 0.92`` on the predictions).

    Args:
        sources: ``L >= 1`` tensors of shapes ``(n, d_l)`` (same ``n``), e.g.
            ``[features, softmax]`` of the source batch.
        targets: ``L`` tensors of shapes ``(m, d_l)``, the same layers on the target batch.
        bandwidths: ``None`` (``"median"`` everywhere), a rule name for every layer,
            or one :func:`mmd` ``bandwidth`` per layer.
        scales: ``None`` (defaults everywhere) or one :func:`mmd` ``scales`` per layer
            (``None`` entries for the default).
        estimator: ``"biased"`` (default), ``"unbiased"`` or ``"linear"``.

    Returns:
        0-dim tensor (float64 for float64 inputs, else float32), differentiable.

    Raises:
        TypeError: an input is not a ``torch.Tensor``.
        ValueError: as :func:`mmd`, for any layer (named ``sources[l]``/``targets[l]``);
            no layers; numbers of layers or batch sizes that differ between layers.
    """
    sources, targets = list(sources), list(targets)
    if len(sources) == 0 or len(sources) != len(targets):
        raise ValueError(
            f"sources and targets must be non-empty lists of equal length, got "
            f"{len(sources)} and {len(targets)}"
        )
    n_layers = len(sources)
    for i, (s, t) in enumerate(zip(sources, targets)):
        _check_pair(s, t, f"sources[{i}]", f"targets[{i}]")
        if s.shape[0] != sources[0].shape[0] or t.shape[0] != targets[0].shape[0]:
            raise ValueError(
                f"every layer must have the same batch sizes as layer 0: sources[{i}] has "
                f"{s.shape[0]} rows, targets[{i}] has {t.shape[0]}"
            )
    n, m = sources[0].shape[0], targets[0].shape[0]
    _check_estimator(estimator, n, m, "sources[0]", "targets[0]")
    bws = _per_layer(bandwidths, n_layers, "bandwidths", "median")
    scs = _per_layer(scales, n_layers, "scales", None)
    tensors = _prepare(sources + targets)
    xs, ys = tensors[:n_layers], tensors[n_layers:]
    with _no_autocast(xs[0]):
        if estimator == "linear":
            k = None
            for x, y, bw, sc in zip(xs, ys, bws, scs):
                kl = _linear_kernels(x, y, bw, sc)
                k = kl if k is None else k * kl
            return (k[0] + k[1] - k[2] - k[3]).mean()
        if _is_small(n + m):
            k = None
            for x, y, bw, sc in zip(xs, ys, bws, scs):
                kl = _pooled_kernel(x, y, bw, sc)
                k = kl if k is None else k * kl
            return _pooled_estimate(k, n, m, estimator)
        kxx = kyy = kxy = None
        for x, y, bw, sc in zip(xs, ys, bws, scs):
            lxx, lyy, lxy = _layer_blocks(x, y, bw, sc)
            if kxx is None:
                kxx, kyy, kxy = lxx, lyy, lxy
            else:
                kxx, kyy, kxy = kxx * lxx, kyy * lyy, kxy * lxy
        return _quadratic(kxx, kyy, kxy, estimator)


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Sample covariance of the columns of ``x`` over the batch dimension, ``n - 1`` normalised.

    ``C = (x - mean)^T (x - mean) / (n - 1)``, centred before the product (no
    ``x^T x - n mean mean^T`` cancellation). Half-precision inputs and autocast are
    computed in float32 (large activations overflow or lose every digit in 16 bits).
    The covariance of Deep CORAL (Sun & Saenko, ECCV-W 2016) and CORAL (Sun, Feng &
    Saenko, AAAI 2016); no kernel is involved.

    Args:
        x: ``(n, d)`` floating tensor, ``n >= 2``.

    Returns:
        ``(d, d)`` symmetric tensor, float64 for float64 input, else float32. Differentiable.

    Raises:
        TypeError: an input is not a ``torch.Tensor``.
        ValueError: ``x`` not a 2-D floating tensor, or fewer than 2 samples.
    """
    _check_features(x, "x", min_rows=2)
    (x,) = _prepare([x])
    with _no_autocast(x):
        xc = x - x.mean(0, keepdim=True)
        return xc.t().mm(xc) / (x.shape[0] - 1)


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL loss ``||C_s - C_t||_F^2 / (4 d^2)`` (Sun & Saenko, ECCV-W 2016).

    ``C_s``, ``C_t`` are :func:`covariance` (batch dimension, ``n - 1`` normalisation),
    computed in float32 under bf16/fp16 autocast. No kernel is involved.

    Args:
        source: ``(n, d)`` floating tensor, ``n >= 2``.
        target: ``(m, d)`` floating tensor, ``m >= 2``, same ``d`` (``m != n`` is fine).

    Returns:
        0-dim tensor, float64 for float64 inputs, else float32. Differentiable.

    Raises:
        TypeError: an input is not a ``torch.Tensor``.
        ValueError: inputs not 2-D floating tensors, different feature sizes, or a
            batch of fewer than 2 samples (named ``source``/``target``).
    """
    _check_pair(source, target, min_rows=2)
    x, y = _prepare([source, target])
    d = x.shape[1]
    with _no_autocast(x):
        diff = covariance(x) - covariance(y)
        return (diff * diff).sum() / (4 * d * d)


def psd_power(mat: torch.Tensor, power: float, *, rtol: float | None = None) -> torch.Tensor:
    """``mat ** power`` for a symmetric positive semi-definite matrix, via eigendecomposition.

    ``mat`` is symmetrised (``(A + A^T) / 2``) and decomposed with
    :func:`torch.linalg.eigh` in float64; eigenvalues below 0 (rounding) are clamped to
    0, and for ``power < 0`` eigenvalues ``<= rtol * max eigenvalue`` count as 0 and get
    0 (a pseudo-inverse power) instead of overflowing. ``V diag(w ** power) V^T``
    (symmetrised) is real, exactly symmetric and PSD, unlike a Schur-based ``sqrtm`` on a singular or
    ill-conditioned matrix. Used by :func:`coral_transform` (CORAL, Sun, Feng & Saenko,
    AAAI 2016); no kernel is involved.

    Args:
        mat: ``(d, d)`` symmetric PSD floating tensor.
        power: the exponent, e.g. ``0.5`` or ``-0.5``.
        rtol: relative eigenvalue cut-off for negative powers; default ``d * eps(float64)``.

    Returns:
        ``(d, d)`` tensor of ``mat``'s dtype (float32 for half precision).

    Raises:
        ValueError: ``mat`` not a square 2-D floating tensor or containing non-finite values.
    """
    if not isinstance(mat, torch.Tensor) or mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"mat must be a square 2-D tensor, got {getattr(mat, 'shape', type(mat))}")
    if not mat.is_floating_point():
        raise ValueError(f"mat must be a floating-point tensor, got {mat.dtype}")
    if not bool(torch.isfinite(mat).all()):
        raise ValueError("mat contains non-finite values")
    out_dtype = _compute_dtype(mat)
    a = mat.to(torch.float64)
    a = 0.5 * (a + a.t())
    w, v = torch.linalg.eigh(a)
    w = w.clamp_min(0)
    if power < 0:
        tol = (a.shape[0] * torch.finfo(torch.float64).eps if rtol is None else rtol) * w.max()
        keep = w > tol
        wp = torch.where(keep, w.clamp_min(torch.finfo(torch.float64).tiny) ** power, torch.zeros_like(w))
    elif power == 0:
        wp = torch.ones_like(w)
    else:
        wp = w**power
    out = (v * wp) @ v.t()
    return (0.5 * (out + out.t())).to(out_dtype)  # symmetric to the last bit


def coral_transform(source: torch.Tensor, target: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Closed-form CORAL (Sun, Feng & Saenko, AAAI 2016, Algorithm 1).

    Whitens the source features and re-colours them with the target covariance::

        C_s = cov(source) + lam I,   C_t = cov(target) + lam I
        source* = source @ C_s^{-1/2} @ C_t^{1/2}

    with :func:`covariance` (``n - 1`` normalised) and the symmetric powers of
    :func:`psd_power` (eigendecomposition in float64, tiny negative eigenvalues clamped).
    No kernel is involved; computed in float64 whatever the input dtype (autocast off).
    As in the paper, the features are *not* centred (standardise them first if you
    want to); ``lam = 1`` is the paper's regulariser. ``lam = 0`` with a singular
    ``C_s`` uses the pseudo-inverse square root. Not meant to be backpropagated through.

    Args:
        source: ``(n, d)`` floating tensor, ``n >= 2``.
        target: ``(m, d)`` floating tensor, ``m >= 2``, same ``d``.
        lam: ``lambda >= 0`` added to both covariances' diagonals.

    Returns:
        ``(n, d)`` tensor, the transformed source, in ``source``'s dtype (float32 for
        half precision).

    Raises:
        TypeError: an input is not a ``torch.Tensor``.
        ValueError: bad shapes, fewer than 2 samples per domain, ``lam`` negative or not finite.
    """
    _check_pair(source, target, min_rows=2)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    out_dtype = _compute_dtype(source)
    x = source.detach().to(torch.float64)
    y = target.detach().to(torch.float64)
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    with _no_autocast(x):
        cs = covariance(x) + lam * eye
        ct = covariance(y) + lam * eye
        out = x @ psd_power(cs, -0.5) @ psd_power(ct, 0.5)
    return out.to(out_dtype)
