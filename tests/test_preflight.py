"""Every check before any work: bad input fails naming the key, before any run directory exists;
plugins' contract is checked at the boundary (shapes on the first step, tags' owners)."""

import re
import textwrap
from pathlib import Path

import pytest
import torch

import tladapt
from tladapt.config import ConfigError
from tladapt.errors import PluginError
from tladapt.experiment import run_experiment
from tladapt.losses import domain_adversarial_loss

from helpers import make_trainer


def runs_of(config):
    return Path(config.experiment.runs_dir)


@pytest.mark.parametrize("override, message", [
    ("trainer.lr=nan", r"trainer.lr must be a finite number, got nan"),
    ("trainer.momentum=inf", r"trainer.momentum must be a finite number, got inf"),
    ("model.dropout=1.5", r"model.dropout must be >= 0, < 1, got 1.5"),
    ("trainer.weight_decay=-1.0", r"trainer.weight_decay must be >= 0, got -1.0"),
    ("trainer.checkpoint_every=-3", r"trainer.checkpoint_every must be >= 0, got -3"),
    ("trainer.checkpoint_every='often'", r"trainer.checkpoint_every: Input should be a valid integer, or 'auto'"),
    ("trainer.lr_mult={'backbone.7'=0.1}", r"trainer.lr_mult names unknown module 'backbone.7'"),
    ("data.tasks=['webcam->webcam']", r"'webcam->webcam': the source and the target are the same domain"),
    ("plugins.coral.lam=-1.0", r"plugins.coral.lam must be >= 0, got -1.0"),
    ("plugins.self_training.threshold=1.5", r"plugins.self_training.threshold must be >= 0, <= 1, got 1.5"),
    ("plugins.instance_weighting.kliep_folds=1", r"plugins.instance_weighting.kliep_folds must be >= 2, got 1"),
    ("plugins.finetune.freeze_depth=-1", r"plugins.finetune.freeze_depth must be >= 0, got -1"),
    ("plugins.jda.dim=900", r"task '.*': plugins.jda.dim = 900 exceeds the problem's size, the input dimension \(800\)"),
])
def test_bad_input_fails_before_any_run_directory(fast_config, override, message):
    config_error = None
    try:
        config = fast_config(override)
    except ConfigError as err:  # caught while reading the config
        config_error = err
    else:
        with pytest.raises(ConfigError) as raised:
            run_experiment(config)
        config_error = raised.value
        assert not runs_of(config).exists()
    assert __import__("re").search(message, str(config_error)), str(config_error)


def test_the_same_domain_is_allowed_when_asked(fast_config):
    [r] = run_experiment(fast_config("data.tasks=['dslr->dslr']", "data.allow_same_domain=true", "trainer.steps=2",
                                     "trainer.eval_every=2"))
    assert r["task"] == "dslr->dslr"


def test_a_second_task_smaller_than_the_batch_fails_before_the_first_trains(fast_config):
    config = fast_config("data.tasks=['amazon->caltech', 'webcam->dslr']", "trainer.batch_size=200")
    with pytest.raises(ConfigError, match=r"task 'webcam->dslr'.*target domain 'dslr': trainer.batch_size=200 "
                                          r"exceeds the domain's 157 samples"):
        run_experiment(config)
    assert not runs_of(config).exists()


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    (tmp_path / "user_code.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from tladapt.data import Domain

        def raises(name):
            raise KeyError(f"no domain {name} here")

        def not_a_domain(name):
            return [1, 2, 3]

        class Wide(nn.Module):
            def __init__(self, input_shape, hidden, dropout):
                super().__init__()
                self.fc = nn.Linear(input_shape[0], 7)
                self.out_features = 9  # a lie: the layer gives 7

            def forward(self, x):
                return self.fc(x)

        def broken(input_shape, hidden, dropout):
            raise RuntimeError("cannot build")

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("override, message", [
    ("data.dataset='user_code:raises'", r"data.dataset = 'user_code:raises': raises\('webcam'\) raised KeyError"),
    ("data.dataset='user_code:not_a_domain'", r"not_a_domain\('webcam'\) returned list, expected a Domain"),
    ("data.dataset='user_code:NOT_CALLABLE'", r"has no function 'NOT_CALLABLE' \(found int\)"),
    ("model.backbone='user_code:broken'", r"model.backbone 'user_code:broken': broken\(input_shape=\(800,\), ...\) "
                                          r"raised RuntimeError: cannot build"),
    ("model.backbone='user_code:Wide'", r"model.backbone = 'user_code:Wide' maps a batch of 2 inputs of shape "
                                        r"\(800,\) to \(2, 7\), expected \(2, out_features\) = \(2, 9\)"),
    ("model.backbone='user_code:NOT_CALLABLE'", r"model.backbone 'user_code:NOT_CALLABLE' names a int"),
    ("model.backbone='lenet'", r"lenet expects inputs of shape \(channels, height, width\)"),
])
def test_module_function_names_fail_clearly_before_any_run(fast_config, user_code, override, message):
    config = fast_config(override)
    with pytest.raises(ConfigError, match=message):
        run_experiment(config)
    assert not runs_of(config).exists()


def test_plugin_checks_against_the_task_run_before_any_run(fast_config, tmp_path):
    from tladapt.config import load_config

    config = load_config(None, ["data.dataset='mnist_usps_jda'", "data.tasks=['usps->mnist']",
                                "plugins.coral.mode='closed_form'", f"experiment.runs_dir='{tmp_path / 'runs'}'"],
                         enable=["coral"])
    with pytest.raises(ConfigError, match=r"task 'usps->mnist': plugins.coral.mode = 'closed_form' re-colours"):
        run_experiment(config)
    config = fast_config("plugins.finetune={}")
    with pytest.raises(ConfigError, match=r"plugins.finetune.init = 'source' needs model.init_from"):
        run_experiment(config)
    config = fast_config("plugins.finetune.init='scratch'", "plugins.finetune.freeze=['head.9']")
    with pytest.raises(ConfigError, match=r"plugins.finetune.freeze names unknown module 'head.9'"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()


def test_init_from_that_does_not_fit_fails_before_any_run(fast_config, tmp_path):
    [source] = run_experiment(fast_config("trainer.steps=2", "trainer.eval_every=2"))
    config = fast_config(f"model.init_from='{source['run_dir']}'", "model.hidden=[8]",
                         f"experiment.runs_dir='{tmp_path / 'other'}'")
    with pytest.raises(ConfigError, match=r"does not fit this model: backbone.0.weight: \(32, 800\) there, \(8, 800\) here"):
        run_experiment(config)
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------- the contract at the boundary
class WideWeights:
    """Source weights of shape (b, 1): broadcast against the (b,) losses they would give (b, b)."""

    @tladapt.hookimpl
    def tladapt_source_weights(self, batch):
        return torch.ones(batch.x_s.shape[0], 1)


class VectorLoss:
    @tladapt.hookimpl
    def tladapt_losses(self, out):
        return {"per_sample": tladapt.Term(out.logits_t.pow(2).mean(1))}


class TwoLogits:
    @tladapt.hookimpl
    def tladapt_losses(self, out):
        logits = out.features_s[:, :2]
        return {"domain2": tladapt.Term(domain_adversarial_loss(logits, out.features_t[:, :2])[0])}


class LogsLambda:
    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        trainer.log("train/lambda", 0.5)


class OverwritesAccuracy:
    @tladapt.hookimpl
    def tladapt_evaluate(self, metrics):
        metrics["target_acc"] = 100.0


@pytest.mark.parametrize("plugins, error, message", [
    ([("wide", WideWeights, {})], PluginError,
     r"plugin 'wide': tladapt_source_weights must return a floating tensor of shape \(16,\).*shape \(16, 1\)"),
    ([("vector", VectorLoss, {})], PluginError,
     r"plugin 'vector': loss term 'per_sample' must be a 0-dim floating tensor.*shape \(16,\)"),
    ([("two", TwoLogits, {})], ValueError, r"d_source: a domain discriminator's logits must have shape \(n,\) or "
                                           r"\(n, 1\), one logit per sample; got \(16, 2\)"),
    ([("logs", LogsLambda, {})], PluginError,
     r"the tag 'train/lambda' is written by both plugin '(dann|logs)' and plugin '(logs|dann)'"),
    ([("greedy", OverwritesAccuracy, {})], PluginError,
     r"the metric 'target_acc' is written by both the trainer and plugin 'greedy'"),
])
def test_plugins_that_break_the_contract_are_named(fast_config, plugins, error, message):
    t = make_trainer(fast_config("plugins.dann.hidden=[8]"), plugins)
    with pytest.raises(error, match=message):
        t.fit()


def test_contract_checks_read_nothing_after_the_first_step(fast_config, monkeypatch):
    from helpers import host_reads

    t = make_trainer(fast_config("plugins.dann.hidden=[8]", "trainer.log_every=10"))
    t.start()
    assert host_reads(t, monkeypatch, 1) == [] and not t.contract.first_step
    assert host_reads(t, monkeypatch, 8) == []


def test_tensor_bandwidths_are_checked_like_numbers():
    from tladapt.discrepancy import kernel_bandwidths, mmd

    x, y = torch.randn(8, 3), torch.randn(8, 3)
    for bad in (torch.tensor(-1.0), torch.tensor(float("nan")), torch.tensor([1.0, 0.0]), torch.tensor(float("inf"))):
        with pytest.raises(ValueError, match=r"bandwidth \(sigma\^2\) must be a non-empty list of finite values > 0"):
            mmd(x, y, bandwidth=bad)
    with pytest.raises(ValueError, match=r"scales must be a non-empty list of finite values > 0"):
        mmd(x, y, scales=torch.tensor([1.0, -2.0]))
    sigma2 = kernel_bandwidths(x, y)
    assert mmd(x, y, bandwidth=sigma2) == mmd(x, y)  # the data-driven values, passed on unread


# ---------------------------------------------------------------- trainer.lr_mult against the plugins' modules
class Undeclared:
    """A plugin that may register modules in tladapt_setup but does not name them."""

    @tladapt.hookimpl
    def tladapt_setup(self, trainer):
        pass


@pytest.mark.parametrize("overrides", [(), ("plugins.finetune.init='scratch'",), ("plugins.dann.hidden=[8]",)])
def test_an_lr_mult_key_no_module_has_is_refused_before_any_run(fast_config, overrides):
    config = fast_config(*overrides, "trainer.lr_mult={zzz=0.1}", "model.shared_head=false",
                         "data.target_labels_per_class=3")
    with pytest.raises(ConfigError, match=r"trainer.lr_mult names unknown module 'zzz': the run's modules are "
                                          r"backbone, head, source_head"):
        run_experiment(config)
    assert not runs_of(config).exists()


def test_lr_mult_keys_of_plugin_modules_pass_and_an_undeclared_plugin_leaves_the_check_to_the_run(fast_config):
    from tladapt.experiment import prepare

    prepare(fast_config("plugins.dann.hidden=[8]", "trainer.lr_mult={domain_discriminator=0.1, head=2.0}"))
    config = fast_config("trainer.lr_mult={zzz=0.1}")
    with pytest.raises(ConfigError, match=r"trainer.lr_mult names unknown module\(s\) zzz"):
        make_trainer(config, [("undeclared", Undeclared, {})], prepared=False)  # found when the modules exist


@pytest.mark.parametrize("overrides", [
    ("plugins.dann.hidden=[8]",), ("plugins.cdan={}",), ("plugins.mdd={}",), ("plugins.finetune.init='scratch'",),
    ("plugins.fixmatch={}",), ("plugins.self_training={}",),
    ("data.source_labels=false", "plugins.autoencoder={}"), ("data.source_labels=false", "plugins.simclr={}"),
    ("data.target_labels_per_class=3", "model.shared_head=false", "plugins.multitask.domains=['amazon', 'caltech']",
     "plugins.multitask.weighting='uncertainty'"),
], ids=lambda o: re.match(r"plugins\.(\w+)", o[-1]).group(1))
def test_each_plugins_module_names_are_what_its_setup_registers(fast_config, overrides):
    t = make_trainer(fast_config(*overrides))
    name = re.match(r"plugins\.(\w+)", overrides[-1]).group(1)
    plugin = t.pm.get_plugin(name)
    assert set(t.modules) - {"backbone", "head", "source_head"} == set(plugin.module_names)


def test_shots_module_names_are_what_its_setup_registers(fast_config, source_model):
    from conftest import TWO

    t = make_trainer(fast_config(TWO, "data.source_free=true", f"model.init_from='{source_model}'", "plugins.shot={}"))
    assert set(t.modules) - {"backbone", "head"} == set(t.pm.get_plugin("shot").module_names) == set()
