"""tladapt.batched: seeds (and configs differing in scalars) trained as one batched model."""

import json
import signal
from pathlib import Path

import pytest
import torch

from tladapt import checkpoint
from tladapt.batched import BatchedRuns, RunSpec, batch_blockers, fit_together
from tladapt.data.tasks import load_task
from tladapt.errors import RunInterrupted
from tladapt.experiment import prepare, resume_runs, run_experiment
from tladapt.manager import make_plugin_manager
from tladapt.runs import new_run_dir, read_status
from tladapt.trainer import Trainer

QUICK = ["validation.validators=['source_val_acc']", "trainer.device='cpu'", "plugins.dann.hidden=[16]",
         "trainer.steps=24", "trainer.eval_every=12", "trainer.log_every=6", "plugins.dann.dropout=0.5"]


def specs_for(configs, task="webcam->dslr"):
    """RunSpecs of ``configs`` (seed i for the i-th) in fresh run directories, and a make_trainer."""
    specs = []
    for seed, config in enumerate(configs):
        config, active = prepare(config)
        source, target = load_task(config.data, task)
        run_dir = new_run_dir(config.experiment.runs_dir, "b", task, "m", seed)
        specs.append(RunSpec(config, task, source, target, active, seed, run_dir))

    def make(spec):
        return Trainer(spec.config, spec.source, spec.target, make_plugin_manager(spec.active), spec.run_dir, spec.seed)

    return specs, make


def alone(spec, make):
    """The same run trained on its own, in a directory of its own."""
    spec = RunSpec(spec.config, spec.task, spec.source, spec.target, spec.active, spec.seed,
                   new_run_dir(spec.config.experiment.runs_dir, "alone", spec.task, "m", spec.seed))
    return make(spec).fit()


def checkpoints(results):
    return [checkpoint.load(Path(r["run_dir"]) / "checkpoint.pt", "test") for r in results]


def assert_same_runs(batched, sequential, tol=1e-5):
    for b, s in zip(batched, sequential):
        assert b["seed"] == s["seed"] and b["run_dir"] != s["run_dir"]
        for hb, hs in zip(b["history"], s["history"], strict=True):
            assert hb["step"] == hs["step"]
            assert hb["oracle/target_acc"] == pytest.approx(hs["oracle/target_acc"], abs=1e-9)
            assert hb["metrics/source_val_acc"] == pytest.approx(hs["metrics/source_val_acc"], abs=1e-9)
    for cb, cs in zip(checkpoints(batched), checkpoints(sequential)):
        for name, value in cs["modules"].items():
            torch.testing.assert_close(cb["modules"][name], value, rtol=tol, atol=tol)
        # the optimizer's state (momentum / Adam moments) and the index streams are each run's own
        assert cb["optimizer"]["state"].keys() == cs["optimizer"]["state"].keys()
        for key, state in cs["optimizer"]["state"].items():
            for field, value in state.items():
                torch.testing.assert_close(cb["optimizer"]["state"][key][field], value, rtol=tol, atol=tol)
        assert cb["scheduler"]["last_epoch"] == cs["scheduler"]["last_epoch"]
        for role, sampler in cs["pipeline"]["samplers"].items():
            for key in ("epoch", "next", "generator"):
                assert torch.equal(torch.as_tensor(cb["pipeline"]["samplers"][role]["stream"][key]),
                                   torch.as_tensor(sampler["stream"][key])), (role, key)
        assert torch.equal(cb["rng"]["torch"], cs["rng"]["torch"])  # the run's dropout generator, where alone it ends


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_batched_seeds_train_as_their_sequential_runs(fast_config, optimizer):
    # dropout on (0.5 in the backbone and the discriminator): on a CPU the batched runs draw the
    # sequential runs' masks, so they train the same up to float association in the batched products
    common = [*QUICK, f"trainer.optimizer='{optimizer}'", "experiment.seeds=[0, 1, 2]"]
    sequential = run_experiment(fast_config(*common, "trainer.batch_runs=1"))
    batched = run_experiment(fast_config(*common, "trainer.batch_runs=0"))
    assert [r["batched"]["runs"] for r in batched] == [3, 3, 3] and "batched" not in sequential[0]
    assert batched[0]["batched"]["seeds"] == [0, 1, 2]
    assert_same_runs(batched, sequential)
    p = [c["modules"] for c in checkpoints(batched)]
    assert not torch.equal(p[0]["backbone.0.weight"], p[1]["backbone.0.weight"])  # not one run copied
    for r in batched:
        assert read_status(r["run_dir"]).state == "finished"
        logged = json.loads((Path(r["run_dir"]) / "results.json").read_text())
        assert logged["threads"]["threads"] == 1 and logged["history"] == r["history"]


def test_configs_differing_in_scalars_batch_together(fast_config):
    # learning rate, weight decay, momentum and DANN's weight differ between the runs of one batch
    configs = [fast_config(*QUICK, "trainer.lr=0.01", "plugins.dann.weight=1.0"),
               fast_config(*QUICK, "trainer.lr=0.03", "trainer.weight_decay=0.0", "plugins.dann.weight=0.3"),
               fast_config(*QUICK, "trainer.lr=0.005", "plugins.dann.weight=0.0", "trainer.momentum=0.5")]
    specs, make = specs_for(configs)
    batched = fit_together(specs, make)
    assert [r["batched"]["runs"] for r in batched] == [3, 3, 3]
    assert_same_runs(batched, [alone(spec, make) for spec in specs])


def test_blockers_are_named_and_such_runs_train_one_after_another(fast_config):
    specs, make = specs_for([fast_config(*QUICK, "plugins.self_training={}")] * 2)
    assert "plugin(s) self_training do not declare batch_safe = True" in batch_blockers([make(s) for s in specs])
    with pytest.warns(UserWarning, match="one after another: plugin\\(s\\) self_training"):
        assert fit_together(specs, make) is None
    with pytest.warns(UserWarning, match="self_training"):
        results = run_experiment(fast_config(*QUICK, "plugins.self_training={}", "trainer.batch_runs=0",
                                             "experiment.seeds=[0, 1]"))
    assert [r["seed"] for r in results] == [0, 1] and all("batched" not in r for r in results)
    a, b = (make(s) for s in specs_for([fast_config(*QUICK), fast_config(*QUICK, "model.hidden=[16]")])[0])
    assert batch_blockers([a, b]) == ["configs differ in model.hidden"]
    assert batch_blockers([a]) == ["a batch needs at least two runs"]


def test_tladapt_run_batches_the_seeds_of_each_task_in_groups(fast_config):
    results = run_experiment(fast_config(*QUICK, "trainer.batch_runs=2", "experiment.seeds=[0, 1, 2]"))
    assert [r["seed"] for r in results] == [0, 1, 2]
    assert [r.get("batched", {}).get("runs") for r in results] == [2, 2, None]  # two together, then one


def test_an_interrupted_batch_resumes_run_by_run_to_the_uninterrupted_runs(fast_config, monkeypatch, tmp_path):
    common = [*QUICK, "experiment.seeds=[0, 1]", "trainer.checkpoint_every=8"]
    straight = run_experiment(fast_config(*common, "trainer.batch_runs=1",
                                          f"experiment.runs_dir='{tmp_path / 'straight'}'"))
    original = BatchedRuns._update

    def update(self, step):  # SIGINT after step 10: every run checkpoints and the batch stops
        original(self, step)
        if step + 1 == 10:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(BatchedRuns, "_update", update)
    config = fast_config(*common, "trainer.batch_runs=0", f"experiment.runs_dir='{tmp_path / 'batched'}'")
    with pytest.raises(RunInterrupted) as stop:
        run_experiment(config)
    assert stop.value.step == 10
    dirs = sorted({p.parent for p in (tmp_path / "batched").rglob("config.json")})
    assert [(read_status(d).state, read_status(d).step) for d in dirs] == [("interrupted", 10)] * 2
    monkeypatch.setattr(BatchedRuns, "_update", original)
    resumed = run_experiment(config, resume=True)  # each run continues alone from its checkpoint
    assert [r["run_dir"] for r in resumed] == [str(d) for d in dirs]
    assert_same_runs(resumed, straight)
