"""The selection study of experiments/selection.md: sweeps with ``tladapt sweep``, then what
each validator achieves, from the recorded runs only.

    nice -n 10 python experiments/selection.py run       # the sweeps, then the --jobs 1 vs 2 timing
    python experiments/selection.py report               # the tables of selection.md

``run`` calls the CLI exactly as a user would and writes ``experiments/selection/timings.json``
(wall time of each command). ``report`` reads ``runs/selection`` and prints, per validator:
(a) the weighted Spearman correlation (Musgrave et al. 2022) between its score and the oracle
target accuracy over every recorded checkpoint of a task, averaged over tasks; (b) the target
accuracy of the configuration it selects against the default configuration (trial 0: the base
config's values), the last step, and the oracle-best; and how often it picks a collapsed model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent / "selection"
RUNS = "runs/selection"
SWEEPS = [  # (name, base config, space, trials)
    ("surf_dann", "surf_dann.toml", "dann_space.toml", 12),
    ("amazon_dann", "amazon_dann.toml", "dann_space.toml", 12),
    ("surf_dan", "surf_dan.toml", "dan_space.toml", 12),
    ("amazon_dan", "amazon_dan.toml", "dan_space.toml", 12),
    ("digits_dann", "digits_dann.toml", "dann_space.toml", 4),
]
#: the --jobs timing: the Amazon DANN sweep (96 runs), fresh, with 1 and 2 workers, twice in
#: alternating order (1, 2, 2, 1) because the shared machine's load drifts
SCALING = [("c", 1), ("c", 2), ("d", 2), ("d", 1)]


def tladapt(*args: str) -> float:
    """Run ``tladapt ARGS`` (this interpreter's); return its wall time in seconds."""
    cmd = [sys.executable, "-m", "tladapt.cli", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def run(jobs: int) -> None:
    """The sweeps, then the scaling measurement; timings into selection/timings.json."""
    timings = json.loads((HERE / "timings.json").read_text()) if (HERE / "timings.json").exists() else {}
    for name, config, space, trials in SWEEPS:
        if name in timings:
            continue
        timings[name] = tladapt("sweep", str(HERE / config), "--space", str(HERE / space), "--trials", str(trials),
                                "--jobs", str(jobs), "--runs-dir", RUNS)
        (HERE / "timings.json").write_text(json.dumps(timings, indent=2))
    for rep, j in SCALING:
        key = f"scaling_{rep}_jobs{j}"
        if key not in timings:
            timings[key] = tladapt("sweep", str(HERE / "amazon_dann.toml"), "--space", str(HERE / "dann_space.toml"),
                                   "--trials", "12", "--jobs", str(j), "--runs-dir", f"runs/scaling_{rep}{j}")
            (HERE / "timings.json").write_text(json.dumps(timings, indent=2))
    print(json.dumps(timings, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["run", "report"])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if args.what == "run":
        run(args.jobs)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from selection_report import main  # noqa: E402  (experiments/selection_report.py)

        main()
