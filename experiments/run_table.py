"""Pivot the ``results.json`` of finished runs into one markdown table: tasks x methods.

``tladapt table RUNS`` lists one row per (task, method); this script puts the methods side
by side, adds the published 1-NN reference (JDA, ICCV 2013, Table 2) where the dataset has
one, and a last row with the mean over tasks. Runs are made with the CLI, e.g.::

    OMP_NUM_THREADS=1 tladapt run experiments/office_caltech10/{source_only,dan,deep_coral,dann}.toml
    python experiments/run_table.py runs/feature_alignment/office_caltech10_surf \\
        --methods source_only dan deep_coral dann

Each cell is ``mean ± std`` (sample std, ``n - 1``) over seeds of the final-step metric
(default ``oracle/target_acc``, in percent). The "mean" row averages the per-task means;
its ± is the std over seeds of the per-seed task averages (only when every task has the
same seeds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from tladapt.experiment import collect_results, reference_1nn


def pivot(results: list[dict], methods: list[str] | None = None, metric: str = "oracle/target_acc",
          reference: bool = True) -> str:
    """The markdown table of ``metric`` per task (rows) and method (columns).

    Args:
        results: dicts as in ``results.json`` (keys ``dataset``, ``task``, ``method``,
            ``seed``, ``final``).
        methods: column order; default: methods in order of first appearance.
        metric: a key of ``final``, e.g. ``"oracle/target_acc"`` or
            ``"metrics/source_val_acc"``.
        reference: add the published 1-NN column when the dataset has one (only for
            ``oracle/target_acc``).

    Returns:
        A GitHub-markdown table (str).

    Raises:
        ValueError: no results, or a requested method with no results.
    """
    if not results:
        raise ValueError("no results to tabulate")
    cells: dict[tuple[str, str], dict[int, float]] = {}
    tasks, found = [], []
    for r in results:
        if r["task"] not in tasks:
            tasks.append(r["task"])
        if r["method"] not in found:
            found.append(r["method"])
        cells.setdefault((r["task"], r["method"]), {})[r["seed"]] = float(r["final"][metric])
    methods = methods or found
    missing = [m for m in methods if m not in found]
    if missing:
        raise ValueError(f"no results for method(s) {', '.join(missing)}; found {', '.join(found)}")
    dataset = results[0]["dataset"]
    reference = reference and metric == "oracle/target_acc"  # 1-NN is a target accuracy
    refs = {t: reference_1nn(dataset, t) for t in tasks} if reference else {}
    with_ref = any(v is not None for v in refs.values())

    def fmt(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"

    head = ["task"] + (["1-NN (JDA)"] if with_ref else []) + methods
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in tasks:
        row = [task.replace("->", "→")]
        if with_ref:
            row.append("" if refs[task] is None else f"{refs[task]:.1f}")
        for m in methods:
            seeds = cells.get((task, m), {})
            row.append(fmt(list(seeds.values())) if seeds else "–")
        lines.append("| " + " | ".join(row) + " |")
    if len(tasks) > 1:
        row = ["**mean**"]
        if with_ref:
            known = [refs[t] for t in tasks if refs[t] is not None]
            row.append(f"{statistics.fmean(known):.1f}" if len(known) == len(tasks) else "")
        for m in methods:
            per_task = [cells.get((t, m), {}) for t in tasks]
            if not all(per_task):
                row.append("–")
                continue
            seed_sets = {frozenset(s) for s in per_task}
            task_mean = statistics.fmean(statistics.fmean(s.values()) for s in per_task)
            if len(seed_sets) == 1 and len(per_task[0]) > 1:
                per_seed = [statistics.fmean(s[k] for s in per_task) for k in sorted(per_task[0])]
                row.append(f"**{task_mean:.1f}** ± {statistics.stdev(per_seed):.1f}")
            else:
                row.append(f"**{task_mean:.1f}**")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``run_table.py RUNS_DIR [--methods ...] [--metric ...]``; prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="directories searched for results.json")
    parser.add_argument("--methods", nargs="+", help="column order (default: as found)")
    parser.add_argument("--metric", default="oracle/target_acc", help="key of results.json 'final'")
    parser.add_argument("--no-reference", action="store_true", help="leave out the 1-NN column")
    args = parser.parse_args(argv)
    results = [r for root in args.runs for r in collect_results(Path(root))]
    try:
        print(pivot(results, args.methods, args.metric, not args.no_reference))
    except ValueError as err:
        print(f"run_table.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
