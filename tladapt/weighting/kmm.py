"""Kernel Mean Matching (Huang, Smola, Gretton, Borgwardt and Schölkopf, "Correcting sample
selection bias by unlabeled data", NIPS 2007): the weights whose weighted source mean embedding
is closest to the target's (conventions: :mod:`tladapt.weighting`; solvers:
:mod:`tladapt.weighting.kmm_solvers`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from tladapt.discrepancy import gaussian_kernel
from tladapt.weighting.common import ArrayLike, _as_pair, _check_int, _check_positive, _out_device, _resolve_sigma
from tladapt.weighting.kmm_solvers import solve_kmm_qp, _certificate, _cross_rowsums, _kmm_apg, _kmm_bounds, _TiledGram


#: ``method`` values of :func:`kmm_weights`.
KMM_METHODS: tuple[str, ...] = ("auto", "qp", "apg")


#: ``method="auto"`` uses the exact QP up to this many source points, the tiled solver above.
_AUTO_QP_MAX = 2000


@dataclass(frozen=True)
class KMMInfo:
    """What :func:`kmm_weights` did (``return_info=True``).

    Attributes:
        method: ``"qp"`` or ``"apg"``, the solver that ran.
        sigma: the kernel width used (``k = exp(-d^2 / (2 sigma^2))``).
        B, eps, lower, upper: the constraint set, ``0 <= beta <= B``,
            ``lower <= sum beta <= upper`` with ``lower = max(0, n_s(1-eps))``,
            ``upper = n_s(1+eps)``.
        objective: ``f(beta) = 1/2 beta^T K beta - kappa^T beta`` at the solver's
            float64 solution (without the QP's jitter term; APG: from its ``dtype`` tiles,
            accumulated in float64).
        gap: certified bound on ``MMD^2(beta) - min MMD^2`` (the Frank-Wolfe duality
            gap, ``2 (f(beta) - lower bound) / n_s^2``), where
            ``MMD^2(beta) = ||(1/n_s) sum beta_i phi(x_i) - (1/n_t) sum phi(x'_j)||^2 =
            2 f(beta) / n_s^2 + const``. For the QP it is evaluated at its solution.
        iterations: solver iterations (APG; 0 for the QP, whose solver does not report them).
        converged: ``gap <= tol`` (APG) / the QP solver reported optimality.
        jitter: the diagonal shift used by the QP (0 for APG).
        kernel_evaluations: kernel values computed (APG; ``n_s^2 + n_s n_t`` for the QP).
        cached_bytes: kernel-tile storage held by the APG solver (the QP's dense ``K``: ``8 n_s^2``).
    """

    method: str
    sigma: float
    B: float
    eps: float
    lower: float
    upper: float
    objective: float
    gap: float
    iterations: int
    converged: bool
    jitter: float
    kernel_evaluations: int
    cached_bytes: int


def kmm_weights(
    source: ArrayLike,
    target: ArrayLike,
    *,
    sigma: float | None = None,
    B: float = 1000.0,
    eps: float | None = None,
    method: str = "auto",
    tol: float = 1e-5,
    max_iter: int = 5000,
    memory_budget: int = 512 * 2**20,
    block_size: int = 1024,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    return_info: bool = False,
):
    """Kernel Mean Matching weights (Huang, Smola, Gretton, Borgwardt, Schölkopf, NIPS 2007).

    Solves ``min_beta 1/2 beta^T K beta - kappa^T beta`` s.t. ``0 <= beta_i <= B`` and
    ``|sum_i beta_i - n_s| <= n_s eps``, with ``K_ij = k(x_i, x_j)`` on the source and
    ``kappa_i = (n_s / n_t) sum_j k(x_i, x'_j)``: the weighted source mean embedding
    closest to the target's, ``MMD^2(beta) = 2 f(beta) / n_s^2 + const``.

    Two solvers:

    * ``"qp"``: the exact QP (:func:`solve_kmm_qp`, PIQP dense interior point, float64,
      jitter against rounding). Needs the dense ``n_s x n_s`` float64 matrix, so
      ``8 n_s^2 <= memory_budget`` is required (ValueError otherwise).
    * ``"apg"``: accelerated projected gradient (FISTA with gradient restart, exact
      projection onto the constraint set) on any torch device, with ``K beta``
      computed tile by tile (``block_size`` rows). Kernel tiles (upper triangle only,
      ``dtype``) are cached while they fit in ``memory_budget`` bytes and recomputed
      otherwise, so memory is ``O(memory_budget + (n_s + n_t) d)`` whatever ``n_s``
      (the default 512 MiB holds all of ``K`` up to n_s ~ 11,000 in float32; at
      ``n_s = 10,000`` that is 0.24 GB, never a dense 0.8 GB float64 matrix). It stops when the
      Frank-Wolfe duality gap certifies ``MMD^2(beta) - min MMD^2 <= tol``, i.e. the
      objective agrees with the QP optimum to ``tol * n_s^2 / 2`` (tested). The
      weights themselves are only as well determined as the problem: ``K`` of a
      Gaussian kernel is severely ill-conditioned, so many ``beta`` (from either
      solver) reach the optimal MMD to within 1e-8; compare solutions by objective.
      The exact optimum tends to be sparse and extreme (about 90 of 100 weights at 0
      in ``experiments/covariate_shift.py``), while APG, started from uniform weights
      and stopped at ``tol``, keeps them spread out: an implicit regularisation that
      gave the lower target error there.
      With float32 tiles the certificate is reliable down to ``tol`` ~ 1e-6; pass
      ``dtype=torch.float64`` for tighter.
    * ``"auto"``: ``"qp"`` for ``n_s <= 2000``, else ``"apg"``.

    Args:
        source: ``(n_s, d)`` source points (array or tensor).
        target: ``(n_t, d)`` target points, same ``d``.
        sigma: kernel width (``k = exp(-||x - y||^2 / (2 sigma^2))``); default
            :func:`median_sigma` of the pooled sample.
        B: upper bound on each weight, > 0 (the paper's B; 1000 as in skada/ADAPT).
        eps: sum tolerance, >= 0; default ``(sqrt(n_s) - 1) / sqrt(n_s)`` (the paper's).
        method: ``"auto"``, ``"qp"`` or ``"apg"``.
        tol: APG stopping tolerance on the certified MMD^2 gap, > 0.
        max_iter: APG iteration limit (a RuntimeWarning if reached before ``tol``).
        memory_budget: bytes of kernel storage allowed (APG tile cache plus working tiles;
            QP dense matrix). Input points and ``O(n)`` vectors come on top.
        block_size: APG tile size (rows); lowered automatically to fit the budget.
        dtype: APG tile dtype, ``torch.float32`` or ``torch.float64``; vectors and sums
            are always float64.
        device: where to compute (APG) and return the weights; default the device of
            ``source`` if it is a tensor, else CPU. The QP always runs on the CPU.
        return_info: also return a :class:`KMMInfo`.

    Returns:
        ``(n_s,)`` float32 tensor of weights on ``device`` (``0 <= w <= B``), or
        ``(weights, KMMInfo)`` with ``return_info=True``.

    Raises:
        ValueError: naming the argument: bad shapes, empty or non-finite input,
            mismatched feature dimensions, ``B <= 0``, ``sigma <= 0``, ``eps < 0``, an
            infeasible ``B`` (``B * n_s < n_s (1 - eps)``), unknown ``method``, a
            ``memory_budget`` too small (for one 64-row tile, or for the QP's dense
            matrix), bad ``tol``/``max_iter``/``block_size``/``dtype``.
        RuntimeError: the QP solver failed.
    """
    xs, xt = _as_pair(source, target)
    B = _check_positive(B, "B", allow_inf=True)
    if method not in KMM_METHODS:
        raise ValueError(f"method must be one of {KMM_METHODS}, got {method!r}")
    tol = _check_positive(tol, "tol")
    max_iter = _check_int(max_iter, "max_iter", 1)
    memory_budget = _check_int(memory_budget, "memory_budget", 1)
    block_size = _check_int(block_size, "block_size", 1)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    out_device = _out_device(device, source, target)
    n_s, n_t = xs.shape[0], xt.shape[0]
    eps, lower, upper = _kmm_bounds(n_s, B, eps)
    if sigma is not None:
        _check_positive(sigma, "sigma")
    if method == "auto":
        method = "qp" if n_s <= _AUTO_QP_MAX else "apg"
    if method == "qp" and 8 * n_s * n_s > memory_budget:
        raise ValueError(
            f"memory_budget={memory_budget} bytes is too small for method='qp', whose dense "
            f"{n_s}x{n_s} float64 kernel needs {8 * n_s * n_s} bytes; use method='apg'"
        )
    item = torch.finfo(dtype).bits // 8
    block = block_size
    while 2 * block * block * item > memory_budget and block > 64:
        block //= 2
    if method == "apg" and 2 * block * block * item > memory_budget:
        raise ValueError(
            f"memory_budget={memory_budget} bytes is too small: one {block}x{block} working "
            f"tile pair needs {2 * block * block * item} bytes"
        )

    sigma = _resolve_sigma(sigma, xs, xt)
    # the kernel is translation invariant: centring keeps float32 distances accurate
    center = torch.cat([xs, xt.to(xs.device)]).mean(0, keepdim=True)

    if method == "qp":
        xs_c = (xs - center).cpu()
        xt_c = (xt.to(xs.device) - center).cpu()
        K = gaussian_kernel(xs_c, None, bandwidth=sigma**2)
        kappa = (n_s / n_t) * _cross_rowsums(xs_c, xt_c, sigma, max(block, 1024), torch.float64)
        beta, delta = solve_kmm_qp(K, kappa, B=B, lower=lower, upper=upper)
        b = torch.from_numpy(beta)
        f, lb = _certificate(b, K @ b, kappa, B, lower, upper)
        info = KMMInfo("qp", sigma, B, eps, lower, upper, f, max(0.0, 2 * (f - lb) / n_s**2),
                       0, True, delta, n_s * n_s + n_s * n_t, 8 * n_s * n_s)
    else:
        dev = out_device
        xs_c = (xs - center).to(device=dev, dtype=dtype)
        xt_c = (xt.to(xs.device) - center).to(device=dev, dtype=dtype)
        kappa = (n_s / n_t) * _cross_rowsums(xs_c, xt_c, sigma, block, dtype)
        cache_budget = memory_budget - 2 * block * block * item
        gram = _TiledGram(xs_c, sigma, block=block, budget=cache_budget, dtype=dtype)
        b, res = _kmm_apg(gram, kappa, B, lower, upper, tol_f=tol * n_s * n_s / 2, max_iter=max_iter)
        gap = max(0.0, 2 * (res["objective"] - res["bound"]) / n_s**2)
        if not res["converged"]:
            warnings.warn(
                f"kmm_weights(method='apg') stopped at max_iter={max_iter} with certified "
                f"MMD^2 gap {gap:.3g} > tol={tol:g}",
                RuntimeWarning,
                stacklevel=2,
            )
        info = KMMInfo("apg", sigma, B, eps, lower, upper, res["objective"], gap,
                       res["iterations"], res["converged"], 0.0,
                       gram.kernel_evaluations + n_s * n_t, gram.cached_bytes)
    w = b.to(device=out_device, dtype=torch.float32)
    return (w, info) if return_info else w
