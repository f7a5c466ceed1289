"""What ``trainer.compile`` costs and when it pays: compile (or capture) time against step time.

For LeNet + DANN on USPS->MNIST (batch 64+64) and the bundled SURF MLP + DANN (batch 32+32),
one process builds an eager trainer and a compiled one (``trainer.compile = "torch"``; on
CUDA also ``"cudagraph"``), times the compiled trainer's first step (the compilation, or
the warm-up and capture), then alternates rounds of steps of every trainer (interleaved,
min / median / max of the per-round ratio to eager). The break-even run length is
``compile seconds / (eager - compiled seconds per step)``: runs shorter than that are
slower compiled.

    python benchmarks/compile_speed.py --threads 1                       # CPU, warm caches
    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python benchmarks/compile_speed.py --threads 1   # cold
    python benchmarks/compile_speed.py --device cuda
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
from tladapt.steps import GraphStep
from tladapt.trainer import Trainer

CASES = {
    "lenet": ("LeNet + DANN[500,500], USPS->MNIST, b64", "mnist_usps_jda", ("usps", "mnist"),
              ["model.backbone='lenet'", "trainer.batch_size=64", "+dann", "plugins.dann.hidden=[500, 500]"]),
    "surf": ("SURF MLP[256] + DANN[1024,1024], A->W, b32", "office_caltech10_surf", ("amazon", "webcam"),
             ["model.hidden=[256]", "trainer.batch_size=32", "+dann"]),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_config(case, device, mode):
    """The prepared config of a case (``"+NAME"`` in its overrides enables plugin NAME)."""
    _, dataset, task, overrides = CASES[case]
    sets = [o for o in overrides if not o.startswith("+")]
    enable = [o[1:] for o in overrides if o.startswith("+")]
    config = load_config(None, [f"data.dataset='{dataset}'", f"data.tasks=['{task[0]}->{task[1]}']",
                                f"trainer.steps={10 ** 9}", f"trainer.eval_every={10 ** 9}", "trainer.progress=false",
                                f"trainer.device='{device}'", "trainer.checkpoint=false",
                                f"trainer.compile='{mode}'", *sets], enable=enable)
    return prepare(config)


def build(case, device, mode, root):
    _, dataset, task, _ = CASES[case]
    config, active = make_config(case, device, mode)
    src, tgt = load_domain(dataset, task[0]), load_domain(dataset, task[1])
    trainer = Trainer(config, src, tgt, make_plugin_manager(active), new_run_dir(root, "bench", "t", mode, 0), 0)
    trainer.start()
    return trainer


def timed(trainer, steps):
    sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.advance()
    sync(trainer.device)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="steps per round")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cold = os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES") == "1"
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; Inductor caches {'disabled (cold)' if cold else 'on (warm)'}; "
          f"{args.rounds} rounds x {args.steps} steps")
    print()
    print("| case | mode | first-step overhead (s) | ms / step (median) | per-round ratio to eager: min | median | max "
          "| break-even steps |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    modes = ["off", "torch"] + (["cudagraph"] if device.type == "cuda" else [])
    for case in args.case:
        with tempfile.TemporaryDirectory() as root:
            trainers, first = {}, {}
            for mode in modes:
                trainers[mode] = build(case, args.device, mode, root)
                # the first steps: compilation for torch, warm-up + capture for cudagraph
                n = GraphStep.WARMUP + 1 if mode == "cudagraph" else 1
                first[mode] = timed(trainers[mode], n)
            times = {mode: [] for mode in modes}
            for _ in range(args.rounds):
                for mode in modes:
                    times[mode].append(timed(trainers[mode], args.steps) / args.steps)
            for mode in modes:
                per_step = statistics.median(times[mode])
                overhead = first[mode] - (GraphStep.WARMUP + 1 if mode == "cudagraph" else 1) * statistics.median(
                    times["off"])
                ratios = [a / b for a, b in zip(times[mode], times["off"])]
                gain = statistics.median(times["off"]) - per_step
                even = "-" if mode == "off" else (f"{overhead / gain:.0f}" if gain > 0 else "never")
                print(f"| {CASES[case][0]} | {mode} | {max(overhead, 0.0):.2f} | {per_step * 1e3:.2f} | {min(ratios):.3f} | "
                      f"**{statistics.median(ratios):.3f}** | {max(ratios):.3f} | {even} |", flush=True)
            for t in trainers.values():
                t.logger.close()


if __name__ == "__main__":
    main()
