"""The thread rule of ``trainer.threads = 0``: its FLOP estimate, its choice, its scope."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import tladapt
from tladapt.models import LeNet
from tladapt.threads import FLOPS_PER_THREAD, auto_threads, choose_threads, run_threads, step_flops

from helpers import make_trainer


class RecordThreads:
    """Records torch's intra-op thread count at every step."""

    seen: list[int] = []

    @tladapt.hookimpl
    def tladapt_step_end(self, trainer):
        RecordThreads.seen.append(torch.get_num_threads())


def test_step_flops_counts_matrix_products_exactly():
    backbone, head = nn.Sequential(nn.Linear(800, 256), nn.ReLU()), nn.Linear(256, 10)
    disc = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 1))
    per_row = 2 * (800 * 256 + 256 * 10) + 2 * (256 * 64 + 64 + 64 + 1)  # disc: 2 x parameters
    assert step_flops(backbone, head, [disc], (800,), 64, torch.device("cpu")) == 3 * per_row * 64
    # convolutions count every output position: LeNet on 16x16 digits, by hand
    lenet = LeNet((1, 16, 16))
    conv1 = 2 * 20 * 1 * 25 * 12 * 12
    conv2 = 2 * 50 * 20 * 25 * 2 * 2
    fc = 2 * 50 * 500
    assert step_flops(lenet, nn.Linear(500, 10), [], (1, 16, 16), 1, torch.device("cpu")) == \
        3 * (conv1 + conv2 + fc + 2 * 500 * 10)
    assert lenet.training  # the count leaves the mode as it was


def test_rule_gives_each_thread_enough_work():
    assert auto_threads(0.0, 8) == 1
    assert auto_threads(FLOPS_PER_THREAD * 0.99, 8) == 1
    assert auto_threads(FLOPS_PER_THREAD * 3.5, 8) == 3
    assert auto_threads(FLOPS_PER_THREAD * 100, 8) == 8
    assert auto_threads(FLOPS_PER_THREAD * 100, 1) == 1
    # a configured count wins and a GPU run keeps torch's default, without computing FLOPs
    never = lambda: pytest.fail("FLOPs computed")  # noqa: E731
    assert choose_threads(3, torch.device("cpu"), never).threads == 3
    gpu = choose_threads(0, torch.device("cuda"), never)
    assert gpu.chosen_by == "torch" and gpu.threads == torch.get_num_threads()


def test_run_threads_restores_the_count_even_on_error():
    before = torch.get_num_threads()
    with run_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with run_threads(2):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def _run(config):
    RecordThreads.seen = []
    trainer = make_trainer(config, plugins=[("record", RecordThreads, {})])
    return trainer, trainer.fit()


@pytest.mark.parametrize("configured, expected, chosen_by", [(0, 1, "rule"), (2, 2, "config")])
def test_a_run_uses_its_thread_count_records_it_and_restores_the_previous(fast_config, configured,
                                                                          expected, chosen_by):
    torch.set_num_threads(3 if configured == 0 else 1)  # something the run must change and then restore
    try:
        before = torch.get_num_threads()
        trainer, results = _run(fast_config(f"trainer.threads={configured}", "trainer.device='cpu'",
                                            "plugins.dann.hidden=[16]"))
        assert set(RecordThreads.seen) == {expected}  # every step ran with the run's count
        assert torch.get_num_threads() == before  # and the count before the run is back
    finally:
        torch.set_num_threads(1)
    recorded = json.loads((Path(results["run_dir"]) / "results.json").read_text())["threads"]
    assert recorded["threads"] == expected and recorded["chosen_by"] == chosen_by
    if configured == 0:  # the rule's estimate for this tiny MLP + DANN: exact, by hand
        per_row = 2 * (800 * 32 + 32 * 10) + 2 * (32 * 16 + 16 + 16 + 1)
        assert recorded["step_flops"] == 3 * per_row * 2 * 16
        assert recorded["cores"] >= 1


def test_bundled_models_get_one_thread(fast_config):
    # the rule on the bundled defaults (SURF MLP [256] + DANN [1024, 1024], LeNet digits): 1 thread
    for overrides in (["model.hidden=[256]", "trainer.batch_size=32", "plugins.dann={}"],
                      ["data.dataset='mnist_usps_jda'", "data.tasks=['usps->mnist']", "model.backbone='lenet'",
                       "trainer.batch_size=64", "plugins.dann.hidden=[500, 500]"]):
        config = fast_config("trainer.device='cpu'", *overrides)
        task = ("usps", "mnist") if "mnist" in overrides[0] else ("webcam", "dslr")
        choice = make_trainer(config, task=task).threads
        assert choice.chosen_by == "rule" and choice.threads == 1 and choice.step_flops < FLOPS_PER_THREAD
