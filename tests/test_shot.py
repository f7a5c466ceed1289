"""SHOT: centroid pseudo-labels against a NumPy/SciPy transcription of the paper's procedure, and the
plugin in a source-free run from a source checkpoint."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from tladapt.config import ConfigError
from tladapt.experiment import run_experiment
from tladapt.prediction_losses import information_maximization
from tladapt.pseudo_labels import centroid_pseudo_labels

from helpers import host_reads, make_trainer


def shot_labels_numpy(features, probs, rounds=1, threshold=0):
    """SHOT's obtain_label (Liang et al., ICML 2020, Eqs. 4-6), in NumPy/SciPy."""
    f = np.hstack([features, np.ones((len(features), 1))])
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    k = probs.shape[1]
    counts = np.eye(k)[probs.argmax(1)].sum(0)
    labelset = np.where(counts > threshold)[0]
    aff = probs
    for _ in range(rounds + 1):
        centroids = aff.T @ f / (1e-8 + aff.sum(0)[:, None])
        labels = labelset[cdist(f, centroids[labelset], "cosine").argmin(1)]
        aff = np.eye(k)[labels]
    return labels


@pytest.mark.parametrize("rounds, threshold", [(0, 0), (1, 0), (2, 3)])
def test_centroid_pseudo_labels_equal_shots_procedure(rounds, threshold):
    gen = torch.Generator().manual_seed(rounds)
    centres = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 3
    truth = torch.randint(0, 5, (200,), generator=gen)
    features = centres[truth] + torch.randn(200, 6, generator=gen, dtype=torch.float64)
    logits = torch.randn(200, 5, generator=gen, dtype=torch.float64) + 2 * torch.nn.functional.one_hot(truth, 5)
    logits[:, 4] -= 4  # class 4 is rarely predicted: below the threshold it is no cluster
    probs = logits.softmax(1)
    labels, centroids = centroid_pseudo_labels(features, probs, rounds, threshold)
    expected = shot_labels_numpy(features.numpy(), probs.numpy(), rounds, threshold)
    assert labels.tolist() == expected.tolist()
    assert centroids.shape == (5, 7)
    if threshold:
        assert 4 not in labels.tolist() and (probs.argmax(1) == 4).sum() <= threshold


def test_centroid_pseudo_labels_check_their_inputs():
    with pytest.raises(ValueError, match="same n"):
        centroid_pseudo_labels(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="rounds"):
        centroid_pseudo_labels(torch.zeros(3, 2), torch.zeros(3, 2), rounds=-1)


@pytest.fixture
def source_run(fast_config):
    [result] = run_experiment(fast_config("trainer.steps=60"))
    return result["run_dir"]


def shot_config(fast_config, source_run, *extra):
    return fast_config("data.source_free=true", f"model.init_from='{source_run}'", "plugins.shot={}", *extra)


def test_shot_starts_from_the_source_models_centroid_labels_and_trains_the_im_and_pseudo_label_terms(
        fast_config, source_run):
    t = make_trainer(shot_config(fast_config, source_run, "plugins.shot.weight_pseudo_label=0.5"))
    plugin = t.pm.get_plugin("shot")
    assert all(not p.requires_grad for p in t.head.parameters())  # the source hypothesis is frozen
    assert all(p is not t.head.weight for g in t.optimizer.param_groups for p in g["params"])
    t.start()
    with torch.no_grad():
        t.modules.eval()
        f = t.target.map(t.backbone)
        expected, _ = centroid_pseudo_labels(f, t.head(f).softmax(1))
    assert torch.equal(plugin.labels, expected)
    assert plugin.every == math.ceil(157 / 16)  # one target epoch of dslr
    batch = t.pipeline.next()
    out = t.forward(batch)
    terms = t.losses(batch, out)
    assert set(terms) == {"im", "pseudo_label"}
    assert terms["im"].value.item() == pytest.approx(information_maximization(out.logits_t).item(), rel=1e-6)
    ce = torch.nn.functional.cross_entropy(out.logits_t, plugin.labels[batch.idx_t])
    assert terms["pseudo_label"].weight == 0.5 and terms["pseudo_label"].value.item() == pytest.approx(ce.item())


def test_shot_refreshes_once_per_target_epoch_without_a_host_sync(fast_config, source_run, monkeypatch):
    t = make_trainer(shot_config(fast_config, source_run, "trainer.log_every=50"))
    plugin = t.pm.get_plugin("shot")
    t.start()
    first = plugin.labels
    assert host_reads(t, monkeypatch, 12) == []  # steps 0..11, with the refresh after step 9
    assert plugin.refreshed_at == 9 and plugin.labels is not first


def test_shot_im_only_and_a_fixed_refresh_interval(fast_config, source_run):
    t = make_trainer(shot_config(fast_config, source_run, "plugins.shot.weight_pseudo_label=0.0",
                                 "plugins.shot.refresh_every=3", "plugins.shot.diversity=false"))
    t.start()
    batch = t.pipeline.next()
    out = t.forward(batch)
    terms = t.losses(batch, out)
    assert set(terms) == {"im"}  # SHOT-IM
    assert terms["im"].value.item() == pytest.approx(information_maximization(out.logits_t, False).item(), rel=1e-6)
    assert t.pm.get_plugin("shot").every == 3


def test_shot_source_free_run_end_to_end_keeps_the_head_and_reports_its_oracle(fast_config, source_run):
    saved = torch.load(f"{source_run}/checkpoint.pt", weights_only=True)["modules"]
    [result] = run_experiment(shot_config(fast_config, source_run, "trainer.checkpoint=true"))
    after = torch.load(f"{result['run_dir']}/checkpoint.pt", weights_only=True)["modules"]
    assert torch.equal(after["head.weight"], saved["head.weight"]) and torch.equal(after["head.bias"], saved["head.bias"])
    assert not torch.equal(after["backbone.0.weight"], saved["backbone.0.weight"])
    assert 0 <= result["final"]["oracle/shot_pseudo_label_acc"] <= 100


def test_shot_state_round_trips(fast_config, source_run):
    t = make_trainer(shot_config(fast_config, source_run))
    t.start()
    plugin = t.pm.get_plugin("shot")
    state = plugin.tladapt_state_dict(t)
    assert set(state) == {"labels", "refreshed_at"} and state["labels"].dtype == torch.int64
    other = make_trainer(shot_config(fast_config, source_run)).pm.get_plugin("shot")
    other.tladapt_load_state_dict(t, {k: v.cpu() if torch.is_tensor(v) else v for k, v in state.items()})
    assert torch.equal(other.labels, plugin.labels) and other.refreshed_at == -1


def test_shot_needs_a_source_model(fast_config):
    with pytest.raises(ConfigError, match="plugins.shot adapts a source model"):
        make_trainer(fast_config("plugins.shot={}"))
