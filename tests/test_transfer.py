"""Feature-based transfer, domain distances, the advice rule and the distance/advise CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tladapt.cli import main
from tladapt.config import ConfigError, load_config
from tladapt.discrepancy import mmd
from tladapt.distance import mmd_distance, proxy_a_distance
from tladapt.experiment import run_experiment
from tladapt.tables import build_table, collect_results, render_table
from tladapt.advice import labelled_per_class, recommend
from tladapt.transfer import REGIMES, candidate_layers, extract_features, load_model, run_feature_transfer
from tladapt.trainer import Trainer

from conftest import TWO


# ---------------------------------------------------------------- distances
def test_proxy_a_distance_is_near_0_for_one_distribution_and_near_2_for_separable_ones():
    g = np.random.default_rng(0)
    a, b = g.normal(size=(300, 20)), g.normal(size=(400, 20))
    assert proxy_a_distance(a, b) < 0.2
    assert proxy_a_distance(a, b, classifier="svm") < 0.2
    shifted = b + 3.0  # every coordinate moved by 3 standard deviations
    assert proxy_a_distance(a, shifted) > 1.9
    assert proxy_a_distance(torch.from_numpy(a).float(), torch.from_numpy(shifted).float(), classifier="svm") > 1.9
    # balanced by subsampling: a 10x larger identical domain is still indistinguishable
    assert proxy_a_distance(g.normal(size=(60, 5)), g.normal(size=(600, 5))) < 0.2


def test_proxy_a_distance_rejects_bad_input():
    a = np.zeros((10, 3))
    with pytest.raises(ValueError, match="source has 3 features, target 4"):
        proxy_a_distance(a, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="classifier must be 'logistic' or 'svm'"):
        proxy_a_distance(a, a, classifier="tree")
    with pytest.raises(ValueError, match="at least 4 samples per domain"):
        proxy_a_distance(a[:3], a)
    with pytest.raises(ValueError, match="NaN"):
        proxy_a_distance(a + np.nan, a)


def test_mmd_distance_is_the_discrepancy_module_mmd():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 4, generator=g), torch.randn(60, 4, generator=g) + 1
    assert mmd_distance(x, y) == pytest.approx(mmd(x.double(), y.double()).item(), rel=1e-9)
    assert mmd_distance(x, x) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- features of a named layer
def test_features_of_a_named_layer_equal_a_manual_forward(source_model):
    config, model = load_model(source_model)
    assert config.model.hidden == [32, 16]
    x = torch.randn(7, 800)
    b = model["backbone"]
    assert torch.equal(extract_features(model, x, "input"), x)
    assert torch.allclose(extract_features(model, x, "backbone.0"), b[0](x))
    assert torch.allclose(extract_features(model, x, "backbone.1"), torch.relu(b[0](x)))
    assert torch.allclose(extract_features(model, x, "backbone"), b(x))  # eval mode: dropout off
    assert torch.allclose(extract_features(model, x, "head", chunk=3), model["head"](b(x)), atol=1e-6)
    assert candidate_layers(b) == ["input", "backbone.2", "backbone"]
    with pytest.raises(ConfigError, match="unknown layer 'backbone.7'"):
        extract_features(model, x, "backbone.7")
    with pytest.raises(ConfigError, match="source_only: no config.json"):
        load_model(Path(source_model).parent)


# ---------------------------------------------------------------- feature-based transfer runs
def test_feature_transfer_uses_the_trainers_k_shot_split_and_writes_a_run(fast_config, source_model):
    config = fast_config(TWO, "data.target_labels_per_class=3", "experiment.seeds=[0, 1]")
    results = run_feature_transfer(config, source_model, "backbone.2", method="lin")
    assert [r["seed"] for r in results] == [0, 1]
    for r in results:
        assert r["transfer"]["n_train"] == 30 and r["transfer"]["n_test"] == 157 - 30
        assert set(r) >= {"task", "method", "dataset", "seed", "final", "history", "run_dir"}
        assert 0 <= r["final"]["oracle/target_acc"] <= 100
        assert json.loads((Path(r["run_dir"]) / "results.json").read_text()) == r
    # the same labelled subset as the trainer draws for that seed (so regimes compare on one split)
    from tladapt.data.datasets import load_domain
    from tladapt.transfer import task_splits
    splits = task_splits(config, "webcam->dslr", 1)
    labelled, rest = splits.target_labelled, splits.target_rest
    from tladapt.experiment import prepare
    from tladapt.manager import make_plugin_manager
    from tladapt.runs import new_run_dir
    cfg, active = prepare(config)
    t = Trainer(cfg, load_domain(cfg.data.dataset, "webcam"), load_domain(cfg.data.dataset, "dslr"),
                make_plugin_manager(active), new_run_dir(cfg.experiment.runs_dir, "x", "t", "m", 1), 1)
    assert torch.equal(labelled.x, t.target_labelled.x) and torch.equal(rest.y, t._target_labels)
    # tladapt table reads them like any run; the TensorBoard scalar is there
    table = render_table(build_table(collect_results(Path(results[0]["run_dir"]).parents[2])))
    assert "lin" in table
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(results[0]["run_dir"])
    acc.Reload()
    assert acc.Scalars("oracle/target_acc")[0].value == pytest.approx(results[0]["final"]["oracle/target_acc"])
    # source + target trains on both
    [both] = run_feature_transfer(fast_config(TWO, "data.target_labels_per_class=1"), source_model,
                                  train_on="source+target", classifier="svm")
    assert both["transfer"]["n_train"] == 10 + 265  # webcam 295 minus the 10% validation split (30)
    with pytest.raises(ConfigError, match="needs data.target_labels_per_class > 0"):
        run_feature_transfer(fast_config(TWO), source_model)


def test_labelled_per_class_counts_what_the_split_gives():
    # dslr classes hold 12, 21, 12, 13, 10, 24, 22, 12, 8, 23 samples; one per class stays unlabelled
    assert labelled_per_class(load_config(None, ["data.tasks=['webcam->dslr']", "data.target_labels_per_class=10"]),
                              "webcam->dslr") == pytest.approx(9.6)
    assert labelled_per_class(load_config(None, ["data.tasks=['webcam->dslr']", "data.target_labels_per_class=1000"]),
                              "webcam->dslr") == pytest.approx(14.7)


# ---------------------------------------------------------------- the rule
@pytest.mark.parametrize("per_class, pad, regime", [
    (1.0, 0.3, "linear_top"),       # small & similar
    (50.0, 0.3, "finetune_all"),    # large & similar
    (3.0, 1.8, "linear_early"),     # small & different
    (50.0, 1.8, "from_source"),     # large & different
    (10.0, 0.99, "finetune_all"),   # the thresholds: 10/class is large, PAD 1.0 is different
    (9.9, 1.0, "linear_early"),
])
def test_the_rule_picks_each_regime(per_class, pad, regime):
    picked, reason = recommend(per_class, pad)
    assert picked == regime and regime in REGIMES
    assert f"{per_class:.1f} labelled/class" in reason and f"PAD {pad:.2f}" in reason
    assert recommend(per_class, pad, small_below=0.5, similar_below=2.1)[0] == "finetune_all"


# ---------------------------------------------------------------- the CLI
def test_distance_and_advise_commands(source_model, tmp_path, capsys):
    args = ["--set", "data.tasks=['webcam->dslr']", "--set", TWO]
    assert main(["distance", "-", *args, "--init-from", source_model, "--layer", "backbone"]) == 2  # no such file
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[experiment]\nruns_dir = '{tmp_path / 'runs'}'\n[trainer]\nprogress = false\nbatch_size = 16\n")
    capsys.readouterr()
    assert main(["distance", str(cfg), *args, "--init-from", source_model]) == 0
    out = capsys.readouterr().out
    for layer in ("input", "backbone.2", "backbone"):
        assert f"| webcam->dslr | {layer} " in out
    assert main(["advise", str(cfg), *args, "--set", "data.target_labels_per_class=3", "--init-from", source_model,
                 "--verify", "--steps", "5", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "labelled target samples per class: 3.0" in out and "advice: " in out and "because 3.0 labelled/class" in out
    assert all(text in out for text in REGIMES.values()) and "advised" in out


def test_run_init_from_option_sets_model_init_from(source_model, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[experiment]\nruns_dir = '{tmp_path / 'runs'}'\n[data]\ntasks = ['webcam->dslr']\n"
                   f"[model]\nhidden = [32, 16]\n[trainer]\nsteps = 2\neval_every = 2\nprogress = false\n"
                   f"batch_size = 16\n[plugins.finetune]\nfreeze = ['backbone']\n")
    assert main(["run", str(cfg), "--init-from", source_model]) == 0
    [r] = collect_results(tmp_path / "runs")
    assert r["finetune"]["init_from"] == source_model and r["finetune"]["frozen"] == ["backbone"]


def test_features_of_a_conv_layer_are_flattened():
    from torch import nn

    from tladapt.models import LeNet

    lenet = LeNet((1, 28, 28))
    model = nn.ModuleDict({"backbone": lenet, "head": nn.Linear(500, 10)})
    x = torch.randn(5, 1, 28, 28)
    out = extract_features(model, x, "backbone.conv.6")
    assert out.shape == (5, 50 * 4 * 4) and out.dtype == torch.float32
    assert torch.allclose(out, lenet.conv(x).flatten(1))
