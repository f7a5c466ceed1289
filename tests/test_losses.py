"""GRL, its λ schedule and DANN's domain loss: exact values, and agreement with pytorch-adapt."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from tladapt.losses import domain_adversarial_loss, entropy, grad_reverse, grl_coefficient
from tladapt_plugins.dann import DomainDiscriminator


def test_grl_forward_is_identity_and_backward_is_minus_lambda_times_grad():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 3, dtype=torch.float64)
    y = grad_reverse(x, 0.37)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.equal(x.grad, -0.37 * upstream)


def test_grl_accepts_a_tensor_coefficient():
    x = torch.ones(4, requires_grad=True)
    grad_reverse(x, torch.tensor(2.0)).sum().backward()
    assert torch.equal(x.grad, torch.full((4,), -2.0))


def test_lambda_schedule_values():
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1, abs=1e-15)
    assert grl_coefficient(0.5) == pytest.approx(0.9866142981514303, abs=1e-15)  # tanh(2.5)
    assert grl_coefficient(1.0) == pytest.approx(0.9999092042625951, abs=1e-15)  # tanh(5)
    assert grl_coefficient(1.0, gamma=2.0) == pytest.approx(math.tanh(1.0), abs=1e-15)
    with pytest.raises(ValueError, match="progress"):
        grl_coefficient(1.5)
    with pytest.raises(ValueError, match="gamma"):
        grl_coefficient(0.5, gamma=0)


def test_domain_loss_matches_hand_computation():
    d_s = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    d_t = torch.tensor([1.5, -0.25], dtype=torch.float64)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = (-sum(math.log(1 - sig(z)) for z in d_s.tolist()) / 3
                - sum(math.log(sig(z)) for z in d_t.tolist()) / 2)
    loss, acc = domain_adversarial_loss(d_s, d_t)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert acc.item() == pytest.approx(2 / 5)  # source -1.0 and target 1.5 are right


def test_entropy_matches_hand_computation():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    h = [math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]
    assert entropy(logits).item() == pytest.approx(sum(h) / 2, rel=1e-12)


def test_discriminator_gradients_are_not_reversed_but_backbone_gradients_are():
    torch.manual_seed(0)
    backbone = torch.nn.Linear(4, 3)
    disc = DomainDiscriminator(3, [5], dropout=0.0)
    xs, xt = torch.randn(6, 4), torch.randn(6, 4)

    def grads(coeff):
        backbone.zero_grad(), disc.zero_grad()
        f = backbone(torch.cat([xs, xt]))
        logits = disc(grad_reverse(f, coeff) if coeff is not None else f)
        domain_adversarial_loss(logits[:6], logits[6:])[0].backward()
        return [p.grad.clone() for p in backbone.parameters()], [p.grad.clone() for p in disc.parameters()]

    (gb_plain, gd_plain), (gb_rev, gd_rev) = grads(None), grads(0.6)
    for plain, rev in zip(gd_plain, gd_rev):
        assert torch.allclose(rev, plain)  # the discriminator minimises the domain loss
    for plain, rev in zip(gb_plain, gb_rev):
        assert torch.allclose(rev, -0.6 * plain)  # the backbone maximises it, scaled by λ


# ---------------------------------------------------------------- pytorch-adapt reference
pa = pytest.importorskip("pytorch_adapt", reason="the reference extra (pytorch-adapt) is not installed")


def test_grl_agrees_with_pytorch_adapt_gradient_reversal():
    from pytorch_adapt.layers import GradientReversal

    x1 = torch.randn(7, 4, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    upstream = torch.randn(7, 4)
    grad_reverse(x1, 0.8).backward(upstream)
    GradientReversal(weight=0.8)(x2).backward(upstream)
    assert torch.equal(x1.grad, x2.grad)


def _models(seed=0):
    torch.manual_seed(seed)
    g = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU())
    c = torch.nn.Linear(8, 3)
    d = DomainDiscriminator(8, [8], dropout=0.0)
    return g, c, d


def test_dann_domain_loss_and_gradients_agree_with_pytorch_adapt_dannhook():
    from pytorch_adapt.hooks import DANNHook
    from pytorch_adapt.weighters import SumWeighter

    lam = 0.7
    torch.manual_seed(1)
    xs, xt, ys = torch.randn(10, 6), torch.randn(12, 6), torch.randint(0, 3, (10,))
    g, c, d = _models()
    ref = {k: copy.deepcopy(m) for k, m in zip("GCD", (g, c, d))}

    # pytorch-adapt: one DANNHook step with lr 0, so .grad holds the gradients it computed.
    opts = [torch.optim.SGD(ref[k].parameters(), lr=0.0) for k in "GCD"]
    hook = DANNHook(opts=opts, gradient_reversal_weight=lam, weighter=SumWeighter())
    inputs = {"G": ref["G"], "C": ref["C"], "D": ref["D"], "src_imgs": xs, "target_imgs": xt,
              "src_labels": ys, "src_domain": torch.zeros(10), "target_domain": torch.ones(12)}
    _, losses = hook(inputs)
    ref_losses = losses["total_loss"]

    # ours: the same step as tladapt's trainer + DANN plugin compute it.
    f = g(torch.cat([xs, xt]))
    logits = d(grad_reverse(f, lam))
    domain, _ = domain_adversarial_loss(logits[:10], logits[10:])
    cls = F.cross_entropy(c(f[:10]), ys)
    (cls + domain).backward()

    assert domain.item() == pytest.approx(ref_losses["src_domain_loss"] + ref_losses["target_domain_loss"], rel=1e-6)
    assert cls.item() == pytest.approx(ref_losses["src_c_loss"], rel=1e-6)
    for ours, theirs in zip((g, c, d), (ref["G"], ref["C"], ref["D"])):
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5)


def test_pytorch_adapt_dannhook_forces_host_syncs_every_step(monkeypatch):
    """Why we don't wrap pytorch-adapt: its weighter calls ``.item()`` on every loss of
    every step (a device sync on GPU). tladapt's step makes none (see test_trainer)."""
    from pytorch_adapt.hooks import DANNHook

    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    g, c, d = _models()
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in (g, c, d)]
    inputs = {"G": g, "C": c, "D": d, "src_imgs": torch.randn(4, 6), "target_imgs": torch.randn(4, 6),
              "src_labels": torch.randint(0, 3, (4,)), "src_domain": torch.zeros(4), "target_domain": torch.ones(4)}
    DANNHook(opts=opts)(inputs)
    assert len(calls) >= 4  # c_loss, src_domain_loss, target_domain_loss, total
