"""Reading recorded runs into pandas DataFrames, and the result tables built from them.

Everything here reads files only (``config.json``, ``results.json``, a run's status file);
nothing is retrained. Every table says in its header how its numbers were chosen
(:class:`tladapt.selection.Selection`); the oracle (target labels) is printed beside,
never instead. Finished runs are tabulated; failed and unfinished runs are listed below
the table and never averaged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import pandas as pd
from tabulate import tabulate

from tladapt.config import parse_task
from tladapt.data.datasets import DATASETS
from tladapt.errors import ConfigError
from tladapt.runs import read_status
from tladapt.selection import GROUP, ORACLE_TAG, Selection, choose, make_selection, metric_direction, summarize

Format = Literal["markdown", "csv", "json"]


def reference_1nn(dataset: str, task: str) -> float | None:
    """The published 1-NN target accuracy (JDA, ICCV 2013, Table 2) for a task, if any."""
    info = DATASETS.get(dataset)
    return info.reference_1nn.get(parse_task(task)) if info else None


def whole_label_space(result: dict) -> bool:
    """Whether a run used every class of its bundled dataset in one head (the setting of the
    published 1-NN numbers); runs from before heads were recorded count as such."""
    classes = result.get("classes")
    info = DATASETS.get(result["dataset"])
    return classes is None or (info is not None and list(classes) == ["head"] and classes["head"] == list(info.classes))


@dataclass(frozen=True)
class Run:
    """One run directory as recorded on disk.

    Attributes:
        run_dir: the directory.
        status: ``"finished"`` (``results.json`` exists), or the state in the run's status
            file (:func:`tladapt.runs.read_status`: ``"failed"``, ``"interrupted"``,
            ``"running"``, or ``"killed"`` for a run marked running whose process is gone),
            else ``"unfinished"``.
        experiment: ``experiment.name`` of its ``config.json`` ("" when unreadable).
        results: the parsed ``results.json`` of a finished run, else None.
        config: the parsed ``config.json``, or None.
    """

    run_dir: str
    status: str
    experiment: str
    results: dict | None
    config: dict | None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_runs(*roots: str | Path) -> list[Run]:
    """Every run directory below ``roots`` (a directory holding ``config.json`` or
    ``results.json``), sorted by path; a root may itself be a run directory."""
    dirs = sorted({p.parent for root in roots for name in ("config.json", "results.json")
                   for p in Path(root).rglob(name)})
    runs = []
    for d in dirs:
        results, config = _read_json(d / "results.json"), _read_json(d / "config.json")
        state = read_status(d)  # a run marked running whose process is gone was killed (kill -9, a crash)
        status = "finished" if results is not None else \
            {"unknown": "unfinished", "running": "running" if state.live else "killed"}.get(state.state, state.state)
        experiment = (config or {}).get("experiment", {}).get("name", "")
        if results is not None and not experiment:
            experiment = Path(results["run_dir"]).parts[-4] if len(Path(results["run_dir"]).parts) >= 4 else ""
        runs.append(Run(str(d), status, experiment, results, config))
    return runs


def collect_results(root: str | Path) -> list[dict]:
    """The ``results.json`` of every finished run below ``root``."""
    return [r.results for r in read_runs(root) if r.results is not None]


def _as_runs(items: Iterable[Run | dict]) -> list[Run]:
    runs = []
    for item in items:
        if isinstance(item, Run):
            runs.append(item)
        else:  # a results dict, e.g. straight from run_experiment
            parts = Path(item.get("run_dir", "")).parts
            runs.append(Run(item.get("run_dir", ""), "finished", parts[-4] if len(parts) >= 4 else "", item, None))
    return runs


def _dedupe(runs: list[Run]) -> list[Run]:
    """A seed run more than once under one config counts once: its latest run (run
    directories sort by time)."""
    latest: dict[tuple, Run] = {}
    for run in runs:
        r = run.results
        key = (run.experiment, r["dataset"], r["task"], r["method"], r.get("config_id", ""), r["seed"])
        if key not in latest or run.run_dir > latest[key].run_dir:
            latest[key] = run
    kept = set(id(r) for r in latest.values())
    return [r for r in runs if id(r) in kept]


def runs_frame(items: Iterable[Run | dict]) -> pd.DataFrame:
    """One row per run (finished or not): ``experiment``, ``dataset``, ``task``, ``method``,
    ``config_id``, ``seed``, ``status``, ``run_dir``, ``steps`` and the final evaluation's tags
    (``oracle/target_acc``, ``validator/<name>``, ...; NaN where not recorded)."""
    rows = []
    for run in _as_runs(items):
        r = run.results or {}
        cfg = run.config or {}
        task = r.get("task") or "->".join(cfg.get("data", {}).get("tasks", ["?"])[:1])
        rows.append({"experiment": run.experiment, "dataset": r.get("dataset", cfg.get("data", {}).get("dataset", "")),
                     "task": task, "method": r.get("method", cfg.get("experiment", {}).get("method", "")),
                     "config_id": r.get("config_id", ""), "seed": r.get("seed", _seed_from_dir(run.run_dir)),
                     "status": run.status, "run_dir": run.run_dir, "steps": r.get("steps"),
                     **{k: v for k, v in r.get("final", {}).items() if k != "step"}})
    return pd.DataFrame(rows)


def _seed_from_dir(run_dir: str) -> int | None:
    name = Path(run_dir).name
    digits = name.removeprefix("seed").split("-")[0]
    return int(digits) if name.startswith("seed") and digits.isdigit() else None


def evaluations_frame(items: Iterable[Run | dict]) -> pd.DataFrame:
    """One row per evaluation point of every finished run (the latest run of a repeated seed):
    the identifying columns of :func:`runs_frame` plus ``step`` and every recorded tag."""
    runs = _dedupe([r for r in _as_runs(items) if r.results is not None])
    rows = []
    for run in runs:
        r = run.results
        ident = {"experiment": run.experiment, "dataset": r["dataset"], "task": r["task"], "method": r["method"],
                 "config_id": r.get("config_id", ""), "seed": r["seed"], "run_dir": run.run_dir}
        for record in _records(r):
            rows.append({**ident, "step": record.get("step", r.get("steps", 0)), **record})
    return pd.DataFrame(rows)


def _records(results: dict) -> list[dict]:
    return results.get("history") or [results["final"]]


def recorded_directions(items: Iterable[Run | dict]) -> dict[str, str]:
    """``{validator: direction}`` as recorded in the runs' ``results.json``."""
    found: dict[str, str] = {}
    for run in _as_runs(items):
        found.update((run.results or {}).get("validators", {}))
    return found


@dataclass(frozen=True)
class Table:
    """A result table: the rows, how they were chosen, and the runs left out.

    Attributes:
        rows: one row per experiment, dataset, task and method (label), with ``selected_mean``,
            ``selected_std``, ``n`` (seeds), ``last_*``, ``oracle_best_*`` and, where the
            dataset has one and the metric is the target accuracy, ``published_1nn``.
        selection: how each number was chosen.
        metric: the tag reported for the chosen model.
        left_out: failed and unfinished runs (``run_dir``, ``status``, ...), never averaged.
        chosen: the choice per seed (:func:`tladapt.selection.choose`), with the row's
            ``method`` label.
    """

    rows: pd.DataFrame
    selection: Selection
    metric: str
    left_out: pd.DataFrame
    chosen: pd.DataFrame

    def header(self) -> str:
        """The lines every rendering of the table starts with."""
        unit = " (%)" if self.metric.endswith("_acc") else ""
        best = (f"the lowest {self.metric} among the candidates, chosen by the number it reports: a lower bound"
                if metric_direction(self.metric) == "min" else
                f"the best {self.metric} among the candidates, chosen by the labels it is measured with: an upper bound")
        return f"{self.metric}{unit}, mean ± std over seeds; {self.selection.label}. 'oracle-best': {best}, not a result."


def build_table(items: Iterable[Run | dict], select: str = "last", metric: str = ORACLE_TAG,
                over: str = "steps") -> Table:
    """Select a model per task, method (and configuration) and seed, and summarise over seeds.

    Args:
        items: :class:`Run` objects (:func:`read_runs`) or ``results.json`` dicts.
        select: ``last`` (default: the last evaluation point, label-free), ``oracle``, a
            validator name or an accuracy tag; see :func:`tladapt.selection.make_selection`.
        metric: the tag reported for each chosen model.
        over: ``steps``, ``configs`` or ``both``.

    Raises:
        ConfigError: no finished run, or an unknown selection or tag.
    """
    runs = _as_runs(items)
    finished = [r for r in runs if r.results is not None and any(metric in h for h in _records(r.results))]
    # not finished, or finished without the metric (e.g. pre-training with no target head)
    left_out = runs_frame([r for r in runs if r.results is None])
    no_metric = runs_frame([r for r in runs if r.results is not None and not any(metric in h for h in _records(r.results))])
    if not no_metric.empty:
        left_out = pd.concat([left_out, no_metric.assign(status=f"finished, no {metric}")], ignore_index=True)
    if not finished and not no_metric.empty:
        tags = sorted({k for r in runs if r.results for h in _records(r.results) for k in h if "/" in k})
        raise ConfigError(f"no run recorded {metric!r}; recorded tags are {', '.join(tags) or 'none'}"
                          + (" (tabulate one with tladapt table --metric TAG)" if tags else ""))
    if not finished:
        raise ConfigError("no finished run (results.json) to tabulate"
                          + (f"; {len(left_out)} run(s) are not finished" if len(left_out) else ""))
    selection = make_selection(select, recorded_directions(finished), over)  # type: ignore[arg-type]
    evals = evaluations_frame(finished)
    chosen = choose(evals, selection, metric)
    by = GROUP + (["config_id"] if over == "steps" else [])
    rows = summarize(chosen, by)
    if over == "steps":  # a method with several configs shows them apart: "method [config_id]"
        for frame in (rows, chosen):
            many = frame.groupby(GROUP, sort=False)["config_id"].transform("nunique") > 1
            frame["method"] = frame["method"].where(~many, frame["method"] + " [" + frame["config_id"] + "]")
        rows = rows.drop(columns="config_id")
    if metric == ORACLE_TAG:
        whole = {run.run_dir: whole_label_space(run.results) for run in finished}
        subset_rows = set(chosen.loc[~chosen["run_dir"].map(whole), "method"].map(str)
                          + "|" + chosen.loc[~chosen["run_dir"].map(whole), "task"])
        refs = [None if f"{m}|{t}" in subset_rows else reference_1nn(d, t)
                for d, t, m in zip(rows["dataset"], rows["task"], rows["method"])]
        if any(r is not None for r in refs):
            rows["published_1nn"] = [math.nan if r is None else r for r in refs]
    return Table(rows, selection, metric, left_out, chosen)


def _cell(mean: float, std: float, digits: int = 2, metric: str = ORACLE_TAG) -> str:
    """``mean ± std``: ``digits`` decimals for an accuracy (percent), 4 significant digits for
    any other metric (a loss of 0.0027 is not 0.00)."""
    if math.isnan(mean):
        return "–"
    spec = f".{digits}f" if metric.endswith("_acc") else ".4g"
    return f"{mean:{spec}}" if math.isnan(std) else f"{mean:{spec}} ± {std:{spec}}"


def _left_out_lines(table: Table) -> list[str]:
    if table.left_out.empty:
        return []
    without = table.left_out["status"].str.startswith("finished").sum()
    why = " and ".join(part for part in (f"{len(table.left_out) - without} not finished" if without < len(table.left_out)
                                         else "", f"{without} finished without {table.metric}" if without else "") if part)
    lines = [f"\nNot in the table (never averaged): {len(table.left_out)} run(s), {why}"]
    for row in table.left_out.itertuples():
        lines.append(f"  {row.status:<11} {row.task} {row.method} seed {row.seed}: {row.run_dir}")
    return lines


def render_final(items: Iterable[Run | dict]) -> str:
    """A markdown table of what each finished run recorded last: its identifying columns and
    every tag of its final record (``results.json`` ``final``: the training scalars such as
    ``loss/total`` and any evaluation tags), 4 significant digits; for runs that have no
    target accuracy to tabulate (a label-free pre-training). Finished runs only.

    Raises:
        ConfigError: when no item is a finished run.
    """
    frame = runs_frame([r for r in _as_runs(items) if r.results is not None])
    if frame.empty:
        raise ConfigError("no finished run (results.json) to show")
    tags = sorted({c for c in frame.columns if "/" in c})
    columns = ["experiment", "dataset", "task", "method", "seed", "steps", *tags]
    body = [["–" if isinstance(v, float) and math.isnan(v) else v for v in row]
            for row in frame[columns].itertuples(index=False)]
    return tabulate(body, headers=columns, tablefmt="github", floatfmt=".4g")


def render_table(table: Table, fmt: Format = "markdown") -> str:
    """The long table (one row per experiment, dataset, task and method) as markdown, CSV or JSON.

    CSV has numeric columns only for numbers (``mean``, ``std``, ``n``, ``last_mean``, ...)
    and a ``selection`` column; JSON is ``{"selection", "metric", "header", "rows",
    "left_out"}`` with ``null`` for missing numbers.
    """
    rows = table.rows
    if fmt == "csv":
        out = rows.rename(columns={"selected_mean": "mean", "selected_std": "std"})
        out.insert(0, "selection", table.selection.name + ("" if table.selection.over == "steps"
                                                           else f" over {table.selection.over}"))
        out.insert(1, "oracle_selection", table.selection.is_oracle)
        out.insert(2, "metric", table.metric)
        out["status"] = "finished"
        left = table.left_out[["experiment", "dataset", "task", "method", "seed", "status", "run_dir"]] \
            if not table.left_out.empty else None
        return pd.concat([out, left]).to_csv(index=False) if left is not None else out.to_csv(index=False)
    if fmt == "json":
        clean = lambda df: json.loads(df.to_json(orient="records"))  # noqa: E731  (NaN -> null)
        return json.dumps({"selection": {"name": table.selection.name, "tag": table.selection.tag,
                                         "direction": table.selection.direction, "over": table.selection.over,
                                         "oracle": table.selection.is_oracle},
                           "metric": table.metric, "header": table.header(), "rows": clean(rows),
                           "left_out": clean(table.left_out) if not table.left_out.empty else []}, indent=2)
    chosen_by_last = table.selection.name == "last"
    body = []
    for r in rows.to_dict("records"):
        cell = lambda stat: _cell(r[f"{stat}_mean"], r[f"{stat}_std"], metric=table.metric)  # noqa: E731
        line = [r["experiment"], r["dataset"], r["task"], r["method"], cell("selected"),
                r["n"]] + ([] if chosen_by_last else [cell("last")])
        line.append(cell("oracle_best"))
        if "published_1nn" in rows:
            line.append("" if math.isnan(r["published_1nn"]) else f"{r['published_1nn']:.2f}")
        body.append(line)
    headers = (["experiment", "dataset", "task", "method",
                "last step (mean ± std)" if chosen_by_last else f"selected by {table.selection.name} (mean ± std)",
                "seeds"] + ([] if chosen_by_last else ["last step"]) + [f"oracle-best ({'lower' if metric_direction(table.metric) == 'min' else 'upper'} bound)"]
               + (["published 1-NN (%)"] if "published_1nn" in rows else []))
    text = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    return "\n".join([table.header(), "", text, *_left_out_lines(table)])


def render_pivot(table: Table, fmt: Format = "markdown", methods: list[str] | None = None, digits: int = 1) -> str:
    """Tasks (rows) x methods (columns) of the selected metric, with a mean row per experiment.

    The mean row averages the per-task means over the tasks every method has; its ± is the
    std over seeds of the per-seed task averages (when every task has the same seeds, else
    none). The published 1-NN column appears only where the dataset has one. CSV: one row
    per experiment and task, columns ``<method> mean``, ``<method> std``, ``<method> n``.

    Raises:
        ConfigError: for a requested method with no results.
    """
    rows = table.rows
    found = list(dict.fromkeys(rows["method"]))
    methods = methods or found
    missing = [m for m in methods if m not in found]
    if missing:
        raise ConfigError(f"no results for method(s) {', '.join(missing)}; found {', '.join(found)}")
    with_ref = "published_1nn" in rows
    records = []
    for experiment, part in rows.groupby("experiment", sort=False):
        for task, task_rows in part.groupby("task", sort=False):
            rec = {"experiment": experiment, "task": task}
            if with_ref:
                rec["1-NN (JDA)"] = task_rows["published_1nn"].iloc[0]
            for m in methods:
                hit = task_rows[task_rows["method"] == m]
                rec[m] = (hit["selected_mean"].iloc[0], hit["selected_std"].iloc[0], int(hit["n"].iloc[0])) \
                    if len(hit) else (math.nan, math.nan, 0)
            records.append(rec)
        if part["task"].nunique() > 1:
            records.append(_mean_row(experiment, part, table.chosen, methods, with_ref))
    if fmt == "csv":
        flat = []
        for rec in records:
            row = {"selection": table.selection.name, "metric": table.metric, "experiment": rec["experiment"],
                   "task": rec["task"]}
            if with_ref:
                row["published_1nn"] = rec["1-NN (JDA)"]
            for m in methods:
                row[f"{m} mean"], row[f"{m} std"], row[f"{m} n"] = rec[m]
            flat.append(row)
        return pd.DataFrame(flat).to_csv(index=False)
    if fmt == "json":
        out = [{**{k: v for k, v in rec.items() if k not in methods},
                "methods": {m: dict(zip(("mean", "std", "n"), rec[m])) for m in methods}} for rec in records]
        return json.dumps({"header": table.header(), "selection": table.selection.name, "metric": table.metric,
                           "rows": json.loads(pd.DataFrame(out).to_json(orient="records"))}, indent=2)
    several = rows["experiment"].nunique() > 1
    head = (["experiment"] if several else []) + ["task"] + (["1-NN (JDA)"] if with_ref else []) + methods
    body = []
    for rec in records:
        mean_row = rec["task"] == "mean"
        line = ([rec["experiment"]] if several else []) + ["**mean**" if mean_row else rec["task"].replace("->", "→")]
        if with_ref:
            line.append("" if math.isnan(rec["1-NN (JDA)"]) else f"{rec['1-NN (JDA)']:.{digits}f}")
        for m in methods:
            mean, std, _ = rec[m]
            cell = _cell(mean, std, digits, table.metric)
            line.append(f"**{cell.split(' ± ')[0]}**" + cell[len(cell.split(' ± ')[0]):] if mean_row and cell != "–"
                        else cell)
        body.append(line)
    text = tabulate(body, headers=head, tablefmt="github", disable_numparse=True)
    return "\n".join([table.header(), "", text, *_left_out_lines(table)])


def _mean_row(experiment: str, part: pd.DataFrame, chosen: pd.DataFrame, methods: list[str], with_ref: bool) -> dict:
    """The pivot's mean row of one experiment: ``(mean over tasks, std over seeds of the
    per-seed task means or NaN, seeds)`` per method; NaN for a method missing a task."""
    rec: dict = {"experiment": experiment, "task": "mean"}
    tasks = list(dict.fromkeys(part["task"]))
    if with_ref:
        refs = part.drop_duplicates("task")["published_1nn"]
        rec["1-NN (JDA)"] = refs.mean() if refs.notna().all() else math.nan
    for m in methods:
        hit = part[part["method"] == m]
        if hit["task"].nunique() != len(tasks):
            rec[m] = (math.nan, math.nan, 0)
            continue
        per_seed = chosen[(chosen["experiment"] == experiment) & (chosen["method"] == m)]
        by_task = per_seed.pivot_table(index="seed", columns="task", values="selected", aggfunc="first")
        same_seeds = not by_task.isna().any().any() and len(by_task) > 1
        rec[m] = (hit["selected_mean"].mean(), by_task.mean(axis=1).std() if same_seeds else math.nan,
                  int(hit["n"].min()))
    return rec
