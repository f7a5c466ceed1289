"""MCC, BNM, information maximisation, FixMatch, CDAN and MDD: exact values against NumPy, and
agreement with pytorch-adapt where it has the same loss."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from tladapt.losses import (RandomizedMultilinearMap, domain_adversarial_loss, entropy_weights,
                            margin_disparity_discrepancy, multilinear_map)
from tladapt.prediction_losses import (batch_nuclear_norm, class_confusion, fixmatch_loss, information_maximization,
                                       marginal_entropy, minimum_class_confusion)


def _logits(b=7, k=4, seed=0, scale=2.0):
    return torch.randn(b, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _entropy(p):
    return -(p * np.log(p)).sum(-1)


# ---------------------------------------------------------------- independent NumPy references
def test_mcc_equals_its_definition_computed_with_numpy():
    z, t = _logits().numpy(), 2.5
    p = _softmax(z / t)
    w = 1 + np.exp(-_entropy(p))
    w = len(p) * w / w.sum()
    c = np.einsum("i,ij,ik->jk", w, p, p)
    c = c / c.sum(1, keepdims=True)
    expected = (c.sum() - np.trace(c)) / c.shape[0]
    assert minimum_class_confusion(_logits(), t).item() == pytest.approx(expected, rel=1e-12)
    assert np.allclose(class_confusion(_logits(), t).numpy(), c, atol=1e-14)


def test_mcc_bounds_certain_predictions_give_zero_and_uniform_gives_k_minus_1_over_k():
    certain = torch.eye(4, dtype=torch.float64).repeat(2, 1) * 200
    assert minimum_class_confusion(certain, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    uniform = torch.zeros(6, 4, dtype=torch.float64)
    assert minimum_class_confusion(uniform, 2.5).item() == pytest.approx(3 / 4, rel=1e-12)


def test_mcc_entropy_weights_carry_no_gradient():
    z = _logits().requires_grad_(True)
    minimum_class_confusion(z).backward()
    # the same loss with the weights given as constants has the same gradient
    z2 = z.detach().clone().requires_grad_(True)
    log_p = torch.log_softmax(z2 / 2.5, 1)
    p = log_p.exp()
    w = (1 + torch.exp((p * log_p).sum(1))).detach()
    w = w * len(w) / w.sum()
    c = (p * w[:, None]).T @ p
    c = c / c.sum(1, keepdim=True)
    ((c.sum() - c.trace()) / 4).backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-14)


def test_bnm_is_minus_the_nuclear_norm_over_the_batch_size():
    z = _logits(9, 5)
    expected = -np.linalg.svd(_softmax(z.numpy()), compute_uv=False).sum() / 9
    assert batch_nuclear_norm(z).item() == pytest.approx(expected, rel=1e-12)
    one_hot = torch.eye(5, dtype=torch.float64)[:3] * 100  # 3 distinct classes, b = 3 <= K
    assert batch_nuclear_norm(one_hot).item() == pytest.approx(-1.0, rel=1e-9)
    same = torch.tensor([[100.0, 0, 0]] * 3, dtype=torch.float64)  # one class: rank 1, norm sqrt(3)
    assert batch_nuclear_norm(same).item() == pytest.approx(-math.sqrt(3) / 3, rel=1e-9)


def test_information_maximization_is_mean_entropy_minus_marginal_entropy():
    z = _logits(8, 3, seed=2)
    p = _softmax(z.numpy())
    assert marginal_entropy(z).item() == pytest.approx(_entropy(p.mean(0)), rel=1e-12)
    expected = _entropy(p).mean() - _entropy(p.mean(0))
    assert information_maximization(z).item() == pytest.approx(expected, rel=1e-12)
    assert information_maximization(z, diversity=False).item() == pytest.approx(_entropy(p).mean(), rel=1e-12)
    balanced = torch.eye(3, dtype=torch.float64).repeat(2, 1) * 100  # confident and diverse: the minimum
    assert information_maximization(balanced).item() == pytest.approx(-math.log(3), rel=1e-9)


def test_fixmatch_loss_is_the_masked_cross_entropy_over_the_whole_batch():
    weak = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 5.0], [0.1, 0.0, 0.0]], dtype=torch.float64)
    strong = _logits(4, 3, seed=3)
    loss, mask, pseudo = fixmatch_loss(strong, weak, threshold=0.9)
    conf = _softmax(weak.numpy()).max(1)
    assert mask.tolist() == list(conf >= 0.9) == [True, False, True, False]
    assert pseudo.tolist() == [0, 1, 2, 0]
    log_p = np.log(_softmax(strong.numpy()))
    assert loss.item() == pytest.approx(-(log_p[0, 0] + log_p[2, 2]) / 4, rel=1e-12)


def test_fixmatch_sends_no_gradient_to_the_weak_view_and_no_nan_from_an_unselected_sample():
    weak = _logits(4, 3, seed=4)
    weak[0] = torch.tensor([50.0, 0, 0])
    weak.requires_grad_(True)
    strong = _logits(4, 3, seed=5)
    strong[1] = float("nan")  # not selected below
    strong.requires_grad_(True)
    loss, mask, _ = fixmatch_loss(strong, weak, threshold=0.999)
    assert mask.tolist() == [True, False, False, False] and torch.isfinite(loss)
    loss.backward()
    assert weak.grad is None and strong.grad[0].abs().sum() > 0


def test_cdan_multilinear_map_matches_the_outer_product_and_the_randomized_map_its_formula():
    f, g = _logits(5, 3).float(), torch.softmax(_logits(5, 4, seed=1).float(), 1)
    t = multilinear_map(f, g)
    assert t.shape == (5, 12)
    assert np.allclose(t.numpy(), np.stack([np.outer(g[i], f[i]).ravel() for i in range(5)]), atol=1e-6)
    torch.manual_seed(0)
    rmap = RandomizedMultilinearMap(3, 4, out_dim=64)
    expected = (f.numpy() @ rmap.r_features.numpy()) * (g.numpy() @ rmap.r_predictions.numpy()) / 8.0
    assert np.allclose(rmap(f, g).numpy(), expected, atol=1e-5)
    assert set(dict(rmap.named_buffers())) == {"r_features", "r_predictions"} and not list(rmap.parameters())


def test_randomized_map_preserves_inner_products_in_expectation():
    torch.manual_seed(0)
    f, g = torch.randn(2, 6, dtype=torch.float64), torch.softmax(torch.randn(2, 5, dtype=torch.float64), 1)
    exact = (multilinear_map(f, g)[0] @ multilinear_map(f, g)[1]).item()
    estimates = []
    for _ in range(400):
        rmap = RandomizedMultilinearMap(6, 5, out_dim=256).double()
        r = rmap(f, g)
        estimates.append((r[0] @ r[1]).item())
    assert np.mean(estimates) == pytest.approx(exact, abs=4 * np.std(estimates) / math.sqrt(400))


def test_entropy_conditioned_domain_loss_is_a_weighted_mean_per_domain():
    d_s, d_t = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor([1.5, -0.25], dtype=torch.float64)
    p_s = torch.softmax(_logits(3, 4, seed=6), 1)
    p_t = torch.softmax(_logits(2, 4, seed=7), 1)
    w_s, w_t = entropy_weights(p_s), entropy_weights(p_t)
    h = lambda p: _entropy(p.numpy())  # noqa: E731
    assert np.allclose(w_s.numpy(), 1 + np.exp(-h(p_s)), atol=1e-14)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    bce_s, bce_t = -np.log(1 - sig(d_s.numpy())), -np.log(sig(d_t.numpy()))
    expected = (w_s.numpy() @ bce_s) / w_s.sum().item() + (w_t.numpy() @ bce_t) / w_t.sum().item()
    loss, acc = domain_adversarial_loss(d_s, d_t, w_s, w_t)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert acc.item() == pytest.approx(2 / 5)
    ones = domain_adversarial_loss(d_s, d_t, torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert ones[0].item() == pytest.approx(domain_adversarial_loss(d_s, d_t)[0].item(), rel=1e-12)


def test_entropy_weights_range():
    k = 5
    assert entropy_weights(torch.full((1, k), 1 / k, dtype=torch.float64)).item() == pytest.approx(1 + 1 / k)
    assert entropy_weights(torch.eye(k, dtype=torch.float64)[:1]).item() == pytest.approx(2.0)


def test_mdd_objective_equals_its_definition():
    z_s, z_t = _logits(4, 3, seed=8), _logits(5, 3, seed=9)
    a_s, a_t = _logits(4, 3, seed=10), _logits(5, 3, seed=11)
    y_s, y_t = z_s.numpy().argmax(1), z_t.numpy().argmax(1)
    ce = -np.log(_softmax(a_s.numpy())[np.arange(4), y_s]).mean()
    disagree = -np.log(1 - _softmax(a_t.numpy())[np.arange(5), y_t]).mean()
    value = margin_disparity_discrepancy(z_s, a_s, z_t, a_t, margin=4.0)
    assert value.item() == pytest.approx(4.0 * ce + disagree, rel=1e-12)


def test_mdd_gives_no_gradient_to_the_main_heads_logits():
    z_s, z_t = _logits(4, 3, seed=8).requires_grad_(True), _logits(5, 3, seed=9).requires_grad_(True)
    a_s, a_t = _logits(4, 3, seed=10).requires_grad_(True), _logits(5, 3, seed=11).requires_grad_(True)
    margin_disparity_discrepancy(z_s, a_s, z_t, a_t).backward()
    assert z_s.grad is None and z_t.grad is None
    assert a_s.grad.abs().sum() > 0 and a_t.grad.abs().sum() > 0


def test_mdd_clamps_a_certain_disagreement():
    z = torch.tensor([[5.0, 0.0]], dtype=torch.float64)
    adversary_agrees = torch.tensor([[800.0, 0.0]], dtype=torch.float64)  # 1 - p' = 0 exactly
    value = margin_disparity_discrepancy(z, adversary_agrees, z, adversary_agrees, margin=1.0)
    assert value.item() == pytest.approx(-math.log(1e-15), rel=1e-9)


# ---------------------------------------------------------------- pytorch-adapt reference
needs_pytorch_adapt = pytest.mark.skipif(importlib.util.find_spec("pytorch_adapt") is None,
                                         reason="the reference extra (pytorch-adapt) is not installed")


@needs_pytorch_adapt
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mcc_agrees_with_pytorch_adapt(temperature):
    from pytorch_adapt.layers import MCCLoss

    z = _logits(16, 6, seed=12).float()
    ours = minimum_class_confusion(z, temperature).item()
    assert ours == pytest.approx(MCCLoss(T=temperature)(z).item(), rel=1e-5)


@needs_pytorch_adapt
def test_bnm_agrees_with_pytorch_adapt():
    from pytorch_adapt.layers import BNMLoss

    z = _logits(16, 6, seed=13).float()
    assert batch_nuclear_norm(z).item() == pytest.approx(BNMLoss()(z).item(), rel=1e-6)


@needs_pytorch_adapt
def test_information_maximization_agrees_with_pytorch_adapt_entropy_plus_diversity():
    from pytorch_adapt.layers import DiversityLoss, EntropyLoss

    z = _logits(16, 6, seed=14).float()
    assert information_maximization(z).item() == pytest.approx((EntropyLoss()(z) + DiversityLoss()(z)).item(), abs=1e-6)
    assert marginal_entropy(z).item() == pytest.approx(-DiversityLoss()(z).item(), rel=1e-6)


@needs_pytorch_adapt
def test_cdan_pieces_agree_with_pytorch_adapt():
    from pytorch_adapt.layers import EntropyWeights, NoNormalizer, RandomizedDotProduct

    f, z = _logits(6, 8, seed=15).float(), _logits(6, 4, seed=16).float()
    p = torch.softmax(z, 1)
    theirs = EntropyWeights(normalizer=NoNormalizer())(z)
    assert torch.allclose(entropy_weights(p), theirs, atol=1e-6)
    torch.manual_seed(3)
    rmap = RandomizedMultilinearMap(8, 4, out_dim=32)
    ref = RandomizedDotProduct([8, 4], out_dim=32)
    ref.rand_mat0.copy_(rmap.r_features)
    ref.rand_mat1.copy_(rmap.r_predictions)
    assert torch.allclose(rmap(f, p), ref(f, p), atol=1e-6)


@needs_pytorch_adapt
def test_pytorch_adapt_cdan_e_normalises_weights_by_their_maximum_we_by_their_sum():
    """The documented difference: pytorch-adapt's CDAN+E reduces ``mean(w / max(w) * bce)``
    per domain (EntropyReducer with MaxNormalizer); the authors' code and tladapt take the
    weighted mean ``sum(w bce) / sum(w)``. Same when all weights are equal, not otherwise."""
    from pytorch_adapt.layers import EntropyWeights, MaxNormalizer

    z = _logits(6, 4, seed=17).float()
    bce = torch.rand(6, generator=torch.Generator().manual_seed(0))
    w_pa = EntropyWeights(normalizer=MaxNormalizer(detach=True))(z)
    theirs = torch.mean(w_pa * bce)
    w = entropy_weights(torch.softmax(z, 1))
    ours = (w * bce).sum() / w.sum()
    assert theirs.item() == pytest.approx((w * bce).sum().item() / (6 * w.max().item()), rel=1e-5)
    assert abs(theirs.item() - ours.item()) > 1e-3


def test_mcc_and_bnm_are_computed_in_float32_under_bf16_autocast():
    z = _logits(16, 6, seed=18).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bnm, mcc = batch_nuclear_norm(z), minimum_class_confusion(z)
        bnm_half = batch_nuclear_norm(z.bfloat16())
    assert bnm.dtype == mcc.dtype == bnm_half.dtype == torch.float32
    assert bnm.item() == batch_nuclear_norm(z).item() and mcc.item() == minimum_class_confusion(z).item()
    assert bnm_half.item() == pytest.approx(bnm.item(), rel=1e-2)
