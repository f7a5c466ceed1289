"""`tladapt advise`: cross-validation on the labelled target samples only, the k = 1 rule, the
classic rule beside it, and its messages (no labels, where --verify writes, progress)."""

import pytest
import torch

from tladapt.advice import advise_task, choose_regime, cross_validate_regimes, train_per_class
from tladapt.cli import main
from tladapt.config import load_config
from tladapt.data import Domain
from tladapt.data.tasks import split_target
from tladapt.experiment import run_experiment
from tladapt.transfer import REGIMES, extract_features, fit_linear, load_model, task_splits

from conftest import TWO


def test_training_samples_per_class_of_a_split():
    def dom(per_class):
        return Domain("d", torch.zeros(3 * per_class, 2), torch.arange(3).repeat(per_class), ("a", "b", "c"))
    assert [train_per_class(dom(k)) for k in (2, 3, 10, 30)] == [1, 2, 6, 20]


def test_choose_regime_keeps_finetune_all_unless_beaten_by_the_margin():
    scores = {"linear_top": [50.0, 52.0], "finetune_all": [60.0, 60.0], "linear_early": [40.0, 40.0],
              "from_source": [61.0, 60.8]}
    assert choose_regime(scores, margin=1.0)[0] == "finetune_all"  # 60.9 beats 60.0 by 0.9 < 1
    assert choose_regime(scores, margin=0.5)[0] == "from_source"
    regime, reason = choose_regime({**scores, "linear_top": [70.0, 70.0]})
    assert regime == "linear_top" and "70.0%" in reason


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
    assert a.basis == "source accuracy" and not a.cv and a.chance == pytest.approx(10.0)
    assert a.regime == ("finetune_all" if a.source_acc_labelled > 10.0 else "from_source")
    assert a.classic == "linear_top" or a.classic == "linear_early"  # the classic rule: small target
    # a target task of other classes has no source head to measure
    other = fast_config(TWO, "data.source_classes=[0, 1, 2, 3, 4]", "data.target_classes=[5, 6, 7, 8, 9]",
                        "data.target_labels_per_class=1")
    [src] = run_experiment(fast_config(TWO, "data.source_classes=[0, 1, 2, 3, 4]",
                                       "data.target_classes=[0, 1, 2, 3, 4]"))
    b = advise_task(other, "webcam->dslr", src["run_dir"])
    assert b.source_acc_labelled is None and b.regime == "finetune_all" and b.basis == "k = 1, a new head"


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
    assert "cross-validated acc (%)" in out and "advice: " in out and "because cross-validation" in out
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
