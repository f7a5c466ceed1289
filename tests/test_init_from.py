"""``model.init_from``: the checkpoint's backbone covers the model's exactly (checked before any run
directory), heads load only by their class names, and results.json says what started where."""

import json
from pathlib import Path

import pytest
import torch

from tladapt.cli import main
from tladapt.config import ConfigError
from tladapt.experiment import run_experiment
from tladapt.transfer import run_feature_transfer

from conftest import TWO
from helpers import make_trainer

LOW = "data.source_classes=[0, 1, 2, 3, 4]"
HIGH = "data.target_classes=[5, 6, 7, 8, 9]"
AE = ("data.source_labels=false", "plugins.autoencoder.hidden=[32]")
SHORT = ("trainer.steps=2", "trainer.eval_every=2")


def saved(result):
    return torch.load(Path(result["run_dir"]) / "checkpoint.pt", weights_only=True)


@pytest.fixture
def one_block(fast_config):
    """A finished 2-step source-only run of the one-block MLP [32] (FAST)."""
    [r] = run_experiment(fast_config(*SHORT))
    return r


def refused(config, match):
    """``run_experiment(config)`` fails with a ConfigError matching ``match`` and leaves no run."""
    with pytest.raises(ConfigError, match=match) as err:
        run_experiment(config)
    assert not Path(config.experiment.runs_dir).exists()
    return str(err.value)


def test_a_deeper_model_is_refused_before_any_run(fast_config, one_block, tmp_path):
    # the tester's case: MLP [256] into MLP [256, 128] loaded backbone.0 and left backbone.3 random
    other = f"experiment.runs_dir='{tmp_path / 'other'}'"
    message = refused(fast_config(f"model.init_from='{one_block['run_dir']}'", TWO, other),
                      r"model.init_from=.* does not fit this model")
    assert one_block["run_dir"] in message  # names the run
    assert "lacks backbone.3.weight (16, 32), backbone.3.bias (16,)" in message
    assert "backbone.0.weight: (32, 800) there, (32, 800) here" not in message  # that one fits
    # and the other way: a two-block run into a one-block model leaves backbone.3 unused
    [deep] = run_experiment(fast_config(*SHORT, TWO))
    message = refused(fast_config(f"model.init_from='{deep['run_dir']}'", other), r"does not fit this model")
    assert "has backbone.3.weight (16, 32), backbone.3.bias (16,), which this model lacks" in message


def test_a_backbone_with_no_key_in_common_is_refused_before_any_run(fast_config, one_block, tmp_path):
    # keys the preflight used to compare were those both models have: here none (net.* vs 0.*)
    message = refused(fast_config(f"model.init_from='{one_block['run_dir']}'", "model.bottleneck=8",
                                  f"experiment.runs_dir='{tmp_path / 'other'}'"), r"does not fit this model")
    assert "lacks backbone.net.0.weight (32, 800)" in message and "has backbone.0.weight (32, 800)" in message


def test_a_wider_layer_is_refused_with_both_shapes(fast_config, one_block, tmp_path):
    refused(fast_config(f"model.init_from='{one_block['run_dir']}'", "model.hidden=[8]",
                        f"experiment.runs_dir='{tmp_path / 'other'}'"),
            r"backbone.0.weight: \(32, 800\) there, \(8, 800\) here")


def test_the_cli_refuses_with_exit_2_and_no_run_directory(one_block, tmp_path, capsys):
    cfg = tmp_path / "finetune.toml"
    cfg.write_text('[data]\ndataset = "office_caltech10_surf"\ntasks = ["webcam->dslr"]\ntarget_labels_per_class = 3\n'
                   '[model]\nbackbone = "mlp"\nhidden = [32, 16]\n[trainer]\nsteps = 2\n[plugins.finetune]\n')
    runs = tmp_path / "cli"
    code = main(["run", str(cfg), "--init-from", one_block["run_dir"], "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2 and "lacks backbone.3.weight" in err and "Traceback" not in err
    assert not runs.exists()


def test_a_head_of_the_same_name_and_another_shape_is_refused_before_any_run(fast_config, tmp_path):
    # a checkpoint that records no classes (older files) loads head into head: a 5-way head into a
    # 10-way model was a raw "size mismatch for head.weight" after the run directory existed
    [five] = run_experiment(fast_config(*SHORT, "data.source_classes=[0, 1, 2, 3, 4]",
                                        "data.target_classes=[0, 1, 2, 3, 4]"))
    ckpt = saved(five)
    del ckpt["classes"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    message = refused(fast_config(f"model.init_from='{old}'", f"experiment.runs_dir='{tmp_path / 'other'}'"),
                      r"does not fit this model")
    assert "head.weight: (5, 32) there, (10, 32) here" in message


def test_results_json_says_what_loaded_and_why_a_head_is_new(fast_config):
    [src] = run_experiment(fast_config(*SHORT, LOW, "data.target_classes=[0, 1, 2, 3, 4]"))
    file = str(Path(src["run_dir"]) / "checkpoint.pt")
    [r] = run_experiment(fast_config(*SHORT, LOW, HIGH, "data.target_labels_per_class=3",
                                     f"model.init_from='{src['run_dir']}'"))
    report = json.loads((Path(r["run_dir"]) / "results.json").read_text())["init_from"]
    assert report["checkpoint"] == file
    assert report["backbone"] == f"backbone of {file}"
    assert report["source_head"] == f"head of {file}"  # classes 0-4 in both
    assert report["head"] == ("new: no head of the checkpoint predicts these classes (it has head: "
                              "back_pack, bike, calculator, headphones, keyboard)")
    assert report["not_loaded"] == []  # the checkpoint's head started the source head


def test_a_self_taught_run_starts_the_backbone_its_decoder_and_untrained_head_stay_behind(fast_config):
    [pre] = run_experiment(fast_config(*SHORT, *AE))
    assert {k.split(".")[0] for k in saved(pre)["modules"]} == {"backbone", "head", "decoder"}
    t = make_trainer(fast_config("data.target_labels_per_class=3", "trainer.source_weight=0",
                                 f"model.init_from='{pre['run_dir']}'", "plugins.finetune.init='source'"))
    state = saved(pre)["modules"]
    assert all(torch.equal(v, state[f"backbone.{k}"]) for k, v in t.backbone.state_dict().items())
    assert t.init_report["head"] == "new: no head of the checkpoint predicts these classes (it has head: never trained)"
    assert t.init_report["not_loaded"] == ["decoder", "head"]


@pytest.mark.slow
def test_the_documented_self_taught_then_fine_tune_commands_run(tmp_path, capsys):
    # docs/self-taught.md: selftaught_digits_dae.toml, then digits_high_finetune.toml --init-from RUN
    base = Path(__file__).resolve().parents[1] / "experiments" / "taxonomy"
    short = ["--set", "trainer.steps=4", "--set", "trainer.eval_every=4", "--set", "experiment.seeds=[0]",
             "--runs-dir", str(tmp_path)]
    assert main(["run", str(base / "selftaught_digits_dae.toml"), *short]) == 0
    [pre] = tmp_path.glob("**/seed0-*/checkpoint.pt")
    assert main(["run", str(base / "digits_high_finetune.toml"), *short, "--init-from", str(pre.parent),
                 "--set", "data.target_labels_per_class=3"]) == 0
    [res] = [json.loads(p.read_text()) for p in tmp_path.glob("**/results.json")
             if json.loads(p.read_text()).get("init_from")]
    assert res["init_from"]["backbone"] == f"backbone of {pre}" and res["init_from"]["head"].startswith("new")
    assert res["init_from"]["not_loaded"] == ["decoder", "head"]


def test_feature_transfer_refuses_an_untrained_head(fast_config, one_block):
    [pre] = run_experiment(fast_config(*SHORT, *AE))
    config = fast_config("data.target_labels_per_class=3")
    with pytest.raises(ConfigError, match=r"layer 'head': the head of run .* was never trained"):
        run_feature_transfer(config, pre["run_dir"], "head")
    [r] = run_feature_transfer(config, one_block["run_dir"], "head")  # a trained head's logits are a feature
    assert r["transfer"]["layer"] == "head" and r["transfer"]["n_train"] == 30


def test_lr_mult_error_lists_the_source_head(fast_config):
    config = fast_config(LOW, HIGH, "data.target_labels_per_class=3", "trainer.lr_mult={'backbone.zzz'=0.1}")
    refused(config, r"trainer.lr_mult names unknown module 'backbone.zzz': the model's parameters are under "
                    r"backbone.0, head, source_head")


def test_help_and_config_reference_say_a_head_loads_only_for_the_same_classes(capsys):
    from tladapt.cli.config import reference_markdown

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "start backbone and head from this run" not in out
    assert "a head from its head that predicts the same classes (else a new head)" in out
    page = reference_markdown()  # docs/config.md (tests/test_config_docs.py keeps the page equal to it)
    assert "backbone and head start this run" not in page
    assert "a head that predicts the same class names (other heads start new)" in page
