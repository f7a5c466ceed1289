"""Exact resume: a run interrupted at a checkpoint or between checkpoints, then resumed, ends
with the same results.json (apart from timing fields) and the same scalar curves as the
uninterrupted run, bit for bit on the CPU, for every bundled plugin and every plugin
installed through an entry point."""

import json
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tladapt.errors import RunInterrupted
from tladapt.experiment import resume_runs, run_experiment
from tladapt.manager import installed_plugins
from tladapt.runs import read_status
from tladapt.trainer import Trainer

# 24 steps: checkpoints after 8 and 16 (3 steps of sums pending at 8 with log_every = 5),
# evaluations after 6, 12, 18 and 24.
RESUMABLE = ["trainer.steps=24", "trainer.checkpoint_every=8", "trainer.log_every=5", "trainer.eval_every=6"]

#: (case, overrides). Every installed plugin that no case names gets a case with its defaults
#: below; a plugin that needs options to run on the default task adds its case here.
#: ``{source_run}`` stands for a finished source-only run of the same task (for model.init_from).
CASES = [
    ("source_only", []),
    ("dann", ["plugins.dann.hidden=[16]"]),
    ("mmd", ["plugins.mmd.layer='joint'", "plugins.mmd.schedule='progressive'"]),
    ("coral_deep", ["plugins.coral.mode='deep'"]),
    ("coral_closed_form", ["plugins.coral.mode='closed_form'"]),
    ("instance_weighting_kmm", ["plugins.instance_weighting.estimator='kmm'"]),
    ("instance_weighting_features", ["plugins.instance_weighting.estimator='discriminative'",
                                     "plugins.instance_weighting.space='features'",
                                     "plugins.instance_weighting.refresh_every=7"]),
    ("self_training_ema", ["plugins.self_training.teacher='ema'", "plugins.self_training.threshold=0.2",
                           "plugins.self_training.refresh_every=3"]),
    ("self_training_cbst", ["plugins.self_training.selection='class_balanced'",
                            "plugins.self_training.refresh_every=4", "plugins.self_training.entropy_weight=0.1"]),
    ("finetune", ["plugins.finetune.init='scratch'", "plugins.finetune.freeze_depth=1",
                  "plugins.finetune.reinit_head=true", "model.hidden=[32, 16]"]),
    ("dann+self_training", ["plugins.dann.hidden=[16]", "plugins.self_training.teacher='ema'"]),
    ("shot", ["plugins.shot={}", "model.init_from='{source_run}'", "data.source_free=true"]),
    ("pytorch_adapt", ["plugins.pytorch_adapt.terms={mcc = {layer = 'MCCLoss', inputs = ['logits_t']}, "
                       "coral = {layer = 'CORALLoss', inputs = ['features_s', 'features_t']}}"]),
    ("host_placement", ["data.placement='host'", "plugins.dann.hidden=[16]"]),  # batches fetched one step ahead
    ("multitask", ["plugins.multitask.domains=['amazon']", "plugins.multitask.weighting='uncertainty'",
                   "data.target_labels_per_class=3", "model.shared_head=false"]),  # a run of three tasks
    ("image_augmentation", ["data.dataset='mnist_usps_jda'", "data.tasks=['usps->mnist']", "augment.train='standard'",
                            "augment.flip=false", "augment.color_jitter=[0.2, 0.2, 0.0, 0.0]"]),
]
_named = {o.split("=")[0].split(".")[1] for _, overrides in CASES for o in overrides if o.startswith("plugins.")}
CASES += [(name, [f"plugins.{name}={{}}"]) for name in sorted(installed_plugins()) if name not in _named]


def strip_timing(results: dict) -> dict:
    """results.json without what legitimately differs between two runs of one config: the run
    directory, provenance (wall times, command line, ...) and every ``*seconds*`` field."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if "seconds" not in k and k not in ("run_dir", "provenance")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(results)


def curves(run_dir) -> dict:
    """Every scalar curve TensorBoard shows for a run: tag -> [(step, value)] (timing tags aside)."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"] if "seconds" not in tag}


def stop_at(monkeypatch, step: int, how: str):
    """Make the next run stop after ``step`` steps: ``"signal"`` raises a real SIGINT in the
    process (the graceful path: checkpoint, RunInterrupted); ``"crash"`` raises an error
    (nothing saved at that step: the run resumes from its last periodic checkpoint)."""
    original = Trainer.advance

    def advance(self):
        original(self)
        if self.steps_done == step:
            monkeypatch.setattr(Trainer, "advance", original)
            if how == "signal":
                signal.raise_signal(signal.SIGINT)
            else:
                raise RuntimeError("simulated crash")

    monkeypatch.setattr(Trainer, "advance", advance)


@pytest.fixture
def case_config(fast_config, tmp_path):
    source_run = []

    def make(overrides, runs):
        if any("{source_run}" in o for o in overrides) and not source_run:
            [r] = run_experiment(fast_config(*RESUMABLE, f"experiment.runs_dir='{tmp_path / 'source'}'"))
            source_run.append(r["run_dir"])
        overrides = [o.replace("{source_run}", source_run[0]) if source_run else o for o in overrides]
        return fast_config(*RESUMABLE, *overrides, f"experiment.runs_dir='{runs}'")
    return make


@pytest.mark.parametrize("case, overrides", CASES, ids=[c for c, _ in CASES])
def test_resume_is_bit_for_bit_the_uninterrupted_run(case_config, tmp_path, monkeypatch, case, overrides):
    [straight] = run_experiment(case_config(overrides, tmp_path / "straight"))
    expected, expected_curves = strip_timing(straight), curves(straight["run_dir"])
    assert len(expected_curves["loss/total"]) == 5 and len(expected["history"]) == 4

    # at a checkpoint: SIGINT after step 16 checkpoints and stops; resume the run directory
    config = case_config(overrides, tmp_path / "signal")
    stop_at(monkeypatch, 16, "signal")
    with pytest.raises(RunInterrupted) as stop:
        run_experiment(config)
    run_dir = stop.value.run_dir
    assert stop.value.step == 16 and stop.value.signum == signal.SIGINT
    status = read_status(run_dir)
    assert (status.state, status.step) == ("interrupted", 16)
    torch.load(run_dir / "checkpoint.pt", weights_only=True)
    [resumed] = resume_runs(run_dir)
    assert strip_timing(resumed) == expected
    assert curves(run_dir) == expected_curves
    assert read_status(run_dir).state == "finished"

    # between checkpoints: a crash after step 13 (last checkpoint: 8); resume by running the config again
    config = case_config(overrides, tmp_path / "crash")
    stop_at(monkeypatch, 13, "crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(config)
    [run_dir] = {p.parent for p in (tmp_path / "crash").rglob("config.json")}
    status = read_status(run_dir)
    assert (status.state, status.step) == ("failed", 8)
    assert "simulated crash" in status.error and "simulated crash" in (run_dir / "traceback.txt").read_text()
    [resumed] = run_experiment(config, resume=True)
    assert resumed["run_dir"] == str(run_dir)
    assert strip_timing(resumed) == expected
    assert curves(run_dir) == expected_curves
    # and running it once more with resume reuses the finished run
    assert run_experiment(config, resume=True) == [json.loads((run_dir / "results.json").read_text())]
    assert len(list((tmp_path / "crash").rglob("config.json"))) == 1


# ---------------------------------------------------------------- real processes
SLOW_PLUGIN = """
import time
import tladapt

class Slow:
    '''Sleeps 10 ms after every step, so that a test can signal the process mid-run.'''

    @tladapt.hookimpl
    def tladapt_step_end(self):
        time.sleep(0.01)
"""
ROOT = Path(__file__).resolve().parents[1]


def tladapt_cmd(*args):
    import sys

    return [sys.executable, "-m", "tladapt.cli", *map(str, args)]


RUN = ["--enable", "slow", "--set", "data.tasks=['webcam->dslr']", "--set", "experiment.seeds=[0]", "--set", "trainer.steps=150",
       "--set", "trainer.checkpoint_every=40", "--set", "trainer.eval_every=30", "--set", "trainer.log_every=7",
       "--set", "model.hidden=[32]", "--set", "plugins.dann.hidden=[16]", "--set", "trainer.progress=false"]


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
    """The -p plugin file and the uninterrupted run's directory (trained in this process)."""
    from tladapt.config import load_config

    tmp = tmp_path_factory.mktemp("straight")
    slow = tmp / "slow.py"
    slow.write_text(SLOW_PLUGIN)
    config = load_config(ROOT / "tladapt/configs/default_dann.toml", RUN[3::2] + [f"experiment.runs_dir='{tmp}'"],
                         enable=["slow"])
    [straight] = run_experiment(config, [str(slow)])
    return slow, Path(straight["run_dir"])


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130),
                                       (signal.SIGTERM, 143)], ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_a_signalled_tladapt_process_resumes_to_the_uninterrupted_run(tmp_path, slow_run, sig, code):
    import subprocess
    import time

    slow, straight = slow_run
    run = ["run", ROOT / "tladapt/configs/default_dann.toml", "-p", slow, *RUN, "--runs-dir", tmp_path]
    proc = subprocess.Popen(tladapt_cmd(*run), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for the first checkpoint (step 40) to be written
        found = list(tmp_path.rglob("status.json"))
        if found and read_status(found[0].parent).step >= 40:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    run_dir = found[0].parent
    status = read_status(run_dir)
    assert status.step >= 40 and not (run_dir / "results.json").exists()
    if sig == signal.SIGKILL:
        assert status.state == "running" and not status.live  # the killed process is gone
    else:
        assert status.state == "interrupted"
        [line] = [line for line in err.splitlines() if "resume with:" in line]
        assert f"interrupted by {signal.Signals(sig).name} at step {status.step}/150" in line
        assert line.rstrip().endswith(f"tladapt run --resume {run_dir})")
    done = subprocess.run(tladapt_cmd("run", "--resume", tmp_path, "-p", slow), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_status(run_dir).state == "finished"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    expected = strip_timing(json.loads((straight / "results.json").read_text()))
    assert strip_timing(json.loads((run_dir / "results.json").read_text())) == expected
    assert curves(run_dir) == curves(straight)


@pytest.mark.parametrize("config_written", [True, False])
def test_a_run_killed_as_its_directory_was_made_is_continued_there_not_duplicated(fast_config, monkeypatch,
                                                                                   config_written):
    """A process killed (kill -9) right after making a run directory, before any checkpoint
    (and, with ``config_written=False``, before ``config.json``): resuming the experiment
    trains that run in that directory; no second directory appears."""
    import subprocess
    import sys

    import tladapt.experiment as experiment

    config = fast_config("trainer.steps=4", "trainer.eval_every=4", "experiment.seeds=[0]")

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(experiment, "execute_run", killed)
        with pytest.raises(RuntimeError, match="killed"):
            run_experiment(config)
    (run_dir,) = [p.parent for p in Path(config.experiment.runs_dir).rglob("status.json")]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    status = json.loads((run_dir / "status.json").read_text())
    fingerprint = experiment.prepare(config)[0].fingerprint()
    assert (status["state"], status["step"], status["config_id"]) == ("running", 0, fingerprint)
    (run_dir / "status.json").write_text(json.dumps({**status, "pid": int(dead.stdout)}))  # its process is gone
    if not config_written:
        (run_dir / "config.json").unlink()
    (result,) = run_experiment(config, resume=True)
    assert Path(result["run_dir"]) == run_dir and read_status(run_dir).finished
    assert (run_dir / "config.json").is_file()
    assert [p.parent for p in Path(config.experiment.runs_dir).rglob("status.json")] == [run_dir]
