"""`tladapt advise`: cross-validation on the labelled target samples only, the k = 1 rule, the
classic rule beside it, and its messages (no labels, where --verify writes, progress)."""

import math
from pathlib import Path

import pytest
import torch

from tladapt.advice import (FROM_SOURCE_AT, advise_task, choose_regime, cross_validate_regimes, decide,
                            default_regime, paired_gain, train_per_class)
from tladapt.cli import main
from tladapt.data import Domain
from tladapt.data.tasks import split_target
from tladapt.experiment import run_experiment
from tladapt.transfer import REGIMES, extract_features, fit_linear, load_model, task_splits

from conftest import TWO

ROOT = Path(__file__).resolve().parents[1]


def test_training_samples_per_class_of_a_split():
    def dom(per_class):
        return Domain("d", torch.zeros(3 * per_class, 2), torch.arange(3).repeat(per_class), ("a", "b", "c"))
    assert [train_per_class(dom(k)) for k in (2, 3, 10, 30)] == [1, 2, 6, 20]


def test_choose_regime_keeps_finetune_all_unless_beaten_by_the_margin():
    scores = {"linear_top": [50.0, 52.0], "finetune_all": [60.0, 60.0], "linear_early": [40.0, 40.0],
              "from_source": [61.0, 60.8]}
    assert choose_regime(scores, margin=1.0)[0] == "finetune_all"  # 60.9 beats 60.0 by 0.9 < 1
    assert choose_regime(scores, margin=0.5)[0] == "from_source"  # gains 1.0, 0.8: 0.9 ± 0.1
    regime, reason = choose_regime({**scores, "linear_top": [70.0, 70.0]})
    assert regime == "linear_top" and "70.0%" in reason and "+10.0 ± 0.0 points over finetune_all" in reason


def test_the_paired_gain_and_its_standard_error_over_the_folds():
    scores = {"finetune_all": [60.0, 60.0, 60.0], "from_source": [62.0, 60.0, 64.0]}
    gain, se = paired_gain(scores, "from_source")  # gains 2, 0, 4: mean 2, stdev 2, se 2 / sqrt(3)
    assert gain == pytest.approx(2.0) and se == pytest.approx(2.0 / 3 ** 0.5)
    assert paired_gain(scores, "finetune_all", baseline="from_source")[0] == pytest.approx(-2.0)
    assert paired_gain({"finetune_all": [50.0], "from_source": [60.0]}, "from_source") == (10.0, math.inf)


def test_choose_regime_switches_only_when_the_gain_clears_its_noise():
    scores = {"linear_top": [40.0, 40.0, 40.0], "finetune_all": [60.0, 60.0, 60.0],
              "linear_early": [40.0, 40.0, 40.0], "from_source": [62.0, 60.0, 64.0]}  # +2 ± 1.15
    assert choose_regime(scores, noise=1.0)[0] == "from_source"
    regime, reason = choose_regime(scores, noise=2.0)  # 2 < 2 x 1.15
    assert regime == "finetune_all" and "best: from_source +2.0 ± 1.2" in reason
    # a larger mean gain that one fold contradicts: +3.7 ± 4.9 points is noise (round 1 switched on it)
    noisy = {**scores, "from_source": [60.0, 60.0, 60.0], "linear_top": [70.0, 54.0, 67.0]}
    assert choose_regime(noisy, noise=1.0)[0] == "finetune_all" and choose_regime(noisy, noise=0.0)[0] == "linear_top"
    # two regimes clear it: the better mean wins, not the larger z
    both = {**scores, "linear_early": [70.0, 66.0, 74.0]}
    assert choose_regime(both, noise=1.0)[0] == "linear_early"
    # a new head: from_source is the default that the others must beat
    assert choose_regime(scores, default="from_source")[0] == "from_source"
    assert choose_regime({**scores, "finetune_all": [66.0, 64.0, 68.0]}, default="from_source")[0] == "finetune_all"


def test_a_frozen_backbone_must_beat_every_fine_tuning_regime():
    """A linear regime replaces the default only when it also clears the guard over the other
    fine-tuning regime; a fine-tuning regime needs to clear it over the default only."""
    scores = {"linear_top": [66.0, 64.0, 65.0], "finetune_all": [60.0, 60.0, 59.0],
              "linear_early": [40.0, 40.0, 40.0], "from_source": [61.0, 66.0, 60.0]}
    # over finetune_all: linear_top gains 6, 4, 6 (+5.3 ± 0.7, clears); from_source 1, 6, 1 (+2.7 ± 1.7: noise);
    # linear_top over from_source: 5, -2, 5 (+2.7 ± 2.3: noise) -> the default stays
    regime, reason = choose_regime(scores)
    assert regime == "finetune_all"
    assert reason.endswith("(best: linear_top +5.3 ± 0.7, but +2.7 ± 2.3 over from_source: a frozen backbone must "
                           "beat every fine-tuning regime)")
    assert choose_regime(scores, noise=1.0)[0] == "linear_top"  # +2.7 >= 1 x 2.3 over from_source as well
    steady = {**scores, "from_source": [65.0, 64.0, 65.0]}  # +5 ± 0.6 over finetune_all; linear_top +0.3 over it
    assert choose_regime(steady)[0] == "from_source"
    # the default from_source: linear_top must beat it and finetune_all
    ahead = {**steady, "linear_top": [70.0, 69.0, 70.0]}  # +5 ± 0.3 over from_source, +10 over finetune_all
    assert choose_regime(ahead)[0] == "linear_top" and choose_regime(ahead, default="from_source")[0] == "linear_top"
    tied = {**ahead, "finetune_all": [70.0, 69.0, 69.5]}  # linear_top +0.2 over finetune_all
    assert choose_regime(tied, default="from_source")[0] == "finetune_all"  # finetune_all: +4.8 ± 0.2 over from_source


def test_the_default_is_from_source_for_a_new_head_or_enough_labels():
    assert FROM_SOURCE_AT == 5.0
    assert default_regime(new_head=True, labels_per_class=1.0) == "from_source"
    assert default_regime(new_head=False, labels_per_class=3.0) == "finetune_all"
    assert default_regime(new_head=False, labels_per_class=4.99) == "finetune_all"
    assert default_regime(new_head=False, labels_per_class=5.0) == "from_source"
    assert default_regime(new_head=False, labels_per_class=9.6) == "from_source"  # k = 10 on dslr (8-24 per class)


def test_decide_from_the_recorded_measurements():
    cv = {"linear_top": [40.0, 40.0, 40.0], "finetune_all": [60.0, 60.0, 60.0],
          "linear_early": [40.0, 40.0, 40.0], "from_source": [62.0, 64.0, 66.0]}  # from_source +4 ± 1.2
    # a source head, fewer than 5 labelled per class: kept, whatever the cross-validation says
    regime, basis, reason = decide(cv, 35.0, 10.0, 3.0)
    assert (regime, basis) == ("finetune_all", "few labels, a source head")
    assert reason.startswith("3.0 labelled samples per class (< 5); the source head gets 35.0% of them (chance "
                             "10.0%); cross-validation's best: from_source 64.0% (finetune_all 60.0%): too few")
    assert decide(cv, 35.0, 10.0, 4.9)[0] == "finetune_all"
    # from 5 per class, or a new head: from_source, unless another regime beats it
    assert decide(cv, 35.0, 10.0, 10.0)[:2] == ("from_source", "cross-validation")
    assert decide(cv, None, 10.0, 3.0)[:2] == ("from_source", "cross-validation")
    ahead = {**cv, "finetune_all": [70.0, 71.0, 72.0]}  # +7 ± 0.6 over from_source
    assert decide(ahead, 35.0, 10.0, 10.0)[0] == "finetune_all" == decide(ahead, None, 10.0, 3.0)[0]
    assert decide(cv, None, 10.0, 3.0, new_head=False)[0] == "finetune_all"  # source-free: a head, not measured
    # k = 1: a source head is kept whatever its accuracy on the labelled samples (1 right of 10: chance)
    for acc in (0.0, 10.000000149011612, 30.0, 100.0):
        assert decide({}, acc, 10.0, 1.0)[:2] == ("finetune_all", "few labels, a source head")
    assert decide({}, None, 10.0, 1.0, new_head=False)[0] == "finetune_all"  # source-free
    assert decide({}, None, 20.0, 1.0)[:2] == ("from_source", "k = 1, a new head")


def test_cross_validation_reads_only_the_labelled_samples(fast_config, source_model, monkeypatch):
    config = fast_config(TWO, "data.target_labels_per_class=3")
    labelled = task_splits(config, "webcam->dslr", 0).target_labelled

    def forbidden(*args, **kwargs):
        raise AssertionError("cross-validation loaded a domain")
    monkeypatch.setattr("tladapt.data.tasks.load_domain", forbidden)
    monkeypatch.setattr("tladapt.data.datasets.load_domain", forbidden)
    calls = []
    scores = cross_validate_regimes(config, source_model, labelled, "backbone.2", "webcam", folds=2, steps=3,
                                    progress=lambda: calls.append(1))
    monkeypatch.undo()
    assert set(scores) == set(REGIMES) and all(len(v) == 2 for v in scores.values()) and len(calls) == 8
    # fold 0 trains on split_target(labelled, 2, seed 1) and scores on its rest: one sample per class
    train, held = split_target(labelled, 2, 1)
    assert len(held) == 10
    _, model = load_model(source_model)
    clf = fit_linear(extract_features(model, train.inputs(), "backbone").numpy(), train.y.numpy(), seed=1)
    want = 100.0 * float((clf.predict(extract_features(model, held.inputs(), "backbone").numpy())
                          == held.y.numpy()).mean())
    assert scores["linear_top"][0] == pytest.approx(want)
    assert all(v % 10 == pytest.approx(0, abs=1e-4) or v % 10 == pytest.approx(10, abs=1e-4)
               for v in scores["from_source"])  # accuracies on 10 held-out samples


@pytest.mark.slow
def test_one_label_per_class_uses_the_source_heads_accuracy(fast_config, source_model):
    config = fast_config(TWO, "data.target_labels_per_class=1")
    a = advise_task(config, "webcam->dslr", source_model)
    assert a.basis == "few labels, a source head" and not a.cv and a.chance == pytest.approx(10.0)
    assert a.regime == "finetune_all" and f"the source head gets {a.source_acc_labelled:.1f}% of them" in a.reason
    assert a.classic == "linear_top" or a.classic == "linear_early"  # the classic rule: small target
    # a target task of other classes has no source head to measure
    other = fast_config(TWO, "data.source_classes=[0, 1, 2, 3, 4]", "data.target_classes=[5, 6, 7, 8, 9]",
                        "data.target_labels_per_class=1")
    [src] = run_experiment(fast_config(TWO, "data.source_classes=[0, 1, 2, 3, 4]",
                                       "data.target_classes=[0, 1, 2, 3, 4]"))
    b = advise_task(other, "webcam->dslr", src["run_dir"])
    assert b.source_acc_labelled is None and b.regime == "from_source" and b.basis == "k = 1, a new head"
    # the config's subsets give a shared head, but the model's head predicts all 10 classes: as
    # a fine-tuning run from it, the advice gives a new head and measures no source accuracy
    pair = fast_config(TWO, "data.source_classes=[8, 9]", "data.target_classes=[8, 9]",
                       "data.target_labels_per_class=1")
    c = advise_task(pair, "webcam->dslr", source_model)
    assert c.source_acc_labelled is None and c.basis == "k = 1, a new head"


def test_load_model_loads_the_head_it_is_asked_for(source_model):
    from tladapt.errors import ConfigError
    from tladapt.transfer import head_classes, head_for

    assert head_for(source_model, head_classes(source_model)["head"]) == "head"
    assert head_for(source_model, ("back_pack", "bike")) is None  # two of its ten classes: a new head
    _, model = load_model(source_model, head="head")
    assert model["head"].out_features == 10
    with pytest.raises(ConfigError, match="checkpoint.pt has no module 'source_head'"):
        load_model(source_model, head="source_head")


@pytest.mark.slow
def test_the_advise_command(source_model, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[experiment]\nruns_dir = '{tmp_path / 'runs'}'\n[data]\ntasks = ['webcam->dslr']\n"
                   f"[model]\nhidden = [32, 16]\n[trainer]\nprogress = false\nbatch_size = 16\nsteps = 5\n")
    assert main(["advise", str(cfg), "--init-from", source_model]) == 2
    err = capsys.readouterr().err
    assert "tladapt advise needs labelled target samples" in err and not (tmp_path / "runs").exists()
    assert main(["advise", str(cfg), "--set", "data.target_labels_per_class=3", "--init-from", source_model,
                 "--steps", "3", "--folds", "2", "--verify", "--seeds", "0"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "cross-validated acc (%)" in out and "advice: " in out  # shown, though 3 per class keep the source head
    assert "because 3.0 labelled samples per class (< 5); the source head gets" in out
    assert "classic rule (CS231n, for reference" in out and "ORACLE" in out and "advised" in out
    assert f"--verify: the regime runs are written under {tmp_path / 'runs'}/experiment/" in captured.err
    # without --init-from it trains a source model first and says where
    assert main(["advise", str(cfg), "--set", "data.target_labels_per_class=1"]) == 0
    assert "training a source-only model per task first, under" in capsys.readouterr().err
    assert list((tmp_path / "runs").rglob("source_pretrain/seed0-*/checkpoint.pt"))


def test_the_classic_rule_reuses_given_distances(fast_config, source_model, monkeypatch):
    from tladapt.advice import classic_rule

    config = fast_config(TWO, "data.target_labels_per_class=3")
    measured = classic_rule(config, "webcam->dslr", source_model)
    assert set(measured["distances"]) == {"backbone.2", "backbone"}
    monkeypatch.setattr("tladapt.advice.layer_distances", lambda *a, **k: pytest.fail("distances measured again"))
    assert classic_rule(config, "webcam->dslr", source_model, distances=measured["distances"]) == measured


def test_the_command_defaults_are_advise_tasks():
    """tladapt advise's options default to advise_task's own defaults (the command module does
    not import tladapt.advice, which imports torch, so the numbers are written twice)."""
    import inspect

    from tladapt.cli import build_parser

    args = build_parser().parse_args(["advise", "config.toml"])
    defaults = {name: p.default for name, p in inspect.signature(advise_task).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for option in ("steps", "folds", "margin", "noise", "small_below", "similar_below"):
        assert getattr(args, option) == defaults[option], option


@pytest.mark.parametrize("option, value, expected", [
    ("--steps", "0", "--steps must be an integer >= 1, got 0"),
    ("--folds", "1", "--folds must be an integer >= 2, got 1"),
    ("--margin", "-1", "--margin must be a finite number >= 0, got -1.0"),
    ("--noise", "nan", "--noise must be a finite number >= 0, got nan"),
    ("--small-below", "inf", "--small-below must be a finite number >= 0, got inf"),
    ("--similar-below", "nan", "--similar-below must be a finite number, got nan"),
])
def test_bad_advise_options_fail_before_any_work(option, value, expected, tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["advise", str(ROOT / "tladapt/configs/default.toml"), "--set", f"experiment.runs_dir={str(runs)!r}",
            "--set", "data.target_labels_per_class=3", option, value]
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
    assert not runs.exists()  # no source model was trained
