"""KLIEP, the Kullback-Leibler Importance Estimation Procedure (Sugiyama, Nakajima, Kashima,
von Bünau and Kawanabe, NIPS 2007; Sugiyama et al., AISM 60(4), 2008): a Gaussian-basis model of
the density ratio fitted by maximum target likelihood, with likelihood cross-validation of the
kernel width (conventions: :mod:`tladapt.weighting`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from tladapt.discrepancy import gaussian_kernel
from tladapt.weighting.common import ArrayLike, median_sigma, _as_pair, _as_points, _check_int, _check_positive, _out_device


#: Default KLIEP bandwidth candidates, as multiples of :func:`median_sigma`.
KLIEP_SIGMA_SCALES: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


#: KLIEP's cross-validation fits stop at this certified gap (nats) or ``tol`` if larger:
#: candidate widths differ by far more in held-out log-likelihood.
_KLIEP_CV_TOL = 1e-5


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
