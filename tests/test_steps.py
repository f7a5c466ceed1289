"""trainer.compile: eager, torch.compile and CUDA-graph steps; the capture-safe pieces they rely on."""

import pytest
import torch

import tladapt
from tladapt.config import ConfigError
from tladapt.experiment import prepare, run_experiment
from tladapt.manager import PluginInfo
from tladapt.runs import RunLogger
from tladapt.steps import EagerStep, GraphStep, check_compile
from tladapt_plugins.dann import DANN
from tladapt_plugins.self_training import SelfTraining

from helpers import make_trainer

NO_DROPOUT = ["model.dropout=0.0", "plugins.dann.hidden=[16]", "plugins.dann.dropout=0.0"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _fit(config):
    t = make_trainer(config)
    results = t.fit()
    return t, results, {k: v.detach().cpu().clone() for k, v in t.modules.state_dict().items()}


def test_logger_sums_stay_in_place_and_tallies_replay(tmp_path):
    log = RunLogger(tmp_path)
    log.log("a", torch.tensor(1.0))
    log.log("b", 0.5)
    buffer = log._buffers["a"]
    log.log("a", torch.tensor(3.0))
    assert log.flush(2) == {"a": 2.0, "b": 0.5}
    assert log._buffers["a"] is buffer and buffer.item() == 0.0  # zeroed in place at the flush
    # what a replayed CUDA graph does: the device adds run again, the host tallies are added
    log.log("a", torch.tensor(2.0))
    log.log("b", 1.0)
    counts, floats = log.host_tallies()
    buffer.add_(2.0)  # the replayed add of the same value
    log.add_host_tallies(counts, floats)
    assert log.flush(4) == {"a": 2.0, "b": 1.0}
    assert log.flush(5) == {}  # nothing logged since: no tag is written


def test_cudagraph_is_refused_before_any_run_without_cuda(fast_config, tmp_path):
    config = fast_config("trainer.compile='cudagraph'", "trainer.device='cpu'")
    with pytest.raises(ConfigError, match="cudagraph.*needs a CUDA device"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()


def test_cudagraph_refuses_plugins_that_are_not_capture_safe(fast_config):
    config = fast_config("trainer.compile='cudagraph'", "trainer.device='cuda'")
    safe = [(PluginInfo("dann", DANN, "test"), {})]
    check_compile(config, safe)  # DANN declares capture_safe
    with pytest.raises(ConfigError, match="plugin\\(s\\) self_training do not declare capture_safe"):
        check_compile(config, safe + [(PluginInfo("self_training", SelfTraining, "test"), {})])
    with pytest.raises(ConfigError, match="data.placement = 'host'"):
        check_compile(fast_config("trainer.compile='cudagraph'", "trainer.device='cuda'", "data.placement='host'"),
                      safe)


class LogsAFloat:
    """A plugin logging a Python float and a device tensor from its loss hook."""

    capture_safe = True

    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        trainer.log("test/constant", 0.25)
        trainer.log("test/progress", trainer.progress_tensor)


@pytest.mark.slow
def test_torch_compile_matches_eager(fast_config):
    # dropout off: the compiled step then computes what the eager step computes
    _, eager, eager_params = _fit(fast_config(*NO_DROPOUT, "trainer.steps=12", "trainer.eval_every=6"))
    t, compiled, compiled_params = _fit(fast_config(*NO_DROPOUT, "trainer.steps=12", "trainer.eval_every=6",
                                                    "trainer.compile='torch'"))
    assert t._loss_terms is not t.loss_terms  # the compiled function ran
    for name, value in eager_params.items():
        torch.testing.assert_close(compiled_params[name], value, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager["history"], compiled["history"]):
        assert a["oracle/target_acc"] == b["oracle/target_acc"]
        assert a["validator/source_val_loss"] == pytest.approx(b["validator/source_val_loss"], rel=1e-5)


@cuda
def test_cudagraph_replays_the_eager_step(fast_config, monkeypatch):
    # 40 steps of 16 from 90 training samples: epochs end inside the run (new permutations
    # drawn between replays). The reference runs the same step eagerly with the same fused
    # optimizer (trainer.compile = "cudagraph" without the graph): replays compute the same.
    config = fast_config(*NO_DROPOUT, "trainer.device='cuda'", "trainer.steps=40", "trainer.eval_every=20",
                         "trainer.log_every=10", "trainer.compile='cudagraph'")
    t = make_trainer(config)
    captured = t.fit()
    assert isinstance(t._step, GraphStep) and t._step.graph is not None
    monkeypatch.setattr("tladapt.trainer.make_step", EagerStep)
    e = make_trainer(config)
    eager = e.fit()
    assert isinstance(e._step, EagerStep)
    for name, value in e.modules.state_dict().items():
        torch.testing.assert_close(t.modules.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager["history"], captured["history"]):
        assert a["oracle/target_acc"] == b["oracle/target_acc"]
        assert a["validator/source_val_loss"] == pytest.approx(b["validator/source_val_loss"], rel=1e-4)


@cuda
def test_cudagraph_logs_and_no_host_sync_per_replay(fast_config):
    t = make_trainer(fast_config(*NO_DROPOUT, "trainer.device='cuda'", "trainer.compile='cudagraph'",
                                 "trainer.steps=100", "trainer.log_every=100", "trainer.eval_every=100",
                                 "trainer.replacement=true"), plugins=[("logs", LogsAFloat, {})])
    t.start()
    for _ in range(GraphStep.WARMUP + 1):  # warm-up steps, then the capture and its first replay
        t.advance()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):
            t.advance()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    means = t.logger.flush(t.steps_done)
    steps = t.steps_done
    assert means["test/constant"] == pytest.approx(0.25)
    # progress_tensor = step / steps at each step: its mean over the steps run so far
    assert means["test/progress"] == pytest.approx(sum(s / 100 for s in range(steps)) / steps, rel=1e-5)
    assert means["loss/total"] > 0
