"""All UDA plugins in one run: terms add up, nothing is silently shared, order does not matter."""

import pytest
import torch

import tladapt
from tladapt.experiment import run_experiment

from helpers import make_trainer, step_terms

ALL = [
    "plugins.dann.weight=0.3", "plugins.dann.hidden=[16]",
    "plugins.mmd.weight=0.5",
    "plugins.coral.weight=2.0",
    "plugins.instance_weighting.estimator='discriminative'",
    "plugins.self_training.threshold=0.0", "plugins.self_training.weight=0.25",
]


def test_every_uda_plugin_in_one_run(fast_config):
    [result] = run_experiment(fast_config(*ALL))
    assert result["method"] == "coral+dann+instance_weighting+mmd+self_training"
    assert 0 <= result["final"]["oracle/target_acc"] <= 100


def test_composed_total_is_the_weighted_sum_of_each_plugins_terms(fast_config):
    t = make_trainer(fast_config(*ALL))
    batch, out, terms = step_terms(t)
    assert set(terms) == {"source", "domain", "mmd", "coral", "pseudo_label"}
    weights = {name: float(term.weight) for name, term in terms.items()}
    assert weights == {"source": 1.0, "domain": 0.3, "mmd": 0.5, "coral": 2.0, "pseudo_label": 0.25}
    # the source term is importance-weighted by instance_weighting's per-sample weights
    w = t.pm.get_plugin("instance_weighting").weights[batch.idx_s]
    ce = torch.nn.functional.cross_entropy(out.logits_s, batch.y_s, reduction="none")
    assert terms["source"].value.item() == pytest.approx((w * ce).mean().item(), rel=1e-5)
    total = t.train_step(batch)
    expected = sum(weights[n] * terms[n].value.item() for n in terms)
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_the_order_plugins_are_named_in_does_not_change_results(fast_config):
    def history(overrides):  # everything but wall-clock timings
        return [{k: v for k, v in h.items() if "seconds" not in k}
                for h in run_experiment(fast_config(*overrides))[0]["history"]]

    forward, backward = history(ALL), history(list(reversed(ALL)))
    assert forward == backward
    assert len(forward[0]) > 10  # accuracies, weight statistics, pseudo-label counts


def test_a_second_plugin_cannot_also_weight_the_source_samples(fast_config):
    class AlsoWeights:
        @tladapt.hookimpl
        def tladapt_source_weights(self, batch):
            return torch.ones_like(batch.idx_s, dtype=torch.float32)

    t = make_trainer(fast_config("plugins.instance_weighting.estimator='discriminative'"),
                     [("also_weights", AlsoWeights, {})])
    t.start()
    batch = t.pipeline.next()
    with pytest.raises(RuntimeError, match="plugins (also_weights and instance_weighting|instance_weighting and "
                                           "also_weights) both returned source weights"):
        t.losses(batch, t.forward(batch))


def test_closed_form_coral_recolours_the_source_before_importance_weights_are_estimated(fast_config):
    from tladapt_plugins.instance_weighting import estimate_weights

    t = make_trainer(fast_config("plugins.coral.mode='closed_form'",
                                 "plugins.instance_weighting.estimator='discriminative'"))
    raw_source = t.source.inputs()
    t.start()
    plugin = t.pm.get_plugin("instance_weighting")
    assert not torch.equal(t.source.inputs(), raw_source)  # re-coloured
    raw, _ = estimate_weights(t.source.inputs(), t.target.inputs(), plugin.options, seed=t.seed)
    assert torch.allclose(plugin.weights, raw / raw.mean(), atol=1e-5)  # normalize = true: mean 1
