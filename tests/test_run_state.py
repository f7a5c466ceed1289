"""What a run leaves behind for the researcher: config objects that cannot hold invalid values,
models in eval mode, the run's own task in its hparams, histograms plugins write, progress."""

import dataclasses
import io
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import tladapt
from tladapt.cli import main
from tladapt.config import Config, ConfigError, DataSection, ExperimentSection, TrainerSection
from tladapt.experiment import run_experiment
from tladapt.progress import Progress

from helpers import make_trainer

CONFIGS = Path(tladapt.__file__).parent / "configs"


def test_config_sections_validate_on_construction_and_assignment():
    with pytest.raises(ConfigError, match=r"trainer\.steps must be > 0, got 0"):
        TrainerSection(steps=0)
    section = TrainerSection(steps=10)
    section.steps = 20
    with pytest.raises(ConfigError, match=r"trainer\.lr must be a finite number, got nan"):
        section.lr = float("nan")
    assert (section.steps, section.lr) == (20, 0.01)


@pytest.mark.parametrize("kwargs, message", [
    ({"trainer": {"steps": 5}}, r"Config\.trainer must be a TrainerSection .* got dict"),
    ({"data": DataSection(tasks=[])}, r"data\.tasks is empty"),
    ({"data": DataSection(tasks=["amazon-webcam"])}, r"'amazon-webcam': expected 'source->target'"),
    ({"experiment": ExperimentSection(seeds=[])}, r"experiment\.seeds is empty"),
    ({"trainer": TrainerSection(source_weight=0.0)}, r"trainer\.source_weight = 0 .* leaves no supervised loss"),
    ({"plugins": {"dann": 0.3}}, r"\[plugins\] must hold one table per plugin"),
])
def test_a_config_is_validated_as_a_whole(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Config(**kwargs)


def test_replace_validates_the_whole_config_again():
    config = Config()
    with pytest.raises(ConfigError, match=r"data\.tasks is empty"):
        dataclasses.replace(config, data=dataclasses.replace(config.data, tasks=[]))


def test_models_are_in_eval_mode_after_training(fast_config):
    trainer = make_trainer(fast_config("plugins.dann.hidden=[8]", "trainer.steps=4", "trainer.eval_every=4"))
    assert trainer.modules.training
    trainer.fit()
    assert not any(m.training for m in trainer.modules.modules())  # dropout off: inference is deterministic
    x = trainer.target.x[:8]
    assert torch.equal(trainer.head(trainer.backbone(x)), trainer.head(trainer.backbone(x)))


def hparams(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return acc, plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams


def test_hparams_hold_the_runs_own_task(fast_config):
    results = run_experiment(fast_config("data.tasks=['webcam->dslr', 'dslr->webcam']", "trainer.steps=2",
                                         "trainer.eval_every=2", "trainer.checkpoint=false"))
    for result in results:
        _, params = hparams(result["run_dir"])
        assert params["task"].string_value == result["task"]
        assert "data.tasks" not in params
    assert [r["task"] for r in results] == ["webcam->dslr", "dslr->webcam"]


class Spread:
    """Writes a histogram of the head's weights at every evaluation."""

    @tladapt.hookimpl
    def tladapt_evaluate(self, trainer):
        trainer.histogram("spread/head_weight", trainer.head.weight)


def test_plugins_write_histograms_at_the_evaluation_step(fast_config):
    trainer = make_trainer(fast_config(), plugins=[("spread", Spread, {})])
    trainer.fit()
    acc, _ = hparams(trainer.run_dir)
    events = acc.Histograms("spread/head_weight")
    assert [e.step for e in events] == [15, 30]
    assert events[-1].histogram_value.num == trainer.head.weight.numel()
    assert events[-1].histogram_value.max == pytest.approx(trainer.head.weight.max().item(), rel=1e-6)


def test_off_a_terminal_each_finished_run_prints_one_label_free_line(tmp_path, capsys):
    configs = [str(CONFIGS / name) for name in ("default.toml", "default_dann.toml")]  # the SURF half of the default
    argv = ["run", *configs, "--runs-dir", str(tmp_path), "--set", "trainer.steps=4", "--set", "trainer.eval_every=4",
            "--set", "experiment.seeds=[0]", "--set", "data.tasks=['webcam->dslr']", "--set", "model.hidden=[8]"]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run ")]
    assert [line.split(":")[0] for line in lines] == ["run 1/2 webcam->dslr source_only seed 0",
                                                       "run 2/2 webcam->dslr dann seed 0"]
    assert all("source val " in line and "oracle" not in line for line in lines)
    assert main(argv + ["--show-oracle"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run ")]
    assert len(lines) == 2 and all("target (oracle) " in line for line in lines)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_one_bar_spans_every_run():
    stream = Terminal()
    progress = Progress(2, 20, stream=stream)
    for run, seed in ((1, 0), (2, 1)):
        progress.start_run("a->b", "dann", seed)
        for step in range(10):
            progress.step({"metrics/source_val_acc": 50.0 + run, "oracle/target_acc": 9.0} if step == 9 else None)
        progress.end_run({"metrics/source_val_acc": 50.0 + run})
    bar = progress._bar
    assert (bar.n, bar.total, bar.desc) == (20, 20, "run 2/2 a->b dann seed 1: ")
    assert bar.postfix == "source val 52.0%"  # the oracle only when asked
    progress.close()
    text = stream.getvalue()
    assert "run 1/2 a->b dann seed 0" in text and "oracle" not in text
    assert "\n" not in text  # a bar redrawn in place, no summary lines
