"""Measures the thread rule of ``trainer.threads = 0``: step time at 1 thread vs all cores, by step size.

For models from the bundled ones (SURF MLP, LeNet + DANN) up to wide MLPs, the script
builds a real trainer, estimates the step's work with ``tladapt.threads.step_flops`` and
times ``Trainer.advance()`` with 1 thread and with every core, alternating in rounds in
one process (``torch.set_num_threads`` between rounds). The ratio t(1) / t(cores) is
taken per round (min / median / max): above 1, more threads pay. The rule's
``FLOPS_PER_THREAD`` is the smallest step at which the median ratio exceeds 1.1.

    python benchmarks/thread_rule.py [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from tladapt.config import load_config
from tladapt.data.datasets import load_domain
from tladapt.experiment import prepare
from tladapt.manager import make_plugin_manager
from tladapt.runs import new_run_dir
from tladapt.threads import FLOPS_PER_THREAD, auto_threads, available_cores
from tladapt.trainer import Trainer

#: (label, dataset, task, overrides): log-spaced step sizes from the bundled defaults up.
CASES = [
    ("SURF mlp[256] b32 (default.toml)", "office_caltech10_surf", ("amazon", "webcam"), ["model.hidden=[256]",
                                                                                       "trainer.batch_size=32"]),
    ("SURF mlp[256] b32 + DANN (default_dann.toml)", "office_caltech10_surf", ("amazon", "webcam"),
     ["model.hidden=[256]", "trainer.batch_size=32", "+dann"]),
    ("digits lenet b64 + DANN[500,500]", "mnist_usps_jda", ("usps", "mnist"),
     ["model.backbone='lenet'", "trainer.batch_size=64", "+dann", "plugins.dann.hidden=[500, 500]"]),
    ("SURF mlp[1024] b128", "office_caltech10_surf", ("caltech", "amazon"), ["model.hidden=[1024]",
                                                                             "trainer.batch_size=128"]),
    ("SURF mlp[1024,1024] b256", "office_caltech10_surf", ("caltech", "amazon"),
     ["model.hidden=[1024, 1024]", "trainer.batch_size=256"]),
    ("SURF mlp[2048,2048] b256", "office_caltech10_surf", ("caltech", "amazon"),
     ["model.hidden=[2048, 2048]", "trainer.batch_size=256"]),
    ("SURF mlp[2048,2048] b512 (replacement)", "office_caltech10_surf", ("caltech", "amazon"),
     ["model.hidden=[2048, 2048]", "trainer.batch_size=512", "trainer.replacement=true"]),
    ("SURF mlp[4096,4096] b512 (replacement)", "office_caltech10_surf", ("caltech", "amazon"),
     ["model.hidden=[4096, 4096]", "trainer.batch_size=512", "trainer.replacement=true"]),
]


def make_config(dataset, task, overrides):
    """The prepared config of a case (``"+NAME"`` in ``overrides`` enables plugin NAME)."""
    sets = [o for o in overrides if not o.startswith("+")]
    enable = [o[1:] for o in overrides if o.startswith("+")]
    config = load_config(None, [f"data.dataset='{dataset}'", f"data.tasks=['{task[0]}->{task[1]}']",
                                "trainer.steps=1000000", "trainer.eval_every=1000000", "trainer.progress=false",
                                "trainer.device='cpu'", "trainer.checkpoint=false", *sets], enable=enable)
    return prepare(config)


def build(dataset, task, overrides, root):
    config, active = make_config(dataset, task, overrides)
    src, tgt = load_domain(dataset, task[0]), load_domain(dataset, task[1])
    trainer = Trainer(config, src, tgt, make_plugin_manager(active), new_run_dir(root, "bench", "t", "m", 0), 0)
    trainer.start()
    return trainer


def timed(trainer, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.advance()
    return (time.perf_counter() - t0) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per round (fewer for the large cases)")
    parser.add_argument("--max-seconds", type=float, default=1.5, help="cap on one round's duration")
    args = parser.parse_args()
    cores = available_cores()
    print(f"torch {torch.__version__}, {cores} cores, load average {os.getloadavg()[0]:.1f} at start; "
          f"rule: FLOPS_PER_THREAD = {FLOPS_PER_THREAD:.2g}")
    print()
    print(f"| model, batch per domain | step GFLOP | ms/step, 1 thread | ms/step, {cores} threads | "
          f"t(1) / t({cores}): min | median | max | rule picks |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as root:
        for label, dataset, task, overrides in CASES:
            trainer = build(dataset, task, overrides, root)
            flops = trainer.threads.step_flops or 0.0
            torch.set_num_threads(1)
            once = timed(trainer, 2)
            steps = max(2, min(args.steps, int(args.max_seconds / max(once, 1e-4))))
            times = {1: [], cores: []}
            for _ in range(args.rounds):
                for n in times:
                    torch.set_num_threads(n)
                    times[n].append(timed(trainer, steps))
            trainer.logger.close()
            ratios = [a / b for a, b in zip(times[1], times[cores])]
            print(f"| {label} | {flops / 1e9:.3f} | {statistics.median(times[1]) * 1e3:.1f} | "
                  f"{statistics.median(times[cores]) * 1e3:.1f} | {min(ratios):.2f} | **{statistics.median(ratios):.2f}** "
                  f"| {max(ratios):.2f} | {auto_threads(flops, cores)} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
