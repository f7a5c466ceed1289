"""TCA / JDA / BDA: the torch solver against SciPy's generalised eigensolver and a NumPy
transcription of the authors' MATLAB code, the JDA paper's digit numbers, and the `jda` plugin."""

import numpy as np
import pytest
import scipy.linalg
import torch

import tladapt
from tladapt.config import ConfigError
from tladapt.data.datasets import load_domain
from tladapt.errors import PluginError
from tladapt.experiment import run_experiment
from tladapt.subspace import (SubspaceOptions, fit_subspace, kernel_matrix, mmd_matrix_factors, nearest_neighbour,
                              transfer_projection)

from helpers import make_trainer


# ---------------------------------------------------------------- NumPy transcription of JDA.m
def np_mmd_matrix(ys, yt, nt, c, method="jda", mu=0.5):
    """JDA.m / BDA.m: M = C e0 e0' (+ sum_c e_c e_c'), BDA's (1 - mu), mu balance, / ||M||_F."""
    ns = len(ys)
    n = ns + nt
    e = np.r_[np.full(ns, 1 / ns), np.full(nt, -1 / nt)][:, None]
    m0 = e @ e.T * (c if method != "tca" else 1)
    n_ = np.zeros((n, n))
    if yt is not None and method != "tca":
        for k in range(c):
            e = np.zeros((n, 1))
            if (ys == k).sum():
                e[:ns][ys == k] = 1 / (ys == k).sum()
            if (yt == k).sum():
                e[ns:][yt == k] = -1 / (yt == k).sum()
            n_ += e @ e.T
    share = 0.5 if method == "jda" else mu
    m = m0 if yt is None or method == "tca" else (1 - share) * m0 + share * n_
    return m / np.linalg.norm(m, "fro")


def np_jda(xs, ys, xt, c, dim, lam, kernel, iterations, method="jda", mu=0.5):
    x = np.vstack([xs, xt])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = x if kernel == "primal" else x @ x.T
    n, ns = len(x), len(xs)
    h = np.eye(n) - 1.0 / n
    yt, history = None, []
    for _ in range(1 if method == "tca" else iterations):
        m = np_mmd_matrix(ys, yt, len(xt), c, method, mu)
        p = k.T @ m @ k + lam * np.eye(k.shape[1])
        q = k.T @ h @ k
        _, v = scipy.linalg.eigh(q, p)  # ascending 1/phi: the last ones are the smallest phi
        a = v[:, ::-1][:, :dim]
        z = k @ a
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        d = ((z[ns:, None, :] - z[None, :ns, :]) ** 2).sum(-1)
        yt = ys[d.argmin(1)]
        history.append(yt)
    return a, np.array(history)


def _data(seed=0, ns=40, nt=30, m=12, c=3):
    g = np.random.default_rng(seed)
    ys = g.integers(0, c, ns)
    centres = g.normal(size=(c, m)) * 2
    xs = centres[ys] + g.normal(size=(ns, m))
    xt = centres[g.integers(0, c, nt)] + g.normal(size=(nt, m)) + 1.5
    return xs, ys, xt


@pytest.mark.parametrize("method, mu", [("jda", 0.5), ("bda", 0.2), ("tca", 0.5)])
def test_mmd_matrix_factors_equal_the_dense_matlab_matrix(method, mu):
    g = np.random.default_rng(1)
    ys, yt = g.integers(0, 4, 9), g.integers(0, 4, 7)
    yt[yt == 2] = 3  # a class no target sample is pseudo-labelled with: its e_c has no target part
    e, w = mmd_matrix_factors(torch.from_numpy(ys), 7, 4, torch.from_numpy(yt), method, mu)
    dense = (e * w) @ e.T
    assert np.allclose(dense.numpy(), np_mmd_matrix(ys, yt, 7, 4, method, mu), atol=1e-14)
    assert torch.linalg.matrix_norm(dense).item() == pytest.approx(1.0, rel=1e-12)
    first, w0 = mmd_matrix_factors(torch.from_numpy(ys), 7, 4)  # no pseudo-labels yet: the marginal term
    assert np.allclose(((first * w0) @ first.T).numpy(), np_mmd_matrix(ys, None, 7, 4), atol=1e-14)


def test_bda_at_one_half_is_jda():
    ys, yt = torch.tensor([0, 1, 1, 2]), torch.tensor([2, 2, 0])
    e1, w1 = mmd_matrix_factors(ys, 3, 3, yt, "jda")
    e2, w2 = mmd_matrix_factors(ys, 3, 3, yt, "bda", 0.5)
    assert torch.allclose((e1 * w1) @ e1.T, (e2 * w2) @ e2.T, atol=1e-15)


@pytest.mark.parametrize("kernel", ["primal", "linear", "rbf"])
def test_transfer_projection_equals_scipys_generalised_eigenvectors(kernel):
    xs, ys, xt = _data()
    x = torch.from_numpy(np.vstack([xs, xt]))
    k = x if kernel == "primal" else kernel_matrix(kernel, x, x, 0.05)
    e, w = mmd_matrix_factors(torch.from_numpy(ys), len(xt), 3)
    a = transfer_projection(k, e, w, 5, lam=0.3)
    kn, m = k.numpy(), np_mmd_matrix(ys, None, len(xt), 3)
    p = kn.T @ m @ kn + 0.3 * np.eye(kn.shape[1])
    h = np.eye(len(kn)) - 1 / len(kn)
    _, v = scipy.linalg.eigh(kn.T @ h @ kn, p)
    ref = v[:, ::-1][:, :5]
    ref = ref * np.sign(ref[np.abs(ref).argmax(0), range(5)])  # the same sign convention
    assert np.allclose(a.numpy(), ref, atol=1e-8 * np.abs(ref).max())
    assert np.allclose(a.numpy().T @ p @ a.numpy(), np.eye(5), atol=1e-9)  # P-normalised, like SciPy


def test_transfer_projection_checks_its_arguments():
    k, (e, w) = torch.randn(6, 4, dtype=torch.float64), mmd_matrix_factors(torch.tensor([0, 1, 0]), 3, 2)
    with pytest.raises(ValueError, match="dim must lie in 1..4"):
        transfer_projection(k, e, w, 5, 0.1)
    with pytest.raises(ValueError, match="lam must be > 0"):
        transfer_projection(k, e, w, 2, 0.0)


@pytest.mark.parametrize("kernel, method", [("primal", "jda"), ("linear", "jda"), ("linear", "bda"),
                                            ("primal", "tca")])
def test_fit_subspace_follows_the_authors_algorithm(kernel, method):
    xs, ys, xt = _data(seed=2)
    options = SubspaceOptions(method=method, dim=4, lam=0.5, kernel=kernel, iterations=4, mu=0.3)
    fit = fit_subspace(torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(xt), 3, options)
    _, history = np_jda(xs, ys, xt, 3, 4, 0.5, kernel, 4, method, 0.3)
    assert fit.pseudo_labels.numpy().tolist() == history.tolist()
    assert fit.pseudo_labels.shape == ((1 if method == "tca" else 4), len(xt))
    z = fit.embed(torch.from_numpy(xs))  # the source embedding the last 1-NN used
    assert torch.allclose(z.norm(dim=1), torch.ones(len(xs), dtype=torch.float64))
    assert torch.equal(nearest_neighbour(z, torch.from_numpy(ys), fit.embed(torch.from_numpy(xt))),
                       fit.pseudo_labels[-1])


def test_jda_on_real_surf_equals_the_numpy_transcription():
    s, t = load_domain("office_caltech10_surf", "webcam"), load_domain("office_caltech10_surf", "dslr")
    options = SubspaceOptions(dim=100, lam=1.0, kernel="linear", iterations=3)
    fit = fit_subspace(s.x.double(), s.y, t.x.double(), 10, options)
    _, history = np_jda(s.x.double().numpy(), s.y.numpy(), t.x.double().numpy(), 10, 100, 1.0, "linear", 3)
    assert fit.pseudo_labels.numpy().tolist() == history.tolist()


@pytest.mark.slow
@pytest.mark.parametrize("source, target, paper", [("usps", "mnist", 59.65), ("mnist", "usps", 67.28)])
def test_jda_reproduces_the_papers_digit_numbers_within_half_a_point(source, target, paper):
    """JDA (ICCV 2013) Table 2 with the released code's settings: primal, k = 100, λ = 0.1, T = 10."""
    s, t = load_domain("mnist_usps_jda", source), load_domain("mnist_usps_jda", target)
    options = SubspaceOptions(dim=100, lam=0.1, kernel="primal", iterations=10)
    fit = fit_subspace(s.x.reshape(len(s), -1).double(), s.y, t.x.reshape(len(t), -1).double(), 10, options)
    accuracy = 100.0 * (fit.pseudo_labels[-1] == t.y).double().mean().item()
    assert accuracy == pytest.approx(paper, abs=0.5)


# ---------------------------------------------------------------- the jda plugin
def test_the_plugin_embeds_every_domain_and_the_backbone_reads_the_embedding(fast_config):
    from tladapt.data.tasks import load_task, split_task

    config = fast_config("plugins.jda.dim=20", "plugins.jda.iterations=2", "plugins.jda.kernel='linear'",
                         "plugins.jda.lam=1.0", "data.target_labels_per_class=1")
    t = make_trainer(config)
    plugin = t.pm.get_plugin("jda")
    for domain in (t.source, t.source_val, t.target, t.target_labelled):
        assert domain.input_shape == (20,) and domain.x.dtype == torch.float32
        assert torch.allclose(domain.x.norm(dim=1), torch.full((len(domain),), 20 ** 0.5), atol=1e-5)
    assert t.backbone[0].in_features == 20
    # the fit is fit_subspace on the run's raw source training split and unlabelled target
    raw = split_task(t.config.data, *load_task(t.config.data, "webcam->dslr"), t.seed)
    fit = fit_subspace(raw.source.inputs().double(), raw.source.y, raw.target_rest.inputs().double(), 10,
                       SubspaceOptions(dim=20, lam=1.0, kernel="linear", iterations=2))
    assert torch.equal(fit.pseudo_labels, plugin.fit.pseudo_labels)
    assert torch.allclose(t.source_val.x, (fit.embed(raw.source_val.inputs()) * 20 ** 0.5).float(), atol=1e-5)


def test_the_plugin_reports_the_oracle_1nn_accuracy_and_composes_with_deep_plugins(fast_config):
    [result] = run_experiment(fast_config("plugins.jda.dim=30", "plugins.jda.iterations=2",
                                          "plugins.cdan.hidden=[16]", "plugins.self_training.threshold=0.5"))
    assert result["method"] == "cdan+jda+self_training"
    assert 0 <= result["final"]["oracle/jda_1nn_acc"] <= 100
    assert len(result["jda"]["objective"]) == 2 and len(result["jda"]["pseudo_label_change"]) == 1


def test_the_plugin_state_checks_a_resumed_fit(fast_config):
    t = make_trainer(fast_config("plugins.jda.dim=10", "plugins.jda.iterations=2"))
    plugin = t.pm.get_plugin("jda")
    state = {k: v.cpu().clone() for k, v in plugin.tladapt_state_dict(t).items()}
    plugin.tladapt_load_state_dict(t, state)  # the same fit: fine
    state["projection"][0, 0] += 1e-9
    with pytest.raises(RuntimeError, match="cannot resume exactly"):
        plugin.tladapt_load_state_dict(t, state)


@pytest.mark.parametrize("overrides, message", [
    (["plugins.jda.dim=900"], r"plugins.jda.dim = 900 exceeds the problem's size, the input dimension \(800\)"),
    (["plugins.jda.dim=1000", "plugins.jda.kernel='linear'"], r"the number of source and target samples \(422\)"),
    (["plugins.jda={}", "data.source_labels=false"], "plugins.jda fits the subspace with the source labels"),
])
def test_the_plugin_refuses_what_it_cannot_fit(fast_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_trainer(fast_config(*overrides))


def test_a_transform_that_loses_samples_or_mixes_shapes_is_refused(fast_config):
    class Drops:
        @tladapt.hookimpl
        def tladapt_transform_domains(self, trainer):
            trainer.target = trainer.target.subset(torch.arange(5))

    class Mixes:
        @tladapt.hookimpl
        def tladapt_transform_domains(self, trainer):
            trainer.source = trainer.source.subset(torch.arange(len(trainer.source)))
            trainer.target = type(trainer.target)(trainer.target.name, trainer.target.x[:, :10], None,
                                                  trainer.target.classes)

    with pytest.raises(PluginError, match="changed trainer.target"):
        make_trainer(fast_config(), [("drops", Drops, {})])
    with pytest.raises(PluginError, match=r"left trainer.source with input shape \(800,\), the target's is \(10,\)"):
        make_trainer(fast_config(), [("mixes", Mixes, {})])
