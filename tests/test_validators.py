"""Validators: each built-in score against an independent NumPy/SciPy/scikit-learn computation
and, where the definitions coincide, against pytorch-adapt's validators and skada's scorers;
the hook that contributes them; their records in runs; trainer.keep_best."""

import json
import math
import re

import numpy as np
import pytest
import scipy.special
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_mutual_info_score
from sklearn.preprocessing import StandardScaler

from tladapt.cli import main
from tladapt.errors import ConfigError, PluginError
from tladapt.experiment import prepare, run_experiment
from tladapt.manager import make_plugin_manager
from tladapt.validators import CORE_VALIDATORS, EvalOutputs, available_validators, scores
from tladapt.validators.core import ClassAMI, MixVal

pa = pytest.importorskip("pytorch_adapt.validators")
skada_metrics = pytest.importorskip("skada.metrics")

RNG = np.random.default_rng(0)
LOGITS = torch.tensor(RNG.normal(size=(37, 5)) * 2.0, dtype=torch.float32)


def np_entropy(p):
    return -(p * np.log(p)).sum(1)


def softmax(logits):
    return scipy.special.softmax(logits.double().numpy(), axis=1)


def test_mean_entropy_against_numpy_pytorch_adapt_and_skada():
    p = softmax(LOGITS)
    ours = scores.mean_entropy(LOGITS)
    assert ours == pytest.approx(np_entropy(p).mean(), rel=1e-6)
    assert pa.EntropyValidator()(target_train={"logits": LOGITS}) == pytest.approx(-ours, rel=1e-6)
    # skada averages over the n x C terms and flips the sign: -H / C
    est = _Linear(np.eye(5))
    x = LOGITS.double().numpy()
    skada = skada_metrics.PredictionEntropyScorer()(est, x, np.full(len(x), -1), sample_domain=np.full(len(x), -1))
    assert skada == pytest.approx(-ours / 5, rel=1e-6)


def test_entropy_of_a_saturated_prediction_is_zero_not_nan():
    assert scores.mean_entropy(torch.tensor([[1000.0, 0.0, 0.0]])) == 0.0


def test_information_maximization_against_numpy_and_pytorch_adapt():
    p = softmax(LOGITS)
    expected = np_entropy(p.mean(0, keepdims=True))[0] - np_entropy(p).mean()
    ours = scores.information_maximization(LOGITS)
    assert ours == pytest.approx(expected, rel=1e-6)
    assert pa.IMValidator()(target_train={"logits": LOGITS}) == pytest.approx(ours, rel=1e-5)


def test_information_maximization_is_zero_for_a_collapsed_model_and_log_c_at_best():
    collapsed = torch.tensor([[9.0, 0, 0]] * 6)
    assert scores.information_maximization(collapsed) == pytest.approx(0.0, abs=1e-3)
    balanced = torch.eye(3).repeat(2, 1) * 50
    assert scores.information_maximization(balanced) == pytest.approx(math.log(3), rel=1e-6)


def test_bnm_against_numpy_svd_and_pytorch_adapt():
    p = softmax(LOGITS)
    expected = np.linalg.svd(p, compute_uv=False).sum() / len(p)
    ours = scores.batch_nuclear_norm(LOGITS)
    assert ours == pytest.approx(expected, rel=1e-6)
    assert pa.BNMValidator()(target_train={"logits": LOGITS}) == pytest.approx(ours, rel=1e-5)
    one_hot_balanced = torch.eye(4).repeat(5, 1) * 100  # n = 20, C = 4: sqrt(C / n)
    assert scores.batch_nuclear_norm(one_hot_balanced) == pytest.approx(math.sqrt(4 / 20), rel=1e-6)


def test_snd_against_a_numpy_loop_and_pytorch_adapt():
    p = softmax(LOGITS)
    q = p / np.linalg.norm(p, axis=1, keepdims=True)
    entropies = []
    for i in range(len(q)):
        others = np.delete(q @ q[i], i) / 0.05
        entropies.append(np_entropy(scipy.special.softmax(others)[None])[0])
    ours = scores.soft_neighborhood_density(LOGITS, 0.05)
    assert ours == pytest.approx(np.mean(entropies), rel=1e-6)
    preds = torch.softmax(LOGITS, 1)
    assert pa.SNDValidator()(target_train={"preds": preds}) == pytest.approx(ours, rel=1e-5)


def test_class_ami_against_scikit_learn_and_pytorch_adapt_on_clustered_features():
    centers = RNG.normal(size=(4, 8)) * 10
    labels = np.repeat(np.arange(4), 15)
    feats = centers[labels] + RNG.normal(size=(60, 8))
    preds = labels.copy()
    preds[:6] = (preds[:6] + 1) % 4  # a few predictions disagree with the clusters
    f, p = torch.tensor(feats, dtype=torch.float32), torch.tensor(preds)
    ours = scores.class_ami(f, p, 4, seed=3)
    clusters = KMeans(4, n_init=3, random_state=3).fit_predict(feats.astype(np.float32).astype(np.float64))
    assert ours == pytest.approx(adjusted_mutual_info_score(preds, clusters), abs=1e-12)
    from pytorch_adapt.validators.class_cluster_validator import get_clustering_performance
    theirs = get_clustering_performance(f, p, 4, adjusted_mutual_info_score, "labels")
    assert ours == pytest.approx(theirs, abs=1e-9)  # well-separated clusters: k-means' partition is unique
    assert 0.5 < ours < 1.0


def test_dev_risk_against_pytorch_adapt_for_dev_and_devn():
    from pytorch_adapt.validators.deep_embedded_validator import get_dev_risk

    w = RNG.uniform(0.1, 5.0, size=50)
    loss = RNG.uniform(0.0, 3.0, size=50)
    for ours_norm, theirs_norm in (("none", None), ("max", "max")):
        theirs = get_dev_risk(torch.tensor(w[:, None]), torch.tensor(loss[:, None]), theirs_norm)
        assert scores.dev_risk(w, loss, ours_norm) == pytest.approx(theirs, rel=1e-12)


def test_dev_risk_by_hand_and_with_constant_weights():
    w, loss = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 0.0])
    wl = w * loss  # [0.5, 2, 0]; cov(wl, w) = -0.25, var(w) = 1 -> eta = 0.25
    assert scores.dev_risk(w, loss) == pytest.approx(wl.mean() + 0.25 * 2.0 - 0.25)
    assert scores.dev_risk(np.ones(3), loss) == pytest.approx(loss.mean())  # Var(w) = 0: eta = 0


def test_density_ratio_is_the_prior_corrected_odds_of_a_logistic_regression():
    src = RNG.normal(size=(80, 3))
    tgt = RNG.normal(size=(40, 3)) + [1.0, 0, 0]
    query = RNG.normal(size=(10, 3))
    ours = scores.density_ratio(*(torch.tensor(a, dtype=torch.float64) for a in (src, tgt, query)), seed=0)
    x = np.concatenate([src, tgt])
    y = np.r_[np.ones(80), np.zeros(40)]
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(max_iter=1000).fit(scaler.transform(x), y)
    logit_source = clf.decision_function(scaler.transform(query))  # log P(s|x) / P(t|x)
    np.testing.assert_allclose(ours, (80 / 40) * np.exp(-logit_source), rtol=1e-8)
    # a query shifted towards the target gets a larger weight
    assert ours[np.argmax(query[:, 0])] > ours[np.argmin(query[:, 0])]


class _Linear(ClassifierMixin, BaseEstimator):
    """An sklearn classifier x -> softmax(x W) for skada's scorers."""

    def __init__(self, W=None):
        self.W = W

    def fit(self, X, y):
        return self

    def decision_function(self, X, **_):
        return X @ self.W

    def predict_proba(self, X, **_):
        return scipy.special.softmax(self.decision_function(X), axis=1)

    def predict_log_proba(self, X, **_):
        return scipy.special.log_softmax(self.decision_function(X), axis=1)

    def predict(self, X, **_):
        return self.decision_function(X).argmax(1)

    def score(self, X, y, **_):
        return float((self.predict(X) == y).mean())


def test_mixval_equals_skada_for_the_same_permutation():
    x = RNG.normal(size=(60, 6))
    W = RNG.normal(size=(6, 4))
    perm = np.random.RandomState(11).permutation(60)  # what skada draws with random_state=RandomState(11)
    theirs = skada_metrics.MixValScorer(random_state=np.random.RandomState(11))(
        _Linear(W), x, np.full(60, -1), sample_domain=np.full(60, -1))
    W_t = torch.tensor(W)
    ours = scores.mixval(torch.tensor(x), lambda v: v @ W_t, torch.tensor(perm))
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_mixval_is_one_for_a_model_that_is_linear_in_its_inputs_on_intra_class_pairs():
    # two classes on either side of x0 = 0 far from it: every intra-class mix keeps its side,
    # and with alpha = 0.55 every inter-class mix of symmetric points falls on the dominant side
    x = torch.tensor([[-2.0], [-2.0], [2.0], [2.0]])
    classify = lambda v: torch.cat([-v, v], 1)  # noqa: E731
    assert scores.mixval(x, classify, torch.tensor([1, 0, 3, 2])) == 1.0  # only intra pairs
    assert scores.mixval(x, classify, torch.tensor([2, 3, 0, 1])) == 1.0  # only inter pairs


def bundle(logits, features=None, val_logits=None, val_labels=None, seed=0):
    features = logits if features is None else features
    return EvalOutputs(val_logits, None if val_logits is None else features[: len(val_logits)], val_labels,
                       features, logits, features, logits, lambda x: x, seed)


def test_source_validation_accuracy_and_loss_validators():
    by_name = {v.name: v for v in CORE_VALIDATORS}
    labels = torch.tensor(RNG.integers(0, 5, size=37))
    out = bundle(LOGITS, val_logits=LOGITS, val_labels=labels)
    assert by_name["source_val_acc"](out) == pytest.approx(100 * (LOGITS.argmax(1) == labels).double().mean().item())
    log_p = scipy.special.log_softmax(LOGITS.double().numpy(), axis=1)
    assert by_name["source_val_loss"](out) == pytest.approx(-log_p[np.arange(37), labels.numpy()].mean(), rel=1e-6)


def test_validators_with_randomness_are_deterministic_functions_of_the_bundle():
    for v in (ClassAMI(), MixVal()):
        assert v(bundle(LOGITS, seed=4)) == v(bundle(LOGITS, seed=4))


def test_core_validators_are_a_plugin_in_every_manager_with_names_and_directions():
    found = available_validators(make_plugin_manager([]))
    assert list(found) == ["source_val_acc", "source_val_loss", "entropy", "im", "bnm", "snd", "class_ami", "dev",
                           "devn", "mixval"]
    assert {n: c.validator.direction for n, c in found.items()} == {
        "source_val_acc": "max", "source_val_loss": "min", "entropy": "min", "im": "max", "bnm": "max",
        "snd": "max", "class_ami": "max", "dev": "min", "devn": "min", "mixval": "max"}
    assert {c.plugin for c in found.values()} == {"tladapt"}
    for c in found.values():  # each names its source
        assert re.search(r"(19|20)\d\d|classic|loss:", type(c.validator).__doc__)


PLUGIN = '''
import tladapt
from tladapt.validators import Validator

class Confidence(Validator):
    """Mean maximum softmax probability on the target."""
    name, direction = "confidence", "max"
    def __call__(self, out):
        return out.target_probs.max(1).values.mean().item()

class MyValidators:
    @tladapt.hookimpl
    def tladapt_validators(self):
        return [Confidence()]
'''


def test_a_plugin_contributes_a_validator_recorded_in_every_evaluation(fast_config, tmp_path, capsys):
    path = tmp_path / "my_validators.py"
    path.write_text(PLUGIN)
    assert main(["plugins", "-p", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "confidence" in listing and "my_validators" in listing and "devn" in listing
    config = fast_config("validation.validators=['confidence', 'im']", "trainer.steps=20", "trainer.eval_every=10")
    (result,) = run_experiment(config, [str(path)])
    assert [sorted(k for k in h if k.startswith("validator/")) for h in result["history"]] == [
        ["validator/confidence", "validator/im"]] * 2
    assert result["validators"] == {"confidence": "max", "im": "max"}
    assert 0.1 < result["final"]["validator/confidence"] <= 1.0
    on_disk = json.loads((__import__("pathlib").Path(result["run_dir"]) / "results.json").read_text())
    assert on_disk["history"] == result["history"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(result["run_dir"])
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("validator/confidence")]
    assert logged == [(h["step"], pytest.approx(h["validator/confidence"])) for h in result["history"]]


def test_two_plugins_with_one_validator_name_is_an_error_naming_both(tmp_path, fast_config):
    path = tmp_path / "dup.py"
    path.write_text(PLUGIN.replace('"confidence"', '"im"'))
    with pytest.raises(PluginError, match="'im' is contributed by both 'tladapt' and 'dup'"):
        prepare(fast_config(), [str(path)])


def test_unknown_validator_or_keep_best_tag_fails_before_any_run(fast_config, tmp_path):
    with pytest.raises(ConfigError, match="validation.validators names unknown validator.*nope.*available are"):
        run_experiment(fast_config("validation.validators=['nope']"))
    with pytest.raises(ConfigError, match="trainer.keep_best = 'validator/nope'"):
        run_experiment(fast_config("trainer.keep_best='validator/nope'"))
    with pytest.raises(ConfigError, match="dev read the labelled held-out source split"):
        run_experiment(fast_config("validation.validators=['dev']", "data.source_val_fraction=0"))
    assert not (tmp_path / "runs").exists()


def test_without_a_source_split_the_source_validators_are_left_out(fast_config):
    (result,) = run_experiment(fast_config("data.source_val_fraction=0", "trainer.steps=10", "trainer.eval_every=10"))
    assert set(result["validators"]) == {"entropy", "im", "bnm", "snd", "class_ami", "mixval"}


def test_keep_best_keeps_the_checkpoint_of_the_best_evaluation_in_the_validators_direction(fast_config):
    from pathlib import Path

    for tag in ("validator/entropy", "validator/im"):
        (result,) = run_experiment(fast_config(f"trainer.keep_best='{tag}'", "trainer.steps=40",
                                               "trainer.eval_every=10"))
        values = [h[tag] for h in result["history"]]
        pick = min if tag.endswith("entropy") else max
        best = result["history"][values.index(pick(values))]
        assert result["best"] == {"tag": tag, "direction": "min" if pick is min else "max",
                                  "step": best["step"], "value": best[tag]}
        state = torch.load(Path(result["run_dir"]) / "best.pt", weights_only=True)
        assert state["step"] == best["step"]


def test_validator_scores_do_not_change_the_training_curve(fast_config):
    a, = run_experiment(fast_config("validation.validators=['entropy']"))
    b, = run_experiment(fast_config())
    assert [h["oracle/target_acc"] for h in a["history"]] == [h["oracle/target_acc"] for h in b["history"]]
    assert a["config_id"] == b["config_id"]
