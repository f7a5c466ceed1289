"""The trainer on real bundled data: logs, runs, composition rules, no host syncs, bad input."""

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tladapt
from tladapt.config import ConfigError
from tladapt.data.datasets import load_domain
from tladapt.data.pipeline import PairedPipeline
from tladapt.experiment import run_experiment
from tladapt.manager import PluginInfo, make_plugin_manager
from tladapt_plugins.dann import DANN

from helpers import host_reads, make_trainer

DOCS = Path(__file__).resolve().parents[1] / "docs"


def scalars(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def test_dann_run_logs_curves_and_results_match_tensorboard(fast_config):
    [result] = run_experiment(fast_config("plugins.dann.hidden=[16]"))
    tags, acc = scalars(result["run_dir"])
    for tag in ("loss/source", "loss/domain", "loss/total", "train/lr", "train/lambda",
                "domain/disc_acc", "metrics/source_val_acc", "oracle/target_acc"):
        assert tag in tags, tag
    assert [s for s, _ in tags["oracle/target_acc"]] == [15, 30]
    assert tags["oracle/target_acc"][-1][1] == pytest.approx(result["final"]["oracle/target_acc"], abs=1e-4)
    assert json.loads((Path(result["run_dir"]) / "results.json").read_text())["final"] == result["final"]
    # λ is logged as the mean over each 5-step window of 2/(1+exp(-10 p))-1: rising, below 1
    lams = [v for _, v in tags["train/lambda"]]
    assert lams == sorted(lams) and 0 < lams[0] < lams[-1] < 1
    assert set(acc.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info",
                                                      "_hparams_/session_end_info"}
    assert result["method"] == "dann" and result["task"] == "webcam->dslr"


def test_runs_never_share_a_directory_and_write_all_artifacts(fast_config):
    config = fast_config()
    first = run_experiment(config)[0]["run_dir"]
    second = run_experiment(config)[0]["run_dir"]
    assert first != second
    for run in (first, second):
        names = {p.name for p in Path(run).iterdir()}
        assert {"results.json", "config.json", "checkpoint.pt"} <= names
        assert not [n for n in names if n.startswith(".")]  # no temporary files left behind
    ckpt = torch.load(f"{first}/checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 30 and set(ckpt["modules"]) >= {"backbone.0.weight", "head.weight"}


def test_same_seed_reproduces_exactly_and_seeds_differ(fast_config):
    a, b = run_experiment(fast_config()), run_experiment(fast_config())
    assert a[0]["history"] == b[0]["history"]
    c = run_experiment(fast_config("experiment.seeds=[1]"))
    assert c[0]["history"] != a[0]["history"]


def test_dann_schedule_and_lr_multipliers_reach_the_optimizer(fast_config):
    t = make_trainer(fast_config("plugins.dann.lr_mult=0.5", "trainer.lr_mult={backbone=0.1}", "trainer.lr=0.02"))
    lrs = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
    assert lrs == pytest.approx({"backbone": 0.002, "head": 0.02, "domain_discriminator": 0.01})
    t.fit()
    # after 30 steps the DANN schedule gives lr0 / (1 + 10 * 30/30) ** 0.75
    assert t.optimizer.param_groups[1]["lr"] == pytest.approx(0.02 / 11 ** 0.75)


def test_unknown_lr_mult_module_is_an_error(fast_config):
    with pytest.raises(ConfigError, match=r"trainer.lr_mult names unknown module\(s\) bogus: modules are backbone, head"):
        make_trainer(fast_config("trainer.lr_mult={bogus=0.1}"), prepared=False)  # the run's own check
    with pytest.raises(ConfigError, match=r"trainer.lr_mult names unknown module 'bogus': the run's modules are "
                                          r"backbone, head \(or dotted paths inside them\)"):
        make_trainer(fast_config("trainer.lr_mult={bogus=0.1}"))  # and the one before any run


class Weights:
    """Returns fixed per-sample source weights w_i = 1 + idx_i."""

    @tladapt.hookimpl
    def tladapt_source_weights(self, batch):
        return 1.0 + batch.idx_s.float()


class Extra:
    @dataclass
    class Options:
        weight: float = 0.25
        name: str = "extra"

    def __init__(self, options):
        self.options = options

    @tladapt.hookimpl
    def tladapt_losses(self, out):
        return {self.options.name: tladapt.Term(out.logits_t.pow(2).mean(), self.options.weight)}


def test_total_is_the_weighted_sum_and_source_weights_reduce_by_mean(fast_config):
    t = make_trainer(fast_config("plugins.dann.weight=0.3"), [("extra", Extra, {}), ("weights", Weights, {})])
    t.pm.hook.tladapt_fit_start(trainer=t)
    batch = PairedPipeline(t.source, t.target, 16, seed=0).next()
    t.modules.eval()  # no dropout: the forward is deterministic
    out = t.forward(batch)
    terms = t.losses(batch, out)
    assert set(terms) == {"source", "domain", "extra"}
    ce = F.cross_entropy(out.logits_s, batch.y_s, reduction="none")
    assert terms["source"].value.item() == pytest.approx(((1.0 + batch.idx_s.float()) * ce).mean().item(), rel=1e-6)
    assert terms["extra"].value.item() == pytest.approx(out.logits_t.pow(2).mean().item(), rel=1e-6)
    total = t.train_step(batch)
    expected = terms["source"].value + 0.3 * terms["domain"].value + 0.25 * terms["extra"].value
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_two_plugins_writing_the_same_loss_name_is_an_error_naming_both(fast_config):
    t = make_trainer(fast_config(), [("extra", Extra, {"name": "domain"}), ("dann", DANN, {})])
    batch = PairedPipeline(t.source, t.target, 16, 0).next()
    with pytest.raises(RuntimeError, match=r"loss term 'domain' is returned by both '(dann|extra)' and '(extra|dann)'"):
        t.losses(batch, t.forward(batch))


def test_two_plugins_returning_source_weights_is_an_error(fast_config):
    class Weights2(Weights):
        pass

    t = make_trainer(fast_config(), [("w1", Weights, {}), ("w2", Weights2, {})])
    batch = PairedPipeline(t.source, t.target, 16, 0).next()
    with pytest.raises(RuntimeError, match="plugins w1 and w2 both returned source weights|plugins w2 and w1 both"):
        t.losses(batch, t.forward(batch))


def test_a_misspelt_hook_is_an_error():
    class Typo:
        @tladapt.hookimpl
        def tladapt_lossess(self, trainer):
            return {}

    with pytest.raises(ConfigError, match="plugin 'typo' does not fit the hook contract: unknown hook 'tladapt_lossess'"):
        make_plugin_manager([(PluginInfo("typo", Typo, "test"), {})])

    class WrongArgument:
        @tladapt.hookimpl
        def tladapt_losses(self, trainer, batches):
            return {}

    with pytest.raises(ConfigError, match=r"(?s)plugin 'wrong' does not fit .*\{'batches'\} are declared in the hookimpl"):
        make_plugin_manager([(PluginInfo("wrong", WrongArgument, "test"), {})])


def test_a_diverging_run_stops_with_a_clear_error_and_no_results(fast_config):
    from tladapt.trainer import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"loss/.* became non-finite by step 5 .*lower trainer.lr"):
        run_experiment(fast_config("trainer.lr=1e30", "trainer.schedule='constant'"))
    assert not list(Path(fast_config().experiment.runs_dir).rglob("results.json"))


def test_config_json_holds_every_plugin_option_with_defaults(fast_config):
    [result] = run_experiment(fast_config("plugins.dann.weight=0.3"))
    saved = json.loads((Path(result["run_dir"]) / "config.json").read_text())["plugins"]["dann"]
    assert saved == {"weight": 0.3, "gamma": 10.0, "max_lambda": 1.0, "hidden": [1024, 1024],
                     "dropout": 0.5, "lr_mult": 1.0}


def test_plugins_never_see_target_labels(fast_config):
    seen = {}

    class Spy:
        @tladapt.hookimpl
        def tladapt_fit_start(self, trainer):
            seen["target_y"] = trainer.target.y

        @tladapt.hookimpl
        def tladapt_losses(self, batch):
            seen["batch_fields"] = {k for k, v in vars(batch).items() if v is not None}
            seen["extra"] = batch.extra  # extra labelled domains (multi-task): none here

        @tladapt.hookimpl
        def tladapt_evaluate(self, metrics, target_labels):
            seen["oracle"] = target_labels.shape

    make_trainer(fast_config(), [("spy", Spy, {})]).fit()
    assert seen["target_y"] is None
    assert seen["batch_fields"] == {"x_s", "y_s", "idx_s", "x_t", "idx_t", "rows_s", "rows_t", "extra"}  # no y_t
    assert seen["extra"] == {}
    assert seen["oracle"] == (157,)  # only evaluation sees the hidden labels (dslr has 157)


def test_a_training_step_makes_no_host_sync(fast_config, monkeypatch):
    t = make_trainer(fast_config("plugins.dann.hidden=[16]", "trainer.log_every=10"))
    t.start()
    # steps between two log flushes (every 10) and evaluations (every 15)
    assert host_reads(t, monkeypatch, 9) == []
    # the 10th step flushes the logs: one read of all the accumulated scalars
    assert host_reads(t, monkeypatch, 1) == [("tolist", "runs.py")]


def test_the_docs_plugin_is_discovered_with_p_and_trains(fast_config):
    [result] = run_experiment(fast_config("plugins.entropy_min.weight=0.2"), [str(DOCS / "examples" / "entropy_min.py")])
    tags, _ = scalars(result["run_dir"])
    assert result["method"] == "entropy_min"
    assert "loss/target_entropy" in tags and "entropy_min/target_entropy" in tags
    ent = [v for _, v in tags["loss/target_entropy"]]
    assert all(0 <= v <= torch.log(torch.tensor(10.0)).item() for v in ent)


def test_docs_page_shows_the_tested_plugin_verbatim():
    page = (DOCS / "writing-a-plugin.md").read_text()
    code = (DOCS / "examples" / "entropy_min.py").read_text()
    body = code[code.index("from dataclasses"):]
    assert body.strip() in page


# ---------------------------------------------------------------- bad input, before any training
@pytest.mark.parametrize("override, message", [
    ("data.dataset='ofice'", r"unknown data.dataset 'ofice': expected one of amazon_review_400, coil20_jda"),
    ("data.tasks=['webcam->dlsr']", r"unknown domain 'dlsr' of office_caltech10_surf: expected one of amazon, caltech, dslr, webcam"),
    ("plugins.danm.weight=1.0", r"unknown plugin 'danm' in \[plugins.danm\]: available plugins are .*dann"),
    ("plugins.dann.wieght=1.0", r"unknown key plugins.dann.wieght: valid keys are weight, gamma"),
    ("plugins.dann.hidden='wide'", r"plugins.dann.hidden: Input should be a valid list"),
    ("plugins.dann.gamma=-1.0", r"plugins.dann.gamma must be > 0, got -1.0"),
    ("plugins.dann.dropout=1.5", r"plugins.dann.dropout must be >= 0, < 1, got 1.5"),
])
def test_config_errors_come_before_training(fast_config, override, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(fast_config(override))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_without_cuda_is_an_error(fast_config):
    with pytest.raises(ConfigError, match="trainer.device = 'cuda' but CUDA is not available"):
        run_experiment(fast_config("trainer.device='cuda'"))


def test_batch_larger_than_a_domain_is_an_error(fast_config):
    with pytest.raises(ConfigError, match=r"target domain 'dslr': trainer.batch_size=200 exceeds the domain's 157 samples"):
        run_experiment(fast_config("trainer.batch_size=200"))
    # with replacement it runs
    assert run_experiment(fast_config("trainer.batch_size=200", "trainer.replacement=true", "trainer.steps=2"))


@pytest.fixture
def user_dataset(tmp_path, monkeypatch):
    (tmp_path / "my_domains.py").write_text(textwrap.dedent("""
        import torch
        from tladapt.data import Domain
        def load(name):
            g = torch.Generator().manual_seed(0)
            n, shape, labels = {"a": (40, (8,), 3), "b": (30, (8,), 3), "wide": (30, (9,), 3),
                                "empty": (0, (8,), 3), "extra_class": (30, (8,), 5)}[name]
            return Domain(name, torch.randn(n, *shape, generator=g),
                          torch.arange(n) % labels, ("x", "y", "z"))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_domains:load"


@pytest.mark.parametrize("task, message", [
    ("a->wide", r"target domain 'wide' has input shape \(9,\), expected the source's \(8,\)"),
    ("a->empty", r"target domain 'empty' is empty"),
    ("a->extra_class", r"target domain 'extra_class': labels 0..4 fall outside the source class set 0..2"),
])
def test_invalid_tasks_are_errors(fast_config, user_dataset, task, message):
    with pytest.raises(ValueError, match=message):
        run_experiment(fast_config(f"data.dataset='{user_dataset}'", f"data.tasks=['{task}']", "trainer.batch_size=4"))


def test_a_user_dataset_trains(fast_config, user_dataset):
    [r] = run_experiment(fast_config(f"data.dataset='{user_dataset}'", "data.tasks=['a->b']", "trainer.batch_size=4"))
    assert r["task"] == "a->b" and 0 <= r["final"]["oracle/target_acc"] <= 100


# ---------------------------------------------------------------- semi-supervised DA and fine-tuning support
def test_k_shot_target_split_is_stratified_seeded_and_disjoint(fast_config):
    t = make_trainer(fast_config("data.target_labels_per_class=3"))
    dslr = load_domain("office_caltech10_surf", "dslr")
    labelled = t.target_labelled
    assert torch.bincount(labelled.y, minlength=10).tolist() == [3] * 10
    assert len(labelled) + len(t.target) == len(dslr) == 157
    assert t._target_labels.shape == (157 - 30,)  # the oracle is evaluated on the unlabelled rest only
    # every labelled row is a dslr row, and none of them is in the rest
    rows = {tuple(r.tolist()) for r in dslr.x}
    lab = {tuple(r.tolist()) for r in labelled.x}
    assert lab <= rows and not lab & {tuple(r.tolist()) for r in t.target.x}
    again = make_trainer(fast_config("data.target_labels_per_class=3"))
    assert torch.equal(again.target_labelled.x, labelled.x)
    other = make_trainer(fast_config("data.target_labels_per_class=3", "experiment.seeds=[1]"), seed=1)
    assert not torch.equal(other.target_labelled.x, labelled.x)


def test_k_shot_keeps_one_test_sample_per_class(fast_config):
    t = make_trainer(fast_config("data.target_labels_per_class=50", "trainer.replacement=true"))  # dslr classes have 8..24 samples
    counts = torch.bincount(t._target_labels, minlength=10)
    assert counts.tolist() == [1] * 10


def test_labelled_target_term_is_cross_entropy_on_the_labelled_batch(fast_config):
    t = make_trainer(fast_config("data.target_labels_per_class=1", "trainer.target_weight=0.5"))
    t.start()
    batch = t.pipeline.next()
    assert batch.x_l.shape == (10, 800)  # min(batch 16, 10 labelled samples)
    t.modules.eval()
    out = t.forward(batch)
    terms = t.losses(batch, out)
    expected = F.cross_entropy(t.head(t.backbone(batch.x_l)), batch.y_l)
    assert terms["target"].weight == 0.5
    assert terms["target"].value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_init_from_loads_backbone_and_head(fast_config):
    [first] = run_experiment(fast_config())
    t = make_trainer(fast_config(f"model.init_from='{first['run_dir']}'"))
    saved = torch.load(Path(first["run_dir"]) / "checkpoint.pt", weights_only=True)["modules"]
    assert torch.equal(t.backbone[0].weight, saved["backbone.0.weight"])
    assert torch.equal(t.head.bias, saved["head.bias"])
    with pytest.raises(ConfigError, match="model.init_from='/nonexistent': no checkpoint for task 'webcam->dslr', seed 0"):
        make_trainer(fast_config("model.init_from='/nonexistent'"))
    with pytest.raises(ConfigError, match="does not fit this model"):
        make_trainer(fast_config(f"model.init_from='{first['run_dir']}'", "model.hidden=[8]"))


def test_lr_mult_accepts_submodule_paths_and_frozen_parameters_get_no_update(fast_config):
    class Freeze:
        @tladapt.hookimpl
        def tladapt_setup(self, trainer):
            for p in trainer.backbone[0].parameters():
                p.requires_grad_(False)

    t = make_trainer(fast_config("trainer.lr_mult={head=0.5}", "trainer.lr=0.02",
                                 "model.hidden=[32, 16]"), [("freeze", Freeze, {})])
    groups = {g["name"]: (g["lr"], len(g["params"])) for g in t.optimizer.param_groups}
    assert groups == {"backbone": (0.02, 2), "head": (0.01, 2)}  # backbone.0 frozen: only backbone.3 left
    before = t.backbone[0].weight.clone()
    t.fit()
    assert torch.equal(t.backbone[0].weight, before)
    t2 = make_trainer(fast_config("trainer.lr_mult={'backbone.0'=0.1}", "model.hidden=[32, 16]"))
    groups = {g["name"]: g["lr"] for g in t2.optimizer.param_groups}
    assert groups == pytest.approx({"backbone.0": 0.001, "backbone": 0.01, "head": 0.01})


def test_batch_size_is_checked_against_the_training_split_not_the_whole_source(fast_config):
    # webcam has 295 samples; with 10% held out for validation the training split has 265
    with pytest.raises(ConfigError, match=r"source domain 'webcam': trainer.batch_size=280 exceeds the domain's 265"):
        make_trainer(fast_config("trainer.batch_size=280", "data.tasks=['webcam->caltech']"), task=("webcam", "caltech"))


def test_label_smoothing_of_the_source_loss(fast_config):
    t = make_trainer(fast_config("trainer.label_smoothing=0.1"))
    t.start()
    batch = t.pipeline.next()
    t.modules.eval()
    out = t.forward(batch)
    log_p = torch.log_softmax(out.logits_s, 1)
    expected = -(0.9 * log_p.gather(1, batch.y_s[:, None]).squeeze(1) + 0.1 * log_p.mean(1)).mean()
    assert t.losses(batch, out)["source"].value.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="trainer.label_smoothing must be >= 0, < 1"):
        fast_config("trainer.label_smoothing=1.0")
