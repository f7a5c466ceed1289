"""Importance weighting (tladapt.weighting): KMM, KLIEP, discriminative ratio.

Exact checks against independent computations: the KMM QP against SciPy's SLSQP and
the KKT conditions on tiny 1-D problems, the tiled APG solver against the QP, KLIEP
against SLSQP on its own objective, the discriminative ratio against the analytic
ratio of two Gaussians; then errors, devices and the covariate-shift experiment.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import tladapt.weighting as W
from tladapt.weighting import common, discriminative, kliep, kmm, kmm_solvers
from tladapt.discrepancy import kernel_bandwidths
from tladapt.weighting import (
    KLIEP,
    DiscriminativeRatio,
    discriminative_weights,
    kliep_weights,
    kmm_weights,
    median_sigma,
    solve_kmm_qp,
)

ROOT = Path(__file__).resolve().parents[1]


def gauss(a, b, sigma):
    """Independent NumPy Gaussian kernel, k = exp(-||a - b||^2 / (2 sigma^2))."""
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma**2))


def kmm_problem(xs, xt, sigma):
    K = gauss(xs, xs, sigma)
    kappa = len(xs) / len(xt) * gauss(xs, xt, sigma).sum(1)
    return K, kappa


def slsqp_kmm(K, kappa, B, lower, upper):
    n = len(kappa)
    res = minimize(
        lambda x: 0.5 * x @ K @ x - kappa @ x,
        np.clip(np.full(n, (lower + upper) / (2 * n)), 0, B),
        jac=lambda x: K @ x - kappa,
        method="SLSQP",
        bounds=[(0, B)] * n,
        constraints=[
            dict(type="ineq", fun=lambda x: x.sum() - lower, jac=lambda x: np.ones(n)),
            dict(type="ineq", fun=lambda x: upper - x.sum(), jac=lambda x: -np.ones(n)),
        ],
        options=dict(ftol=1e-14, maxiter=2000),
    )
    # status 8 ("positive directional derivative") = no further progress at this precision
    assert res.success or res.status == 8, res.message
    x = res.x
    assert (x >= -1e-9).all() and (x <= B + 1e-9).all()
    assert lower - 1e-7 * max(1, lower) <= x.sum() <= upper + 1e-7 * upper
    return x


def check_kkt(K, kappa, beta, B, lower, upper, tol):
    """KKT of min 1/2 b'Kb - kappa'b s.t. 0<=b<=B, lower<=sum b<=upper.

    With nu the multiplier of the sum constraint, optimality is the fixed point
    ``beta = clip(beta - (g + nu), 0, B)`` (g = K beta - kappa; g + nu = 0 on free
    coordinates, >= 0 at 0, <= 0 at B), with nu > 0 only if the sum is at ``upper``
    and nu < 0 only if it is at ``lower``. The residual of the best nu must be
    <= tol * max(1, B) (an interior-point solution sits ~1e-9/z_i off its bounds).
    """
    g = K @ beta - kappa

    def residual(nu):
        return np.abs(beta - np.clip(beta - (g + nu), 0, B)).max()

    candidates = np.concatenate([-g, [0.0]])
    nu = min(candidates, key=residual)
    assert residual(nu) <= tol * max(1.0, B)
    s = beta.sum()
    if nu > 1e-4 * max(1.0, np.abs(g).max()):
        assert abs(s - upper) <= 1e-6 * upper
    if nu < -1e-4 * max(1.0, np.abs(g).max()):
        assert abs(s - lower) <= 1e-6 * max(lower, 1.0)
    assert (beta >= -1e-12).all() and (beta <= B + 1e-12).all()
    assert lower - 1e-6 * max(lower, 1) <= s <= upper + 1e-6 * upper
    return nu


def two_gaussians_2d(n, seed=0, m=None):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, 2)), r.normal(size=(m or n, 2)) * 0.7 + 0.5


# --------------------------------------------------------------------------- kernel convention


def test_median_sigma_matches_discrepancy_and_numpy():
    r = np.random.default_rng(0)
    xs, xt = r.normal(size=(20, 3)), r.normal(size=(11, 3)) + 1  # 31 points, 465 pairs: odd
    sigma = median_sigma(xs, xt)
    z = np.concatenate([xs, xt])
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(len(z), 1)]
    assert sigma == pytest.approx(np.median(d), rel=1e-12)
    s2 = kernel_bandwidths(torch.tensor(xs), torch.tensor(xt), "median", scales=(1.0,))
    assert sigma**2 == pytest.approx(float(s2[0]), rel=1e-12)
    # subsampled for large pools, deterministic
    big = r.normal(size=(3000, 2))
    assert median_sigma(big, big + 1, max_points=500) == median_sigma(big, big + 1, max_points=500)


def test_kmm_uses_the_sigma_convention():
    """info.objective equals the independent NumPy objective with k = exp(-d^2/(2 sigma^2))."""
    r = np.random.default_rng(1)
    xs, xt = r.normal(size=(30, 2)), r.normal(size=(25, 2)) + 0.3
    w, info = kmm_weights(xs, xt, sigma=0.8, method="qp", return_info=True)
    K, kappa = kmm_problem(xs, xt, 0.8)
    b = solve_kmm_qp(K, kappa, B=info.B, lower=info.lower, upper=info.upper)[0]
    assert info.objective == pytest.approx(0.5 * b @ K @ b - kappa @ b, rel=1e-9)
    assert info.sigma == 0.8 and info.method == "qp"
    assert info.eps == pytest.approx((math.sqrt(30) - 1) / math.sqrt(30))


# --------------------------------------------------------------------------- KMM: exact QP


@pytest.mark.parametrize(
    "B, eps, active",
    [
        (1000.0, None, "none"),  # paper defaults: only beta >= 0 binds
        (2.0, 0.05, "lower+B"),  # sum at its lower bound, some weights at B
        (1.5, 0.6, "lower+B"),
        (5.0, 0.0, "equality"),  # sum fixed to n_s
    ],
)
def test_kmm_qp_tiny_1d_kkt_and_slsqp(B, eps, active):
    r = np.random.default_rng(3)
    xs, xt = r.normal(0, 1, (15, 1)), r.normal(0.8, 0.6, (20, 1))
    K, kappa = kmm_problem(xs, xt, 0.5)
    n = 15
    eps_ = (math.sqrt(n) - 1) / math.sqrt(n) if eps is None else eps
    lower, upper = max(0.0, n * (1 - eps_)), n * (1 + eps_)
    beta, delta = solve_kmm_qp(K, kappa, B=B, lower=lower, upper=upper)
    assert delta <= 1e-9
    nu = check_kkt(K, kappa, beta, B, lower, upper, tol=1e-6)
    assert 0 < beta.min() or (beta < B).any()
    if active == "lower+B":
        assert nu < 0 and (beta >= B - 1e-6).any()
    ref = slsqp_kmm(K, kappa, B, lower, upper)
    f = lambda x: 0.5 * x @ K @ x - kappa @ x  # noqa: E731
    assert f(beta) <= f(ref) + 1e-9 * abs(f(ref))  # at least as good as SLSQP
    assert f(beta) == pytest.approx(f(ref), rel=1e-8)
    assert np.abs(beta - ref).max() <= 1e-3 * max(1.0, B) / 10
    # the public entry point solves the same problem (float32 output)
    w = kmm_weights(xs, xt, sigma=0.5, B=B, eps=eps, method="qp")
    assert w.dtype == torch.float32 and w.shape == (15,)
    np.testing.assert_allclose(w.double().numpy(), beta, atol=1e-5 * max(1.0, B))


def test_kmm_qp_non_psd_kernel_solves_with_jitter():
    r = np.random.default_rng(4)
    x = r.normal(size=(12, 1))
    x = np.concatenate([x, x[:4]])  # duplicated points: K is singular
    K = gauss(x, x, 1.0) - 1e-7 * np.eye(len(x))  # ... and now slightly indefinite
    assert np.linalg.eigvalsh(K).min() < -5e-8
    kappa = gauss(x, r.normal(0.5, 1, (20, 1)), 1.0).sum(1) * len(x) / 20
    n = len(x)
    beta, delta = solve_kmm_qp(K, kappa, B=10.0, lower=0.5 * n, upper=1.5 * n)
    assert 1e-7 <= delta <= 1e-5  # grew from 1e-10 until K + delta I is PD
    Kj = K + delta * np.eye(n)
    check_kkt(Kj, kappa, beta, 10.0, 0.5 * n, 1.5 * n, tol=2e-6)
    ref = slsqp_kmm(Kj, kappa, 10.0, 0.5 * n, 1.5 * n)
    fj = lambda x: 0.5 * x @ Kj @ x - kappa @ x  # noqa: E731
    assert fj(beta) <= fj(ref) + 1e-8 * abs(fj(ref))
    # a matrix that is not a kernel matrix at all is rejected, naming K
    with pytest.raises(ValueError, match="K is not positive semi-definite"):
        solve_kmm_qp(-np.eye(3), np.ones(3), B=10.0, lower=1.0, upper=5.0)


def test_kmm_infeasible_raises_naming_B():
    xs, xt = two_gaussians_2d(20)
    # B * n_s = 10 < n_s (1 - eps) = 18
    with pytest.raises(ValueError, match=r"B=0\.5 is infeasible.*eps"):
        kmm_weights(xs, xt, B=0.5, eps=0.1)
    with pytest.raises(ValueError, match="B=0.5 is infeasible"):
        kmm_weights(xs, xt, B=0.5, eps=0.1, method="apg")
    # the default eps = (sqrt(n)-1)/sqrt(n) allows B >= 1/sqrt(n_s)
    kmm_weights(xs, xt, B=1 / math.sqrt(20) + 1e-9)
    with pytest.raises(ValueError, match="infeasible"):
        solve_kmm_qp(np.eye(3), np.ones(3), B=1.0, lower=4.0, upper=5.0)


# --------------------------------------------------------------------------- KMM: tiled APG


@pytest.mark.parametrize("B, eps", [(1000.0, None), (3.0, 0.05)])
def test_kmm_apg_matches_qp_objective(B, eps):
    """Stated tolerance: the APG objective is within tol * n_s^2 / 2 of the QP optimum."""
    xs, xt = two_gaussians_2d(400, seed=5, m=300)
    tol = 1e-5
    wq, iq = kmm_weights(xs, xt, B=B, eps=eps, method="qp", return_info=True)
    wa, ia = kmm_weights(xs, xt, B=B, eps=eps, method="apg", tol=tol, return_info=True)
    assert ia.converged and ia.gap <= tol and ia.method == "apg"
    n = 400
    assert iq.objective - 1e-9 * abs(iq.objective) <= ia.objective <= iq.objective + tol * n * n / 2
    assert iq.gap <= 1e-7  # the QP solution certifies itself with the same bound
    # weights exactly feasible (up to float32 rounding)
    w = wa.double()
    assert float(w.min()) >= 0 and float(w.max()) <= B * (1 + 1e-6)
    assert ia.lower * (1 - 1e-6) <= float(w.sum()) <= ia.upper * (1 + 1e-6)


def test_kmm_apg_matches_qp_weights_when_well_conditioned():
    """Where K is well conditioned (narrow kernel) the weights themselves agree."""
    xs, xt = two_gaussians_2d(300, seed=6)
    wq = kmm_weights(xs, xt, sigma=0.1, B=5.0, method="qp")
    wa, ia = kmm_weights(
        xs, xt, sigma=0.1, B=5.0, method="apg", tol=1e-9, dtype=torch.float64, return_info=True
    )
    assert ia.converged
    assert float((wa - wq).abs().max()) <= 1e-3


def test_kmm_apg_memory_budget_recomputes_tiles_with_same_result():
    xs, xt = two_gaussians_2d(500, seed=7)
    kw = dict(method="apg", block_size=128, tol=1e-5, return_info=True)
    w_all, i_all = kmm_weights(xs, xt, **kw)
    full = sum(
        (min(a + 128, 500) - a) * (min(b + 128, 500) - b) * 4
        for a in range(0, 500, 128)
        for b in range(a, 500, 128)
    )
    assert i_all.cached_bytes == full  # upper-triangular tiles only
    budget = 2 * 128 * 128 * 4 + full // 3  # working tiles + a third of the cache
    w_part, i_part = kmm_weights(xs, xt, memory_budget=budget, **kw)
    assert i_part.cached_bytes <= full // 3
    assert i_part.kernel_evaluations > 5 * i_all.kernel_evaluations  # tiles recomputed
    assert torch.equal(w_all, w_part) and i_all.iterations == i_part.iterations
    with pytest.raises(ValueError, match="memory_budget"):
        kmm_weights(xs, xt, method="apg", memory_budget=1000)
    with pytest.raises(ValueError, match="memory_budget.*method='qp'"):
        kmm_weights(xs, xt, method="qp", memory_budget=1_000_000)


def test_kmm_apg_max_iter_warns():
    xs, xt = two_gaussians_2d(200, seed=8)
    with pytest.warns(RuntimeWarning, match="max_iter=3"):
        w, info = kmm_weights(xs, xt, method="apg", max_iter=3, tol=1e-9, return_info=True)
    assert not info.converged and info.iterations == 3 and w.shape == (200,)


def test_projection_and_oracle_are_exact():
    r = np.random.default_rng(9)
    for B, lo, hi in [(2.0, 30.0, 35.0), (math.inf, 5.0, 6.0), (1.0, 0.0, 3.0), (0.5, 10.0, 10.0)]:
        v = torch.tensor(r.normal(0.3, 1.0, 40))
        p = kmm_solvers._project(v, B, lo, hi)
        # brute force: the same projection by SLSQP
        res = minimize(
            lambda x: 0.5 * ((x - v.numpy()) ** 2).sum(), np.clip(v.numpy(), 0, min(B, 1)),
            jac=lambda x: x - v.numpy(), method="SLSQP", bounds=[(0, B)] * 40,
            constraints=[dict(type="ineq", fun=lambda x: x.sum() - lo),
                         dict(type="ineq", fun=lambda x: hi - x.sum())],
            options=dict(ftol=1e-15, maxiter=1000),
        )
        np.testing.assert_allclose(p.numpy(), res.x, atol=1e-6)
        g = torch.tensor(r.normal(0.0, 1.0, 40))
        lmo = kmm_solvers._lmo_value(g, B, lo, hi)
        from scipy.optimize import linprog

        lp = linprog(g.numpy(), A_ub=np.vstack([np.ones(40), -np.ones(40)]), b_ub=[hi, -lo],
                     bounds=[(0, None if math.isinf(B) else B)] * 40)
        assert lmo == pytest.approx(lp.fun, abs=1e-9)


# --------------------------------------------------------------------------- KLIEP


def test_kliep_matches_slsqp_on_its_objective():
    r = np.random.default_rng(1)
    xs, xt = r.normal(0, 1, (40, 1)), r.normal(0.7, 0.6, (25, 1))
    sigma = 0.5
    model = KLIEP(sigma, n_centers=10, seed=0).fit(xs, xt)
    C = model.centers_.numpy()
    A, b = gauss(xt, C, sigma), gauss(xs, C, sigma).mean(0)
    res = minimize(
        lambda a: -np.mean(np.log(A @ a)),
        np.ones(10) / b.sum(),
        jac=lambda a: -(A.T @ (1 / (A @ a))) / len(A),
        method="SLSQP",
        bounds=[(0, None)] * 10,
        constraints=[dict(type="eq", fun=lambda a: b @ a - 1, jac=lambda a: b)],
        options=dict(ftol=1e-15, maxiter=1000),
    )
    assert res.success
    assert model.score_ == pytest.approx(-res.fun, abs=1e-8)
    assert model.gap_ <= 1e-7
    np.testing.assert_allclose(model.alpha_.numpy(), res.x, atol=1e-3)
    w = model.weights(xs).double().numpy()
    np.testing.assert_allclose(w, gauss(xs, C, sigma) @ res.x, atol=1e-4)
    assert w.mean() == pytest.approx(1.0, abs=1e-6)  # the normalisation constraint


def test_kliep_paper_update_stalls_which_is_why_we_project_exactly():
    """The AISM 2008 feasibility step (shift along b, clip, rescale) is not a projection:
    with the paper's step-size list it stops short of the optimum on the same problem."""
    r = np.random.default_rng(1)
    xs, xt = r.normal(0, 1, (40, 1)), r.normal(0.7, 0.6, (25, 1))
    model = KLIEP(0.5, n_centers=10, seed=0).fit(xs, xt)
    A = torch.tensor(gauss(xt, model.centers_.numpy(), 0.5))
    b = torch.tensor(gauss(xs, model.centers_.numpy(), 0.5).mean(0))
    c = float(b @ b)

    def feas(a):
        a = (a + b * (1 - b @ a) / c).clamp(min=0)
        a = a / (b @ a)
        return a, float(torch.log(A @ a).mean())

    a, score = feas(torch.ones(10, dtype=torch.float64))
    for e in 10.0 ** np.arange(3, -4, -1):
        for _ in range(100):
            cand, sc = feas(a + e * A.t() @ (1 / (A @ a)))
            if sc <= score:
                break
            a, score = cand, sc
    assert model.score_ - score > 1e-3


def test_kliep_identical_domains_weights_close_to_one():
    x = np.random.default_rng(2).normal(size=(150, 2))
    model = KLIEP(seed=0).fit(x, x)
    w = model.weights(x)
    assert set(model.cv_scores_) == {model.sigma_} | set(model.cv_scores_)
    assert len(model.cv_scores_) == len(W.KLIEP_SIGMA_SCALES)
    assert float((w - 1).abs().mean()) < 0.03 and float((w - 1).abs().max()) < 0.15


def test_kliep_lcv_recovers_shift_direction():
    r = np.random.default_rng(3)
    xs, xt = r.normal(0, 1, (200, 1)), r.normal(1.0, 0.5, (100, 1))
    w = kliep_weights(xs, xt)
    true = np.exp(-((xs[:, 0] - 1) ** 2) / 0.5) / 0.5 / np.exp(-xs[:, 0] ** 2 / 2)
    assert np.corrcoef(w.numpy(), true)[0, 1] > 0.8
    # the reweighted source mean moves from ~0 to the target mean 1
    wn = w.double().numpy()
    assert abs((wn * xs[:, 0]).sum() / wn.sum() - 1.0) < 0.15 and abs(xs.mean()) < 0.15
    assert float(w.double().mean()) == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- discriminative


@pytest.mark.parametrize("n_s, n_t", [(20000, 20000), (30000, 10000)])
def test_discriminative_ratio_matches_gaussian_ratio(n_s, n_t):
    """N(0,1) source vs N(0.5,1) target: w(x) = exp(0.5 x - 0.125), linear in the logit."""
    r = np.random.default_rng(4)
    xs, xt = r.normal(0, 1, (n_s, 1)), r.normal(0.5, 1, (n_t, 1))
    model = DiscriminativeRatio().fit(xs, xt)
    grid = np.linspace(-2, 2, 41)[:, None]
    log_w = np.log(model.weights(grid).double().numpy())
    np.testing.assert_allclose(log_w, 0.5 * grid[:, 0] - 0.125, atol=0.06)
    w = discriminative_weights(xs, xt)
    assert w.shape == (n_s,) and w.dtype == torch.float32
    assert float(w.double().mean()) == pytest.approx(1.0, abs=0.03)  # E_S[p_T/p_S] = 1


def test_discriminative_clip_and_normalize():
    r = np.random.default_rng(5)
    xs, xt = r.normal(0, 1, (2000, 1)), r.normal(1.5, 1, (2000, 1))
    raw = discriminative_weights(xs, xt)
    assert float(raw.max()) > 5
    clipped = discriminative_weights(xs, xt, clip=5.0)
    assert float(clipped.max()) <= 5.0 and torch.equal(clipped, raw.clamp(max=5.0))
    normed = discriminative_weights(xs, xt, clip=5.0, normalize=True)
    assert float(normed.double().mean()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(normed, clipped / clipped.double().mean().float())
    with pytest.raises(ValueError, match="clip"):
        DiscriminativeRatio(clip=0)
    with pytest.raises(ValueError, match="classifier"):
        DiscriminativeRatio(classifier=object())


# --------------------------------------------------------------------------- inputs, outputs, errors

ESTIMATORS = {
    "kmm": lambda s, t, **kw: kmm_weights(s, t, **kw),
    "kmm_apg": lambda s, t, **kw: kmm_weights(s, t, method="apg", **kw),
    "kliep": lambda s, t, **kw: kliep_weights(s, t, **kw),
    "discriminative": lambda s, t, **kw: discriminative_weights(s, t, **kw),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_tensor_and_numpy_inputs_give_float32_on_input_device(name):
    xs, xt = two_gaussians_2d(60, seed=10)
    est = ESTIMATORS[name]
    w_np = est(xs, xt)
    w_t = est(torch.tensor(xs), torch.tensor(xt))  # float64 tensors: the same computation
    w_32 = est(torch.tensor(xs, dtype=torch.float32), torch.tensor(xt, dtype=torch.float16))
    for w in (w_np, w_t, w_32, est(xs, xt, device="cpu")):
        assert w.dtype == torch.float32 and w.shape == (60,) and w.device.type == "cpu"
        assert bool(torch.isfinite(w).all()) and float(w.min()) >= 0
    assert torch.equal(w_np, w_t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_cuda_inputs_give_cuda_weights(name):
    xs, xt = two_gaussians_2d(60, seed=10)
    w = ESTIMATORS[name](torch.tensor(xs).cuda(), torch.tensor(xt).cuda())
    assert w.device.type == "cuda" and w.dtype == torch.float32
    torch.testing.assert_close(w.cpu(), ESTIMATORS[name](xs, xt), atol=1e-3, rtol=1e-3)


BAD_INPUTS = [
    (lambda s, t: (s, t[:, :1]), "target has 1 features"),
    (lambda s, t: (s[:0], t), "source is empty"),
    (lambda s, t: (s, t[:, :0]), "target is empty"),
    (lambda s, t: (s, np.where(np.arange(len(t))[:, None] == 3, np.nan, t)), "target contains non-finite"),
    (lambda s, t: (np.where(np.arange(len(s))[:, None] == 0, np.inf, s), t), "source contains non-finite"),
    (lambda s, t: (s[:, 0], t), r"source must have shape \(n, d\)"),
    (lambda s, t: (s.astype(str), t), "source must hold real numbers"),
    (lambda s, t: (torch.tensor(s), torch.tensor(t)[:, :1]), "target has 1 features"),
    (lambda s, t: (torch.tensor(s), torch.full((3, 2), float("nan"))), "target contains non-finite"),
]


def forbid(monkeypatch, names, fn):
    """Replace each of ``names`` by ``fn`` wherever the estimators look it up: in every module of
    the package that has it (a name imported into a module is looked up there)."""
    for module in (common, kmm_solvers, kmm, kliep, discriminative):
        for name in names:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, fn)


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("make, message", BAD_INPUTS)
def test_bad_input_raises_before_any_work(name, make, message, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before validation")

    forbid(monkeypatch, ("_kernel_block", "median_sigma", "solve_kmm_qp", "gaussian_kernel", "_kliep_learn"), boom)
    xs, xt = two_gaussians_2d(20, seed=11)
    s, t = make(xs, xt)
    with pytest.raises(ValueError, match=message):
        ESTIMATORS[name](s, t)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(B=0.0), "B must be"),
        (dict(B=-1.0), "B must be"),
        (dict(B=float("nan")), "B must be"),
        (dict(sigma=0.0), "sigma must be"),
        (dict(sigma=float("inf")), "sigma must be"),
        (dict(eps=-0.1), "eps must be"),
        (dict(method="cvx"), "method must be"),
        (dict(tol=0.0), "tol must be"),
        (dict(max_iter=0), "max_iter must be"),
        (dict(block_size=0), "block_size must be"),
        (dict(dtype=torch.float16), "dtype must be"),
        (dict(device="not-a-device"), "device"),
    ],
)
def test_kmm_bad_parameters(kwargs, message, monkeypatch):
    forbid(monkeypatch, ("_kernel_block", "solve_kmm_qp"), lambda *a, **k: pytest.fail("work started"))
    xs, xt = two_gaussians_2d(20, seed=12)
    with pytest.raises(ValueError, match=message):
        kmm_weights(xs, xt, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sigma=0.0), "sigma must be"),
        (dict(sigma=[1.0, -2.0]), "sigma must be"),
        (dict(sigma=[]), "sigma is an empty"),
        (dict(n_centers=0), "n_centers must be"),
        (dict(n_folds=1), "n_folds must be"),
        (dict(tol=-1.0), "tol must be"),
    ],
)
def test_kliep_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KLIEP(**kwargs)


def test_unfitted_estimators_raise():
    with pytest.raises(ValueError, match="not fitted"):
        KLIEP().weights(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="not fitted"):
        DiscriminativeRatio().weights(np.zeros((2, 1)))


# --------------------------------------------------------------------------- the experiment


def load_experiment():
    path = ROOT / "experiments" / "covariate_shift.py"
    spec = importlib.util.spec_from_file_location("covariate_shift", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_covariate_shift_experiment_weighting_reduces_target_error():
    """A small run of experiments/covariate_shift.py (3 seeds): every weighting method
    lowers the mean target MSE of the misspecified line below ordinary least squares."""
    cs = load_experiment()
    errors = cs.run(range(3), methods=("unweighted", "oracle", "kmm", "kliep", "logreg"), n_test=3000)
    base = errors["unweighted"].mean()
    for m in ("oracle", "kmm", "kliep", "logreg"):
        assert errors[m].mean() < base, (m, errors[m].mean(), base)
    assert "| `kmm`" in cs.table(errors)
