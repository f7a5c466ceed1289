"""Loading a file never runs code: every checkpoint reader uses torch.load(weights_only=True)."""

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tladapt import checkpoint
from tladapt.cli import main
from tladapt.config import ConfigError
from tladapt.experiment import resume_runs, run_experiment
from tladapt.runs import write_status
from tladapt.transfer import load_model

from helpers import make_trainer


class Payload:
    """Unpickling this calls ``os.system('touch <marker>')``: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def planted(tmp_path, fast_config):
    """A finished run whose checkpoint.pt was replaced by a pickle that would create a file."""
    [result] = run_experiment(fast_config("trainer.steps=5", "trainer.eval_every=5"))
    run_dir = Path(result["run_dir"])
    marker = tmp_path / "code_ran"
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["extra"] = Payload(marker)
    torch.save(state, run_dir / "checkpoint.pt")
    return run_dir, marker


def test_a_planted_pickle_is_refused_by_every_loader_and_runs_nothing(planted, fast_config, capsys):
    run_dir, marker = planted
    refused = r"was refused: it holds Python objects, and loading it could run code.*GLOBAL posix.system"
    with pytest.raises(ConfigError, match=refused):
        checkpoint.load(run_dir / "checkpoint.pt", "test")
    with pytest.raises(ConfigError, match="model.init_from=.*" + refused):
        make_trainer(fast_config(f"model.init_from='{run_dir}'"))
    with pytest.raises(ConfigError, match=refused):
        load_model(run_dir)  # tladapt distance / advise --init-from
    assert main(["distance", str(Path(__file__).parents[1] / "tladapt/configs/default.toml"),
                 "--init-from", str(run_dir)]) == 2
    assert "was refused" in capsys.readouterr().err
    write_status(run_dir, "interrupted")  # make it resumable: --resume reads the checkpoint
    with pytest.raises(ConfigError, match=f"cannot resume {run_dir}: .*" + refused):
        resume_runs(run_dir)
    assert main(["run", "--init-from", str(run_dir), "--runs-dir", str(run_dir.parent / "other"),
                 "--set", "trainer.steps=2"]) == 2
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_raw_pickle_and_junk_are_refused(tmp_path):
    marker = tmp_path / "code_ran"
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"modules": Payload(marker)}))
    with pytest.raises(ConfigError, match="was refused"):
        checkpoint.load(tmp_path / "raw.pt", "test")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"junk.pt was refused: it is not a checkpoint that torch.load\(weights_only"):
        checkpoint.load(tmp_path / "junk.pt", "test")
    (tmp_path / "junk2.pt").write_bytes(b"hello")
    with pytest.raises(ConfigError, match="junk2.pt is not a readable checkpoint"):
        checkpoint.load(tmp_path / "junk2.pt", "test")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="is not a tladapt checkpoint"):
        checkpoint.load(tmp_path / "other.pt", "test")
    assert not marker.exists()


def test_every_bundled_checkpoint_entry_is_plain_data(fast_config):
    t = make_trainer(fast_config("plugins.self_training.teacher='ema'", "plugins.dann.hidden=[8]",
                                 "plugins.instance_weighting.estimator='discriminative'"))
    t.fit()
    state = checkpoint.capture(t)
    checkpoint.check_plain(state, "checkpoint")
    assert set(state["plugins"]) == {"self_training", "instance_weighting"}
    import numpy as np

    with pytest.raises(TypeError, match=r"state\['w'\]\[1\] is a numpy.float64"):
        checkpoint.check_plain({"w": [1.0, np.float64(2.0)]}, "state")
