"""tladapt sweep: search spaces checked before work, trials that are ordinary runs, several
worker processes sharing one study that ends with exactly N trials, and a sweep killed
mid-way that continues where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from tladapt.cli import main
from tladapt.errors import ConfigError
from tladapt.sweep import finished_count, load_space

BASE = """
[experiment]
name = "sw"
runs_dir = "{runs}"
[data]
tasks = ["webcam->dslr"]
[model]
hidden = [16]
[trainer]
steps = {steps}
eval_every = {eval_every}
batch_size = 16
threads = 1
progress = false
[plugins.dann]
hidden = [16]
"""

SPACE = """
[params."trainer.lr"]
type = "loguniform"
low = 0.003
high = 0.05

[params."plugins.dann.weight"]
type = "categorical"
choices = [0.1, 0.3, 1.0]

[sampler]
name = "random"
seed = 3
defaults_first = true
"""


def write(tmp_path, steps=20, eval_every=10, space=SPACE):
    (tmp_path / "base.toml").write_text(BASE.format(runs=tmp_path / "runs", steps=steps, eval_every=eval_every))
    (tmp_path / "space.toml").write_text(space)
    return str(tmp_path / "base.toml"), str(tmp_path / "space.toml")


def study_of(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs' / 'sw' / 'optuna.db'}"
    (name,) = optuna.study.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def run_dirs(tmp_path):
    return sorted(p.parent for p in (tmp_path / "runs").rglob("config.json"))


def test_space_errors_name_the_file_the_param_and_what_was_expected(tmp_path):
    bad = {
        '[params."trainer.lr"]\ntype = "gaussian"': "type = 'gaussian', expected uniform, loguniform, int or categorical",
        '[params."trainer.lr"]\ntype = "uniform"\nlow = 1\nhigh = 0.5': "low = 1 must be < high = 0.5",
        '[params."trainer.lr"]\ntype = "loguniform"\nlow = 0\nhigh = 1': "loguniform needs low > 0",
        '[params."trainer.lr"]\ntype = "categorical"\nchoices = []': "choices must be a non-empty list",
        '[params."trainer.lr"]\ntype = "uniform"\nlow = 0.1\nhigh = 1\nchoices = [1]': "unknown key(s) choices",
        '[params."trainer.lr"]\ntype = "uniform"\nlow = 0.1\nhigh = 1\n[sampler]\nname = "cma"': "name = 'cma'",
        '[params."trainer.lr"]\ntype = "uniform"\nlow = 0.1\nhigh = 1\n[sampler]\nname = "grid"': "grid sampler",
        "[sampler]\nname = 'tpe'": "nothing to search",
    }
    for text, message in bad.items():
        path = tmp_path / "s.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_space(path)
    path.write_text(SPACE)
    space = load_space(path)
    assert space.corners() == [{"trainer.lr": 0.003, "plugins.dann.weight": 0.1},
                               {"trainer.lr": 0.05, "plugins.dann.weight": 1.0}]


def test_a_bad_key_or_objective_fails_before_any_study_or_run(tmp_path, capsys):
    base, _ = write(tmp_path)
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text('[params."plugins.dann.wieght"]\ntype = "uniform"\nlow = 0.1\nhigh = 1')
    assert main(["sweep", base, "--space", str(bad_key), "--trials", "2"]) == 2
    assert "plugins.dann" in capsys.readouterr().err
    assert main(["sweep", base, "--space", str(tmp_path / "space.toml"), "--trials", "2",
                 "--objective", "validator/nope"]) == 2
    assert "--objective = 'validator/nope'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_two_workers_share_one_study_and_end_with_exactly_n_trials(tmp_path, capfd):
    base, space = write(tmp_path)
    argv = ["sweep", base, "--space", space, "--trials", "3", "--jobs", "2", "--heartbeat", "1",
            "--objective", "validator/entropy"]
    assert main(argv) == 0
    out = capfd.readouterr().out
    study = study_of(tmp_path)
    assert finished_count(study) == (3, 0, 0) and len(study.trials) == 3
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # entropy: lower is better
    first = study.trials[0]
    assert first.params == {"trainer.lr": 0.01, "plugins.dann.weight": 1.0}  # defaults_first: the base config
    # each trial is ordinary runs of its config: objective = mean of its runs' final validator/entropy
    for t in study.trials:
        results = [json.loads((Path(d) / "results.json").read_text()) for d in t.user_attrs["runs"]]
        assert {r["config_id"] for r in results} == {t.user_attrs["config_id"]}
        assert t.value == pytest.approx(sum(r["final"]["validator/entropy"] for r in results) / len(results))
    assert len(run_dirs(tmp_path)) == len({t.user_attrs["config_id"] for t in study.trials})
    assert [line.split(" (")[0] for line in out.splitlines() if line.startswith("trial ")] == \
        ["trial 1/3", "trial 2/3", "trial 3/3"]
    assert "label-free objective" in out and "best: trial" in out
    # the same command again: the study is complete, nothing runs
    assert main(argv) == 0
    assert len(study_of(tmp_path).trials) == 3 and "trial 1/3" not in capfd.readouterr().out
    # a sweep reads like any runs: one configuration per trial
    assert main(["select", str(tmp_path / "runs"), "--validator", "entropy", "--over", "configs"]) == 0
    assert "selected by entropy" in capfd.readouterr().out


def test_an_oracle_objective_is_written_as_oracle(tmp_path, capsys):
    base, space = write(tmp_path)
    assert main(["sweep", base, "--space", space, "--trials", "1", "--objective", "oracle/target_acc"]) == 0
    out = capsys.readouterr().out
    assert "[ORACLE]" in out and "ORACLE selection (target labels)" in out
    assert study_of(tmp_path).user_attrs == {"objective": "oracle/target_acc", "oracle": True}


@pytest.mark.slow
def test_a_sweep_killed_mid_way_continues_to_exactly_n_trials_without_duplicate_runs(tmp_path):
    base, space = write(tmp_path, steps=400, eval_every=100)
    cmd = [sys.executable, "-m", "tladapt.cli", "sweep", base, "--space", space, "--trials", "4", "--jobs", "2",
           "--heartbeat", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once a trial is done and others are under way
        time.sleep(0.5)
        # a checkpoint exists only once the sweep has made its study: reading the database
        # earlier would race the sweep's creation of its schema
        if any((tmp_path / "runs").rglob("checkpoint.pt")):
            done, running, _ = finished_count(study_of(tmp_path))
            if done >= 1 and running >= 1:
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = study_of(tmp_path)
    assert finished_count(killed)[0] < 4 and finished_count(killed)[1] >= 1  # killed mid-way
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    study = study_of(tmp_path)
    states = Counter(t.state for t in study.trials)
    assert finished_count(study)[0] == 4 and states[optuna.trial.TrialState.COMPLETE] == 4
    assert states[optuna.trial.TrialState.RUNNING] == 0
    # no duplicate run directories: one per configuration (task and seed are fixed here)
    fingerprints = Counter(json.loads((d / "results.json").read_text())["config_id"] for d in run_dirs(tmp_path))
    assert all(n == 1 for n in fingerprints.values())
    assert len(run_dirs(tmp_path)) == len(fingerprints)  # every run directory finished
