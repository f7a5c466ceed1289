"""Shared fixtures: tiny but real runs (bundled Office+Caltech10 SURF, a few steps)."""

import re

import pytest
import torch

from tladapt.config import load_config

torch.set_num_threads(1)  # tiny models: one thread is faster and keeps xdist workers apart

FAST = [
    "data.dataset='office_caltech10_surf'",
    "data.tasks=['webcam->dslr']",
    "model.hidden=[32]",
    "trainer.steps=30",
    "trainer.batch_size=16",
    "trainer.eval_every=15",
    "trainer.log_every=5",
    "trainer.progress=false",
]
TWO = "model.hidden=[32, 16]"  # a two-block MLP: an earlier layer (backbone.2) below the top


@pytest.fixture(scope="session")
def source_model(tmp_path_factory):
    """The run directory of one 30-step source-only run of the two-block MLP (FAST + TWO),
    shared as the source model by the transfer and advice tests."""
    from tladapt.experiment import run_experiment

    runs = tmp_path_factory.mktemp("src")
    [r] = run_experiment(load_config(None, [*FAST, TWO, f"experiment.runs_dir='{runs}'"]))
    return r["run_dir"]


@pytest.fixture
def fast_config(tmp_path):
    """Build a validated Config for a 30-step run writing below tmp_path; extra overrides win.

    A test convenience the CLI does not have: every plugin named in an override
    (``plugins.dann.weight=0.3``, or ``plugins.dann={}`` for its defaults) is enabled first,
    as ``--enable dann`` would."""

    def make(*overrides, path=None):
        enable = sorted({o.split("=")[0].split(".")[1] for o in overrides if o.startswith("plugins.")})
        overrides = [o for o in overrides if not re.fullmatch(r"plugins\.\w+=\{\}", o)]
        return load_config(path, [*FAST, f"experiment.runs_dir='{tmp_path / 'runs'}'", *overrides], enable=enable)

    return make
