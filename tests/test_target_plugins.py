"""The target-prediction plugins `mcc`, `bnm` and `fixmatch` (feature and image views) on real
trainer batches, and no host sync in their steps."""

import pytest
import torch

from tladapt.config import ConfigError
from tladapt.experiment import run_experiment
from tladapt.prediction_losses import batch_nuclear_norm, fixmatch_loss, minimum_class_confusion
from tladapt_plugins.fixmatch import feature_strong_view

from helpers import host_reads, make_trainer, step_terms


def test_mcc_term_is_the_class_confusion_of_the_target_logits(fast_config):
    t = make_trainer(fast_config("plugins.mcc.temperature=3.0", "plugins.mcc.weight=0.4"))
    _, out, terms = step_terms(t)
    assert terms["mcc"].weight == 0.4
    assert terms["mcc"].value.item() == pytest.approx(minimum_class_confusion(out.logits_t, 3.0).item(), rel=1e-6)
    assert 0 < terms["mcc"].value.item() < 0.9  # (K - 1) / K = 0.9 for uniform predictions


def test_bnm_term_is_minus_the_nuclear_norm_of_the_target_predictions(fast_config):
    t = make_trainer(fast_config("plugins.bnm.weight=2.0"))
    _, out, terms = step_terms(t)
    assert terms["bnm"].weight == 2.0
    assert terms["bnm"].value.item() == pytest.approx(batch_nuclear_norm(out.logits_t).item(), rel=1e-6)


@pytest.mark.parametrize("table", ["plugins.mcc={}", "plugins.bnm={}", "plugins.fixmatch.threshold=0.2"])
def test_target_plugins_make_no_host_sync(fast_config, monkeypatch, table):
    t = make_trainer(fast_config(table, "trainer.log_every=10"))
    t.start()
    assert host_reads(t, monkeypatch, 9) == []
    means = t.logger.flush(9)
    name = table.split(".")[1].split("=")[0]
    assert any(tag.startswith(f"{name}/") for tag in means)


def test_feature_strong_view_is_inverted_dropout_plus_scaled_noise():
    x = torch.ones(4000, 3)
    scale = torch.tensor([0.0, 1.0, 2.0])
    torch.manual_seed(0)
    view = feature_strong_view(x, scale, dropout=0.25, noise=0.5)
    torch.manual_seed(0)
    kept = torch.nn.functional.dropout(x, 0.25, training=True)
    assert torch.equal(view[:, 0], kept[:, 0])  # zero scale: dropout alone
    assert kept[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (kept[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert (view[:, 1] - kept[:, 1]).std().item() == pytest.approx(0.5, rel=0.05)
    assert (view[:, 2] - kept[:, 2]).std().item() == pytest.approx(1.0, rel=0.05)
    assert torch.equal(feature_strong_view(x, scale, 0.0, 0.0), x)


def test_fixmatch_feature_views_teach_the_strong_view_the_weak_predictions(fast_config):
    t = make_trainer(fast_config("plugins.fixmatch.threshold=0.15", "plugins.fixmatch.strong_noise=0.3"))
    plugin = t.pm.get_plugin("fixmatch")
    t.start()
    assert plugin.views == "feature"
    assert torch.allclose(plugin.scale, t.target.inputs().std(0))
    batch = t.pipeline.next()
    t.modules.eval()
    out = t.forward(batch)
    state = torch.get_rng_state()
    terms = t.losses(batch, out)
    torch.set_rng_state(state)  # the same noise and dropout draw again
    strong = feature_strong_view(batch.x_t, plugin.scale, 0.5, 0.3)
    expected, mask, _ = fixmatch_loss(t.head(t.backbone(strong)), out.logits_t, 0.15)
    assert 0 < mask.float().mean() < 1
    assert terms["fixmatch"].value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_fixmatch_image_views_use_the_pipelines_strong_augmentation(fast_config):
    config = fast_config("data.dataset='digits'", "data.tasks=['usps->mnist']", "augment.train='standard'",
                         "augment.flip=false", "plugins.fixmatch.threshold=0.0", "trainer.batch_size=8")
    t = make_trainer(config, task=("usps", "mnist"))
    plugin = t.pm.get_plugin("fixmatch")
    t.start()
    assert plugin.views == "image"
    batch = t.pipeline.next()
    t.modules.eval()
    out = t.forward(batch)
    gen = t.pipeline.generators["target_augment"]
    state = gen.get_state()
    terms = t.losses(batch, out)
    gen.set_state(state)
    strong = t.pipeline.view(batch, "target", "strong")
    assert not torch.equal(strong, batch.x_t)
    expected, mask, _ = fixmatch_loss(t.head(t.backbone(strong)), out.logits_t, 0.0)
    assert bool(mask.all())
    assert terms["fixmatch"].value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_fixmatch_image_views_need_image_augmentation(fast_config):
    with pytest.raises(ConfigError, match="plugins.fixmatch.views = 'image' needs an image target domain"):
        make_trainer(fast_config("plugins.fixmatch.views='image'"))


def test_mcc_bnm_and_fixmatch_train_end_to_end_together(fast_config):
    [result] = run_experiment(fast_config("plugins.mcc={}", "plugins.bnm.weight=0.5", "plugins.fixmatch={}"))
    assert result["method"] == "bnm+fixmatch+mcc"
    assert 0 <= result["final"]["oracle/target_acc"] <= 100
