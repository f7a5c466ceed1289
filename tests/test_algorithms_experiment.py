"""experiments/algorithms_swept.py and algorithms_report.py --sweeps: a finished label-free sweep
becomes a config with the best trial's values (loadable, labelled as swept), an ORACLE study is
refused, and the sweep summary reports the trials the objective and the oracle chose."""

import importlib.util
import sys
from pathlib import Path

import pytest

from tladapt.cli import main
from tladapt.config import load_config
from test_sweep import study_of, write  # a 1-task DANN config and its lr/weight space (trial 0 = the config)

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sweep(tmp_path, monkeypatch, *extra):
    """A 3-trial sweep as the command line runs it (its runs record the command: the scripts read it)."""
    base, space = write(tmp_path, steps=10, eval_every=10)
    args = ["sweep", base, "--space", space, "--trials", "3", "--seeds", "0", *extra]
    monkeypatch.setattr(sys, "argv", ["tladapt", *args])
    assert main(args) == 0
    return study_of(tmp_path)


@pytest.mark.slow
def test_the_best_label_free_trial_becomes_a_swept_config_and_the_summary_shows_both_choices(tmp_path, monkeypatch):
    study = sweep(tmp_path, monkeypatch)
    best = study.best_trial
    path, text = load("algorithms_swept").swept_config(study, tmp_path / "runs" / "sw")
    assert path == tmp_path / "swept" / "base.toml"
    path.parent.mkdir()
    path.write_text(text)
    config = load_config(path)
    assert config.experiment.method == "dann (im-swept)"
    assert config.trainer.lr == best.params["trainer.lr"]
    assert config.plugins["dann"]["weight"] == best.params["plugins.dann.weight"]
    assert config.trainer.steps == 10 and config.data.tasks == ["webcam->dslr"]  # the rest: the method's config
    assert f"best trial {best.number}: validator/im = {best.value:.4f}" in text

    summary = load("algorithms_report").sweep_report(tmp_path / "runs" / "sw")
    (row,) = [line for line in summary.splitlines() if line.startswith("| base ")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3"
    trials = {t.number: t for t in study.trials}
    assert cells[2].endswith(f"im {trials[0].value:.3f})")  # trial 0: the config's own values
    assert cells[3].startswith("**") and cells[3].endswith(f"im {best.value:.3f})**")


@pytest.mark.slow
def test_an_oracle_study_is_not_written_as_a_swept_config(tmp_path, monkeypatch):
    study = sweep(tmp_path, monkeypatch, "--objective", "oracle/target_acc")
    with pytest.raises(SystemExit, match="ORACLE choice"):
        load("algorithms_swept").swept_config(study, tmp_path / "runs" / "sw")
