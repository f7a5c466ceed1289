"""Start-up time of the light ``tladapt`` commands, as whole processes, side by side.

Each round runs every command once, in turn (so a busy machine slows them alike), and
records its wall time and its CPU time (user + sys of the child, from ``os.wait4``). The
table gives min / median / max over the rounds, and each command's median ratio to
``python -c "import torch"`` in the same round (what every command paid before imports were
made lazy). Usage::

    python benchmarks/startup.py --rounds 7 [--runs RUNS_DIR]

``--runs`` names a runs directory for ``tladapt table`` (default: a tiny run made first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one run of ``argv`` with its output discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", help="a runs directory for `tladapt table`")
    args = parser.parse_args()
    tladapt = [sys.executable, "-m", "tladapt.cli"]
    runs = args.runs
    if runs is None:
        runs = tempfile.mkdtemp(prefix="startup-runs-")
        subprocess.run([*tladapt, "run", "--runs-dir", runs, "--set", "trainer.steps=2", "--set", "trainer.eval_every=2",
                        "--set", "experiment.seeds=[0]", Path(__file__).parents[1] / "tladapt/configs/default.toml"],
                       check=True, capture_output=True)
    commands = {
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "tladapt --help": [*tladapt, "--help"],
        "tladapt --version": [*tladapt, "--version"],
        "tladapt datasets": [*tladapt, "datasets"],
        f"tladapt table RUNS": [*tladapt, "table", runs],
    }
    walls = {name: [] for name in commands}
    cpus = {name: [] for name in commands}
    for _ in range(args.rounds + 1):  # the first round warms the file cache and is dropped
        for name, argv in commands.items():
            wall, cpu = timed(argv)
            walls[name].append(wall)
            cpus[name].append(cpu)
    reference = 'python -c "import torch"'
    print(f"{args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    print("| command | wall s (min / median / max) | CPU s (min / median / max) | wall / import torch (median) |")
    print("|---|---|---|---:|")
    for name in commands:
        w, c = walls[name][1:], cpus[name][1:]
        ratio = statistics.median(a / b for a, b in zip(w, walls[reference][1:]))
        print(f"| `{name}` | {min(w):.2f} / {statistics.median(w):.2f} / {max(w):.2f} | "
              f"{min(c):.2f} / {statistics.median(c):.2f} / {max(c):.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
