"""The feature-alignment plugins `mmd` (DAN / JAN) and `coral` (Deep CORAL / closed-form CORAL).

Real bundled data (Office+Caltech10 SURF, webcam->dslr), real trainer batches, values
checked against :mod:`tladapt.discrepancy` and against independent NumPy formulas.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tladapt.config import ConfigError, load_config
from tladapt.discrepancy import DAN_SCALES, coral, coral_transform, jmmd, mmd
from tladapt.experiment import prepare, run_experiment
from tladapt_plugins.coral import coral_matrix
from tladapt_plugins.mmd import JAN_SOFTMAX_SIGMA2

from helpers import host_reads, make_trainer, step_terms

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def scalars(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ------------------------------------------------------------------ independent NumPy references
def np_sq_dists(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def np_pooled_median(x, y):
    z = np.concatenate([x, y])
    d = np_sq_dists(z, z)
    return float(np.median(d[np.triu_indices(len(z), 1)]))


def np_kernel_blocks(x, y, sigma2s):
    k = lambda a, b: np.mean([np.exp(-np_sq_dists(a, b) / (2 * s)) for s in sigma2s], axis=0)  # noqa: E731
    return k(x, x), k(y, y), k(x, y)


def np_biased(kxx, kyy, kxy):
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def np64(t):
    return t.detach().double().cpu().numpy()


# ------------------------------------------------------------------ mmd
@pytest.mark.parametrize("layer, estimator, bandwidth", [
    ("features", "biased", "median"),
    ("features", "unbiased", "mean"),
    ("features", "linear", "mean"),
    ("logits", "biased", 2.5),
])
def test_mmd_term_is_discrepancy_mmd_on_the_same_batch(fast_config, layer, estimator, bandwidth):
    bw = f"'{bandwidth}'" if isinstance(bandwidth, str) else bandwidth
    t = make_trainer(fast_config(f"plugins.mmd.layer='{layer}'", f"plugins.mmd.estimator='{estimator}'",
                                 f"plugins.mmd.bandwidth={bw}", "plugins.mmd.weight=0.7"))
    _, out, terms = step_terms(t)
    s, g = (out.features_s, out.features_t) if layer == "features" else (out.logits_s, out.logits_t)
    expected = mmd(s, g, bandwidth=bandwidth, estimator=estimator)
    assert set(terms) == {"source", "mmd"} and terms["mmd"].weight == 0.7
    assert terms["mmd"].value.dtype == torch.float32 and terms["mmd"].value.ndim == 0
    assert torch.equal(terms["mmd"].value, expected)
    assert terms["mmd"].value.requires_grad  # it trains the backbone


def test_dan_value_and_logged_bandwidth_match_numpy(fast_config):
    """DAN: five kernels sigma² = median × (0.25 .. 4) of the pooled batch; biased MMD²."""
    t = make_trainer(fast_config("plugins.mmd={}"))  # every option at its default
    _, out, terms = step_terms(t)
    logged = t.logger.flush(1)
    xs, xt = np64(out.features_s), np64(out.features_t)
    median = np_pooled_median(xs, xt)
    want = np_biased(*np_kernel_blocks(xs, xt, [median * s for s in DAN_SCALES]))
    assert terms["mmd"].value.item() == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert logged["mmd/sigma2"] == pytest.approx(median, rel=1e-5)


def test_joint_mmd_is_jan_product_kernel_against_numpy(fast_config):
    t = make_trainer(fast_config("plugins.mmd.layer='joint'", "plugins.mmd.bandwidth='mean'"))
    _, out, terms = step_terms(t)
    logged = t.logger.flush(1)
    fs, ft = np64(out.features_s), np64(out.features_t)
    ps, pt = np64(F.softmax(out.logits_s, 1)), np64(F.softmax(out.logits_t, 1))
    z = np.concatenate([fs, ft])
    mean = float(np_sq_dists(z, z)[np.triu_indices(len(z), 1)].mean())
    f_blocks = np_kernel_blocks(fs, ft, [mean * s for s in DAN_SCALES])
    p_blocks = np_kernel_blocks(ps, pt, [0.92 ** 2])
    want = np_biased(*(a * b for a, b in zip(f_blocks, p_blocks)))
    assert terms["mmd"].value.item() == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert torch.equal(terms["mmd"].value, jmmd([out.features_s, out.logits_s.softmax(1)],
                                                 [out.features_t, out.logits_t.softmax(1)],
                                                 bandwidths=["mean", JAN_SOFTMAX_SIGMA2]))
    assert logged["mmd/sigma2"] == pytest.approx(mean, rel=1e-5)
    assert logged["mmd/sigma2_softmax"] == pytest.approx(0.8464)


def test_explicit_scales_are_the_kernels(fast_config):
    t = make_trainer(fast_config("plugins.mmd.bandwidth=3.0", "plugins.mmd.scales=[1.0, 4.0]"))
    _, out, terms = step_terms(t)
    xs, xt = np64(out.features_s), np64(out.features_t)
    want = np_biased(*np_kernel_blocks(xs, xt, [3.0, 12.0]))
    assert terms["mmd"].value.item() == pytest.approx(want, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("plugin, term", [("mmd", "mmd"), ("coral", "coral")])
def test_progressive_schedule_ramps_the_weight_from_zero(fast_config, plugin, term):
    t = make_trainer(fast_config(f"plugins.{plugin}.schedule='progressive'", f"plugins.{plugin}.weight=2.0",
                                 f"plugins.{plugin}.gamma=5.0"))
    t.start()
    batch = t.pipeline.next()
    out = t.forward(batch)
    for progress in (0.0, 0.3, 0.9):
        t.progress = progress
        t.progress_tensor.fill_(progress)  # the schedule is computed on the device, in float32
        weight = t.losses(batch, out)[term].weight
        assert float(weight) == pytest.approx(2.0 * (2.0 / (1.0 + np.exp(-5.0 * progress)) - 1.0), rel=1e-6, abs=1e-7)
    assert t.logger.flush(1)[f"{plugin}/weight"] == pytest.approx(
        2.0 * np.mean([2.0 / (1.0 + np.exp(-5.0 * p)) - 1.0 for p in (0.0, 0.3, 0.9)]))


# ------------------------------------------------------------------ coral, deep
def test_deep_coral_term_is_discrepancy_coral_and_the_paper_formula(fast_config):
    t = make_trainer(fast_config("plugins.coral.weight=3.0"))
    _, out, terms = step_terms(t)
    assert set(terms) == {"source", "coral"} and terms["coral"].weight == 3.0
    assert torch.equal(terms["coral"].value, coral(out.features_s, out.features_t))
    xs, xt = np64(out.features_s), np64(out.features_t)
    d = xs.shape[1]
    want = ((np.cov(xs, rowvar=False) - np.cov(xt, rowvar=False)) ** 2).sum() / (4 * d * d)
    assert terms["coral"].value.item() == pytest.approx(want, rel=1e-4)


# ------------------------------------------------------------------ coral, closed form
def test_closed_form_recolours_the_source_once_and_leaves_the_target(fast_config):
    t = make_trainer(fast_config("plugins.coral.mode='closed_form'", "data.source_val_fraction=0.2"))
    train, val, target = t.source, t.source_val, t.target
    t.start()
    assert t.target is target  # the model is evaluated on the untouched target inputs
    assert torch.equal(t.source.y, train.y) and t.source.name == train.name
    assert t.source.x.dtype == torch.float32 and t.source.x.shape == train.x.shape

    # independent NumPy: A = (C_s + I)^(-1/2) (C_t + I)^(1/2), eigendecompositions in float64
    def sym_power(m, p):
        w, v = np.linalg.eigh(m)
        return (v * w ** p) @ v.T

    xs, xt = np64(train.x), np64(target.x)
    eye = np.eye(xs.shape[1])
    cs, ct = np.cov(xs, rowvar=False) + eye, np.cov(xt, rowvar=False) + eye
    a = sym_power(cs, -0.5) @ sym_power(ct, 0.5)
    np.testing.assert_allclose(np64(t.source.x), xs @ a, atol=2e-4)
    np.testing.assert_allclose(np64(t.source_val.x), np64(val.x) @ a, atol=2e-4)  # the same map
    # re-coloured covariance: cov(X_s A) = A^T C_s A = (C_t + I) - A^T A  (exact for lam = 1)
    np.testing.assert_allclose(np.cov(xs @ a, rowvar=False), ct - a.T @ a, atol=1e-8)
    np.testing.assert_allclose(np.cov(np64(t.source.x), rowvar=False), ct - a.T @ a, atol=2e-3)
    # and the plugin's map is the core's coral_transform
    torch.testing.assert_close(t.source.x, coral_transform(train.x, target.x).float(), atol=2e-4, rtol=0)
    logged = t.logger.flush(1)
    assert logged["coral/input_coral_after"] < logged["coral/input_coral_before"]


def test_closed_form_trains_a_classifier_on_the_aligned_source(fast_config):
    [result] = run_experiment(fast_config("plugins.coral.mode='closed_form'", "trainer.steps=90",
                                          "trainer.eval_every=45"))
    tags = scalars(result["run_dir"])
    assert "loss/coral" not in tags and "coral/input_coral_before" in tags
    loss = [v for _, v in tags["loss/source"]]
    assert loss[-1] < 0.7 * loss[0]  # it learns the re-coloured source ...
    assert result["final"]["metrics/source_val_acc"] > 30  # ... well above chance (10 classes)


def test_coral_matrix_for_lam_zero_whitens_to_the_target_covariance():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(400, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    xt = torch.randn(300, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64)
    a = coral_matrix(xs, xt, lam=0.0)
    np.testing.assert_allclose(np.cov(np64(xs @ a), rowvar=False), np.cov(np64(xt), rowvar=False), atol=1e-9)
    with pytest.raises(ValueError, match="lam must be finite and >= 0"):
        coral_matrix(xs, xt, lam=-1.0)


def test_closed_form_on_images_is_a_clear_config_error(tmp_path):
    config = load_config(None, ["data.dataset='mnist_usps_jda'", "data.tasks=['usps->mnist']",
                                "plugins.coral.mode='closed_form'", f"experiment.runs_dir='{tmp_path}'",
                                "trainer.progress=false"], enable=["coral"])
    with pytest.raises(ConfigError, match=r"plugins.coral.mode = 'closed_form' .* inputs of shape \(1, 16, 16\).*mode = 'deep'"):
        make_trainer(config, task=("usps", "mnist"))


# ------------------------------------------------------------------ option validation
@pytest.mark.parametrize("override, message", [
    ("plugins.mmd.layer='feature'", r"plugins.mmd.layer: Input should be 'features', 'logits' or 'joint'"),
    ("plugins.mmd.estimator='quadratic'", r"plugins.mmd.estimator: Input should be 'biased', 'unbiased' or 'linear'"),
    ("plugins.mmd.bandwidth='medain'", r"plugins.mmd.bandwidth.*Input should be 'median' or 'mean'"),
    ("plugins.mmd.bandwidth=-1.0", r"plugins.mmd.bandwidth must be > 0, got -1.0"),
    ("plugins.mmd.bandwidth=nan", r"plugins.mmd.bandwidth must be a finite number, got nan"),
    ("plugins.mmd.scales=[1.0, 0.0]", r"plugins.mmd.scales\[1\] must be > 0, got 0.0"),
    ("plugins.mmd.joint_bandwidth=0.0", r"plugins.mmd.joint_bandwidth must be > 0, got 0.0"),
    ("plugins.mmd.weight=-0.5", r"plugins.mmd.weight must be >= 0, got -0.5"),
    ("plugins.mmd.kernels=5", r"unknown key plugins.mmd.kernels: valid keys are weight, schedule, gamma, layer, estimator"),
    ("plugins.coral.mode='closed'", r"plugins.coral.mode: Input should be 'deep' or 'closed_form'"),
    ("plugins.coral.lam=-1.0", r"plugins.coral.lam must be >= 0, got -1.0"),
    ("plugins.mmd.schedule='linear'", r"plugins.mmd.schedule: Input should be 'constant' or 'progressive'"),
    ("plugins.mmd.gamma=0.0", r"plugins.mmd.gamma must be > 0, got 0.0"),
    ("plugins.coral.gamma=-2.0", r"plugins.coral.gamma must be > 0, got -2.0"),
    ("plugins.coral.weight=inf", r"plugins.coral.weight must be a finite number, got inf"),
    ("plugins.coral.weight='big'", r"plugins.coral.weight: Input should be a valid number"),
])
def test_bad_options_fail_before_training_naming_the_key(fast_config, override, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(fast_config(override))


def test_estimators_that_need_pairs_reject_batch_size_one(fast_config):
    with pytest.raises(ConfigError, match=r"plugins.mmd.estimator = 'linear' needs at least 2 samples"):
        make_trainer(fast_config("plugins.mmd.estimator='linear'", "trainer.batch_size=1"))
    with pytest.raises(ConfigError, match=r"plugins.coral \(mode = 'deep'\) needs batch covariances"):
        make_trainer(fast_config("plugins.coral.weight=1.0", "trainer.batch_size=1"))


# ------------------------------------------------------------------ composition
def test_dann_mmd_and_coral_compose_in_one_run(fast_config):
    config = fast_config("plugins.dann.hidden=[16]", "plugins.dann.weight=0.3", "plugins.mmd.weight=0.5",
                         "plugins.coral.weight=2.0", "trainer.log_every=1")
    t = make_trainer(config)
    _, out, terms = step_terms(t)
    assert set(terms) == {"source", "domain", "mmd", "coral"}
    [result] = run_experiment(config)
    assert result["method"] == "coral+dann+mmd"
    tags = scalars(result["run_dir"])
    for tag in ("loss/source", "loss/domain", "loss/mmd", "loss/coral", "mmd/sigma2", "train/lambda"):
        assert len(tags[tag]) == 30, tag
    for step in range(30):  # log_every=1: each logged total is that step's weighted sum
        v = {k: tags[f"loss/{k}"][step][1] for k in ("source", "domain", "mmd", "coral", "total")}
        assert v["total"] == pytest.approx(v["source"] + 0.3 * v["domain"] + 0.5 * v["mmd"] + 2.0 * v["coral"],
                                           rel=1e-5, abs=1e-6)


def test_closed_form_coral_composes_with_dann_and_mmd(fast_config):
    [result] = run_experiment(fast_config("plugins.coral.mode='closed_form'", "plugins.dann.hidden=[16]",
                                          "plugins.mmd.layer='joint'"))
    tags = scalars(result["run_dir"])
    assert {"loss/domain", "loss/mmd", "coral/input_coral_after"} <= set(tags) and "loss/coral" not in tags


# ------------------------------------------------------------------ host syncs
def test_deep_coral_step_makes_no_host_sync(fast_config, monkeypatch):
    t = make_trainer(fast_config("plugins.coral.weight=1.0", "trainer.log_every=10"))
    t.start()
    assert host_reads(t, monkeypatch, 9) == []


def test_mmd_step_makes_no_host_sync(fast_config, monkeypatch):
    """Neither the plugin nor the kernel reads a value back to the host (the bandwidths and
    kernel coefficients stay device tensors)."""
    t = make_trainer(fast_config("plugins.mmd={}", "trainer.log_every=10"))
    t.start()
    assert host_reads(t, monkeypatch, 9) == []


# ------------------------------------------------------------------ the experiment configs
@pytest.mark.parametrize("bench, extra", [("office_caltech10", {"coral_closed_form": ["coral"]}),
                                          ("digits_jda", {})])
def test_experiment_configs_validate_and_share_one_base(bench, extra):
    methods = {}
    for name in ("source_only", "dan", "dan_ramp", "deep_coral", "deep_coral_bal", "dann", *extra):
        config, active = prepare(load_config(EXPERIMENTS / bench / f"{name}.toml"))
        methods[config.experiment.method] = sorted(info.name for info, _ in active)
        base = load_config(EXPERIMENTS / bench / "base.toml")
        assert (config.data, config.model, config.trainer) == (base.data, base.model, base.trainer)
        assert config.experiment.seeds == [0, 1, 2]
    assert methods == {"source_only": [], "dan": ["mmd"], "dan_ramp": ["mmd"], "deep_coral": ["coral"],
                       "deep_coral_bal": ["coral"], "dann": ["dann"], **extra}
