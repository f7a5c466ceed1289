"""Multi-task learning: extra labelled domains in the pipeline, one head per task, fixed and
uncertainty weights (Kendall et al. 2018) checked against their formulas, every task evaluated."""

import pytest
import torch
import torch.nn.functional as F

import tladapt
from tladapt.config import ConfigError
from tladapt.data.datasets import load_domain
from tladapt.data.tasks import split_target
from tladapt.errors import PluginError
from tladapt.experiment import run_experiment

from helpers import host_reads, make_trainer

MTL = ("data.target_labels_per_class=3", "model.shared_head=false", "plugins.multitask.domains=['amazon', 'caltech']")


def test_a_few_shot_source_keeps_k_training_samples_per_class(fast_config):
    t = make_trainer(fast_config("data.source_labels_per_class=4"))
    assert torch.bincount(t.source.y, minlength=10).tolist() == [4] * 10
    assert len(t.source_val) == 30  # the held-out split is drawn first, from the whole domain


def test_extra_domains_ride_in_the_one_forward_pass_with_their_own_heads(fast_config):
    t = make_trainer(fast_config(*MTL, "plugins.multitask.weights={amazon=0.5}"))
    assert t.source_head is not t.head and set(t.extra_domains) == {"amazon", "caltech"}
    assert t.modules["head_amazon"].out_features == 10
    amazon = load_domain("office_caltech10_surf", "amazon")
    labelled, rest = split_target(amazon, 3, 0)
    assert torch.equal(t.extra_domains["amazon"].x, labelled.x)  # k per class, the target's rule and seed
    t.start()
    batch = t.pipeline.next()
    assert batch.extra["amazon"].x.shape == (16, 800) and batch.extra["caltech"].y.shape == (16,)
    assert torch.equal(batch.extra["amazon"].y, t.extra_domains["amazon"].y[batch.extra["amazon"].idx])
    t.modules.eval()
    out = t.forward(batch)
    assert torch.allclose(out.features_extra["caltech"], t.backbone(batch.extra["caltech"].x), atol=1e-6)
    assert out.features_t.shape == (16, 32) and out.logits_l.shape == (16, 10)
    terms = t.losses(batch, out)
    want = F.cross_entropy(t.modules["head_amazon"](t.backbone(batch.extra["amazon"].x)), batch.extra["amazon"].y)
    assert terms["task_amazon"].value.item() == pytest.approx(want.item(), rel=1e-5)
    assert terms["task_amazon"].weight == 0.5 and terms["task_caltech"].weight == 1.0
    assert set(terms) == {"source", "target", "task_amazon", "task_caltech"}


def test_every_task_is_evaluated_on_its_held_out_rest(fast_config, monkeypatch):
    t = make_trainer(fast_config(*MTL))
    t.start()
    assert not host_reads(t, monkeypatch, 3)
    while t.steps_done < 30:
        t.advance()
    results = t.finish()
    final = results["final"]
    _, rest = split_target(load_domain("office_caltech10_surf", "caltech"), 3, 0)
    t.modules.eval()
    with torch.no_grad():
        pred = t.modules["head_caltech"](t.backbone(rest.x)).argmax(1)
    assert final["oracle/caltech_acc"] == pytest.approx(100.0 * (pred == rest.y).float().mean().item(), abs=1e-4)
    tasks = [final["oracle/target_acc"], final["oracle/amazon_acc"], final["oracle/caltech_acc"]]
    assert final["oracle/mean_task_acc"] == pytest.approx(sum(tasks) / 3)
    assert "metrics/source_val_acc" in final
    assert results["multitask"]["tasks"] == ["source", "target", "task_amazon", "task_caltech"]


def test_uncertainty_weighting_is_kendalls_formula_and_learns_the_weights(fast_config):
    t = make_trainer(fast_config(*MTL, "plugins.multitask.weighting='uncertainty'", "plugins.multitask.init_log_var=0.3"))
    s = t.modules["task_log_vars"].s
    with torch.no_grad():
        s.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
    t.start()
    batch = t.pipeline.next()
    terms = t.losses(batch, t.forward(batch))
    total = sum(term.weight * term.value for term in terms.values())
    losses = torch.stack([terms[k].value for k in ("source", "target", "task_amazon", "task_caltech")]).detach()
    want = (torch.exp(-s.detach()) * losses).sum() + 0.5 * s.detach().sum()  # Σ exp(-s_i) L_i + s_i / 2
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(total, [s])
    assert torch.allclose(grad, -torch.exp(-s.detach()) * losses + 0.5, atol=1e-6)
    before = s.detach().clone()
    results = t.fit()
    assert not torch.equal(s.detach(), before)
    assert set(results["multitask"]["log_vars"]) == {"source", "target", "task_amazon", "task_caltech"}


def test_multitask_errors(fast_config):
    with pytest.raises(ConfigError, match="set model.shared_head = false"):
        make_trainer(fast_config("data.target_labels_per_class=3", "plugins.multitask.domains=['amazon']"))
    with pytest.raises(ConfigError, match="need labelled samples"):
        make_trainer(fast_config("plugins.multitask.domains=['amazon']"))
    with pytest.raises(ConfigError, match="'dslr' is already the run's source or target"):
        make_trainer(fast_config(*MTL[:2], "plugins.multitask.domains=['dslr']"))
    with pytest.raises(ConfigError, match="weights names kitchen, which are not in plugins.multitask.domains"):
        run_experiment(fast_config(*MTL, "plugins.multitask.weights={kitchen=1.0}"))


class Halve:
    """Balances by halving the source term's weight (a second balancer for the error test)."""

    @tladapt.hookimpl
    def tladapt_balance_losses(self, terms):
        return {"source": tladapt.Term(terms["source"].value, 0.5)}


class Cheat:
    @tladapt.hookimpl
    def tladapt_balance_losses(self, terms):
        return {"source": tladapt.Term(terms["source"].value * 0, 1.0)}


def test_the_balance_hook_reweights_and_refuses_value_changes_and_two_balancers(fast_config):
    t = make_trainer(fast_config(), [("halve", Halve, {})])
    t.start()
    batch = t.pipeline.next()
    assert t.losses(batch, t.forward(batch))["source"].weight == 0.5
    t = make_trainer(fast_config(), [("cheat", Cheat, {})])
    t.start()
    with pytest.raises(PluginError, match="'cheat' changed the value of loss term 'source'"):
        t.losses(batch, t.forward(batch))
    t = make_trainer(fast_config(*MTL, "plugins.multitask.weighting='uncertainty'"), [("halve", Halve, {})])
    t.start()
    batch = t.pipeline.next()
    with pytest.raises(PluginError, match="both balance the loss terms"):
        t.losses(batch, t.forward(batch))


def test_add_domain_checks_its_input(fast_config):
    t = make_trainer(fast_config())
    amazon = load_domain("office_caltech10_surf", "amazon")
    t.add_domain("a", amazon)
    with pytest.raises(ValueError, match="domain 'a' is already registered"):
        t.add_domain("a", amazon)
    with pytest.raises(ValueError, match="has no labels"):
        t.add_domain("b", amazon.unlabelled())
    digits = load_domain("mnist_usps_jda", "usps")
    with pytest.raises(ValueError, match=r"input shape \(1, 16, 16\), expected the task's \(800,\)"):
        t.add_domain("c", digits)


def test_a_separate_source_head_leaves_the_target_head_untrained_without_target_labels(fast_config):
    [r] = run_experiment(fast_config("model.shared_head=false"))
    assert r["classes"] == {"head": None, "source_head": list(load_domain("office_caltech10_surf", "webcam").classes)}
    assert "oracle/target_acc" not in r["final"] and "metrics/source_val_acc" in r["final"]
