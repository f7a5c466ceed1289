"""The instance_weighting plugin: weights, their reduction in the loss, logging, composition.

The estimators themselves are tested in test_weighting.py; here: the plugin's weights are
exactly the estimator's on ``trainer.source`` vs ``trainer.target`` (clipped, mean 1),
the trainer's source term is the weighted cross-entropy recomputed independently,
what duplicating a source sample does to the other weights (per estimator), feature-space
refreshes, the logged diagnostics, no host sync in the step, and bad options.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tladapt.config import ConfigError
from tladapt.experiment import prepare, run_experiment
from tladapt.weighting import KLIEP, DiscriminativeRatio, kmm_weights
from tladapt_plugins.instance_weighting import (
    InstanceWeighting,
    clip_and_normalize,
    effective_sample_size,
    estimate_weights,
)

from helpers import host_reads, make_trainer, step_terms

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
IW = "plugins.instance_weighting"


def plugin_of(t):
    return next(p for p in t.pm.get_plugins() if isinstance(p, InstanceWeighting))


def tags_of(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def gaussians(n_s=40, n_t=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n_s, 2, generator=g, dtype=torch.float64)
    xt = torch.randn(n_t, 2, generator=g, dtype=torch.float64) + torch.tensor([0.7, 0.0], dtype=torch.float64)
    return xs, xt


# ------------------------------------------------------------------ weights in the run
@pytest.mark.parametrize("estimator", ["kmm", "kliep", "discriminative"])
def test_fit_start_weights_are_the_estimators_on_the_training_split(fast_config, estimator):
    t = make_trainer(fast_config(f"{IW}.estimator='{estimator}'"))
    t.start()
    p = plugin_of(t)
    n_s = len(t.source)
    assert p.weights.shape == (n_s,) and p.weights.dtype == torch.float32 and p.weights.device == t.device
    assert float(p.weights.double().mean()) == pytest.approx(1.0, abs=1e-6)
    raw, _ = estimate_weights(t.source.inputs(), t.target.inputs(), p.options, seed=t.seed)
    torch.testing.assert_close(p.weights, (raw.double() * n_s / raw.double().sum()).float())
    batch = t.pipeline.next()
    assert torch.equal(p.tladapt_source_weights(batch), p.weights[batch.idx_s])


def test_source_term_is_the_weighted_ce_and_composes_with_dann(fast_config):
    config = fast_config(f"{IW}.estimator='discriminative'", f"{IW}.clip=3.0", "plugins.dann.hidden=[16]")
    t = make_trainer(config)
    batch, out, terms = step_terms(t)
    assert set(terms) == {"source", "domain"}
    w = plugin_of(t).weights
    assert float(w.max()) <= 3.0 + 1e-6 and float(w.double().mean()) == pytest.approx(1.0, abs=1e-6)
    # independently: per-sample CE from log-softmax, weights gathered by index, plain batch mean
    logp = out.logits_s.detach().double().log_softmax(1)
    ce = -logp[torch.arange(len(batch.y_s)), batch.y_s]
    expected = (w.double()[batch.idx_s] * ce).sum() / len(batch.y_s)
    source = float(terms["source"].value.detach())
    assert source == pytest.approx(float(expected), rel=1e-5)
    assert source != pytest.approx(float(ce.mean()), rel=1e-4)  # the weights matter

    [result] = run_experiment(config)
    assert result["method"] == "dann+instance_weighting"
    info = result["instance_weighting"]
    assert info["estimator"] == "discriminative" and info["estimates"] == 1 and info["max"] <= 3.0 + 1e-6
    acc = tags_of(result["run_dir"])
    scalars = acc.Tags()["scalars"]
    for tag in ("loss/source", "loss/domain", "weights/ess", "weights/ess_fraction", "weights/max",
                "weights/estimate_seconds"):
        assert tag in scalars, tag
    assert [e.step for e in acc.Scalars("weights/ess")] == [15, 30]
    assert "weights/histogram" in acc.Tags()["histograms"]
    final = result["final"]
    assert final["weights/ess_fraction"] == pytest.approx(final["weights/ess"] / info["n_source"])


def test_composes_with_dann_mmd_and_coral_in_one_run(fast_config):
    config = fast_config("plugins.dann.hidden=[16]", "plugins.mmd.weight=0.5", "plugins.coral.weight=1.0",
                         f"{IW}.estimator='kliep'", f"{IW}.kliep_folds=3", "trainer.steps=10",
                         "trainer.eval_every=10")
    t = make_trainer(config)
    batch, out, terms = step_terms(t)
    assert set(terms) == {"source", "domain", "mmd", "coral"}
    ce = F.cross_entropy(out.logits_s, batch.y_s, reduction="none")
    assert float(terms["source"].value.detach()) == pytest.approx(float((ce * plugin_of(t).weights[batch.idx_s]).mean().detach()))
    [result] = run_experiment(config)
    assert result["method"] == "coral+dann+instance_weighting+mmd"


def test_ess_and_max_logged_are_those_of_the_weights(fast_config):
    t = make_trainer(fast_config(f"{IW}.estimator='kmm'"))
    t.start()
    metrics = t.evaluate()
    w = plugin_of(t).weights.double()
    assert metrics["weights/ess"] == pytest.approx(float(w.sum() ** 2 / (w * w).sum()), rel=1e-6)
    assert metrics["weights/max"] == pytest.approx(float(w.max()), rel=1e-6)
    assert metrics["weights/sigma"] > 0 and metrics["weights/estimate_seconds"] > 0


def test_feature_space_is_refreshed_every_k_steps_in_eval_mode(fast_config):
    t = make_trainer(fast_config(f"{IW}.estimator='discriminative'", f"{IW}.space='features'",
                                 f"{IW}.refresh_every=10", "model.dropout=0.5"))
    p = plugin_of(t)
    seen = []
    original = t.backbone.forward

    def spy(x):
        seen.append((torch.is_grad_enabled(), t.backbone.training))
        return original(x)

    t.backbone.forward = spy
    t.start()
    assert seen and all(s == (False, False) for s in seen)  # no_grad, eval mode
    assert t.modules.training  # restored for training
    first = p.weights.clone()
    for _ in range(30):
        t.advance()
    assert p.estimates == 3  # fit start, after step 10, after step 20 (not after the last step)
    assert not torch.equal(first, p.weights)  # the backbone trained, so the features moved
    assert t.modules.training


# ------------------------------------------------------------------ duplicating a source sample
def test_duplicating_a_sample_kmm_keeps_the_other_masses_and_splits_its_own():
    """KMM (Huang et al. 2007) weights the *empirical* source: duplicating x_j leaves every other
    sample's share q_i = w_i / sum(w) of the weighted source unchanged, and the two copies share
    x_j's old mass (the weighted mean embedding is the same function of the masses). So the
    mean-1 weights w_i = n_s q_i of the others are multiplied by exactly (n_s + 1) / n_s, and the
    weighted risk sum_i q_i CE_i is unchanged. Exact when no bound is active: eps = 0, or the
    sum constraint slack (here, with the paper's eps), and no weight at B."""
    xs, xt = gaussians()
    dup = torch.cat([xs, xs[3:4]])
    others = [i for i in range(40) if i != 3]
    for eps in (0.0, None):
        w = kmm_weights(xs, xt, sigma=1.0, eps=eps).double()
        wd = kmm_weights(dup, xt, sigma=1.0, eps=eps).double()
        q, qd = w / w.sum(), wd / wd.sum()
        torch.testing.assert_close(qd[others], q[others], atol=1e-6, rtol=0)
        assert float(qd[3] + qd[40]) == pytest.approx(float(q[3]), abs=1e-6)
        wn, wdn = clip_and_normalize(w, None, True), clip_and_normalize(wd, None, True)
        torch.testing.assert_close(wdn[others], wn[others] * 41 / 40, atol=5e-5, rtol=0)


@pytest.mark.parametrize("estimator", ["kliep", "discriminative"])
def test_duplicating_a_sample_pointwise_estimators(estimator):
    """KLIEP and the discriminative ratio model w(x) as a function of x: given the fitted
    model, a copy gets exactly the original's weight and the others' raw weights do not
    change at all (after mean-1 normalisation they share one factor). Refitting on the
    duplicated sample does change the others: the duplicate is evidence of a higher source
    density at x_j, which the fit (KLIEP's source-mean constraint, the domain classifier's
    training set) spreads to its neighbours; this is not a defect but it means the
    'others unchanged' property does not hold for the fitted estimators."""
    xs, xt = gaussians()
    dup = torch.cat([xs, xs[3:4]])
    model = KLIEP(1.0, seed=0) if estimator == "kliep" else DiscriminativeRatio()
    model.fit(xs, xt)
    w, wd = model.weights(xs), model.weights(dup)
    assert torch.equal(wd[:40], w) and wd[40] == wd[3]
    wn, wdn = clip_and_normalize(w, None, True), clip_and_normalize(wd, None, True)
    torch.testing.assert_close(wdn[:40] / wdn[0], wn / wn[0])
    refit = (KLIEP(1.0, seed=0) if estimator == "kliep" else DiscriminativeRatio()).fit(dup, xt).weights(dup)
    assert refit[40] == refit[3]
    assert not torch.allclose(refit[:40] / refit[0], w / w[0], rtol=1e-3)


# ------------------------------------------------------------------ helpers and options
def test_clip_and_normalize_caps_and_keeps_mean_one():
    w = torch.tensor([10.0, 4.0, 1.0, 1.0, 0.5, 0.0, 0.5, 3.0])
    out = clip_and_normalize(w, 2.0, True)
    assert float(out.max()) == pytest.approx(2.0) and float(out.mean()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(out > 0, w > 0)
    unclipped = out < 2.0 - 1e-12  # one common scale on the weights below the cap
    ratio = out[unclipped & (w > 0)] / w[unclipped & (w > 0)]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))
    assert torch.equal(clip_and_normalize(w, 2.0, False), w.double().clamp(max=2.0))
    torch.testing.assert_close(clip_and_normalize(w, None, True), w.double() / w.double().mean())
    assert effective_sample_size(torch.ones(7)) == pytest.approx(7.0)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)


def test_weights_move_the_source_mean_to_the_target_on_shifted_gaussians():
    """Source N(0, I), target shifted by 0.7 along x_0: every estimator's weighted source mean
    moves most of the way to the target's (KMM matches the kernel mean by construction;
    its individual weights are not pointwise ratio estimates, so no correlation test)."""
    xs, xt = gaussians(200, 200, seed=1)
    gap = float(xt[:, 0].mean() - xs[:, 0].mean())
    for estimator in ("kmm", "kliep", "discriminative"):
        w, info = estimate_weights(xs.float(), xt.float(), InstanceWeighting.Options(estimator=estimator))
        q = w.double() / w.double().sum()
        moved = float(q @ xs[:, 0] - xs[:, 0].mean())
        assert 0.6 * gap < moved < 1.3 * gap, (estimator, moved, gap)


@pytest.mark.parametrize("override, key", [
    (f"{IW}.estimator='kmeans'", "estimator"),
    (f"{IW}.space='logits'", "space"),
    (f"{IW}.sigma=-1.0", "sigma"),
    (f"{IW}.kmm_B=0.0", "kmm_B"),
    (f"{IW}.kliep_folds=1", "kliep_folds"),
    (f"{IW}.kliep_centers=0", "kliep_centers"),
    (f"{IW}.disc_C=0.0", "disc_C"),
    (f"{IW}.clip=0.5", "clip"),
    (f"{IW}.refresh_every=-1", "refresh_every"),
    (f"{IW}.bandwidth=1.0", "bandwidth"),
])
def test_bad_options_fail_before_training_naming_the_key(fast_config, override, key):
    with pytest.raises(ConfigError, match=rf"plugins\.instance_weighting\.{key}"):
        run_experiment(fast_config(override))


def test_source_weights_make_no_host_sync(fast_config, monkeypatch):
    t = make_trainer(fast_config(f"{IW}.estimator='kliep'", f"{IW}.kliep_folds=2", "trainer.log_every=10"))
    t.start()
    assert host_reads(t, monkeypatch, 9) == []


@pytest.mark.parametrize("path", sorted((EXPERIMENTS / "amazon_reviews").glob("*.toml"))
                         + [EXPERIMENTS / "office_caltech10" / f"{e}.toml" for e in ("kmm", "kliep", "discriminative")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_experiment_configs_load(path):
    from tladapt.config import load_config

    config, active = prepare(load_config(path, []))
    assert config.trainer.threads == 1 and config.data.source_val_fraction > 0
    if path.stem in ("kmm", "kliep", "discriminative"):
        assert [info.name for info, _ in active] == ["instance_weighting"]
        assert active[0][1]["estimator"] == path.stem
    json.dumps(config.to_dict())
