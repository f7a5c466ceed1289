"""Importance weights for covariate shift: KMM, KLIEP and a discriminative density ratio.

Under covariate shift (``p_T(y|x) = p_S(y|x)``, ``p_T(x) != p_S(x)``) a source sample
reweighted by ``w(x) = p_T(x) / p_S(x)`` is an unbiased stand-in for the target
distribution. This module estimates ``w`` at the source points in three ways:

* :func:`kmm_weights` -- Kernel Mean Matching (Huang, Smola, Gretton, Borgwardt and
  Schölkopf, "Correcting sample selection bias by unlabeled data", NIPS 2007): the
  weights whose weighted source mean embedding is closest to the target's, a QP.
* :class:`KLIEP` / :func:`kliep_weights` -- the Kullback-Leibler Importance Estimation
  Procedure (Sugiyama, Nakajima, Kashima, von Bünau and Kawanabe, NIPS 2007; Sugiyama
  et al., "Direct importance estimation for covariate shift adaptation", AISM 60(4),
  2008): a Gaussian-basis model of ``w`` fitted by maximum target likelihood, with
  its likelihood cross-validation for the bandwidth.
* :class:`DiscriminativeRatio` / :func:`discriminative_weights` -- a probabilistic
  domain classifier, ``w(x) = p(T|x) / p(S|x) * n_s / n_t`` (e.g. Bickel, Brückner and
  Scheffer, "Discriminative learning under covariate shift", JMLR 10, 2009).

Kernel convention
-----------------
One Gaussian kernel throughout::

    k(x, y) = exp(-||x - y||^2 / (2 * sigma^2))

``sigma`` is the kernel *width* (a length, in the units of the features), as in the
KMM and KLIEP papers. It is the same kernel as :mod:`tladapt.discrepancy`, whose
``bandwidth`` argument is ``sigma**2`` (a variance): ``gaussian_kernel(x, y,
bandwidth=sigma**2)`` there is ``k`` here. scikit-learn's ``rbf`` ``gamma`` is
``1 / (2 sigma^2)``. The default width is the median heuristic, :func:`median_sigma`:
the square root of :mod:`tladapt.discrepancy`'s ``"median"`` bandwidth on the pooled
sample (so the two modules pick the same kernel on the same data).

Inputs and outputs
------------------
Every estimator takes ``source`` ``(n_s, d)`` and ``target`` ``(n_t, d)`` as NumPy
arrays or torch tensors (any real dtype, any device; 1-D data must be reshaped to
``(n, 1)``) and returns the weights as a ``float32`` tensor of shape ``(n_s,)`` on
``device`` if given, otherwise on the device of ``source`` (CPU for NumPy input).
Bad input raises :class:`ValueError` naming the argument before any computation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from tladapt.discrepancy import gaussian_kernel, kernel_bandwidths

__all__ = [
    "ArrayLike",
    "KMMInfo",
    "KLIEP",
    "DiscriminativeRatio",
    "median_sigma",
    "kmm_weights",
    "solve_kmm_qp",
    "kliep_weights",
    "discriminative_weights",
    "KMM_METHODS",
    "KLIEP_SIGMA_SCALES",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

#: ``method`` values of :func:`kmm_weights`.
KMM_METHODS: tuple[str, ...] = ("auto", "qp", "apg")

#: Default KLIEP bandwidth candidates, as multiples of :func:`median_sigma`.
KLIEP_SIGMA_SCALES: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

#: KLIEP's cross-validation fits stop at this certified gap (nats) or ``tol`` if larger:
#: candidate widths differ by far more in held-out log-likelihood.
_KLIEP_CV_TOL = 1e-5

#: ``method="auto"`` uses the exact QP up to this many source points, the tiled solver above.
_AUTO_QP_MAX = 2000



# --------------------------------------------------------------------------- input checks


def _as_points(x: Any, name: str) -> torch.Tensor:
    """Validate one sample and return it as a float64 tensor (same device for tensors)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            a = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise ValueError(f"{name} must be an array of shape (n, d): {exc}") from None
        if a.dtype.kind not in "iuf":
            raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
        t = torch.from_numpy(np.array(a, dtype=np.float64, copy=True))
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n, d), got {tuple(t.shape)}; reshape 1-D data to (n, 1)"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}, need n >= 1 and d >= 1")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return t


def _as_pair(source: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xs = _as_points(source, "source")
    xt = _as_points(target, "target")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(
            f"target has {xt.shape[1]} features, source has {xs.shape[1]}: they must match"
        )
    return xs, xt


def _out_device(device, *inputs: Any) -> torch.device:
    """``device`` if given, else the device of the first tensor input (CPU for NumPy)."""
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def _check_positive(value, name: str, *, allow_inf: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0, got {value!r}") from None
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be {'> 0' if allow_inf else 'finite and > 0'}, got {value!r}")
    return v


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- kernel helpers


def median_sigma(
    source: ArrayLike, target: ArrayLike | None = None, *, max_points: int = 2000, seed: int = 0
) -> float:
    """Median-heuristic kernel width ``sigma`` of the pooled sample (Gretton et al., JMLR 2012).

    ``sigma = sqrt(median ||z_i - z_j||^2)`` over the pairs ``i < j`` of the pooled points
    ``z = cat(source, target)``, i.e. the median pairwise distance; computed by
    :func:`tladapt.discrepancy.kernel_bandwidths` (``bandwidth="median"``, one scale), so
    ``sigma**2`` equals that module's median bandwidth, fall-backs included (a zero median
    falls back to the mean squared distance, all-identical points to 1).

    Args:
        source: ``(n_s, d)`` array or tensor.
        target: ``(n_t, d)`` array or tensor, or ``None`` for the source alone.
        max_points: if the pool has more points, a uniform subsample of this many
            (drawn proportionally from both samples with a ``torch.Generator`` seeded
            by ``seed``) is used: ``O(max_points^2)`` time and memory.
        seed: seed of that subsample.

    Returns:
        ``sigma`` > 0, a Python float (convention: ``k = exp(-d^2 / (2 sigma^2))``).

    Raises:
        ValueError: bad shapes, empty or non-finite input, ``max_points < 2``.
    """
    max_points = _check_int(max_points, "max_points", 2)
    if target is None:
        xs = _as_points(source, "source")
        xt = xs[:0]
    else:
        xs, xt = _as_pair(source, target)
    xt = xt.to(xs.device)
    n_s, n_t = xs.shape[0], xt.shape[0]
    if n_s + n_t > max_points:
        gen = torch.Generator().manual_seed(int(seed))
        k_s = max(1, round(max_points * n_s / (n_s + n_t)))
        k_t = max_points - k_s
        xs = xs[torch.randperm(n_s, generator=gen)[:k_s].to(xs.device)]
        xt = xt[torch.randperm(n_t, generator=gen)[:k_t].to(xt.device)] if n_t else xt
    if xt.shape[0] == 0:  # the pooled median of one sample: split it (pairs are pooled anyway)
        if xs.shape[0] < 2:
            return 1.0
        xs, xt = xs[: xs.shape[0] // 2], xs[xs.shape[0] // 2 :]
    sigma2 = kernel_bandwidths(xs, xt, bandwidth="median", scales=(1.0,))
    return float(sigma2[0].sqrt())


def _resolve_sigma(sigma, xs: torch.Tensor, xt: torch.Tensor) -> float:
    if sigma is None:
        return median_sigma(xs, xt)
    return _check_positive(sigma, "sigma")


def _kernel_block(a: torch.Tensor, b: torch.Tensor, coef: float, diagonal: bool = False) -> torch.Tensor:
    """``exp(coef * ||a_i - b_j||^2)`` for one tile, in place (one ``(r, c)`` buffer + one temp).

    Few features: exact differences (no cancellation); many: one GEMM. ``diagonal``
    marks a tile of ``K(x, x)`` on the diagonal (``a is b``): its diagonal is set to 1.
    """
    d = a.shape[1]
    if d <= 4:
        t = (a[:, :1] - b[:, 0].unsqueeze(0)).square_()
        for k in range(1, d):
            t.add_((a[:, k : k + 1] - b[:, k].unsqueeze(0)).square_())
    else:
        t = torch.addmm((b * b).sum(1).unsqueeze(0), a, b.t(), alpha=-2.0)
        t.add_((a * a).sum(1, keepdim=True)).clamp_(min=0)
    if diagonal:
        t.fill_diagonal_(0.0)
    return t.mul_(coef).exp_()


# --------------------------------------------------------------------------- KMM: constraint set


def _kmm_bounds(n_s: int, B: float, eps: float | None) -> tuple[float, float, float]:
    """``(eps, lower, upper)`` of the sum constraint ``|sum beta - n_s| <= n_s eps``; checks feasibility."""
    if eps is None:
        eps = (math.sqrt(n_s) - 1.0) / math.sqrt(n_s)
    else:
        try:
            eps = float(eps)
        except (TypeError, ValueError):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}") from None
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    lower, upper = n_s * (1.0 - eps), n_s * (1.0 + eps)
    if B * n_s < lower * (1 - 1e-12):
        raise ValueError(
            f"B={B!r} is infeasible: with n_s={n_s} weights in [0, B] the sum is at most "
            f"B*n_s={B * n_s:g}, below the lower bound n_s*(1-eps)={lower:g} (eps={eps:g}); "
            f"use B >= {1 - eps:g} or a larger eps"
        )
    return eps, max(lower, 0.0), upper


def _project(v: torch.Tensor, B: float, lower: float, upper: float) -> torch.Tensor:
    """Euclidean projection onto ``{0 <= x <= B, lower <= sum x <= upper}`` (exact)."""
    c = v.clamp(0.0, B) if math.isfinite(B) else v.clamp(min=0.0)
    s = float(c.sum())
    if lower <= s <= upper:
        return c
    return _project_sum(v, B, lower if s < lower else upper)


def _project_sum(v: torch.Tensor, B: float, target: float) -> torch.Tensor:
    """``clip(v - tau, 0, B)`` with the ``tau`` that makes the sum ``target``.

    ``h(tau) = sum clip(v - tau, 0, B)`` is continuous, piecewise linear and
    non-increasing, with breakpoints ``v - B`` (slope -1 more) and ``v`` (slope +1):
    sort them, evaluate ``h`` there by cumulative sums, interpolate on the crossing
    segment, then remove the rounding residual on the free coordinates.
    """
    n = v.numel()
    finite = math.isfinite(B)

    def clip(t):
        return (v - t).clamp(0.0, B) if finite else (v - t).clamp(min=0.0)

    if finite:
        bp = torch.cat([v - B, v])
        step = torch.cat([v.new_full((n,), -1.0), v.new_ones(n)])
        slope0 = 0.0
    else:
        bp = v.clone()
        step = v.new_ones(n)
        slope0 = -float(n)
    bp, order = torch.sort(bp)
    slope = slope0 + torch.cumsum(step[order], 0)  # slope of h just right of each breakpoint
    h0 = float(clip(bp[0]).sum())
    h = torch.empty_like(bp)
    h[0] = h0
    h[1:] = h0 + torch.cumsum(slope[:-1] * (bp[1:] - bp[:-1]), 0)
    if target >= h0:  # only with B = inf: left of every breakpoint, slope -n
        tau = float(bp[0]) - (target - h0) / n
    else:
        k = int(torch.searchsorted(-h, torch.tensor([-target], dtype=h.dtype, device=h.device)))
        k = min(max(k, 1), n * (2 if finite else 1) - 1)
        sl = float(slope[k - 1])
        tau = float(bp[k - 1]) + ((target - float(h[k - 1])) / sl if sl != 0 else 0.0)
    out = clip(tau)
    free = (out > 0) & (out < B)
    nf = int(free.sum())
    if nf:
        out = clip(tau + (float(out.sum()) - target) / nf)
    return out


def _lmo_value(g: torch.Tensor, B: float, lower: float, upper: float) -> float:
    """``min g.s`` over ``{0 <= s <= B, lower <= sum s <= upper}`` (the Frank-Wolfe oracle).

    Greedy: fill the most negative coordinates up to ``upper`` (or all of them), and
    if that mass is below ``lower``, keep filling with the smallest non-negative ones.
    """
    gs, _ = torch.sort(g)
    neg = int((gs < 0).sum())
    cap = (math.inf if neg else 0.0) if not math.isfinite(B) else neg * B
    mass = upper if cap >= upper else (cap if cap >= lower else lower)
    if not math.isfinite(B):
        return float(gs[0]) * mass
    s = (mass - B * torch.arange(g.numel(), dtype=g.dtype, device=g.device)).clamp_(0.0, B)
    return float(gs @ s)


def _certificate(beta, kbeta, kappa, B, lower, upper) -> tuple[float, float]:
    """``(f, lb)``: the KMM objective at ``beta`` and a lower bound on its minimum (Wolfe dual).

    ``f(s) >= f(beta) + g.(s - beta)`` for convex ``f``, ``g = K beta - kappa``, so
    ``min f >= f(beta) - g.beta + min_s g.s`` (the Frank-Wolfe duality gap bound).
    """
    g = kbeta - kappa
    f = float(0.5 * (beta @ kbeta) - kappa @ beta)
    return f, f - float(g @ beta) + _lmo_value(g, B, lower, upper)


# --------------------------------------------------------------------------- KMM: dense QP


def solve_kmm_qp(
    K: ArrayLike,
    kappa: ArrayLike,
    *,
    B: float,
    lower: float,
    upper: float,
    jitter: float = 1e-10,
    max_jitter: float = 1e-4,
) -> tuple[np.ndarray, float]:
    """Solve the KMM quadratic program exactly with PIQP's dense interior-point solver.

    ``min_beta 1/2 beta^T (K + delta I) beta - kappa^T beta``
    s.t. ``0 <= beta_i <= B`` and ``lower <= sum beta <= upper``
    (Huang et al., NIPS 2007, Eq. 8 with ``lower = n(1-eps)``, ``upper = n(1+eps)``).

    Solver: PIQP (Schwan, Jiang, Kuhn and Jones, "PIQP: A proximal interior-point
    quadratic programming solver", IEEE CDC 2023; BSD-2-Clause), its *dense* backend:
    ``K`` is a dense kernel matrix, so a dense Cholesky-based interior-point method
    solves it in ~20 factorisations to 1e-9 accuracy. Measured on the same 2-D KMM
    problems (2 shared CPU cores): PIQP dense 0.03 s at n = 500 and 1.7 s at n = 2000;
    OSQP 1.1 (ADMM on the sparse form: 17,675 iterations, failed polish, objective
    worse by 3e-9 relative) 3.8 s and 21 s; Clarabel 0.11 (sparse interior point)
    0.37 s and 4.8 s. CVXOPT is GPL-3 (tladapt is MIT) and SciPy has no QP solver
    (SLSQP, used by the tests as an independent check, is O(n^3) per iteration).
    ``benchmarks/kmm_speed.py`` times the whole call (kernel included).

    Jitter: a Gaussian kernel matrix is positive semi-definite in exact arithmetic but
    rounding can leave eigenvalues slightly below 0. ``delta = jitter * mean(diag K)``
    is added to the diagonal, multiplied by 10 until ``K + delta I`` has a Cholesky
    factorisation (so the QP is convex), up to ``max_jitter * mean(diag K)``. The
    objective changes by ``delta/2 ||beta||^2`` (1e-10 relative for a kernel matrix).

    Args:
        K: ``(n, n)`` symmetric matrix (symmetrised as ``(K + K^T) / 2``), float64 used.
        kappa: ``(n,)`` linear term.
        B: upper bound on each weight, > 0 (``inf`` allowed).
        lower, upper: bounds on ``sum beta``, ``lower <= upper``.
        jitter, max_jitter: initial and largest diagonal shift, relative to ``mean(diag K)``.

    Returns:
        ``(beta, delta)``: the ``(n,)`` float64 solution (clipped to the box, so exactly
        feasible for the bounds) and the absolute jitter ``delta`` used.

    Raises:
        ValueError: bad shapes or values (naming the argument), an infeasible
            constraint set, or ``K`` further from PSD than ``max_jitter`` allows.
        RuntimeError: the solver did not report an optimal solution.
    """
    import piqp  # a hard dependency of this module; imported here to keep import fast

    K = np.asarray(K.detach().cpu() if isinstance(K, torch.Tensor) else K, dtype=np.float64)
    kappa = np.asarray(
        kappa.detach().cpu() if isinstance(kappa, torch.Tensor) else kappa, dtype=np.float64
    )
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise ValueError(f"K must be a non-empty square matrix, got shape {K.shape}")
    n = K.shape[0]
    if kappa.shape != (n,):
        raise ValueError(f"kappa must have shape ({n},), got {kappa.shape}")
    if not np.isfinite(K).all():
        raise ValueError("K contains non-finite values")
    if not np.isfinite(kappa).all():
        raise ValueError("kappa contains non-finite values")
    B = _check_positive(B, "B", allow_inf=True)
    lower, upper = float(lower), float(upper)
    if not (math.isfinite(lower) and math.isfinite(upper)) or lower > upper:
        raise ValueError(f"need finite lower <= upper, got lower={lower!r}, upper={upper!r}")
    if n * B < lower or upper < 0:
        raise ValueError(
            f"infeasible: sum(beta) in [{lower:g}, {upper:g}] with 0 <= beta <= B={B:g} (n={n})"
        )
    jitter = _check_positive(jitter, "jitter")
    max_jitter = _check_positive(max_jitter, "max_jitter")

    K = 0.5 * (K + K.T)
    scale = max(float(np.mean(np.diag(K))), np.finfo(np.float64).tiny)
    delta = jitter * scale
    eye = torch.eye(n, dtype=torch.float64)
    Kt = torch.from_numpy(K)
    while torch.linalg.cholesky_ex(Kt + delta * eye).info.item() != 0:
        delta *= 10.0
        if delta > max_jitter * scale * (1 + 1e-9):
            raise ValueError(
                f"K is not positive semi-definite: K + delta*I has no Cholesky factor for "
                f"delta up to max_jitter*mean(diag K) = {max_jitter * scale:g}"
            )
    P = np.asfortranarray(K + delta * np.eye(n))

    solver = piqp.DenseSolver()
    solver.settings.verbose = False
    solver.settings.eps_abs = 1e-9
    solver.settings.eps_rel = 1e-10
    solver.settings.max_iter = 500
    x_u = np.full(n, B) if math.isfinite(B) else np.full(n, np.inf)
    solver.setup(
        P,
        -kappa,
        G=np.ones((1, n), order="F"),
        h_l=np.array([lower]),
        h_u=np.array([upper]),
        x_l=np.zeros(n),
        x_u=x_u,
    )
    status = solver.solve()
    if status != piqp.PIQP_SOLVED:
        raise RuntimeError(f"PIQP did not solve the KMM QP: status {status}")
    beta = np.clip(np.asarray(solver.result.x, dtype=np.float64), 0.0, B)
    return beta, delta


# --------------------------------------------------------------------------- KMM: tiled APG


class _TiledGram:
    """``K = k(x, x)`` applied tile by tile, caching as many tiles as ``memory_budget`` allows.

    Only the upper-triangular tiles ``(a, b), a <= b`` exist (``K`` is symmetric): a
    matrix-vector product uses each off-diagonal tile twice (``T v_b`` and ``T^T v_a``).
    Tiles that do not fit in the budget are recomputed at every product.
    """

    def __init__(self, x: torch.Tensor, sigma: float, *, block: int, budget: int, dtype):
        self.x = x
        self.n = x.shape[0]
        self.coef = -0.5 / sigma**2
        self.dtype = dtype
        self.spans = [(s, min(s + block, self.n)) for s in range(0, self.n, block)]
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        item = torch.finfo(dtype).bits // 8
        left = budget
        self.cacheable = set()
        for a in range(len(self.spans)):
            for b in range(a, len(self.spans)):
                size = self._len(a) * self._len(b) * item
                if size <= left:
                    self.cacheable.add((a, b))
                    left -= size
        self.cached_bytes = budget - left
        self.kernel_evaluations = 0

    def _len(self, a: int) -> int:
        return self.spans[a][1] - self.spans[a][0]

    def tile(self, a: int, b: int) -> torch.Tensor:
        t = self.cache.get((a, b))
        if t is None:
            (a0, a1), (b0, b1) = self.spans[a], self.spans[b]
            t = _kernel_block(self.x[a0:a1], self.x[b0:b1], self.coef, diagonal=a == b)
            self.kernel_evaluations += t.numel()
            if (a, b) in self.cacheable:
                self.cache[(a, b)] = t
        return t

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``K v`` for a float64 ``(n,)`` vector, accumulated in float64."""
        out = torch.zeros_like(v)
        vc = v.to(self.dtype)
        T = len(self.spans)
        for a in range(T):
            a0, a1 = self.spans[a]
            for b in range(a, T):
                b0, b1 = self.spans[b]
                t = self.tile(a, b)
                out[a0:a1] += (t @ vc[b0:b1]).to(v.dtype)
                if b != a:
                    out[b0:b1] += (t.t() @ vc[a0:a1]).to(v.dtype)
        return out


def _cross_rowsums(xs, xt, sigma, block: int, dtype) -> torch.Tensor:
    """``sum_j k(xs_i, xt_j)`` for every source point, tile by tile, float64 ``(n_s,)``."""
    coef = -0.5 / sigma**2
    out = torch.zeros(xs.shape[0], dtype=torch.float64, device=xs.device)
    for a0 in range(0, xs.shape[0], block):
        a1 = min(a0 + block, xs.shape[0])
        for b0 in range(0, xt.shape[0], block):
            t = _kernel_block(xs[a0:a1], xt[b0 : b0 + block], coef)
            out[a0:a1] += t.sum(1, dtype=torch.float64)
    return out


def _kmm_apg(gram: _TiledGram, kappa, B, lower, upper, *, tol_f: float, max_iter: int):
    """FISTA (Beck and Teboulle, 2009) with gradient restart (O'Donoghue and Candès, 2015).

    Step ``1/L`` with ``L`` ~ ``lambda_max(K)`` from power iteration; one ``K``-product
    per iteration (``K y`` follows from ``K x`` by linearity). Stops when the Frank-Wolfe
    duality bound certifies ``f(x) - min f <= tol_f``.
    """
    x = _project(torch.ones_like(kappa), B, lower, upper)
    kx = gram.matvec(x)
    products = 1
    # power iteration from K x0 (positive, close to the top eigenvector of a Gaussian K)
    v = kx / kx.norm()
    lam_prev = 0.0
    for _ in range(50):
        w = gram.matvec(v)
        products += 1
        lam = float(v @ w)
        v = w / w.norm()
        if abs(lam - lam_prev) <= 1e-3 * lam:
            break
        lam_prev = lam
    L = 1.02 * max(lam, 1e-12)
    eps_dt = float(torch.finfo(gram.dtype).eps)

    f, best_lb = _certificate(x, kx, kappa, B, lower, upper)
    y, ky, t = x, kx, 1.0
    it = 0
    converged = f - best_lb <= tol_f
    while not converged and it < max_iter:
        it += 1
        gy = ky - kappa
        xn = _project(y - gy / L, B, lower, upper)
        kxn = gram.matvec(xn)
        products += 1
        fn, lb = _certificate(xn, kxn, kappa, B, lower, upper)
        slack = 8 * eps_dt * (abs(float(0.5 * (xn @ kxn))) + abs(float(kappa @ xn)))
        if fn > f + slack:  # no descent: drop the momentum, or shorten the step
            if y is x:
                L *= 2.0
            y, ky, t = x, kx, 1.0
            continue
        best_lb = max(best_lb, lb)
        if float(gy @ (xn - x)) > 0:  # gradient restart
            y, ky, t = xn, kxn, 1.0
        else:
            tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
            m = (t - 1.0) / tn
            y, ky, t = xn + m * (xn - x), kxn + m * (kxn - kx), tn
        x, kx, f = xn, kxn, fn
        converged = f - best_lb <= tol_f
    return x, dict(objective=f, bound=best_lb, iterations=it, products=products, L=L, converged=converged)


# --------------------------------------------------------------------------- KMM: public API


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


# --------------------------------------------------------------------------- KLIEP


def _simplex_project(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` onto the probability simplex, exact (sort-based)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, v.size + 1) > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


def _kliep_learn(A, b, max_iter: int, tol: float):
    """Maximise ``J(alpha) = mean_j log (A alpha)_j`` s.t. ``b.alpha = 1``, ``alpha >= 0``.

    KLIEP's projected gradient ascent (Sugiyama et al., AISM 2008, Fig. 2: a gradient
    step along ``A^T (1 / A alpha)``, then back onto the constraint set), made to
    converge to the optimum (the paper's feasibility step -- shift along ``b``, clip,
    rescale -- is not a projection and stalled 3e-3 nats below the optimum on a
    10-centre problem, see the tests):

    * variables ``p_l = b_l alpha_l`` (the source mass of basis function ``l``): the
      constraint set becomes the probability simplex, projected onto exactly, and the
      problem is well scaled even when some ``b_l`` are tiny;
    * spectral (Barzilai-Borwein) step sizes with an Armijo line search (SPG, Birgin,
      Martínez and Raydan, SIAM J. Optim. 10, 2000);
    * stop when the Frank-Wolfe gap ``max_l g_l - g.p`` (``g`` the gradient in ``p``),
      an upper bound on ``J* - J``, is ``<= tol``, or after ``max_iter`` iterations.

    ``A`` ``(m, b)`` and ``b`` ``(b,)`` are float64 tensors; the iteration runs in NumPy
    on the CPU (``b`` <= a few hundred basis functions: latency-bound, not FLOP-bound).
    Returns ``(alpha, J, gap)`` with ``alpha`` a float64 tensor on ``A``'s device.
    """
    dev = A.device
    A = A.detach().cpu().numpy()
    b = np.maximum(b.detach().cpu().numpy(), np.finfo(np.float64).tiny)
    m = A.shape[0]
    At = A / b  # basis functions scaled to unit source mean
    p = np.full(b.size, 1.0 / b.size)
    Ap = At @ p
    if not (Ap > 0).all():
        raise ValueError("KLIEP: a target point is far from every centre (its basis values underflow)")
    J = float(np.log(Ap).mean())
    grad = At.T @ (1.0 / Ap) / m
    step = 1.0 / max(float(np.abs(grad).max()), 1e-300)
    gap = math.inf
    for _ in range(max_iter):
        gap = float(grad.max() - grad @ p)
        if gap <= tol:
            break
        d = _simplex_project(p + step * grad) - p
        slope = float(grad @ d)
        if slope <= 0:  # no ascent direction left at this precision
            break
        lam = 1.0
        while True:
            cand = p + lam * d
            Ac = At @ cand
            if (Ac > 0).all():
                Jc = float(np.log(Ac).mean())
                if Jc >= J + 1e-4 * lam * slope:
                    break
            lam *= 0.5
            if lam < 1e-20:
                return torch.from_numpy(p / b).to(dev), J, gap
        g_new = At.T @ (1.0 / Ac) / m
        s_vec, y_vec = cand - p, grad - g_new  # y: change of the gradient of -J
        sy = float(s_vec @ y_vec)
        step = float(s_vec @ s_vec) / sy if sy > 0 else step * 2.0
        step = min(max(step, 1e-12), 1e12)
        p, Ap, J, grad = cand, Ac, Jc, g_new
    return torch.from_numpy(p / b).to(dev), J, gap


class KLIEP:
    """Kullback-Leibler Importance Estimation Procedure (Sugiyama et al., NIPS 2007; AISM 2008).

    Models the importance ``w(x) = p_T(x) / p_S(x)`` as
    ``w(x) = sum_l alpha_l k(x, c_l)``, ``alpha >= 0``, with Gaussian basis functions
    ``k(x, c) = exp(-||x - c||^2 / (2 sigma^2))`` centred on ``b = min(n_centers, n_t)``
    target points ``c_l`` drawn at random, and fits ``alpha`` by maximising the target
    log-likelihood ``mean_j log w(x'_j)`` under the normalisation
    ``(1/n_s) sum_i w(x_i) = 1`` by the paper's projected gradient ascent (with the
    exact projection and a line search, so that it reaches the optimum: see
    ``_kliep_learn``; certified to ``tol`` nats by the Frank-Wolfe gap). The width is
    chosen by the paper's likelihood cross-validation: the target points are split
    into ``n_folds`` folds; for each candidate ``sigma`` and fold, ``alpha`` is fitted
    on the other folds and scored by the mean ``log w`` on the held-out fold; the best
    mean score wins and ``alpha`` is refitted on all target points.

    Args:
        sigma: a width (> 0, used as is), a sequence of candidate widths (chosen by
            likelihood cross-validation), or ``None`` for the candidates
            ``median_sigma(source, target) * KLIEP_SIGMA_SCALES``.
        n_centers: ``b``, the number of basis functions (default 100, the paper's).
        n_folds: folds of the likelihood cross-validation (>= 2; capped at ``n_t``).
        max_iter: projected-gradient iterations per fit (each fold and the final one).
        tol: stop when the certified gap to the maximal mean log-likelihood is <= tol
            (nats; the cross-validation fits use ``max(tol, 1e-5)``).
        seed: seed of the centre and fold draws (``torch.Generator``).

    Attributes (after :meth:`fit`):
        sigma_: the chosen width. centers_: ``(b, d)`` float64. alpha_: ``(b,)`` float64.
        cv_scores_: ``{sigma: mean held-out log-likelihood}`` (empty for a fixed sigma).
        score_: the training target log-likelihood ``mean_j log w(x'_j)``.
        gap_: its certified distance to the optimum (Frank-Wolfe gap, nats).

    Raises:
        ValueError: (constructor) non-positive or non-finite widths, ``n_centers < 1``,
            ``n_folds < 2``, ``max_iter < 1``, ``tol <= 0``; (:meth:`fit`) bad input as in the module
            docstring, or a single target point with several candidate widths.
    """

    def __init__(
        self,
        sigma: float | Sequence[float] | None = None,
        *,
        n_centers: int = 100,
        n_folds: int = 5,
        max_iter: int = 10000,
        tol: float = 1e-7,
        seed: int = 0,
    ):
        if sigma is None:
            self.sigma = None
        elif isinstance(sigma, (str, bytes)):
            raise ValueError(f"sigma must be a number, a sequence of numbers or None, got {sigma!r}")
        elif isinstance(sigma, Sequence) or (
            isinstance(sigma, (np.ndarray, torch.Tensor)) and sigma.ndim == 1
        ):
            vals = [_check_positive(s, "sigma") for s in list(sigma)]
            if not vals:
                raise ValueError("sigma is an empty sequence: give at least one candidate width")
            self.sigma = vals
        else:
            self.sigma = _check_positive(sigma, "sigma")
        self.n_centers = _check_int(n_centers, "n_centers", 1)
        self.n_folds = _check_int(n_folds, "n_folds", 2)
        self.max_iter = _check_int(max_iter, "max_iter", 1)
        self.tol = _check_positive(tol, "tol")
        self.seed = int(seed)

    def _design(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``(n, b)`` basis values ``k(x_i, c_l)``, float64, in row chunks."""
        out = [gaussian_kernel(x[i : i + 4096], self.centers_, bandwidth=sigma**2)
               for i in range(0, x.shape[0], 4096)]
        return torch.cat(out)

    def fit(self, source: ArrayLike, target: ArrayLike, *, device=None) -> "KLIEP":
        """Fit on ``source`` ``(n_s, d)`` and ``target`` ``(n_t, d)`` (arrays or tensors).

        Computes on ``device`` (default: that of ``source`` if a tensor, else CPU) in
        float64. Returns ``self``. Raises ValueError on bad input (see the class).
        """
        xs, xt = _as_pair(source, target)
        dev = _out_device(device, source, target)
        n_t = xt.shape[0]
        if n_t < 2 and (self.sigma is None or (isinstance(self.sigma, list) and len(self.sigma) > 1)):
            raise ValueError(
                f"target has {n_t} point: KLIEP's likelihood cross-validation needs at least 2; "
                "pass a single sigma"
            )
        xs, xt = xs.to(dev), xt.to(dev)
        self.device_ = dev
        gen = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(n_t, generator=gen)
        b = min(self.n_centers, n_t)
        self.centers_ = xt[perm[:b].to(dev)]
        if self.sigma is None:
            med = median_sigma(xs, xt)
            candidates = [med * s for s in KLIEP_SIGMA_SCALES]
        elif isinstance(self.sigma, list):
            candidates = list(self.sigma)
        else:
            candidates = [self.sigma]

        self.cv_scores_ = {}
        cv_tol = max(self.tol, _KLIEP_CV_TOL)
        if len(candidates) > 1:
            folds = min(self.n_folds, n_t)
            fold_of = torch.empty(n_t, dtype=torch.long)
            fold_of[torch.randperm(n_t, generator=gen)] = torch.arange(n_t) % folds
            fold_of = fold_of.to(dev)
            for s in candidates:
                A = self._design(xt, s)
                bvec = self._design(xs, s).mean(0)
                scores = []
                for r in range(folds):
                    test = fold_of == r
                    try:
                        alpha, _, _ = _kliep_learn(A[~test], bvec, self.max_iter, cv_tol)
                    except ValueError:
                        scores.append(-math.inf)
                        continue
                    wh = A[test] @ alpha
                    scores.append(float(torch.log(wh).mean()) if bool((wh > 0).all()) else -math.inf)
                self.cv_scores_[s] = float(np.mean(scores))
            self.sigma_ = max(candidates, key=lambda s: self.cv_scores_[s])
        else:
            self.sigma_ = candidates[0]
        A = self._design(xt, self.sigma_)
        bvec = self._design(xs, self.sigma_).mean(0)
        self.alpha_, self.score_, self.gap_ = _kliep_learn(A, bvec, self.max_iter, self.tol)
        return self

    def weights(self, x: ArrayLike, *, device=None) -> torch.Tensor:
        """``w(x) = sum_l alpha_l k(x, c_l)`` for ``x`` ``(n, d)``: float32 ``(n,)`` on ``device``.

        Default device: that of ``x`` if a tensor, else the device used by :meth:`fit`.
        Raises ValueError if not fitted or on bad ``x`` (shape, features, non-finite).
        """
        if not hasattr(self, "alpha_"):
            raise ValueError("KLIEP is not fitted: call fit(source, target) first")
        xx = _as_points(x, "x")
        if xx.shape[1] != self.centers_.shape[1]:
            raise ValueError(f"x has {xx.shape[1]} features, the fit had {self.centers_.shape[1]}")
        out = _out_device(device, x) if (device is not None or isinstance(x, torch.Tensor)) else self.device_
        w = self._design(xx.to(self.centers_.device), self.sigma_) @ self.alpha_
        return w.to(device=out, dtype=torch.float32)


def kliep_weights(
    source: ArrayLike,
    target: ArrayLike,
    *,
    sigma: float | Sequence[float] | None = None,
    n_centers: int = 100,
    n_folds: int = 5,
    max_iter: int = 10000,
    tol: float = 1e-7,
    seed: int = 0,
    device=None,
) -> torch.Tensor:
    """KLIEP importance weights at the source points (Sugiyama et al., NIPS 2007 / AISM 2008).

    ``KLIEP(sigma, ...).fit(source, target).weights(source)``: see :class:`KLIEP`.

    Args:
        source: ``(n_s, d)``; target: ``(n_t, d)`` (arrays or tensors).
        sigma, n_centers, n_folds, max_iter, tol, seed: as :class:`KLIEP`.
        device: output (and computation) device; default that of ``source`` / CPU.

    Returns:
        ``(n_s,)`` float32 tensor, ``w >= 0`` with ``mean(w) = 1`` (the constraint).

    Raises:
        ValueError: bad input or parameters, naming the argument.
    """
    model = KLIEP(sigma, n_centers=n_centers, n_folds=n_folds, max_iter=max_iter, tol=tol, seed=seed)
    dev = _out_device(device, source, target)
    return model.fit(source, target, device=dev).weights(source, device=dev)


# --------------------------------------------------------------------------- discriminative


class DiscriminativeRatio:
    """Density ratio from a probabilistic domain classifier (Bickel et al., JMLR 2009).

    A classifier trained to tell target (label 1) from source (label 0) estimates
    ``p(T|x)``; by Bayes' rule ``p_T(x) / p_S(x) = p(T|x) / p(S|x) * n_s / n_t`` (the
    class-prior correction), computed from log-probabilities for stability. With
    logistic regression (the default) the log-ratio is linear in ``x``, exact e.g. for
    two Gaussians with a shared covariance.

    Args:
        classifier: an unfitted scikit-learn style classifier with ``fit`` and
            ``predict_proba`` (cloned before fitting); default
            ``sklearn.linear_model.LogisticRegression(max_iter=1000)``.
        clip: if given (> 0), weights are clipped to ``[0, clip]`` ...
        normalize: ... and then (if True) divided by their mean over the rows passed to
            :meth:`weights` (pass the source sample), so the final maximum may exceed
            ``clip``. Default False: the plain ratio estimate.

    Attributes (after :meth:`fit`): classifier_ (fitted), n_source_, n_target_.

    Raises:
        ValueError: ``clip`` not > 0; a classifier without ``predict_proba``.
    """

    def __init__(self, classifier: Any = None, *, clip: float | None = None, normalize: bool = False):
        if classifier is not None and not (
            hasattr(classifier, "fit") and hasattr(classifier, "predict_proba")
        ):
            raise ValueError("classifier must have fit() and predict_proba() (a probabilistic classifier)")
        self.classifier = classifier
        self.clip = None if clip is None else _check_positive(clip, "clip")
        self.normalize = bool(normalize)

    def fit(self, source: ArrayLike, target: ArrayLike, *, device=None) -> "DiscriminativeRatio":
        """Fit the domain classifier on ``source`` (label 0) and ``target`` (label 1).

        Args: source ``(n_s, d)``, target ``(n_t, d)`` (arrays or tensors); ``device``:
        default output device of :meth:`weights` (default that of ``source`` / CPU).
        Returns ``self``. Raises ValueError on bad input.
        """
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression

        xs, xt = _as_pair(source, target)
        self.device_ = _out_device(device, source, target)
        X = torch.cat([xs.cpu(), xt.cpu()]).numpy()
        y = np.r_[np.zeros(xs.shape[0], dtype=np.int64), np.ones(xt.shape[0], dtype=np.int64)]
        clf = LogisticRegression(max_iter=1000) if self.classifier is None else clone(self.classifier)
        clf.fit(X, y)
        self.classifier_ = clf
        self.n_source_, self.n_target_ = xs.shape[0], xt.shape[0]
        self.n_features_ = xs.shape[1]
        return self

    def weights(self, x: ArrayLike, *, device=None) -> torch.Tensor:
        """``w(x) = p(T|x) / p(S|x) * n_s / n_t`` (then clip / normalise): float32 ``(n,)``.

        Default device: that of ``x`` if a tensor, else the one chosen at :meth:`fit`.
        Raises ValueError if not fitted or on bad ``x``.
        """
        if not hasattr(self, "classifier_"):
            raise ValueError("DiscriminativeRatio is not fitted: call fit(source, target) first")
        xx = _as_points(x, "x")
        if xx.shape[1] != self.n_features_:
            raise ValueError(f"x has {xx.shape[1]} features, the fit had {self.n_features_}")
        out = _out_device(device, x) if (device is not None or isinstance(x, torch.Tensor)) else self.device_
        X = xx.cpu().numpy()
        classes = list(self.classifier_.classes_)
        i_s, i_t = classes.index(0), classes.index(1)
        if hasattr(self.classifier_, "predict_log_proba"):
            with np.errstate(divide="ignore"):
                lp = self.classifier_.predict_log_proba(X)
        else:
            with np.errstate(divide="ignore"):
                lp = np.log(self.classifier_.predict_proba(X))
        log_w = lp[:, i_t] - lp[:, i_s] + math.log(self.n_source_ / self.n_target_)
        w = np.exp(np.clip(log_w, -700.0, 700.0))
        if self.clip is not None:
            w = np.minimum(w, self.clip)
        if self.normalize:
            m = w.mean()
            if m > 0:
                w = w / m
        return torch.from_numpy(w).to(device=out, dtype=torch.float32)


def discriminative_weights(
    source: ArrayLike,
    target: ArrayLike,
    *,
    classifier: Any = None,
    clip: float | None = None,
    normalize: bool = False,
    device=None,
) -> torch.Tensor:
    """Domain-classifier density-ratio weights at the source points (Bickel et al., JMLR 2009).

    ``DiscriminativeRatio(classifier, clip=clip, normalize=normalize).fit(source,
    target).weights(source)``: ``w(x) = p(T|x) / p(S|x) * n_s / n_t``, optionally clipped
    to ``[0, clip]`` and then normalised to mean 1 over the source.

    Args:
        source: ``(n_s, d)``; target: ``(n_t, d)`` (arrays or tensors).
        classifier, clip, normalize: as :class:`DiscriminativeRatio`.
        device: output device; default that of ``source`` if a tensor, else CPU.

    Returns:
        ``(n_s,)`` float32 tensor of weights >= 0.

    Raises:
        ValueError: bad input or parameters, naming the argument.
    """
    model = DiscriminativeRatio(classifier, clip=clip, normalize=normalize)
    dev = _out_device(device, source, target)
    return model.fit(source, target, device=dev).weights(source, device=dev)
