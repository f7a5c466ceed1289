"""Source-free (target-only) runs: no source sample reaches the run, checked before any run."""

import sys
from pathlib import Path

import pytest
import torch

import tladapt
import tladapt.data.tasks as tasks
from tladapt.config import ConfigError
from tladapt.experiment import prepare, run_experiment
from tladapt.runs import find_checkpoint

from helpers import make_trainer


@pytest.fixture
def source_run(fast_config):
    """One finished source-only run (webcam->dslr, seed 0) with its checkpoint."""
    [result] = run_experiment(fast_config())
    return Path(result["run_dir"])


SPY = """
import tladapt

SEEN = []


class Spy:
    source_free = True

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, batch, out):
        SEEN.append((trainer.source, trainer.source_val, batch.x_s, batch.y_s, batch.idx_s,
                     out.features_s, out.logits_s))
        return {"spy": tladapt.Term(out.logits_t.logsumexp(1).mean(), 0.1)}
"""


def test_a_source_free_run_never_loads_or_sees_source_data(fast_config, source_run, monkeypatch, tmp_path):
    loaded = []
    original = tasks.load_domain
    monkeypatch.setattr(tasks, "load_domain", lambda ds, name, **kw: loaded.append(name) or original(ds, name, **kw))
    (tmp_path / "spy.py").write_text(SPY)
    config = fast_config("data.source_free=true", f"model.init_from='{source_run}'", "plugins.spy={}")
    [result] = run_experiment(config, [str(tmp_path / "spy.py")])
    seen = sys.modules["tladapt_cli_plugin_spy"].SEEN
    assert set(loaded) == {"dslr"}  # the target only (loaded by the checks before the run, then by the run)
    assert len(seen) == 30 and all(v is None for step in seen for v in step)
    assert result["task"] == "webcam->dslr"
    assert "metrics/source_val_acc" not in result["final"]  # no source split exists
    assert set(result["validators"]) == {"entropy", "im", "bnm", "snd", "class_ami", "mixval"}  # label-free ones
    assert all(f"validator/{name}" in result["final"] for name in result["validators"])
    assert 0 <= result["final"]["oracle/target_acc"] <= 100


def test_the_source_free_step_has_no_source_term_and_starts_from_the_checkpoint(fast_config, source_run):
    t = make_trainer(fast_config("data.source_free=true", f"model.init_from='{source_run}'",
                                 "plugins.self_training.threshold=0.0"))
    saved = torch.load(source_run / "checkpoint.pt", weights_only=True)["modules"]
    assert torch.equal(t.head.weight, saved["head.weight"])
    assert t.source is None and t.num_classes == 10 and t.backbone[0].in_features == 800
    t.start()
    batch = t.pipeline.next()
    assert batch.x_s is None and batch.x_t.shape == (16, 800)
    out = t.forward(batch)
    assert out.features_s is None and out.logits_t.shape == (16, 10)
    assert set(t.losses(batch, out)) == {"pseudo_label"}


def test_labelled_target_samples_are_kept_in_a_source_free_run(fast_config, source_run):
    t = make_trainer(fast_config("data.source_free=true", f"model.init_from='{source_run}'",
                                 "data.target_labels_per_class=1"))
    t.start()
    batch = t.pipeline.next()
    out = t.forward(batch)
    assert out.logits_s is None and out.logits_l.shape == (10, 10)
    assert set(t.losses(batch, out)) == {"target"}


def test_source_free_needs_a_source_model(fast_config):
    with pytest.raises(ConfigError, match="data.source_free = true needs model.init_from"):
        fast_config("data.source_free=true")


def test_plugins_that_need_source_data_are_refused_before_any_run(fast_config, source_run, tmp_path):
    runs = tmp_path / "other_runs"
    config = fast_config("data.source_free=true", f"model.init_from='{source_run}'", "plugins.dann.weight=1.0",
                         "plugins.mmd.weight=1.0", "plugins.self_training.weight=1.0",
                         f"experiment.runs_dir='{runs}'")
    with pytest.raises(ConfigError, match=r"plugin\(s\) dann, mmd need source data"):
        run_experiment(config)
    assert not runs.exists()


@pytest.mark.parametrize("plugin", [(), ("plugins.finetune.freeze=['backbone']",)])  # none, or none with a loss
def test_a_source_free_run_with_nothing_to_train_on_is_refused(fast_config, source_run, plugin):
    with pytest.raises(ConfigError, match=r"nothing to train: data.source_free = true .* no active plugin has a "
                                          r"loss \(tladapt_losses\)"):
        prepare(fast_config("data.source_free=true", f"model.init_from='{source_run}'", *plugin))


class NoLoss:
    """A source-free plugin with a loss hook that returns no term."""

    source_free = True

    @tladapt.hookimpl
    def tladapt_losses(self):
        return {}


def test_a_plugin_that_returns_no_loss_stops_the_step_with_a_clear_error(fast_config, source_run):
    t = make_trainer(fast_config("data.source_free=true", f"model.init_from='{source_run}'"),
                     [("no_loss", NoLoss, {})], prepared=False)  # prepare() refuses it: no plugin has a loss
    t.start()
    with pytest.raises(ConfigError, match="nothing to train: data.source_free = true .* no active plugin returned "
                                          "a loss term"):
        t.train_step(t.pipeline.next())


def test_init_from_fields_pick_each_task_and_seeds_latest_run(fast_config, tmp_path):
    results = run_experiment(fast_config("experiment.seeds=[0, 1]", "data.tasks=['webcam->dslr', 'dslr->webcam']",
                                         "trainer.steps=2"))
    later = run_experiment(fast_config("experiment.seeds=[1]", "data.tasks=['webcam->dslr']", "trainer.steps=2"))
    method_dir = Path(results[0]["run_dir"]).parent.parent.parent / "{task}" / "source_only"
    spec = str(method_dir)
    by = {(r["task"], r["seed"]): Path(r["run_dir"]) / "checkpoint.pt" for r in results}
    assert find_checkpoint(spec, "dslr->webcam", 0) == by["dslr->webcam", 0]
    assert find_checkpoint(spec, "webcam->dslr", 0) == by["webcam->dslr", 0]
    assert find_checkpoint(spec, "webcam->dslr", 1) == Path(later[0]["run_dir"]) / "checkpoint.pt"  # the latest
    assert find_checkpoint(spec.replace("{task}", "{source}_to_{target}"), "dslr->webcam", 1) == by["dslr->webcam", 1]
    with pytest.raises(ConfigError, match="no checkpoint for task 'webcam->dslr', seed 7"):
        find_checkpoint(spec, "webcam->dslr", 7)
    with pytest.raises(ConfigError, match=r"unknown field 'domain'"):
        find_checkpoint(spec + "/{domain}", "webcam->dslr", 0)


def test_a_missing_source_checkpoint_fails_before_any_run(fast_config, source_run, tmp_path):
    runs = tmp_path / "other_runs"
    spec = str(source_run.parent.parent.parent / "{task}" / "source_only")
    config = fast_config("data.source_free=true", f"model.init_from='{spec}'", "plugins.self_training.weight=1.0",
                         "data.tasks=['webcam->dslr', 'dslr->webcam']", f"experiment.runs_dir='{runs}'")
    with pytest.raises(ConfigError, match="no checkpoint for task 'dslr->webcam', seed 0"):
        run_experiment(config)
    assert not runs.exists()

