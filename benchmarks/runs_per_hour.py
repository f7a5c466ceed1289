"""Runs per hour of one experiment: one run after another, seeds batched, or concurrent processes.

Each mode runs the same config and seeds with ``tladapt run`` in fresh processes (fixed
costs included, as a user pays them), the modes alternating in rounds; runs per hour
and each mode's per-round ratio to the sequential mode are reported (min / median / max).

* ``sequential``: one process, ``trainer.batch_runs = 1`` (the runs one after another).
* ``batched``: one process, ``trainer.batch_runs = 0`` (each task's seeds as one batched model).
* ``processes``: ``--processes`` concurrent ``tladapt run`` processes, the seeds split among them.

    python benchmarks/runs_per_hour.py                               # default_dann.toml, 3 seeds, 2 tasks
    python benchmarks/runs_per_hour.py --seeds 0-7 --steps 300 --set validation.validators=[]
    python benchmarks/runs_per_hour.py --device cuda --config experiments/digits_jda/dann.toml --seeds 0-15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources

from tladapt.config import parse_seeds


def run(config: str, seeds: list[int], sets: list[str], root: str, processes: int = 1) -> float:
    """Wall seconds of ``tladapt run`` over ``seeds`` split among ``processes`` concurrent processes."""
    chunks = [seeds[i::processes] for i in range(processes)]
    t0 = time.perf_counter()
    procs = []
    for i, chunk in enumerate(c for c in chunks if c):
        cmd = [sys.executable, "-m", "tladapt", "run", config, "--seeds", ",".join(map(str, chunk)),
               "--runs-dir", os.path.join(root, f"p{i}")]
        for s in sets:
            cmd += ["--set", s]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"tladapt run failed ({p.returncode}): {err[-2000:]}")
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = str(resources.files("tladapt") / "configs" / "default_dann.toml")
    parser.add_argument("--config", default=default)
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--steps", type=int, default=None, help="trainer.steps (default: the config's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="extra --set overrides for every mode")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    sets = [f"trainer.device='{args.device}'", "trainer.progress=false", "trainer.checkpoint=false", *args.set]
    if args.steps:
        sets.append(f"trainer.steps={args.steps}")
    from tladapt.config import load_config

    config = load_config(args.config, sets, args.seeds)
    n_runs = len(seeds) * len(config.data.tasks)
    modes = {
        "sequential": lambda root: run(args.config, seeds, sets + ["trainer.batch_runs=1"], root),
        "batched": lambda root: run(args.config, seeds, sets + ["trainer.batch_runs=0"], root),
        f"{args.processes} processes": lambda root: run(args.config, seeds, sets + ["trainer.batch_runs=1"], root,
                                                         args.processes),
    }
    times = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, fn in modes.items():
            with tempfile.TemporaryDirectory() as root:
                times[mode].append(fn(root))
    print(f"{args.config}: {n_runs} runs ({len(config.data.tasks)} tasks x {len(seeds)} seeds), "
          f"{config.trainer.steps} steps, device {args.device}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end; {args.rounds} interleaved rounds")
    print()
    print("| mode | seconds (median) | runs / hour | ratio to sequential: min | median | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, ts in times.items():
        ratios = [s / t for s, t in zip(times["sequential"], ts)]
        print(f"| {mode} | {statistics.median(ts):.1f} | {3600 * n_runs / statistics.median(ts):.0f} | "
              f"{min(ratios):.2f} | **{statistics.median(ratios):.2f}** | {max(ratios):.2f} |")


if __name__ == "__main__":
    main()
