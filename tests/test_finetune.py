"""The finetune plugin: frozen layers get no update, lr multipliers, head/scratch re-init, errors."""

from pathlib import Path

import pytest
import torch

from tladapt.config import ConfigError
from tladapt.experiment import run_experiment

from helpers import make_trainer

TWO = "model.hidden=[32, 16]"  # backbone: 0 Linear, 1 ReLU, 2 Dropout, 3 Linear, 4 ReLU, 5 Dropout


def trainer(config, seed=0):
    return make_trainer(config, seed=seed)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """One 30-step source-only run with the two-block MLP (its checkpoint is the source model)."""
    from tladapt.config import load_config
    from conftest import FAST

    runs = tmp_path_factory.mktemp("src")
    [r] = run_experiment(load_config(None, [*FAST, TWO, f"experiment.runs_dir='{runs}'"]))
    state = torch.load(Path(r["run_dir"]) / "checkpoint.pt", weights_only=True)["modules"]
    return r["run_dir"], state


def test_frozen_layers_are_bit_identical_and_stay_in_eval_mode_while_the_rest_trains(fast_config, source_run):
    run, saved = source_run
    t = trainer(fast_config(TWO, f"model.init_from='{run}'", "data.target_labels_per_class=3",
                            "plugins.finetune.freeze_depth=1"))
    assert torch.equal(t.backbone[0].weight, saved["backbone.0.weight"])  # started from the source
    assert set(g["name"] for g in t.optimizer.param_groups) == {"backbone", "head"}
    assert sum(len(g["params"]) for g in t.optimizer.param_groups) == 4  # backbone.3 and head, weight+bias
    t.start()
    for _ in range(t.config.trainer.steps):
        t.advance()
    for name in ("weight", "bias"):
        assert torch.equal(getattr(t.backbone[0], name), saved[f"backbone.0.{name}"])
        assert not torch.equal(getattr(t.backbone[3], name), saved[f"backbone.3.{name}"])
        assert not torch.equal(getattr(t.head, name), saved[f"head.{name}"])
    # the frozen block (Linear, ReLU, Dropout) stays in eval mode after the evaluations' train() calls
    assert [t.backbone[i].training for i in range(6)] == [False, False, False, True, True, True]
    t.finish()
    assert not any(m.training for m in t.modules.modules())  # a finished run is left in eval mode
    assert t.pm.get_plugin("finetune").frozen == ["backbone.0", "backbone.1", "backbone.2"]


def test_freezing_the_backbone_by_path_trains_a_reinitialised_head_only(fast_config, source_run):
    run, saved = source_run
    t = trainer(fast_config(TWO, f"model.init_from='{run}'", "data.target_labels_per_class=1",
                            "plugins.finetune.freeze=['backbone']", "plugins.finetune.reinit_head=true",
                            "trainer.source_weight=0.0"))
    assert not torch.equal(t.head.weight, saved["head.weight"])  # a new linear classifier
    assert [g["name"] for g in t.optimizer.param_groups] == ["head"]
    head0 = t.head.weight.clone()
    t.fit()
    assert all(torch.equal(p, saved[f"backbone.{n}"]) for n, p in t.backbone.named_parameters())
    assert not torch.equal(t.head.weight, head0)
    assert not any(m.training for m in t.backbone.modules())


def test_lr_multipliers_by_submodule_path_land_in_the_optimizer_next_to_frozen_layers(fast_config, source_run):
    run, _ = source_run
    t = trainer(fast_config(TWO, f"model.init_from='{run}'", "trainer.lr=0.02", "trainer.schedule='constant'",
                            "trainer.lr_mult={'backbone.3'=0.1, head=2.0}", "plugins.finetune.freeze_depth=1"))
    groups = {g["name"]: (g["lr"], [id(p) for p in g["params"]]) for g in t.optimizer.param_groups}
    assert {k: v[0] for k, v in groups.items()} == pytest.approx({"backbone.3": 0.002, "head": 0.04})
    assert groups["backbone.3"][1] == [id(t.backbone[3].weight), id(t.backbone[3].bias)]
    assert groups["head"][1] == [id(t.head.weight), id(t.head.bias)]


def test_trainer_source_weight_zero_trains_on_the_labelled_target_only(fast_config, source_run):
    run, _ = source_run
    t = trainer(fast_config(TWO, f"model.init_from='{run}'", "data.target_labels_per_class=3",
                            "trainer.source_weight=0.0"))
    t.start()
    batch = t.pipeline.next()
    terms = t.losses(batch, t.forward(batch))
    assert terms["source"].weight == 0.0 and terms["target"].weight == 1.0 and terms["target"].value.item() > 0.0


def test_scratch_reinitialises_what_init_from_loaded(fast_config, source_run):
    run, saved = source_run
    t = trainer(fast_config(TWO, f"model.init_from='{run}'", "plugins.finetune.init='scratch'"))
    for name, p in [*t.backbone.named_parameters(prefix="backbone"), *t.head.named_parameters(prefix="head")]:
        assert not torch.equal(p, saved[name]), name
    # without init_from, scratch is an ordinary random start
    assert trainer(fast_config(TWO, "plugins.finetune.init='scratch'")).optimizer is not None


@pytest.mark.parametrize("overrides, message", [
    ([], r"plugins.finetune.init = 'source' needs model.init_from"),
    (["plugins.finetune.init='scratch'", "plugins.finetune.freeze_depth=3"],
     r"freeze_depth=3: the backbone has 2 parametrised layers \(backbone.0, backbone.3\); expected 0..2"),
    (["plugins.finetune.init='scratch'", "plugins.finetune.freeze=['backbone.9']"],
     r"plugins.finetune.freeze names unknown module 'backbone.9': modules are backbone, backbone.0"),
    (["plugins.finetune.init='scratch'", "trainer.source_weight=0.0"],
     r"source_weight = 0 with data.target_labels_per_class = 0 leaves no supervised loss"),
    (["plugins.finetune.init='sauce'"], r"plugins.finetune.init"),
])
def test_bad_finetune_configs_are_clear_config_errors(fast_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        trainer(fast_config(TWO, "plugins.finetune.freeze_depth=0", *overrides))


def test_depth_regions_and_candidate_layers_of_lenet_and_mlp():
    from tladapt.models import MLP, LeNet
    from tladapt.transfer import candidate_layers, depth_region, parametrised_layers

    lenet = LeNet((1, 28, 28))
    assert parametrised_layers(lenet, "backbone") == ["backbone.conv.0", "backbone.conv.3", "backbone.fc.0"]
    assert depth_region(lenet, 1) == ["backbone.conv.0", "backbone.conv.1", "backbone.conv.2"]
    assert depth_region(lenet, 2)[-1] == "backbone.conv.6"
    assert depth_region(lenet, 3)[-1] == "backbone.fc.2" and depth_region(lenet, 0) == []
    assert candidate_layers(lenet) == ["input", "backbone.conv.2", "backbone.conv.6", "backbone"]
    assert candidate_layers(MLP(8, [4])) == ["input", "backbone"]
