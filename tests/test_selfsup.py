"""Self-taught learning: the self-supervised losses and views, the autoencoder and simclr
plugins, and pre-training that never reads source labels (scrambled labels, identical model)."""

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tladapt.data.datasets import load_domain
from tladapt.experiment import run_experiment
from tladapt.selfsup import corrupt_features, jitter_images, mask_noise, nt_xent
from tladapt.transfer import run_feature_transfer

from helpers import host_reads, make_trainer

AE = ("data.source_labels=false", "plugins.autoencoder.hidden=[32]")
SIMCLR = ("data.source_labels=false", "plugins.simclr.hidden=[32]", "plugins.simclr.out=16")


# ---------------------------------------------------------------- the math
def numpy_nt_xent(z1, z2, tau):
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        p = (i + b) % n
        others = [np.exp(z[i] @ z[k] / tau) for k in range(n) if k != i]
        total += -np.log(np.exp(z[i] @ z[p] / tau) / sum(others))
    return total / n


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_nt_xent_matches_a_loop_over_views(tau):
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(numpy_nt_xent(z1.numpy(), z2.numpy(), tau), rel=1e-10)
    # identical views far from each other's neighbours: the loss approaches its minimum log(1) = 0 as τ -> 0
    e = torch.eye(4, dtype=torch.float64)
    assert nt_xent(e, e, 0.01).item() < 1e-30


def test_feature_corruption_draws_from_each_features_batch_marginal():
    torch.manual_seed(0)
    x = torch.arange(2000 * 6, dtype=torch.float32).view(2000, 6)  # every entry distinct
    assert torch.equal(corrupt_features(x, 0.0), x)
    out = corrupt_features(x, 0.6)
    changed = out != x
    assert 0.58 < changed.float().mean().item() < 0.62  # ~ rate (minus draws of the row itself)
    for j in range(6):  # every value comes from its own column
        assert set(out[:, j].tolist()) <= set(x[:, j].tolist())
    m = mask_noise(torch.ones(100_000), 0.3)
    assert set(m.unique().tolist()) == {0.0, 1.0} and abs((m == 0).float().mean().item() - 0.3) < 0.01


def test_image_views_are_the_identity_without_jitter_and_differ_with_it():
    torch.manual_seed(0)
    x = load_domain("mnist_usps_jda", "usps").x[:8]
    same = jitter_images(x, scale=(1.0, 1.0), max_rotation=0.0, max_shift=0.0, noise=0.0)
    assert torch.allclose(same, x, atol=1e-6)
    a, b = jitter_images(x), jitter_images(x)
    assert a.shape == x.shape and not torch.allclose(a, b)
    # a zoom keeps the centre pixel: sampled at the same place whatever s and the rotation
    centred = torch.zeros(1, 1, 15, 15)
    centred[0, 0, 7, 7] = 1.0
    assert jitter_images(centred, scale=(0.5, 0.5), max_rotation=30.0, max_shift=0.0)[0, 0, 7, 7] == pytest.approx(1.0)


# ---------------------------------------------------------------- the plugins in runs
@pytest.mark.parametrize("options", [AE, SIMCLR])
def test_pretraining_on_an_unlabelled_source_trains_and_keeps_no_head(fast_config, options, monkeypatch):
    t = make_trainer(fast_config(*options, "trainer.steps=40"))
    t.start()
    assert not host_reads(t, monkeypatch, 3)  # no host sync in a step
    while t.steps_done < 40:
        t.advance()
    results = t.finish()
    assert "oracle/target_acc" not in results["final"] and results["classes"] == {"head": None}
    name = "decoder" if options is AE else "projection"
    assert name in t.modules


def test_the_autoencoder_learns_to_reconstruct(fast_config):
    t = make_trainer(fast_config(*AE, "trainer.steps=300", "trainer.log_every=50", "plugins.autoencoder.level=0.1",
                                 "model.dropout=0", "trainer.optimizer='adam'", "trainer.lr=0.001", "model.hidden=[256]",
                                 "plugins.autoencoder.hidden=[256]"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    t.fit()
    acc = EventAccumulator(str(t.run_dir))
    acc.Reload()
    curve = [e.value for e in acc.Scalars("loss/reconstruction")]
    assert curve[-1] < 0.8 * curve[0]  # z-scored inputs: predicting 0 everywhere costs ~1


def test_a_simclr_run_on_images_uses_the_image_views(fast_config):
    [r] = run_experiment(fast_config(*SIMCLR, "data.dataset='mnist_usps_jda'", "data.tasks=['mnist->usps']",
                                     "trainer.steps=4", "model.backbone='lenet'"))
    assert r["classes"] == {"head": None}


@pytest.fixture
def scrambled(tmp_path, monkeypatch):
    (tmp_path / "scrambled_surf.py").write_text(textwrap.dedent("""
        import torch
        from tladapt.data import Domain
        from tladapt.data.datasets import load_domain
        def load(name):  # webcam's labels permuted at random; other domains as bundled
            d = load_domain("office_caltech10_surf", name)
            if name != "webcam":
                return d
            y = d.y[torch.randperm(len(d.y), generator=torch.Generator().manual_seed(123))]
            return Domain(d.name, d.x, y, d.classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "scrambled_surf:load"


def module_state(result):
    return torch.load(Path(result["run_dir"]) / "checkpoint.pt", weights_only=True)["modules"]


@pytest.mark.parametrize("options", [AE, SIMCLR])
def test_pretraining_never_reads_source_labels(fast_config, scrambled, options):
    plain = module_state(run_experiment(fast_config(*options))[0])
    mixed = module_state(run_experiment(fast_config(*options, f"data.dataset='{scrambled}'"))[0])
    assert plain.keys() == mixed.keys()
    assert all(torch.equal(plain[k], mixed[k]) for k in plain)  # bit-identical models
    # the test can fail: with the labels read (source loss on), scrambled labels change the model
    read = [o for o in options if not o.startswith("data.source_labels")]
    a = module_state(run_experiment(fast_config(*read))[0])
    b = module_state(run_experiment(fast_config(*read, f"data.dataset='{scrambled}'"))[0])
    assert not torch.equal(a["backbone.0.weight"], b["backbone.0.weight"])


def test_a_pretrained_backbone_transfers_by_init_from_and_by_features(fast_config):
    [pre] = run_experiment(fast_config(*AE))
    saved = module_state(pre)
    t = make_trainer(fast_config("data.target_labels_per_class=3", "trainer.source_weight=0",
                                 f"model.init_from='{pre['run_dir']}'", "plugins.finetune.init='source'"))
    assert torch.equal(t.backbone[0].weight, saved["backbone.0.weight"])
    assert t.init_report["head"].startswith("new")  # the pre-training run's head was never trained: not loaded
    results = t.fit()
    assert 0 <= results["final"]["oracle/target_acc"] <= 100
    [lin] = run_feature_transfer(fast_config("data.target_labels_per_class=3"), pre["run_dir"], "backbone")
    assert lin["transfer"]["n_train"] == 30
