"""Helpers shared by the test modules: building a trainer, counting host reads."""

import sys
from pathlib import Path

import torch

from tladapt.data.tasks import load_task
from tladapt.experiment import prepare
from tladapt.manager import PluginInfo, make_plugin_manager
from tladapt.runs import new_run_dir
from tladapt.trainer import Trainer

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def make_trainer(config, plugins=(), task=("webcam", "dslr"), seed=0, prepared=True):
    """A Trainer for ``config`` (its installed plugins) plus extra plugin classes given as
    ``(name, cls, options)``, on a task of ``config.data.dataset`` (its class subsets applied),
    in a fresh run directory. ``prepared=False`` skips :func:`prepare` (and the installed
    plugins): a trainer of a config the checks before work refuse, to test the run's own checks."""
    config, active = prepare(config) if prepared else (config, [])
    active = sorted(active + [(PluginInfo(name, cls, "test"), opts) for name, cls, opts in plugins],
                    key=lambda a: a[0].name)
    src, tgt = load_task(config.data, "->".join(task))  # the config's class subsets applied
    run_dir = new_run_dir(config.experiment.runs_dir, "t", "t", "m", seed)
    return Trainer(config, src, tgt, make_plugin_manager(active), run_dir, seed, source_name=task[0])


def step_terms(trainer):
    """Start ``trainer``, draw one batch and return ``(batch, out, terms)`` of a deterministic
    forward (eval mode: no dropout)."""
    trainer.start()
    batch = trainer.pipeline.next()
    trainer.modules.eval()
    out = trainer.forward(batch)
    return batch, out, trainer.losses(batch, out)


def host_reads(trainer, monkeypatch, steps):
    """Run ``steps`` training steps of a started trainer; return ``(method, caller file)`` of
    every tensor read back to the host (``.item()``, ``.tolist()``, ``bool(t)``, ...)."""
    reads = []

    def spy(name, original):
        def read(self, *a, **k):
            reads.append((name, Path(sys._getframe(1).f_code.co_filename).name))
            return original(self, *a, **k)
        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    for _ in range(steps):
        trainer.advance()
    monkeypatch.undo()
    return reads
