"""The tables of experiments/algorithms.md, from the recorded runs only (no training).

    .venv/bin/python experiments/algorithms_report.py runs/algorithms/office_caltech10_surf ...
    .venv/bin/python experiments/algorithms_report.py --sweeps runs/algorithms_sweeps/office_caltech10_surf ...

For each experiment folder: one row per method, the target accuracy of the evaluation point
that the label-free validator ``im`` (information maximisation: ``tladapt sweep``'s default
objective, docs/model-selection.md) picks in each run, per task (mean ± std over seeds) and
over the tasks (the ± is the std over seeds of the per-seed task means, as in ``tladapt
table --pivot``); beside it the last evaluation point (no choice) and the ORACLE choice
(the point with the best target accuracy: an upper bound, not a result); then the published
numbers on the same files (``../shared/published_results.md``: protocols differ, see there),
for the same tasks. Everything is computed with :func:`tladapt.tables.build_table`, the code
behind ``tladapt table --select``. A method's ``(im-swept)`` row (its hyper-parameters chosen
by the label-free sweep, ``experiments/algorithms_swept.py``) follows the method's own row.

With ``--sweeps``, one line per study of ``experiments/algorithms_sweep.sh`` instead: the
trial the label-free objective chose against the config's own values (trial 0) and the
ORACLE-best trial, with the mean target accuracy of each on the design tasks (read only here,
to show what the label-free choice cost; it chose nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from tladapt.tables import build_table, read_runs

#: Published target accuracies (%) on the bundled files, by dataset, source and task, from
#: ../shared/published_results.md: JDA = Long et al. ICCV 2013 Table 2 (§1, [S2]);
#: MEDA and CORAL = Wang et al. ACM MM 2018 Tables 2-3 (§2, [S1]; MEDA's re-runs);
#: CORAL (400 words) = Sun et al. AAAI 2016 as reprinted in Wilson & Cook's survey (§3, [S1]).
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "office_caltech10_surf": {
        "JDA (ICCV'13)": {"caltech->amazon": 44.78, "caltech->webcam": 41.69, "caltech->dslr": 45.22,
                          "amazon->caltech": 39.36, "amazon->webcam": 37.97, "amazon->dslr": 39.49,
                          "webcam->caltech": 31.17, "webcam->amazon": 32.78, "webcam->dslr": 89.17,
                          "dslr->caltech": 31.52, "dslr->amazon": 33.09, "dslr->webcam": 89.49},
        "CORAL (in MEDA)": {"caltech->amazon": 52.1, "caltech->webcam": 46.4, "caltech->dslr": 45.9,
                            "amazon->caltech": 45.1, "amazon->webcam": 44.4, "amazon->dslr": 39.5,
                            "webcam->caltech": 33.7, "webcam->amazon": 36.0, "webcam->dslr": 86.6,
                            "dslr->caltech": 33.8, "dslr->amazon": 37.7, "dslr->webcam": 84.7},
        "MEDA (MM'18)": {"caltech->amazon": 56.5, "caltech->webcam": 53.9, "caltech->dslr": 50.3,
                         "amazon->caltech": 43.9, "amazon->webcam": 53.2, "amazon->dslr": 45.9,
                         "webcam->caltech": 34.0, "webcam->amazon": 42.7, "webcam->dslr": 88.5,
                         "dslr->caltech": 34.9, "dslr->amazon": 41.2, "dslr->webcam": 87.5},
    },
    "mnist_usps_jda": {
        "JDA (ICCV'13)": {"usps->mnist": 59.65, "mnist->usps": 67.28},
        "CORAL (in MEDA)": {"usps->mnist": 30.5, "mnist->usps": 49.2},
        "MEDA (MM'18)": {"usps->mnist": 72.1, "mnist->usps": 89.5},
    },
    "coil20_jda": {
        "JDA (ICCV'13)": {"coil1->coil2": 89.31, "coil2->coil1": 88.47},
    },
    "amazon_review_400": {
        "CORAL, 400 words (AAAI'16)": {
            "books->dvd": 80.7, "books->electronics": 76.3, "books->kitchen": 82.5, "dvd->books": 78.3,
            "dvd->electronics": 77.0, "dvd->kitchen": 82.5, "electronics->books": 73.2, "electronics->dvd": 72.9,
            "electronics->kitchen": 83.6, "kitchen->books": 72.5, "kitchen->dvd": 73.9, "kitchen->electronics": 84.6},
    },
}


#: Row order: no adaptation, the earlier plugins, this issue's, the compositions; others after.
ORDER = ["source_only", "dann", "dan", "deep_coral", "iw_discriminative", "self_training", "cdan_e", "mdd", "mcc",
         "bnm", "fixmatch", "afn", "shot", "jda", "jda+mcc", "jda+cdan_e+self_training"]


def _over_tasks(chosen: pd.DataFrame, column: str) -> tuple[float, float]:
    """Mean over tasks of the per-task seed means, and the std over seeds of the per-seed task means."""
    by = chosen.pivot_table(index="seed", columns="task", values=column, aggfunc="first")
    std = by.mean(axis=1).std() if len(by) > 1 and not by.isna().any().any() else math.nan
    return by.mean(axis=0).mean(), std


def _cell(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else (f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}")


def _pick_row(table, tasks: list[str], by: str, label: str) -> list:
    """One row choosing, per task and seed, among the methods with every seed of every task:
    by the im score of each method's chosen point (``by = "score"``, label-free) or by its
    target accuracy (``by = "selected"``, ORACLE)."""
    chosen = table.chosen
    complete = [m for m, part in chosen.groupby("method") if part["task"].nunique() == len(tasks)
                and part.groupby("task")["seed"].nunique().min() == chosen["seed"].nunique()]
    part = chosen[chosen["method"].isin(complete)]
    best = part.loc[part.groupby(["task", "seed"])[by].idxmax()]
    by_task = best.groupby("task")["selected"].agg(["mean", "std"])
    cells = [_cell(by_task.loc[t, "mean"], by_task.loc[t, "std"]) for t in tasks]
    return [f"{label} ({len(complete)} methods)", int(best.groupby("task")["seed"].nunique().min())] + cells + [
        f"**{_cell(*_over_tasks(best, 'selected'))}**", "", ""]


def _task_of(run) -> str:
    return run.results["task"] if run.results is not None else ((run.config or {}).get("data", {}).get("tasks") or [""])[0]


def _latest(runs) -> list:
    """The finished runs, one per method, task and seed (the latest: its run directory's
    timestamp), and every unfinished run. A config rerun after the core gained a config key
    (``data.allow_same_domain``) has a new fingerprint but trains the same (its results are
    bit-identical, checked in experiments/algorithms.md): counting both would split a method
    into two rows."""
    latest: dict[tuple, object] = {}
    rest = []
    for run in runs:
        if run.results is None:
            rest.append(run)
            continue
        key = (run.results["method"], run.results["task"], run.results["seed"])
        if key not in latest or Path(run.run_dir).name > Path(latest[key].run_dir).name:
            latest[key] = run
    return list(latest.values()) + rest


def report(root: Path, tasks: list[str] | None = None, complete: bool = False) -> str:
    """The markdown table of one experiment folder (see the module docstring), of the runs of
    ``tasks`` only when given; with ``complete``, only the methods with a finished run of
    every task (the others are named below the table)."""
    runs = _latest(r for r in read_runs(root) if tasks is None or _task_of(r) in tasks)
    partial: list[str] = []
    if complete:
        done = {}
        for r in runs:
            if r.results is not None:
                done.setdefault(r.results["method"], set()).add(r.results["task"])
        every = set().union(*done.values())
        partial = sorted(m for m, t in done.items() if t != every)
        runs = [r for r in runs if r.results is None or r.results["method"] not in partial]
    label_free = build_table(runs, select="im")
    oracle = build_table(runs, select="oracle")
    tasks = list(dict.fromkeys(label_free.rows["task"]))
    dataset = label_free.rows["dataset"].iloc[0]
    head = ["method", "seeds"] + [t.replace("->", "→") for t in tasks] + [
        "**mean (im)**", "mean (last step)", "mean ORACLE (best step)"]
    body = []
    found = list(dict.fromkeys(label_free.rows["method"]))
    known = [m for name in ORDER for m in (name, f"{name} (im-swept)") if m in found]
    for method in known + [m for m in found if m not in known]:
        rows = label_free.rows[label_free.rows["method"] == method].set_index("task")
        chosen = label_free.chosen[label_free.chosen["method"] == method]
        complete = all(t in rows.index for t in tasks)
        cells = [_cell(rows.loc[t, "selected_mean"], rows.loc[t, "selected_std"]) if t in rows.index else "–"
                 for t in tasks]
        mean, last, best = (_over_tasks(chosen, c) if complete else (math.nan, math.nan)
                            for c in ("selected", "last", "oracle_best"))
        ochosen = oracle.chosen[oracle.chosen["method"] == method]
        assert (ochosen["selected"].to_numpy() == ochosen["oracle_best"].to_numpy()).all()
        body.append([method, int(rows["n"].min())] + cells + [f"**{_cell(*mean)}**", _cell(*last), _cell(*best)])
    body += [_pick_row(label_free, tasks, "score", "per task and seed, the method with the best im (label-free)"),
             _pick_row(label_free, tasks, "selected", "per task and seed, the best method: ORACLE")]
    for name, values in PUBLISHED.get(dataset, {}).items():
        cells = [f"{values[t]:.1f}" for t in tasks]
        body.append([f"published: {name}", ""] + cells + [f"{sum(values[t] for t in tasks) / len(tasks):.1f}", "", ""])
    lines = [f"`{root}` ({dataset}): target accuracy (%), mean ± std over seeds. Cells: the evaluation "
             "point the label-free validator `im` picks in each run. ORACLE: the point with the best "
             "target accuracy (reads target labels: an upper bound, not a result).", "",
             tabulate(body, headers=head, tablefmt="github", disable_numparse=True)]
    if not label_free.left_out.empty:
        lines.append(f"\n{len(label_free.left_out)} run(s) not finished, never averaged")
    if partial:
        lines.append(f"\nLeft out (not run on every task yet): {', '.join(partial)}")
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def sweep_report(folder: Path) -> str:
    """One row per study in ``folder/optuna.db``: the config's own values (trial 0), the
    trial the study's objective chose, and the ORACLE-best trial by mean target accuracy over
    the trial's runs; each with its parameters, objective value and target accuracy."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(folder / 'optuna.db').resolve()}"
    runs = [r for r in read_runs(folder) if r.results is not None]
    accuracy: dict[str, list[float]] = {}
    command: dict[str, str] = {}
    for run in runs:
        cid = run.results["config_id"]
        accuracy.setdefault(cid, []).append(run.results["final"]["oracle/target_acc"])
        command[cid] = run.config["provenance"]["command"]
    body = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        objective = study.user_attrs.get("objective", "validator/im")
        trials = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
                  and t.user_attrs.get("config_id") in accuracy]
        if not trials:
            continue
        acc = {t.number: sum(accuracy[t.user_attrs["config_id"]]) / len(accuracy[t.user_attrs["config_id"]])
               for t in trials}
        words = shlex.split(command[trials[0].user_attrs["config_id"]])
        config = Path(words[words.index("sweep") + 1])
        chosen = study.best_trial
        oracle = max(trials, key=lambda t: acc[t.number])
        first = next((t for t in trials if t.number == 0), None)
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.get_trials(deepcopy=False))

        def cell(t) -> str:
            if t is None:
                return "– (failed)"
            params = ", ".join(f"{k.split('.')[-1] if k != 'trainer.lr' else 'lr'} {_short(v)}"
                               for k, v in sorted(t.params.items()))
            return f"{acc[t.number]:.1f} ({params}; {objective.split('/')[-1]} {t.value:.3f})"
        label = config.stem + (" [ORACLE objective: not a label-free choice]" if objective.startswith("oracle/") else "")
        body.append([label, f"{len(trials)} (+{failed} failed)" if failed else str(len(trials)),
                     cell(first), f"**{cell(chosen)}**", cell(oracle)])
    head = ["config", "complete trials", "config's own values (trial 0)", "chosen by the label-free objective",
            "ORACLE-best trial"]
    return "\n".join([f"`{folder}`: mean target accuracy (%) of a trial's runs (seed 0, the design tasks); "
                      "in brackets its parameters and objective value.", "",
                      tabulate(body, headers=head, tablefmt="github", disable_numparse=True)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="experiment folders, e.g. runs/algorithms/coil20_jda")
    parser.add_argument("--sweeps", action="store_true", help="the roots are sweep folders: summarise their studies")
    parser.add_argument("--tasks", type=json.loads, help='only these tasks, a JSON list: \'["amazon->webcam"]\'')
    parser.add_argument("--complete", action="store_true", help="only the methods run on every task")
    args = parser.parse_args()
    for folder in args.roots:
        print(sweep_report(folder) if args.sweeps else report(folder, args.tasks, args.complete), end="\n\n")
