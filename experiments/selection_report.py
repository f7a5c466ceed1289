"""The tables of experiments/selection.md, from the recorded runs of ``selection.py run`` only.

    python experiments/selection_report.py [RUNS_DIR]     # default runs/selection

Per sweep (dataset x family) and validator: (a) the weighted Spearman correlation (Musgrave et
al. 2022; :func:`tladapt.selection.weighted_spearman`) between the validator's score and the
oracle target accuracy over every recorded checkpoint of a task (all trials x seeds x
evaluation points), averaged over the tasks; (b) the target accuracy (%) of what the validator
selects, averaged over tasks and seeds, beside the default configuration and the oracle-best:
``config``: the trial whose last step scores best; ``config+step``: the best-scoring
checkpoint of any trial; ``near-chance``: how many (task, seed) picks of ``config+step`` are
within 5 points of chance accuracy (a collapsed model).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from tladapt.config import load_config
from tladapt.experiment import prepare
from tladapt.selection import ORACLE_TAG, choose, make_selection, weighted_spearman
from tladapt.tables import evaluations_frame, read_runs, recorded_directions

HERE = Path(__file__).resolve().parent / "selection"
SWEEPS = {"selection_surf_dann": ("SURF", "DANN", "surf_dann.toml", 10),
          "selection_surf_dan": ("SURF", "DAN", "surf_dan.toml", 10),
          "selection_amazon_dann": ("Amazon", "DANN", "amazon_dann.toml", 2),
          "selection_amazon_dan": ("Amazon", "DAN", "amazon_dan.toml", 2),
          "selection_digits_dann": ("USPS<->MNIST", "DANN", "digits_dann.toml", 10)}
VALIDATORS = ["source_val_acc", "source_val_loss", "entropy", "im", "bnm", "snd", "class_ami", "dev", "devn",
              "mixval"]


def default_config_id(base: str) -> str:
    """The fingerprint of a sweep's base config: trial 0 (defaults_first) has exactly its values."""
    config, _ = prepare(load_config(HERE / base))
    return config.fingerprint()


def spearman_table(evals: pd.DataFrame, directions: dict[str, str]) -> dict[str, float]:
    """``{validator: mean over tasks of the weighted Spearman over the task's checkpoints}``."""
    out = {}
    for v in VALIDATORS:
        tag = f"validator/{v}"
        sign = 1.0 if directions[v] == "max" else -1.0
        per_task = [weighted_spearman(sign * part[tag].to_numpy(), part[ORACLE_TAG].to_numpy())
                    for _, part in evals.groupby("task")]
        out[v] = float(np.nanmean(per_task))
    return out


def selection_table(evals: pd.DataFrame, directions: dict[str, str], default_id: str, classes: int,
                    gains: dict[str, list]) -> list[list]:
    """Rows: validator, config, config+step, picks near chance, picks 10 points below the default;
    then the oracle and default rows. Appends each validator's (config - default, config+step -
    default) to ``gains``."""
    last = evals[evals.groupby("run_dir")["step"].transform("max") == evals["step"]]
    default = last[last["config_id"] == default_id].set_index(["task", "seed"])[ORACLE_TAG]
    chance = 100.0 / classes
    rows = []
    for v in [*VALIDATORS, "oracle"]:
        by_config = choose(evals, make_selection(v, directions, "configs"))
        by_both = choose(evals, make_selection(v, directions, "both"))
        both = by_both.set_index(["task", "seed"])["selected"]
        near = int((both <= chance + 5).sum())
        worse = int((both < default.loc[both.index] - 10).sum())
        name = "**oracle** (target labels: the upper bound)" if v == "oracle" else v
        rows.append([name, by_config["selected"].mean(), by_both["selected"].mean(), f"{near}/{len(both)}",
                     f"{worse}/{len(both)}"])
        gains.setdefault(v, []).append((by_config["selected"].mean() - default.mean(),
                                        by_both["selected"].mean() - default.mean(), near, worse, len(both)))
    rows.append(["default config (trial 0), last step", default.mean(), "", "", ""])
    return rows


def main(root: str = "runs/selection") -> None:
    """Print the study's tables (markdown)."""
    runs = read_runs(root)
    evals = evaluations_frame(runs)
    directions = recorded_directions(runs)
    spearman_rows, gains = [], {}
    for experiment, (dataset, family, base, classes) in SWEEPS.items():
        part = evals[evals["experiment"] == experiment]
        if part.empty:
            print(f"(no runs of {experiment} yet)\n")
            continue
        n_configs, n_tasks = part["config_id"].nunique(), part["task"].nunique()
        head = (f"### {dataset}, {family}: {n_configs} configurations x {n_tasks} tasks x "
                f"{part['seed'].nunique()} seeds, {len(part)} checkpoints")
        print(head + "\n")
        rows = selection_table(part, directions, default_config_id(base), classes, gains)
        print(tabulate(rows, headers=["selection", "config (last step)", "config + step", "picks near chance",
                                      "picks 10+ below default"], tablefmt="github", floatfmt=".1f"))
        print()
        spearman_rows.append([f"{dataset} {family}", *spearman_table(part, directions).values()])
    print("### Weighted Spearman correlation with target accuracy over all checkpoints (mean over tasks)\n")
    print(tabulate(spearman_rows, headers=["sweep", *VALIDATORS], tablefmt="github", floatfmt=".2f"))
    print("\n### Over all sweeps: mean gain over the default configuration (points), bad picks, mean weighted Spearman\n")
    rows = []
    for v, g in gains.items():
        arr = np.array([x[:2] for x in g])
        near, worse, n = (sum(x[i] for x in g) for i in (2, 3, 4))
        rho = "" if v == "oracle" else np.mean([r[1 + VALIDATORS.index(v)] for r in spearman_rows])
        rows.append([v, arr[:, 0].mean(), arr[:, 1].mean(), f"{near}/{n}", f"{worse}/{n}", rho])
    print(tabulate(rows, headers=["selection", "config - default", "config+step - default", "near chance",
                                  "10+ below default", "weighted Spearman"], tablefmt="github", floatfmt=".2f"))


if __name__ == "__main__":
    main(*sys.argv[1:])
