"""Errors people can act on: a plugin that raises, a broken -p file or installed plugin, a closed
pipe; and what results.json and config.json record about where a run's numbers come from."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tladapt.cli import main
from tladapt.config import ConfigError, load_config
from tladapt.errors import RunFailed
from tladapt.experiment import prepare, run_experiment
from tladapt.runs import read_status

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "data.tasks=['webcam->dslr']", "--set", "experiment.seeds=[0]", "--set", "trainer.steps=6",
        "--set", "trainer.eval_every=6", "--set", "model.hidden=[16]", "--set", "trainer.progress=false"]

FAILING = """
import tladapt

class Failing:
    '''Raises at step 4, in the middle of training.'''

    @tladapt.hookimpl
    def tladapt_step_end(self, trainer, step):
        if step == 4:
            {}.pop("missing")
"""


def test_a_plugin_that_raises_marks_the_run_failed_and_exits_1_naming_plugin_hook_and_step(tmp_path, capsys):
    plugin = tmp_path / "failing.py"
    plugin.write_text(FAILING)
    argv = ["run", str(ROOT / "tladapt/configs/default.toml"), "-p", str(plugin), "--enable", "failing",
            "--runs-dir", str(tmp_path / "runs"), *FAST]
    assert main(argv) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tladapt: error: plugin 'failing' raised KeyError in tladapt_step_end at step 4: 'missing'")
    [run_dir] = {p.parent for p in (tmp_path / "runs").rglob("config.json")}
    status = read_status(run_dir)
    assert (status.state, status.error) == ("failed", "KeyError: 'missing'")
    trace = (run_dir / "traceback.txt").read_text()
    assert 'failing.py", line 10, in tladapt_step_end' in trace and "KeyError: 'missing'" in trace
    with pytest.raises(RunFailed) as raised:  # --debug: the full traceback, the plugin's error as its cause
        main(argv + ["--debug"])
    assert isinstance(raised.value.__cause__, KeyError) and raised.value.plugin == "failing"


def test_an_error_outside_plugins_is_a_run_failure_too(fast_config, monkeypatch):
    from tladapt.trainer import Trainer

    def broken(self):
        raise RuntimeError("the device is gone")

    monkeypatch.setattr(Trainer, "evaluate", broken)
    with pytest.raises(RunFailed, match=r"the run raised RuntimeError at step 14: the device is gone"):
        run_experiment(fast_config())


@pytest.mark.parametrize("source, message", [
    ("import tladapt\n\nclass Bad:\n    def oops(self)\n        pass\n",
     r"-p {file}: {file}:4: SyntaxError: expected ':'"),
    ("import tladapt\n\nVALUE = 1 / 0\n", r"-p {file}: {file}:3: ZeroDivisionError: division by zero"),
    ("import no_such_module_q\n", r"-p {file}: cannot import: No module named 'no_such_module_q'"),
])
def test_a_broken_p_file_is_one_line_naming_file_line_and_error(tmp_path, capsys, source, message):
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(source)
    assert main(["plugins", "-p", str(plugin)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == "tladapt: error: " + message.format(file=plugin).replace("\\", "")


@pytest.fixture
def broken_installed_plugin(tmp_path, monkeypatch):
    """A distribution on sys.path whose tladapt entry point raises when imported."""
    (tmp_path / "shaky_plugin.py").write_text("raise ImportError('shaky needs libfoo 2.0')\n")
    info = tmp_path / "shaky_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shaky-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tladapt]\nshaky = shaky_plugin:Shaky\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from tladapt import manager

    monkeypatch.setattr(manager, "BROKEN", {})


def test_a_broken_installed_plugin_warns_and_fails_only_when_used(broken_installed_plugin, tmp_path, capsys):
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert "tladapt: warning: entry point shaky = 'shaky_plugin:Shaky' of shaky-plugin 1.0 failed to import: " \
           "ImportError: shaky needs libfoo 2.0" in err
    assert "shaky  (BROKEN: " in out and "dann  (entry point of tladapt" in out
    prepare(load_config(None, ["trainer.steps=2", "data.tasks=['webcam->dslr']"]))  # unaffected
    with pytest.raises(ConfigError, match=r"\[plugins.shaky\] enables plugin 'shaky', which is installed but broken: "
                                          r"entry point shaky .* shaky needs libfoo 2.0"):
        prepare(load_config(None, ["data.tasks=['webcam->dslr']"], enable=["shaky"]))


def test_a_closed_output_pipe_ends_quietly(monkeypatch):
    from tladapt.cli import datasets

    def closed(args):
        raise BrokenPipeError
    monkeypatch.setattr(datasets, "main", closed)
    monkeypatch.setattr(sys.stdout, "fileno", lambda: __import__("os").open(__import__("os").devnull, 1))
    assert main(["datasets"]) == 141


@pytest.mark.slow
def test_tladapt_piped_into_a_closed_reader_prints_no_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "tladapt.cli", "datasets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before tladapt writes (as `| head` after its lines)
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err and "BrokenPipeError" not in err


def test_results_and_config_record_provenance(fast_config):
    [r] = run_experiment(fast_config("plugins.dann.hidden=[8]", "trainer.eval_every=10"))
    run_dir = Path(r["run_dir"])
    saved = json.loads((run_dir / "config.json").read_text())["provenance"]
    import numpy
    import torch

    import tladapt
    assert (saved["tladapt"], saved["torch"], saved["numpy"]) == (tladapt.__version__, torch.__version__,
                                                                  numpy.__version__)
    assert saved["plugins"]["dann"]["origin"].startswith("entry point of tladapt")
    assert saved["plugins"]["dann"]["class"] == "tladapt_plugins.dann:DANN" and len(saved["plugins"]["dann"]["sha1"]) == 12
    assert saved["run_dir"] == str(run_dir.relative_to(fast_config().experiment.runs_dir))
    assert saved["git"]["tladapt"] is None or len(saved["git"]["tladapt"]["commit"]) == 40
    p = r["provenance"]
    assert p["device"] == "cpu" and p["threads"] == torch.get_num_threads() and p["command"] == saved["command"]
    wall = p["wall_seconds"]
    assert set(wall) == {"setup", "fit_start", "train", "evaluate", "checkpoint", "total"}
    assert all(v >= 0 for v in wall.values()) and wall["total"] == pytest.approx(
        sum(v for k, v in wall.items() if k != "total"), abs=0.01)
