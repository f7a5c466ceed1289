"""The adversarial plugins `cdan` (CDAN, CDAN+E) and `mdd`: their terms on real trainer batches, their
modules, their gradients through the GRL, and no host sync in a step."""

import pytest
import torch

from tladapt.config import ConfigError
from tladapt.losses import (RandomizedMultilinearMap, domain_adversarial_loss, entropy_weights, grl_coefficient,
                            margin_disparity_discrepancy, multilinear_map)
from tladapt.experiment import run_experiment
from tladapt_plugins.cdan import CDAN

from helpers import host_reads, make_trainer, step_terms


# ------------------------------------------------------------------ cdan
@pytest.mark.parametrize("entropy", [False, True])
def test_cdan_term_is_the_conditional_domain_loss_of_the_step(fast_config, entropy):
    t = make_trainer(fast_config(f"plugins.cdan.entropy={str(entropy).lower()}", "plugins.cdan.hidden=[16]",
                                 "plugins.cdan.weight=0.7"))
    batch, out, terms = step_terms(t)
    disc = t.modules["cdan_discriminator"]
    assert disc.randomized is None  # 32 features x 10 classes = 320 <= 4096: the multilinear map
    assert disc.net[0].in_features == 320
    g = torch.cat([out.logits_s, out.logits_t]).softmax(1)
    logits = disc.net(multilinear_map(torch.cat([out.features_s, out.features_t]), g))
    w = entropy_weights(g) if entropy else None
    expected, _ = domain_adversarial_loss(logits[:16], logits[16:], *((w[:16], w[16:]) if entropy else (None, None)))
    assert terms["cdan"].weight == 0.7
    assert terms["cdan"].value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_cdan_auto_map_switches_to_the_randomized_map_above_4096(fast_config):
    small = make_trainer(fast_config("plugins.cdan.hidden=[8]", "model.hidden=[409]"))  # 4090 <= 4096
    large = make_trainer(fast_config("plugins.cdan.hidden=[8]", "model.hidden=[410]",
                                     "plugins.cdan.randomized_dim=64"))  # 4100 > 4096
    assert small.modules["cdan_discriminator"].randomized is None
    rmap = large.modules["cdan_discriminator"].randomized
    assert isinstance(rmap, RandomizedMultilinearMap) and rmap.r_features.shape == (410, 64)
    assert large.modules["cdan_discriminator"].net[0].in_features == 64
    # its random matrices are buffers: checkpointed with the module, never optimised
    assert "cdan_discriminator.randomized.r_features" in large.modules.state_dict()
    assert all(p is not rmap.r_features for g in large.optimizer.param_groups for p in g["params"])
    forced = make_trainer(fast_config("plugins.cdan.hidden=[8]", "plugins.cdan.map='randomized'",
                                      "plugins.cdan.randomized_dim=32"))
    assert forced.modules["cdan_discriminator"].net[0].in_features == 32


def test_cdan_reverses_the_gradient_into_the_features_and_not_into_the_conditioning(fast_config):
    t = make_trainer(fast_config("plugins.cdan.hidden=[16]", "model.dropout=0.0", "plugins.cdan.dropout=0.0"))
    t.start()
    t.progress = 0.5
    batch = t.pipeline.next()
    out = t.forward(batch)
    t.modules.zero_grad()
    CDAN.tladapt_losses(t.pm.get_plugin("cdan"), t, out)["cdan"].value.backward()
    reversed_grad = [p.grad.clone() for p in t.backbone.parameters()]
    assert all(p.grad is None or not p.grad.any() for p in t.head.parameters())  # g = softmax(logits) is detached
    # the same loss without the GRL: the backbone gradient is -1/λ times the reversed one
    lam = grl_coefficient(0.5)
    t.modules.zero_grad()
    out = t.forward(batch)
    disc = t.modules["cdan_discriminator"]
    g = torch.cat([out.logits_s, out.logits_t]).detach().softmax(1)
    logits = disc(torch.cat([out.features_s, out.features_t]), g)
    domain_adversarial_loss(logits[:16], logits[16:])[0].backward()
    for rev, plain in zip(reversed_grad, t.backbone.parameters()):
        assert torch.allclose(rev, -lam * plain.grad, atol=1e-6)


def test_cdan_logs_its_diagnostics_and_makes_no_host_sync(fast_config, monkeypatch):
    t = make_trainer(fast_config("plugins.cdan.entropy=true", "plugins.cdan.hidden=[16]", "trainer.log_every=10"))
    t.start()
    assert host_reads(t, monkeypatch, 9) == []
    means = t.logger.flush(9)
    assert {"cdan/lambda", "cdan/disc_acc", "cdan/weight_source", "cdan/weight_target", "loss/cdan"} <= set(means)
    assert 1 + 1 / 10 <= means["cdan/weight_target"] <= 2 and 0 <= means["cdan/disc_acc"] <= 1


# ------------------------------------------------------------------ mdd
def test_mdd_term_is_the_margin_disparity_of_the_auxiliary_head(fast_config):
    t = make_trainer(fast_config("plugins.mdd.margin=3.0", "plugins.mdd.weight=0.5"))
    batch, out, terms = step_terms(t)
    head = t.modules["mdd_head"]
    assert [type(m).__name__ for m in head] == ["Linear"]  # the default: the trainer's hypothesis class
    adv = head(torch.cat([out.features_s, out.features_t]))
    expected = margin_disparity_discrepancy(out.logits_s, adv[:16], out.logits_t, adv[16:], margin=3.0)
    assert terms["mdd"].weight == 0.5
    assert terms["mdd"].value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_mdd_auxiliary_head_minimises_and_features_maximise_through_the_grl(fast_config):
    t = make_trainer(fast_config("plugins.mdd.hidden=[8]", "model.dropout=0.0", "plugins.mdd.dropout=0.0",
                                 "plugins.mdd.max_lambda=0.5"))
    t.start()
    t.progress = 0.3
    batch = t.pipeline.next()
    plugin = t.pm.get_plugin("mdd")

    def grads(reverse: bool):
        t.modules.zero_grad()
        out = t.forward(batch)
        if reverse:
            value = plugin.tladapt_losses(t, out)["mdd"].value
        else:
            adv = plugin.head(torch.cat([out.features_s, out.features_t]))
            value = margin_disparity_discrepancy(out.logits_s, adv[:16], out.logits_t, adv[16:], 4.0)
        value.backward()
        return ([p.grad.clone() for p in t.backbone.parameters()], [p.grad.clone() for p in plugin.head.parameters()])

    (b_rev, h_rev), (b_plain, h_plain) = grads(True), grads(False)
    lam = 0.5 * grl_coefficient(0.3)
    for rev, plain in zip(h_rev, h_plain):
        assert torch.allclose(rev, plain, atol=1e-6)  # the auxiliary head minimises the objective
    for rev, plain in zip(b_rev, b_plain):
        assert torch.allclose(rev, -lam * plain, atol=1e-6)  # the features maximise it


def test_mdd_logs_disagreements_and_makes_no_host_sync(fast_config, monkeypatch):
    t = make_trainer(fast_config("plugins.mdd={}", "trainer.log_every=10"))
    t.start()
    assert host_reads(t, monkeypatch, 9) == []
    means = t.logger.flush(9)
    assert {"mdd/lambda", "mdd/disagreement_source", "mdd/disagreement_target", "loss/mdd"} <= set(means)


@pytest.mark.parametrize("plugin", ["cdan", "mdd"])
def test_adversarial_plugins_refuse_a_target_task_of_other_classes(fast_config, plugin):
    config = fast_config(f"plugins.{plugin}={{}}", "data.source_classes=[0, 1, 2, 3, 4]",
                         "data.target_classes=[5, 6, 7, 8, 9]", "data.target_labels_per_class=1")
    with pytest.raises(ConfigError, match=f"plugins.{plugin} .*one label set"):
        make_trainer(config)


def test_cdan_and_mdd_train_end_to_end(fast_config):
    for table in ("plugins.cdan.hidden=[16]", "plugins.mdd={}"):
        [result] = run_experiment(fast_config(table))
        assert 0 <= result["final"]["oracle/target_acc"] <= 100
