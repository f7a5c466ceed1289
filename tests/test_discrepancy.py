"""tladapt.discrepancy against independent NumPy/SciPy references and pytorch-adapt.

References are written with explicit loops over samples (no shared code with the
module) and compared in float64 to ~1e-10. Kernel convention everywhere:
k(x, y) = exp(-||x - y||^2 / (2 sigma2)), ``bandwidth`` = sigma2.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from tladapt import discrepancy as D

TOL = dict(rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- NumPy references


def ref_sqd(a, b):
    return float(np.sum((np.asarray(a, float) - np.asarray(b, float)) ** 2))


def ref_k(a, b, sig2s):
    d = ref_sqd(a, b)
    return float(np.mean([math.exp(-d / (2.0 * s)) for s in sig2s]))


def ref_jk(layers_a, layers_b, sig2s_per_layer):
    out = 1.0
    for a, b, s in zip(layers_a, layers_b, sig2s_per_layer):
        out *= ref_k(a, b, s)
    return out


def ref_mmd_layers(X, Y, sig2s, estimator):
    """MMD^2 of Gretton et al. (2012) with the product kernel over layers; X, Y are lists of arrays."""
    n, m = len(X[0]), len(Y[0])

    def k(u, i, v, j):
        return ref_jk([L[i] for L in u], [L[j] for L in v], sig2s)

    if estimator == "linear":
        p = n // 2
        h = [
            k(X, 2 * i, X, 2 * i + 1)
            + k(Y, 2 * i, Y, 2 * i + 1)
            - k(X, 2 * i, Y, 2 * i + 1)
            - k(X, 2 * i + 1, Y, 2 * i)
            for i in range(p)
        ]
        return sum(h) / p
    sxy = sum(k(X, i, Y, j) for i in range(n) for j in range(m)) / (n * m)
    if estimator == "biased":
        sxx = sum(k(X, i, X, j) for i in range(n) for j in range(n)) / n**2
        syy = sum(k(Y, i, Y, j) for i in range(m) for j in range(m)) / m**2
    else:
        sxx = sum(k(X, i, X, j) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        syy = sum(k(Y, i, Y, j) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    return sxx + syy - 2.0 * sxy


def ref_mmd(x, y, sig2s, estimator):
    return ref_mmd_layers([np.asarray(x)], [np.asarray(y)], [sig2s], estimator)


def ref_pair_dists(x, y):
    z = np.concatenate([np.asarray(x, float), np.asarray(y, float)])
    return [ref_sqd(z[i], z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]


def ref_cov(x):
    x = np.asarray(x, float)
    n, d = x.shape
    mu = [sum(x[i, a] for i in range(n)) / n for a in range(d)]
    return np.array(
        [[sum((x[i, a] - mu[a]) * (x[i, b] - mu[b]) for i in range(n)) / (n - 1) for b in range(d)] for a in range(d)]
    )


def ref_coral(x, y):
    d = np.asarray(x).shape[1]
    diff = ref_cov(x) - ref_cov(y)
    return float(sum(diff[a, b] ** 2 for a in range(d) for b in range(d))) / (4 * d * d)


# ------------------------------------------------------------------------ fixtures

# Small fixed matrices (no RNG in the values the references see).
X5 = torch.tensor(
    [[0.1, -0.4, 0.9], [1.2, 0.3, -0.5], [-0.7, 0.8, 0.2], [0.4, 0.4, 0.4], [-1.1, -0.2, 0.6]],
    dtype=torch.float64,
)
Y7 = torch.tensor(
    [
        [0.9, 0.1, -0.3],
        [1.5, -0.6, 0.2],
        [0.2, 0.7, 1.1],
        [1.0, 1.0, -0.8],
        [0.3, -0.9, 0.5],
        [1.8, 0.4, 0.0],
        [-0.2, 0.5, -0.6],
    ],
    dtype=torch.float64,
)
SIG2S = [0.3, 0.9, 2.7]


def _rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


@pytest.fixture(scope="module")
def pa_layers():
    pytest.importorskip("pytorch_adapt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorch_adapt.layers import CORALLoss, MMDLoss
    return MMDLoss, CORALLoss


#: The code paths of the kernel math, as (POOLED_MAX, _BROADCAST_MAX): the pooled
#: small-batch MMD (default for the small inputs here), the blocked MMD, each with the
#: kernels formed in one broadcast or in the cache-sized chunks of large inputs.
PATHS = {
    "pooled": (1 << 30, 1 << 30),
    "pooled-chunked": (1 << 30, 0),
    "blocked": (0, 1 << 30),
    "blocked-chunked": (0, 0),
}


@pytest.fixture(autouse=True, params=list(PATHS))
def kernel_path(request, monkeypatch):
    """Every test here runs on every path, so each is held to the same references."""
    pooled_max, broadcast_max = PATHS[request.param]
    monkeypatch.setattr(D, "POOLED_MAX", pooled_max)
    monkeypatch.setattr(D, "_BROADCAST_MAX", broadcast_max)
    return request.param


# ------------------------------------------------------------- distances & kernels


def test_pairwise_sq_dists_and_kernel_match_loops():
    d = D.pairwise_sq_dists(X5, Y7)
    ref = np.array([[ref_sqd(a, b) for b in Y7.numpy()] for a in X5.numpy()])
    np.testing.assert_allclose(d.numpy(), ref, **TOL)
    dxx = D.pairwise_sq_dists(X5)
    assert torch.all(dxx.diagonal() == 0)
    k = D.gaussian_kernel(X5, Y7, bandwidth=SIG2S)
    ref_k_mat = np.array([[ref_k(a, b, SIG2S) for b in Y7.numpy()] for a in X5.numpy()])
    np.testing.assert_allclose(k.numpy(), ref_k_mat, **TOL)
    # the convention: sigma2 = 1, distance^2 = 2  ->  exp(-1)
    one = D.gaussian_kernel(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    assert one.item() == pytest.approx(math.exp(-1.0), rel=1e-15)


def test_sq_dists_large_offset_stays_accurate():
    # features with a large common offset: mmd centres the pooled batch first
    x = X5 + 1e4
    y = Y7 + 1e4
    got = D.mmd(x.float(), y.float(), bandwidth=SIG2S, estimator="biased").item()
    assert got == pytest.approx(ref_mmd(X5, Y7, SIG2S, "biased"), rel=1e-4, abs=1e-5)


# ------------------------------------------------------------------- bandwidth rules


@pytest.mark.parametrize("n,m", [(5, 7), (5, 6), (3, 3)])  # odd and even numbers of pairs
def test_median_and_mean_bandwidth_match_numpy(n, m):
    x, y = X5[:n], Y7[:m]
    pairs = ref_pair_dists(x, y)
    scales = [0.5, 1.0, 4.0]
    got = D.kernel_bandwidths(x, y, "median", scales)
    np.testing.assert_allclose(got.numpy(), np.median(pairs) * np.array(scales), **TOL)
    got = D.kernel_bandwidths(x, y, "mean", scales)
    np.testing.assert_allclose(got.numpy(), np.mean(pairs) * np.array(scales), **TOL)
    # defaults: DAN's five scales for a data-driven base
    got = D.kernel_bandwidths(x, y)
    np.testing.assert_allclose(got.numpy(), np.median(pairs) * np.array([0.25, 0.5, 1, 2, 4]), **TOL)


def test_fixed_bandwidth_is_respected():
    np.testing.assert_array_equal(D.kernel_bandwidths(X5, Y7, 0.7).numpy(), [0.7])
    np.testing.assert_allclose(D.kernel_bandwidths(X5, Y7, SIG2S).numpy(), SIG2S, **TOL)
    np.testing.assert_allclose(D.kernel_bandwidths(X5, Y7, 2.0, [0.5, 1.0]).numpy(), [1.0, 2.0], **TOL)
    assert D.mmd(X5, Y7, bandwidth=SIG2S).item() == pytest.approx(ref_mmd(X5, Y7, SIG2S, "biased"), rel=1e-12)


def test_bandwidth_is_detached_and_gradient_treats_it_as_constant():
    x = X5.clone().requires_grad_()
    sig2 = D.kernel_bandwidths(x, Y7)
    assert not sig2.requires_grad
    (g_median,) = torch.autograd.grad(D.mmd(x, Y7, estimator="unbiased"), x)
    (g_fixed,) = torch.autograd.grad(D.mmd(x, Y7, bandwidth=sig2, estimator="unbiased"), x)
    torch.testing.assert_close(g_median, g_fixed, rtol=1e-12, atol=1e-14)


def test_bracketed_median_matches_exact_selection(monkeypatch):
    # pooled batch above the threshold (N(N-1) >= 2**16): the fast path, then forced exact path
    x = _rand(200, 4, seed=1)
    y = _rand(150, 4, seed=2).round()  # ties
    from scipy.spatial.distance import pdist

    want = np.median(pdist(torch.cat([x, y]).numpy(), "sqeuclidean"))
    fast = D.kernel_bandwidths(x, y, "median", [1.0]).item()
    monkeypatch.setattr(D, "_BRACKET_MIN_PAIRS", 1 << 62)
    exact = D.kernel_bandwidths(x, y, "median", [1.0]).item()
    assert fast == pytest.approx(want, rel=1e-12) and exact == pytest.approx(want, rel=1e-12)
    # many duplicated points (zeros among the pairs) on the forced fast path
    monkeypatch.setattr(D, "_BRACKET_MIN_PAIRS", 0)
    for xs, ys in [(x.round(), y), (torch.zeros_like(x[:40]), y[:30]), (x[:60], x[:60])]:
        want = np.median(pdist(torch.cat([xs, ys]).numpy(), "sqeuclidean"))
        want = want if want > 0 else np.mean(pdist(torch.cat([xs, ys]).numpy(), "sqeuclidean"))
        assert D.kernel_bandwidths(xs, ys, "median", [1.0]).item() == pytest.approx(want, rel=1e-12)


def test_zero_data_bandwidth_falls_back_without_nan():
    # 4 of 5 pooled points coincide: 6 of the 10 pairs are 0, median 0 -> mean (0.4 d^2)
    x = torch.zeros(3, 2, dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    assert D.kernel_bandwidths(x, y, "median", [1.0]).item() == pytest.approx(0.4 * 25.0, rel=1e-14)
    # all points identical: mean 0 -> base 1; every kernel value is 1 and MMD is 0
    same = torch.full((4, 3), 2.5, dtype=torch.float64)
    for rule in ("median", "mean"):
        np.testing.assert_array_equal(D.kernel_bandwidths(same, same, rule, [1.0]).numpy(), [1.0])
        for est in D.ESTIMATORS:
            v = D.mmd(same, same.clone(), bandwidth=rule, estimator=est)
            assert torch.isfinite(v) and v.item() == 0.0
    # explicit zero / negative / non-finite bandwidths are rejected
    for bad in (0.0, -1.0, [1.0, 0.0], float("nan"), float("inf"), []):
        with pytest.raises(ValueError, match="bandwidth"):
            D.mmd(X5, Y7, bandwidth=bad)
    with pytest.raises(ValueError, match="bandwidth"):
        D.mmd(X5, Y7, bandwidth="silverman")
    with pytest.raises(ValueError, match="scales"):
        D.mmd(X5, Y7, scales=[1.0, -2.0])


# ------------------------------------------------------------------- MMD estimators


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("n,m", [(5, 7), (5, 5), (2, 3)])
def test_mmd_quadratic_matches_loops(estimator, n, m):
    x, y = X5[:n], Y7[:m]
    got = D.mmd(x, y, bandwidth=SIG2S, estimator=estimator)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(ref_mmd(x, y, SIG2S, estimator), **{"rel": 1e-10, "abs": 1e-12})
    # data-driven bandwidth, checked through the reference median
    sig2 = np.median(ref_pair_dists(x, y)) * np.array(D.DAN_SCALES)
    got = D.mmd(x, y, estimator=estimator)
    assert got.item() == pytest.approx(ref_mmd(x, y, sig2, estimator), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("n", [5, 4, 2])
def test_mmd_linear_matches_loops(n):
    x, y = X5[:n], Y7[:n]
    got = D.mmd(x, y, bandwidth=SIG2S, estimator="linear")
    assert got.item() == pytest.approx(ref_mmd(x, y, SIG2S, "linear"), rel=1e-10, abs=1e-12)
    sig2 = np.mean(ref_pair_dists(x, y)) * np.array([0.5, 2.0])
    got = D.mmd(x, y, bandwidth="mean", scales=[0.5, 2.0], estimator="linear")
    assert got.item() == pytest.approx(ref_mmd(x, y, sig2, "linear"), rel=1e-10, abs=1e-12)


def test_unbiased_is_negative_and_not_clamped():
    # two samples of one 1-D distribution: sigma2 = 1, k(d^2) = exp(-d^2 / 2)
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    want = math.exp(-0.5) + 1.0 - 2.0 * math.exp(-0.125)  # = -0.1585...
    got = D.mmd(x, y, bandwidth=1.0, estimator="unbiased").item()
    assert want < 0 and got == pytest.approx(want, rel=1e-14)
    assert D.mmd(x, y, bandwidth=1.0, estimator="biased").item() >= 0
    # and on a random draw of the same distribution, with the default bandwidth
    a, b = _rand(6, 3, seed=3), _rand(6, 3, seed=4)
    u = D.mmd(a, b, estimator="unbiased").item()
    assert u < 0 and u == pytest.approx(ref_mmd(a, b, D.kernel_bandwidths(a, b).numpy(), "unbiased"), rel=1e-10)


def test_mmd_degenerate_inputs():
    # identical batches: biased/linear give exactly 0, never NaN
    for est in ("biased", "linear"):
        assert D.mmd(X5, X5.clone(), estimator=est).item() == pytest.approx(0.0, abs=1e-15)
    # constant features (all columns constant, different constants per domain)
    cx, cy = torch.ones(4, 3, dtype=torch.float64), torch.full((4, 3), 2.0, dtype=torch.float64)
    for est in D.ESTIMATORS:
        v = D.mmd(cx, cy, estimator=est)
        assert torch.isfinite(v)
        # pooled pairs: 12 zeros, 16 at d^2 = 3 -> median 3 -> within 1, across exp(-3/(2*3 s))
        want = ref_mmd(cx, cy, 3.0 * np.array(D.DAN_SCALES), est)
        assert v.item() == pytest.approx(want, rel=1e-12)
    # single samples: biased is defined (2 - 2k), the others name the argument
    x1, y1 = X5[:1], Y7[:1]
    want = 2.0 - 2.0 * ref_k(x1[0].numpy(), y1[0].numpy(), SIG2S)
    assert D.mmd(x1, y1, bandwidth=SIG2S).item() == pytest.approx(want, rel=1e-12)
    assert torch.isfinite(D.mmd(x1, y1))
    with pytest.raises(ValueError, match="source has 1 sample"):
        D.mmd(x1, Y7, estimator="unbiased")
    with pytest.raises(ValueError, match="target has 1 sample"):
        D.mmd(X5, y1, estimator="unbiased")
    with pytest.raises(ValueError, match="source has 1 sample"):
        D.mmd(x1, y1, estimator="linear")
    with pytest.raises(ValueError, match="equal batch sizes"):
        D.mmd(X5, Y7, estimator="linear")
    with pytest.raises(ValueError, match="source has 0 sample"):
        D.mmd(X5[:0], Y7)
    with pytest.raises(ValueError, match="same number of features"):
        D.mmd(X5, Y7[:, :2])
    with pytest.raises(ValueError, match="estimator"):
        D.mmd(X5, Y7, estimator="quadratic")
    with pytest.raises(ValueError, match="shape"):
        D.mmd(X5[0], Y7)


@pytest.mark.parametrize("estimator", D.ESTIMATORS)
def test_mmd_gradcheck(estimator):
    n = 4
    x = X5[:n].clone().requires_grad_()
    y = Y7[:n].clone().requires_grad_() if estimator == "linear" else Y7.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: D.mmd(a, b, bandwidth=SIG2S, estimator=estimator), (x, y))


def test_mmd_second_order_gradients():
    x, y = X5[:4].clone().requires_grad_(), Y7[:3].clone().requires_grad_()
    for est in ("biased", "unbiased"):
        assert torch.autograd.gradgradcheck(lambda a, b: D.mmd(a, b, bandwidth=SIG2S, estimator=est), (x, y))


def test_gradient_into_one_side_only():
    # a frozen target (no grad): the source gradient alone, first and second order
    x, y = X5[:4].clone().requires_grad_(), Y7.clone()
    for est in ("biased", "unbiased"):
        f = lambda a: D.mmd(a, y, bandwidth=SIG2S, estimator=est)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,)) and torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("b", [32, 128, 160])
def test_paths_agree_at_training_batch_sizes(b, monkeypatch):
    # float32 features as in training: the pooled and the blocked MMD, value and gradients
    x = _rand(b, 64, seed=7, dtype=torch.float32).requires_grad_()
    y = (_rand(b, 64, seed=8, dtype=torch.float32) + 0.3).requires_grad_()
    results = []
    for pooled_max in (1 << 30, 0):
        monkeypatch.setattr(D, "POOLED_MAX", pooled_max)
        for est in ("biased", "unbiased"):
            v = D.mmd(x, y, estimator=est)
            results.append((v, *torch.autograd.grad(v, (x, y))))
    for a, b_ in zip(results[:2], results[2:]):
        for ta, tb in zip(a, b_):
            torch.testing.assert_close(ta, tb, rtol=2e-4, atol=1e-7)


def test_gradients_of_kernel_and_distances():
    x = X5.clone().requires_grad_()
    y = Y7[:3].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: D.gaussian_kernel(a, b, SIG2S), (x, y))
    assert torch.autograd.gradcheck(lambda a: D.gaussian_kernel(a, None, SIG2S), (x,))
    assert torch.autograd.gradcheck(lambda a, b: D.pairwise_sq_dists(a, b), (x, y))


def test_mmd_autocast_and_half_inputs_compute_in_float32():
    x, y = (_rand(32, 16, seed=5) * 30).float(), (_rand(24, 16, seed=6) * 30 + 3).float()
    want = D.mmd(x.double(), y.double(), estimator="unbiased").item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = D.mmd(x, y, estimator="unbiased")
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=1e-4)
    xb, yb = x.bfloat16(), y.bfloat16()
    got = D.mmd(xb, yb, estimator="unbiased")
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(D.mmd(xb.double(), yb.double(), estimator="unbiased").item(), rel=1e-4)


# -------------------------------------------------------------------------- JMMD


def test_jmmd_matches_loops_and_reduces_to_mmd():
    feats_x, feats_y = X5, Y7
    prob_x, prob_y = torch.softmax(X5[:, :2] * 3, 1), torch.softmax(Y7[:, :2] * 3, 1)
    sig2_layers = [[0.5, 2.0], [0.92**2]]
    for est in ("biased", "unbiased"):
        got = D.jmmd([feats_x, prob_x], [feats_y, prob_y], bandwidths=sig2_layers, estimator=est)
        want = ref_mmd_layers([feats_x.numpy(), prob_x.numpy()], [feats_y.numpy(), prob_y.numpy()], sig2_layers, est)
        assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    got = D.jmmd([feats_x, prob_x], [feats_y[:5], prob_y[:5]], bandwidths=sig2_layers, estimator="linear")
    want = ref_mmd_layers([feats_x.numpy(), prob_x.numpy()], [feats_y[:5].numpy(), prob_y[:5].numpy()], sig2_layers, "linear")
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
    # data-driven per-layer bandwidths: each layer's own pooled median / mean
    got = D.jmmd([feats_x, prob_x], [feats_y, prob_y], bandwidths=["median", "mean"], scales=[None, [1.0]])
    s1 = np.median(ref_pair_dists(feats_x, feats_y)) * np.array(D.DAN_SCALES)
    s2 = [np.mean(ref_pair_dists(prob_x, prob_y))]
    want = ref_mmd_layers([feats_x.numpy(), prob_x.numpy()], [feats_y.numpy(), prob_y.numpy()], [s1, s2], "biased")
    assert got.item() == pytest.approx(want, rel=1e-10)
    for est in D.ESTIMATORS:
        y = Y7[:5] if est == "linear" else Y7
        assert D.jmmd([X5], [y], estimator=est).item() == pytest.approx(D.mmd(X5, y, estimator=est).item(), rel=1e-14)


def test_jmmd_gradcheck_and_errors():
    x1, y1 = X5[:4].clone().requires_grad_(), Y7[:3].clone().requires_grad_()
    x2 = torch.softmax(X5[:4, :2], 1).clone().requires_grad_()
    y2 = torch.softmax(Y7[:3, :2], 1).clone().requires_grad_()
    for est in ("biased", "unbiased"):
        assert torch.autograd.gradcheck(
            lambda a, b, c, d: D.jmmd([a, c], [b, d], bandwidths=[SIG2S, 0.8], estimator=est), (x1, y1, x2, y2)
        )
    y1l, y2l = Y7[:4].clone().requires_grad_(), torch.softmax(Y7[:4, :2], 1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: D.jmmd([a, c], [b, d], bandwidths=[SIG2S, 0.8], estimator="linear"), (x1, y1l, x2, y2l)
    )
    with pytest.raises(ValueError, match="one entry per layer"):
        D.jmmd([X5, X5], [Y7, Y7], bandwidths=[1.0])
    with pytest.raises(ValueError, match="equal length"):
        D.jmmd([X5], [Y7, Y7])
    with pytest.raises(ValueError, match="same batch sizes"):
        D.jmmd([X5, X5[:4]], [Y7, Y7])
    with pytest.raises(ValueError, match=r"sources\[0\] has 1 sample"):
        D.jmmd([X5[:1]], [Y7], estimator="unbiased")


# -------------------------------------------------------------------------- CORAL


@pytest.mark.parametrize("n,m", [(5, 7), (2, 2)])
def test_covariance_and_coral_match_loops(n, m):
    x, y = X5[:n], Y7[:m]
    np.testing.assert_allclose(D.covariance(x).numpy(), ref_cov(x.numpy()), **TOL)
    np.testing.assert_allclose(D.covariance(x).numpy(), np.cov(x.numpy(), rowvar=False), **TOL)
    assert D.coral(x, y).item() == pytest.approx(ref_coral(x.numpy(), y.numpy()), rel=1e-10, abs=1e-14)


def test_coral_degenerate_and_gradcheck():
    with pytest.raises(ValueError, match="source has 1 sample"):
        D.coral(X5[:1], Y7)
    with pytest.raises(ValueError, match="target has 1 sample"):
        D.coral(X5, Y7[:1])
    with pytest.raises(ValueError, match="x has 1 sample"):
        D.covariance(X5[:1])
    const = torch.full((4, 3), 7.0, dtype=torch.float64)
    assert D.coral(const, const.clone()).item() == 0.0
    assert D.coral(X5, X5.clone()).item() == 0.0
    x, y = X5.clone().requires_grad_(), Y7.clone().requires_grad_()
    assert torch.autograd.gradcheck(D.coral, (x, y))


def test_coral_bf16_autocast_large_activations_uses_float32():
    # post-ReLU-like activations around 1e3 with spread ~10: in bf16, x^T x loses every digit
    x = (1000 + 10 * _rand(64, 16, seed=7)).float()
    y = (1000 + 12 * _rand(48, 16, seed=8)).float()
    want = ref_coral(x.double().numpy(), y.double().numpy())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mm(x, y[:16].t()).dtype == torch.bfloat16  # autocast is really on
        got = D.coral(x, y)
        cov = D.covariance(x)
    assert got.dtype == torch.float32 and cov.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-4)
    # bf16 *inputs* are upcast: exact on the rounded values
    xb, yb = x.bfloat16(), y.bfloat16()
    assert D.coral(xb, yb).item() == pytest.approx(ref_coral(xb.double().numpy(), yb.double().numpy()), rel=1e-4)


# ------------------------------------------------------------- closed-form CORAL


def _spd(eigs, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return (q * np.asarray(eigs)) @ q.T, q


def test_psd_sqrt_ill_conditioned_against_scipy_sqrtm():
    # condition number 1e12
    c, q = _spd(np.logspace(0, -12, 8))
    assert np.linalg.cond(c) > 5e11
    ours = D.psd_power(torch.from_numpy(c), 0.5).numpy()
    theirs = scipy.linalg.sqrtm(c)
    np.testing.assert_allclose(ours, np.real(theirs), rtol=0, atol=1e-11)
    np.testing.assert_allclose(ours @ ours, c, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(ours, ours.T)
    # rank-deficient (3 zero eigenvalues): sqrtm goes complex, ours stays real symmetric PSD
    eigs = np.r_[np.logspace(0, -3, 5), 0.0, 0.0, 0.0]
    c, q = _spd(eigs, seed=1)
    ours = D.psd_power(torch.from_numpy(c), 0.5).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = scipy.linalg.sqrtm(c)
    exact = (q * np.sqrt(eigs)) @ q.T
    # sqrt(rounding noise ~1e-17) ~ 3e-9: both are that close to the exact root
    np.testing.assert_allclose(ours, np.real(theirs), rtol=0, atol=2e-8)
    np.testing.assert_allclose(ours, exact, rtol=0, atol=2e-8)
    np.testing.assert_allclose(ours @ ours, c, rtol=0, atol=1e-14)
    assert np.linalg.eigvalsh(ours).min() > -1e-12
    # inverse square root: pseudo-inverse on the null space, exact on the range
    inv = D.psd_power(torch.from_numpy(c), -0.5).numpy()
    assert np.all(np.isfinite(inv))
    np.testing.assert_allclose(inv @ c @ inv, (q[:, :5]) @ q[:, :5].T, rtol=0, atol=1e-9)
    # C^{-1/2} at condition number 1e12 is itself ill-posed: rounding C (1e-16 of
    # lambda_max = 1) moves lambda_min = 1e-12 by ~1e-4 relative, so agree to ~1e-5
    eigs = np.logspace(0, -12, 8)
    c12, q = _spd(eigs)
    inv12 = D.psd_power(torch.from_numpy(c12), -0.5).numpy()
    exact = (q * eigs**-0.5) @ q.T
    scipy_inv = np.linalg.inv(scipy.linalg.sqrtm(c12))

    def rel(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    assert rel(inv12, scipy_inv) < 2e-5 and rel(inv12, exact) < 2e-5
    assert rel(inv12, exact) <= rel(scipy_inv, exact)


def _ref_coral_transform(xs, xt, lam):
    d = xs.shape[1]
    cs = np.cov(xs, rowvar=False) + lam * np.eye(d)
    ct = np.cov(xt, rowvar=False) + lam * np.eye(d)
    return xs @ np.linalg.inv(np.real(scipy.linalg.sqrtm(cs))) @ np.real(scipy.linalg.sqrtm(ct))


def test_coral_transform_matches_scipy():
    xs, xt = X5.numpy(), (Y7 * 2 + 1).numpy()
    for lam in (1.0, 0.1):
        got = D.coral_transform(X5, Y7 * 2 + 1, lam=lam)
        assert got.dtype == torch.float64 and got.shape == X5.shape
        np.testing.assert_allclose(got.numpy(), _ref_coral_transform(xs, xt, lam), rtol=1e-10, atol=1e-12)
    # rank-deficient source (n < d) and ill-conditioned target: lambda = 1 keeps it well posed
    xs = _rand(3, 8, seed=9)
    xt = _rand(20, 8, seed=10) * torch.logspace(0, -6, 8, dtype=torch.float64)
    got = D.coral_transform(xs, xt).numpy()
    np.testing.assert_allclose(got, _ref_coral_transform(xs.numpy(), xt.numpy(), 1.0), rtol=1e-9, atol=1e-12)
    # with lambda = 1 the transformed source has covariance C_t + I - I only for a
    # full-rank source; check instead the defining identity on the covariances
    cs = np.cov(X5.numpy(), rowvar=False) + np.eye(3)
    a = D.psd_power(torch.from_numpy(cs), -0.5).numpy()
    np.testing.assert_allclose(a @ cs @ a, np.eye(3), atol=1e-12)
    # lambda = 0 on a singular source covariance: pseudo-inverse, finite
    assert torch.isfinite(D.coral_transform(xs, xt, lam=0.0)).all()
    # float32 in, float32 out; errors
    assert D.coral_transform(X5.float(), Y7.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="lam"):
        D.coral_transform(X5, Y7, lam=-1.0)
    with pytest.raises(ValueError, match="source has 1 sample"):
        D.coral_transform(X5[:1], Y7)


# ---------------------------------------------------------------- pytorch-adapt


def _pa_sig2(b, scales):
    """pytorch-adapt's kernel exp(-d^2 * s / b) is ours with sigma2 = b / (2 s)."""
    return [b / (2.0 * s) for s in scales]


def test_pa_quadratic_equals_our_unbiased(pa_layers):
    MMDLoss, _ = pa_layers
    scales = [2.0**k for k in range(-3, 4)]
    x, y = _rand(9, 4, seed=11), _rand(6, 4, seed=12) + 0.3
    # same kernel (fixed bandwidth), different batch sizes: identical to float precision
    pa = MMDLoss(kernel_scales=torch.tensor(scales, dtype=torch.float64), mmd_type="quadratic", bandwidth=1.7)
    ours = D.mmd(x, y, bandwidth=_pa_sig2(1.7, scales), estimator="unbiased")
    assert pa(x, y).item() == pytest.approx(ours.item(), rel=1e-12)
    # pytorch-adapt's "quadratic" is the U-statistic, not the (biased) V-statistic
    biased = D.mmd(x, y, bandwidth=_pa_sig2(1.7, scales), estimator="biased").item()
    assert abs(biased - pa(x, y).item()) > 1e-3
    # default bandwidth: pytorch-adapt uses torch.median of the *source* block with its
    # zero diagonal (lower median); ours the median of the pooled off-diagonal pairs
    pa = MMDLoss(kernel_scales=torch.tensor(scales, dtype=torch.float64), mmd_type="quadratic")
    b_pa = torch.median(torch.cdist(x, x) ** 2).item()
    assert pa(x, y).item() == pytest.approx(D.mmd(x, y, bandwidth=_pa_sig2(b_pa, scales), estimator="unbiased").item(), rel=1e-12)
    b_ours = D.kernel_bandwidths(x, y, "median", [1.0]).item()
    assert b_ours == pytest.approx(np.median(ref_pair_dists(x, y)), rel=1e-12)
    assert abs(b_ours - b_pa) / b_ours > 0.05  # a deliberate difference, numerically visible
    ours_default = D.mmd(x, y, bandwidth="median", scales=[1 / (2 * s) for s in scales], estimator="unbiased")
    assert abs(ours_default.item() - pa(x, y).item()) > 1e-3


def test_pa_linear_and_jmmd_agree(pa_layers):
    MMDLoss, _ = pa_layers
    scales = [0.5, 1.0, 2.0]
    x, y = _rand(7, 4, seed=13), _rand(7, 4, seed=14) + 0.5  # odd: both drop the last row
    pa = MMDLoss(kernel_scales=torch.tensor(scales, dtype=torch.float64), mmd_type="linear", bandwidth=2.3)
    ours = D.mmd(x, y, bandwidth=_pa_sig2(2.3, scales), estimator="linear")
    assert pa(x, y).item() == pytest.approx(ours.item(), rel=1e-12)
    px, py = torch.softmax(x[:, :3], 1), torch.softmax(y[:, :3], 1)
    for mmd_type, est in (("quadratic", "unbiased"), ("linear", "linear")):
        pa = MMDLoss(kernel_scales=torch.tensor(scales, dtype=torch.float64), mmd_type=mmd_type, bandwidth=2.3)
        ours = D.jmmd([x, px], [y, py], bandwidths=[_pa_sig2(2.3, scales)] * 2, estimator=est)
        assert pa([x, px], [y, py]).item() == pytest.approx(ours.item(), rel=1e-12)


def test_pa_mmd_nan_on_identical_constant_features(pa_layers):
    MMDLoss, _ = pa_layers
    const = torch.ones(6, 3, dtype=torch.float64)
    # pytorch-adapt: median 0 -> scale -1/0 -> exp(0 * -inf) = NaN; ours: 0
    assert torch.isnan(MMDLoss(mmd_type="quadratic")(const, const.clone()))
    assert D.mmd(const, const.clone(), estimator="unbiased").item() == 0.0


def test_pa_coral_agrees_in_float64_and_differs_in_low_precision(pa_layers):
    _, CORALLoss = pa_layers
    x, y = _rand(9, 5, seed=15), _rand(6, 5, seed=16) * 1.5
    assert CORALLoss()(x, y).item() == pytest.approx(D.coral(x, y).item(), rel=1e-12)
    # large activations under bf16 autocast: pytorch-adapt's x^T x - s s^T / n runs in bf16
    xl = (1000 + 10 * _rand(64, 16, seed=7)).float()
    yl = (1000 + 12 * _rand(48, 16, seed=8)).float()
    want = ref_coral(xl.double().numpy(), yl.double().numpy())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theirs = CORALLoss()(xl, yl).item()
        ours = D.coral(xl, yl).item()
    assert ours == pytest.approx(want, rel=1e-4)
    assert not (abs(theirs - want) <= 0.1 * want)  # off by orders of magnitude (or NaN)
    # even in float32 their uncentred formula loses digits at an offset of 1e4
    xo, yo = xl + 9000, yl + 9000
    assert D.coral(xo, yo).item() == pytest.approx(want, rel=1e-3)
    assert abs(CORALLoss()(xo, yo).item() - want) > 0.1 * want
    # a batch of one: pytorch-adapt divides by n - 1 = 0 in Python; ours names the argument
    with pytest.raises(ZeroDivisionError):
        CORALLoss()(x[:1], y)
    with pytest.raises(ValueError, match="source has 1 sample"):
        D.coral(x[:1], y)
