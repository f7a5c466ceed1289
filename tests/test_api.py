"""The Python API (tladapt.api, re-exported by tladapt): the command's checks and semantics."""

import re
from pathlib import Path

import pytest
import torch

import tladapt
from tladapt.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"data": {"tasks": ["webcam->dslr"]}, "model": {"hidden": [16]},
         "trainer": {"steps": 6, "batch_size": 16, "eval_every": 3, "log_every": 3, "progress": False}}


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path, monkeypatch):
    page = (ROOT / "docs" / "python-api.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", page, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/python-api.md", "exec"), {"__name__": "__docs__"})
    assert len(list((tmp_path / "runs").rglob("results.json"))) == 3


@pytest.mark.parametrize("overrides", [["trainer.optimizer='sdg'"], ["plugins.dann.weight=0.3"],
                                       ["data.tasks=['amazon->mars']"]])
def test_load_config_fails_with_the_commands_message(overrides, tmp_path, capsys):
    argv = ["run", str(ROOT / "tladapt/configs/default.toml"), "--runs-dir", str(tmp_path)]
    assert main([*argv, *[a for o in overrides for a in ("--set", o)]]) == 2
    cli = capsys.readouterr().err.removeprefix("tladapt: error: ").strip()
    with pytest.raises(tladapt.ConfigError) as err:
        tladapt.load_config(ROOT / "tladapt/configs/default.toml", set=overrides, runs_dir=tmp_path)
    assert str(err.value) == cli
    assert not list(tmp_path.iterdir())


class EntropyMin:
    @tladapt.hookimpl
    def tladapt_losses(self, trainer, out):
        from tladapt.losses import entropy

        return {"target_entropy": tladapt.Term(entropy(out.logits_t), 0.1)}


def test_run_returns_each_runs_trained_model_in_eval_mode(tmp_path):
    base = tladapt.build_config(SMALL)
    assert base.experiment.method == "source_only"
    ent = tladapt.load_config(base, enable=["entropy_min"], plugins=[EntropyMin])
    assert ent.experiment.method == "entropy_min" and ent.plugins == {"entropy_min": {}}
    runs = tladapt.run(base, ent, plugins=[EntropyMin], seeds=[0, 1], runs_dir=tmp_path)
    assert [(r.results["method"], r.results["seed"]) for r in runs] == [
        ("source_only", 0), ("source_only", 1), ("entropy_min", 0), ("entropy_min", 1)]
    for r in runs:
        assert r.run_dir.parents[2] == tmp_path / "experiment"
        assert not any(m.training for m in r.modules.modules())
        x = torch.randn(4, 800)
        assert r.model(x).shape == (4, 10) and r.model.backbone(x).shape == (4, 16)
        # the returned model is the one that was evaluated: its accuracy on the target matches
        from tladapt.data.datasets import load_domain

        dslr = load_domain("office_caltech10_surf", "dslr")
        acc = 100.0 * (r.model(dslr.x).argmax(1) == dslr.y).float().mean().item()
        assert acc == pytest.approx(r.final["oracle/target_acc"], abs=1e-4)
    frame = tladapt.frame(tmp_path)
    assert sorted(frame["method"]) == ["entropy_min"] * 2 + ["source_only"] * 2
    assert "| entropy_min |" in tladapt.table(runs) and "| source_only |" in tladapt.table(tmp_path)
    assert ",method,mean,std,n," in tladapt.table(runs, fmt="csv").splitlines()[0]  # numeric columns


def test_a_run_loads_back_with_its_config_results_and_weights(tmp_path):
    [trained] = tladapt.run(tladapt.build_config(SMALL, plugins={"dann": {"hidden": [8]}}), runs_dir=tmp_path)
    loaded = tladapt.load_run(trained.run_dir)
    assert loaded.config == trained.config and loaded.results == trained.results
    assert set(loaded.modules) == {"backbone", "head"} and not loaded.model.training
    x = torch.randn(7, 800)
    assert torch.equal(loaded.model(x), trained.model(x))


def test_load_run_never_runs_code_from_a_checkpoint(tmp_path):
    [trained] = tladapt.run(tladapt.build_config(SMALL), runs_dir=tmp_path)
    planted = tmp_path / "planted"
    torch.save({"modules": {}, "payload": Planted(planted)}, trained.run_dir / "checkpoint.pt")
    with pytest.raises(tladapt.ConfigError, match="was refused: it holds Python objects, and loading it could run code"):
        tladapt.load_run(trained.run_dir)
    assert not planted.exists()


class Planted:
    """Unpickling it would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_the_api_and_the_config_classes_load_lazily():
    import subprocess
    import sys

    code = "import sys, tladapt; tladapt.Config; tladapt.TrainerSection; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tladapt.nope
