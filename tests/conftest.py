"""Shared fixtures: tiny but real runs (bundled Office+Caltech10 SURF, a few steps)."""

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


@pytest.fixture
def fast_config(tmp_path):
    """Build a validated Config for a 30-step run writing below tmp_path; extra overrides win."""

    def make(*overrides, path=None):
        return load_config(path, [*FAST, f"experiment.runs_dir='{tmp_path / 'runs'}'", *overrides])

    return make
