"""Run directories: status.json through a run's life, checkpoint cadence, best.pt, temporary
files, and `tladapt table` listing the runs it leaves out."""

import json
import signal
from pathlib import Path

import pytest
import torch

import tladapt
from tladapt import checkpoint
from tladapt.cli import main
from tladapt.errors import RunFailed, RunInterrupted
from tladapt.experiment import run_experiment
from tladapt.tables import collect_results
from tladapt.runs import read_status

from test_resume import stop_at


class Boom:
    """Raises inside tladapt_losses at step 3."""

    @tladapt.hookimpl
    def tladapt_losses(self, trainer):
        if trainer.step == 3:
            raise ZeroDivisionError("boom at step 3")


def test_status_follows_a_run_and_a_failed_run_keeps_its_traceback(fast_config, tmp_path, monkeypatch):
    [ok] = run_experiment(fast_config())
    status = read_status(ok["run_dir"])
    assert (status.state, status.step, status.steps, status.task, status.seed, status.method) == \
        ("finished", 30, 30, "webcam->dslr", 0, "source_only")
    assert status.config_id == ok["config_id"] and not status.live
    plugin = tmp_path / "boom.py"
    plugin.write_text("import tladapt\n\n" + __import__("inspect").getsource(Boom))
    with pytest.raises(RunFailed, match=r"plugin 'boom' raised ZeroDivisionError in tladapt_losses at step 3: boom "
                                        r"at step 3 \(run .* is marked failed, its traceback is in .*traceback.txt"):
        run_experiment(fast_config("trainer.checkpoint_every=2", "plugins.boom={}"), [str(plugin)])
    [failed] = [p.parent for p in Path(fast_config().experiment.runs_dir).rglob("config.json") if "boom" in str(p)]
    status = read_status(failed)
    assert (status.state, status.step, status.error) == ("failed", 2, "ZeroDivisionError: boom at step 3")
    trace = (failed / status.traceback).read_text()
    assert "Traceback" in trace and "boom.py" in trace and "boom at step 3" in trace


def test_table_lists_interrupted_runs_and_never_averages_them(fast_config, monkeypatch, capsys):
    runs = fast_config().experiment.runs_dir
    run_experiment(fast_config())
    stop_at(monkeypatch, 20, "signal")
    with pytest.raises(RunInterrupted):
        run_experiment(fast_config("experiment.seeds=[1]"))
    assert [r["seed"] for r in collect_results(runs)] == [0]
    assert main(["table", runs]) == 0
    out = capsys.readouterr().out
    table, _, rest = out.partition("Not in the table")
    assert "| source_only |" in table and "seed1" not in table
    [line] = [line for line in rest.splitlines() if "seed1-" in line]
    assert line.split() [:1] == ["interrupted"]


def test_a_killed_run_shows_as_killed(fast_config, monkeypatch, capsys):
    run_experiment(fast_config("experiment.seeds=[1]"))
    stop_at(monkeypatch, 10, "crash")
    with pytest.raises(RuntimeError):
        run_experiment(fast_config())
    [run_dir] = {p.parent for p in Path(fast_config().experiment.runs_dir).rglob("seed0-*/config.json")}
    status = json.loads((run_dir / "status.json").read_text())
    status.update(state="running", pid=2 ** 22 + 7, error="", traceback="")  # as a kill -9 leaves it
    (run_dir / "status.json").write_text(json.dumps(status))
    assert not read_status(run_dir).live
    assert read_status(run_dir).step == 9  # the auto cadence: a checkpoint every 3 steps
    assert main(["table", fast_config().experiment.runs_dir]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if str(run_dir) in line]
    assert line.split()[0] == "killed"


def test_checkpoint_cadence(fast_config, monkeypatch):
    saved = []
    original = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda path, state: (saved.append((Path(path).name, state["step"])),
                                                                 original(path, state)))
    run_experiment(fast_config())  # auto: ceil(30 / 10) = every 3 steps, and at the end
    assert [s for _, s in saved] == list(range(3, 31, 3))
    saved.clear()
    [r] = run_experiment(fast_config("trainer.checkpoint_every=0", "trainer.checkpoint=false"))
    assert saved == [("checkpoint.pt", 30)]  # only at the end, and deleted once finished
    assert not (Path(r["run_dir"]) / "checkpoint.pt").exists()


def test_keep_best_keeps_the_best_evaluation(fast_config, monkeypatch):
    [r] = run_experiment(fast_config("trainer.keep_best='metrics/source_val_acc'", "trainer.eval_every=5"))
    accs = [(h["metrics/source_val_acc"], h["step"]) for h in r["history"]]
    best_value, best_step = max(accs, key=lambda a: (a[0], -a[1]))  # ties: the earliest
    assert r["best"] == {"tag": "metrics/source_val_acc", "direction": "max", "step": best_step, "value": best_value}
    best = torch.load(Path(r["run_dir"]) / "best.pt", weights_only=True)
    assert best["step"] == best_step and best["history"][-1]["metrics/source_val_acc"] == best_value
    with pytest.raises(tladapt.config.ConfigError, match=r"trainer.keep_best = 'metrics/nope_acc' is not a metric "
                                                         r"of this run: the evaluation at step 15 gives loss/source, loss/total, "
                                                         r"metrics/source_"):
        run_experiment(fast_config("trainer.keep_best='metrics/nope_acc'"))
    with pytest.raises(tladapt.config.ConfigError, match=r"trainer.keep_best_mode = 'max' or 'min'"):
        run_experiment(fast_config("trainer.keep_best='self_training/selected_frac'"))
    [r] = run_experiment(fast_config("trainer.keep_best='validator/entropy'", "trainer.keep_best_mode='max'"))
    values = [h["validator/entropy"] for h in r["history"]]
    assert r["best"]["direction"] == "max" and r["best"]["value"] == max(values)


def test_resume_cleans_temporary_files_and_config_resume_reuses_finished_runs(monkeypatch, capsys, tmp_path):
    from tladapt.config import load_config

    cfg = tmp_path / "cfg.toml"  # the fast_config settings as a file
    cfg.write_text(f"[experiment]\nruns_dir = '{tmp_path / 'runs'}'\n[data]\ntasks = ['webcam->dslr']\n"
                   f"[model]\nhidden = [32]\n[trainer]\nsteps = 30\nbatch_size = 16\neval_every = 15\n"
                   f"log_every = 5\nprogress = false\n")
    stop_at(monkeypatch, 12, "signal")
    with pytest.raises(RunInterrupted):
        run_experiment(load_config(cfg))
    [run_dir] = {p.parent for p in (tmp_path / "runs").rglob("config.json")}
    (run_dir / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    assert main(["run", str(cfg), "--seeds", "0-1", "--resume"]) == 0
    assert not (run_dir / ".checkpoint.pt.abc123.tmp").exists()
    assert read_status(run_dir).state == "finished"
    dirs = sorted(p.parent for p in (tmp_path / "runs").rglob("config.json"))
    assert len(dirs) == 2 and run_dir in dirs  # seed 0 resumed in place, seed 1 new
    capsys.readouterr()
    assert main(["run", "--resume", str(cfg), "--seeds", "0-1"]) == 0  # all finished: nothing new runs
    assert sorted(p.parent for p in (tmp_path / "runs").rglob("config.json")) == dirs
    assert main(["run", "--resume", str(run_dir), "--seeds", "3"]) == 2
    assert "--seeds cannot change them" in capsys.readouterr().err


def test_a_killed_process_not_yet_reaped_is_not_live(tmp_path):
    """kill -9 leaves a zombie until its parent reaps it: its pid still answers signal 0, but
    the run it was training is dead and can be resumed."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from tladapt.runs import RunStatus, _process_start

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        status = RunStatus("running", pid=child.pid, host=socket.gethostname(),
                           process_start=_process_start(child.pid))
        assert status.live
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(200):  # until the kernel has made it a zombie (we do not reap it yet)
            if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.01)
        os.kill(child.pid, 0)  # the zombie's pid still answers
        assert not status.live
    finally:
        child.kill()
        child.wait()
