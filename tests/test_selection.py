"""Selection after the fact and the tables built on it: exact values on hand-made records,
the formats, the pivot's mean row, unfinished runs listed and never averaged, and the CLI on
real recorded runs."""

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from tladapt.cli import main
from tladapt.errors import ConfigError
from tladapt.experiment import run_experiment
from tladapt.selection import make_selection, weighted_spearman
from tladapt.tables import Run, build_table, evaluations_frame, read_runs, render_pivot, render_table, runs_frame


def record(task, seed, config_id, history, method="dann", dataset="office_caltech10_surf", stamp=1):
    """A results.json dict; history: [(step, target_acc, im, entropy)]."""
    hist = [{"step": s, "oracle/target_acc": acc, "validator/im": im, "validator/entropy": ent,
             "metrics/source_val_acc": 50.0 + s / 10} for s, acc, im, ent in history]
    return {"dataset": dataset, "task": task, "method": method, "seed": seed, "config_id": config_id,
            "final": hist[-1], "history": hist, "validators": {"im": "max", "entropy": "min"},
            "run_dir": f"runs/e/{task.replace('->', '_to_')}/{method}/seed{seed}-{config_id}{stamp}", "steps": hist[-1]["step"]}


# two configs (a, b) x two seeds on one task; three evaluation points each
RUNS = [
    record("amazon->webcam", 0, "a", [(100, 40.0, 0.1, 2.0), (200, 50.0, 0.5, 1.0), (300, 45.0, 0.3, 1.5)]),
    record("amazon->webcam", 1, "a", [(100, 42.0, 0.2, 2.0), (200, 44.0, 0.1, 0.5), (300, 48.0, 0.4, 1.5)]),
    record("amazon->webcam", 0, "b", [(100, 30.0, 0.9, 2.0), (200, 60.0, 0.2, 1.0), (300, 35.0, 0.6, 0.1)]),
    record("amazon->webcam", 1, "b", [(100, 31.0, 0.1, 2.0), (200, 33.0, 0.2, 1.0), (300, 39.0, 0.7, 0.9)]),
]


def rows_of(table):
    return {r["method"]: r for r in table.rows.to_dict("records")}


def test_select_over_steps_picks_each_runs_best_scored_point_in_the_validators_direction():
    t = build_table(RUNS, "im")
    a, b = rows_of(t)["dann [a]"], rows_of(t)["dann [b]"]
    assert a["selected_mean"] == pytest.approx((50.0 + 48.0) / 2)  # im peaks at 200 (seed 0), 300 (seed 1)
    assert a["selected_std"] == pytest.approx(np.std([50.0, 48.0], ddof=1))
    assert a["last_mean"] == pytest.approx((45.0 + 48.0) / 2)
    assert a["oracle_best_mean"] == pytest.approx((50.0 + 48.0) / 2)
    assert b["selected_mean"] == pytest.approx((30.0 + 39.0) / 2) and a["n"] == 2
    t = build_table(RUNS, "entropy")  # minimised: 200 (seed 0), 200 (seed 1) for a
    assert rows_of(t)["dann [a]"]["selected_mean"] == pytest.approx((50.0 + 44.0) / 2)


def test_select_over_configs_and_both():
    t = build_table(RUNS, "im", over="configs")  # last points: seed 0 a 0.3 vs b 0.6 -> b; seed 1 a 0.4 vs b 0.7 -> b
    (row,) = t.rows.to_dict("records")
    assert row["method"] == "dann" and row["selected_mean"] == pytest.approx((35.0 + 39.0) / 2)
    assert row["oracle_best_mean"] == pytest.approx((45.0 + 48.0) / 2)  # best last-step config per seed
    t = build_table(RUNS, "im", over="both")  # seed 0: b@100 (0.9) -> 30; seed 1: b@300 (0.7) -> 39
    (row,) = t.rows.to_dict("records")
    assert row["selected_mean"] == pytest.approx((30.0 + 39.0) / 2)
    assert row["oracle_best_mean"] == pytest.approx((60.0 + 48.0) / 2)
    assert sorted(t.chosen["step"]) == [100, 300] and set(t.chosen["config_id"]) == {"b"}


def test_oracle_selection_is_labelled_oracle_everywhere():
    t = build_table(RUNS, "oracle", over="both")
    assert rows_of(t)["dann"]["selected_mean"] == pytest.approx((60.0 + 48.0) / 2)
    for fmt in ("markdown", "csv", "json"):
        assert "ORACLE" in render_table(t, fmt) or '"oracle_selection"' in render_table(t, fmt) \
            or "True" in render_table(t, fmt)
    assert render_table(t).startswith("oracle/target_acc (%), mean ± std over seeds; selection: ORACLE")
    assert json.loads(render_table(t, "json"))["selection"]["oracle"] is True
    assert next(csv.DictReader(io.StringIO(render_table(t, "csv"))))["oracle_selection"] == "True"
    assert "ORACLE" in render_pivot(t).splitlines()[0]
    assert "label-free" in render_table(build_table(RUNS)).splitlines()[0]


def test_other_recorded_metrics_are_reported_for_the_chosen_model():
    t = build_table(RUNS, "im", metric="metrics/source_val_acc")
    assert rows_of(t)["dann [a]"]["selected_mean"] == pytest.approx((70.0 + 80.0) / 2)
    assert "published_1nn" not in t.rows  # the 1-NN reference is a target accuracy
    assert "published_1nn" in build_table(RUNS).rows


def test_a_loss_metric_is_reported_with_its_lowest_value_as_the_bound_and_significant_digits():
    losses = [record("amazon->webcam", seed, "a", [(100, 40.0, 0.1, 2.0), (200, 50.0, 0.5, 1.0)]) for seed in (0, 1)]
    for r, values in zip(losses, [(0.0042, 0.0031), (0.0050, 0.0061)]):
        for h, v in zip(r["history"], values):
            h["loss/reconstruction"] = v
    t = build_table(losses, metric="loss/reconstruction")
    (row,) = t.rows.to_dict("records")
    assert row["selected_mean"] == pytest.approx((0.0031 + 0.0061) / 2)  # the last points
    assert row["oracle_best_mean"] == pytest.approx((0.0031 + 0.0050) / 2)  # each run's lowest, not its highest
    text = render_table(t)
    assert "the lowest loss/reconstruction" in text and "oracle-best (lower bound)" in text
    assert f"| {0.0046:.4g} ± {np.std([0.0031, 0.0061], ddof=1):.4g} " in text  # not 0.00 ± 0.00
    pretrain = {**record("amazon->webcam", 0, "p", [(100, 0, 0, 0)], method="dae"), "final": {"step": 100, "loss/total": 1.0}}
    pretrain["history"] = [pretrain["final"]]
    text = render_table(build_table([*RUNS, pretrain]))
    assert "Not in the table (never averaged): 1 run(s), 1 finished without oracle/target_acc" in text


def test_unknown_selection_names_what_is_recorded():
    with pytest.raises(ConfigError, match="unknown validator 'snd': the runs recorded entropy, im"):
        build_table(RUNS, "snd")
    with pytest.raises(ConfigError, match="picks no configuration"):
        make_selection("last", {}, "configs")
    with pytest.raises(ConfigError, match="no run recorded 'metrics/nope_acc'"):
        build_table(RUNS, "last", metric="metrics/nope_acc")


def test_csv_has_numeric_columns_and_the_selection():
    t = build_table(RUNS, "im")
    frame = pd.read_csv(io.StringIO(render_table(t, "csv")))
    assert {"selection", "mean", "std", "n", "last_mean", "oracle_best_mean", "experiment"} <= set(frame.columns)
    assert frame["mean"].dtype == float and frame["n"].dtype == int
    assert not frame.astype(str).apply(lambda col: col.str.contains("±")).any().any()
    assert set(frame["selection"]) == {"im"}


def test_pivot_has_a_mean_row_with_the_std_over_seeds_of_task_means():
    runs = [record(task, seed, "a", [(100, acc, 0.1, 1.0)]) for task, seed, acc in
            [("amazon->webcam", 0, 40.0), ("amazon->webcam", 1, 50.0), ("webcam->dslr", 0, 70.0),
             ("webcam->dslr", 1, 90.0)]]
    runs += [record("amazon->webcam", s, "z", [(100, 20.0 + s, 0.1, 1.0)], method="source_only") for s in (0, 1)]
    t = build_table(runs)
    md = render_pivot(t, methods=["source_only", "dann"])
    lines = md.splitlines()
    assert [c.strip() for c in lines[2].split("|")[1:5]] == ["task", "1-NN (JDA)", "source_only", "dann"]
    mean_line = [line for line in lines if "**mean**" in line][0]
    per_seed = [np.mean([40, 70]), np.mean([50, 90])]
    assert f"**{np.mean([45, 80]):.1f}** ± {np.std(per_seed, ddof=1):.1f}" in mean_line
    assert "–" in mean_line  # source_only has no webcam->dslr: no mean
    frame = pd.read_csv(io.StringIO(render_pivot(t, "csv")))
    assert list(frame["task"]) == ["amazon->webcam", "webcam->dslr", "mean"]
    assert frame.loc[2, "dann mean"] == pytest.approx(62.5) and frame.loc[0, "published_1nn"] == 29.83
    data = json.loads(render_pivot(t, "json"))
    assert data["rows"][0]["methods"]["dann"] == {"mean": 45.0, "std": pytest.approx(np.std([40, 50], ddof=1)),
                                                   "n": 2}
    with pytest.raises(ConfigError, match="no results for method"):
        render_pivot(t, methods=["mmd"])


def test_published_column_only_where_the_dataset_has_one():
    t = build_table([record("books->dvd", 0, "a", [(1, 70.0, 0.1, 1.0)], dataset="amazon_review_400")])
    assert "1-NN" not in render_pivot(t) and "published" not in render_table(t)


def test_weighted_spearman_by_hand_and_against_scipy_with_equal_weights():
    # with equal scores' ranks mapped to weight 1 (power 0) it is Spearman's rho
    rng = np.random.default_rng(1)
    s, a = rng.normal(size=30), rng.normal(size=30)
    assert weighted_spearman(s, a, power=0) == pytest.approx(spearmanr(s, a).statistic, abs=1e-12)
    # three points: dense ranks 1, 2, 3 -> w = 1/9, 4/9, 1
    w = np.array([1, 4, 9]) / 9
    rs = np.cumsum(w)  # weighted ranks of the scores (no ties): w1, w1 + w2, w1 + w2 + w3
    acc = np.array([10.0, 30.0, 20.0])
    ra = np.array([w[0], w[0] + w[2] + w[1], w[0] + w[2]])  # accuracies sort as 10 < 20 < 30
    def wcorr(x, y):
        mx, my = np.average(x, weights=w), np.average(y, weights=w)
        return np.sum(w * (x - mx) * (y - my)) / np.sqrt(np.sum(w * (x - mx) ** 2) * np.sum(w * (y - my) ** 2))
    assert weighted_spearman([1.0, 2.0, 3.0], acc) == pytest.approx(wcorr(rs, ra), abs=1e-12)
    assert weighted_spearman([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert weighted_spearman([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]) < -0.99  # not -1: the weights follow the scores
    # ties: the weighted rank is the weight below plus (c + 1) / 2 times the mean weight of the tie
    assert weighted_spearman([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(
        wcorr_tied := _tied_reference(), abs=1e-12) and -1 <= wcorr_tied <= 1


def _tied_reference():
    w = np.array([0.25, 0.25, 1.0])  # dense ranks 1, 1, 2 -> (1/2)^2, (1/2)^2, 1
    rs = np.array([0.0 + 1.5 * 0.25, 0.0 + 1.5 * 0.25, 0.5 + 1.0])
    ra = np.cumsum(w)
    mx, my = np.average(rs, weights=w), np.average(ra, weights=w)
    return np.sum(w * (rs - mx) * (ra - my)) / np.sqrt(np.sum(w * (rs - mx) ** 2) * np.sum(w * (ra - my) ** 2))


def test_tables_read_recorded_runs_and_list_unfinished_ones_never_averaged(fast_config, tmp_path, capsys):
    results = run_experiment(fast_config("experiment.seeds=[0, 1]", "experiment.name='sel'"))
    unfinished = tmp_path / "runs/sel/webcam_to_dslr/source_only/seed2-20990101-000000"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"experiment": {"name": "sel", "method": "source_only"},
                                                        "data": {"dataset": "office_caltech10_surf",
                                                                 "tasks": ["webcam->dslr"]}}))
    failed = tmp_path / "runs/sel/webcam_to_dslr/source_only/seed3-20990101-000000"
    failed.mkdir()
    (failed / "config.json").write_text((unfinished / "config.json").read_text())
    (failed / "status.json").write_text(json.dumps({"state": "failed"}))
    runs = read_runs(tmp_path / "runs")
    assert sorted(r.status for r in runs) == ["failed", "finished", "finished", "unfinished"]
    frame = runs_frame(runs)
    assert list(frame.columns[:8]) == ["experiment", "dataset", "task", "method", "config_id", "seed", "status",
                                       "run_dir"]
    assert (frame["experiment"] == "sel").all() and sorted(frame["seed"]) == [0, 1, 2, 3]
    evals = evaluations_frame(runs)
    assert len(evals) == 2 * 2 and "validator/im" in evals  # 2 runs x 2 evaluation points
    assert main(["select", str(tmp_path / "runs"), "--validator", "im"]) == 0
    out = capsys.readouterr().out
    accs = [max(r["history"], key=lambda h: h["validator/im"])["oracle/target_acc"] for r in results]
    assert f"{np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f}" in out
    assert "| 2 " in out  # two seeds averaged, the other two listed below
    assert "Not in the table (never averaged): 2 run(s)" in out and "failed" in out and str(unfinished) in out
    assert main(["table", str(tmp_path / "runs"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][0]["experiment"] == "sel" and data["rows"][0]["n"] == 2
    assert sorted(x["status"] for x in data["left_out"]) == ["failed", "unfinished"]


def test_run_objects_and_result_dicts_give_the_same_table():
    as_runs = [Run(r["run_dir"], "finished", "e", r, None) for r in RUNS]
    assert render_table(build_table(as_runs, "im")) == render_table(build_table(RUNS, "im"))
