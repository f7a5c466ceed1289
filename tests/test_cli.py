"""The tladapt command as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tladapt.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_plugins_lists_entry_point_plugins_with_hooks_and_options(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "dann  (entry point of tladapt" in out
    assert "hooks: tladapt_losses, tladapt_setup" in out
    assert "gamma" in out and "10.0" in out and "steepness" in out


def test_plugins_includes_p_plugins(capsys):
    assert main(["plugins", "-p", str(ROOT / "docs/examples/entropy_min.py")]) == 0
    out = capsys.readouterr().out
    assert "entropy_min  (-p " in out and "coefficient of the target entropy term" in out


def test_datasets_lists_every_bundled_domain(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("office_caltech10_surf", "mnist_usps_jda", "coil20_jda", "amazon_review_400", "digits"):
        assert name in out
    assert "| office_caltech10_surf | webcam      |   295 | (800,)" in out


def test_run_prints_the_table_with_published_1nn(tmp_path, capsys):
    argv = ["run", "--runs-dir", str(tmp_path), "--set", "trainer.steps=10", "--set", "trainer.eval_every=10",
            "--set", "trainer.progress=false", "--set", "model.hidden=[16]"]
    assert main(argv) == 0  # the bundled default experiment, shortened
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")[2:5]] for line in out.splitlines() if line.startswith("| default")]
    assert rows == [["mnist_usps_jda", "usps->mnist", "source_only"], ["mnist_usps_jda", "usps->mnist", "dann"],
                    ["office_caltech10_surf", "amazon->webcam", "source_only"],
                    ["office_caltech10_surf", "amazon->webcam", "dann"]]
    assert "44.70" in out and "29.83" in out  # JDA Table 2's 1-NN for U->M and A->W
    assert len(list(tmp_path.rglob("results.json"))) == 2 * 2 * 3  # tasks x methods x seeds
    assert main(["table", str(tmp_path)]) == 0
    assert "source_only" in capsys.readouterr().out


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["run", "--set", "trainer.optimizer='sdg'", "--runs-dir", str(tmp_path)]) == 2
    assert "tladapt: error: invalid config value: trainer.optimizer" in capsys.readouterr().err
    assert main(["run", "-p", "no_such_module_xyz"]) == 2
    assert "-p no_such_module_xyz: cannot import" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was started


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "tladapt.cli", "--help"], capture_output=True, text=True, check=True)
    assert "run" in out.stdout and "plugins" in out.stdout


def test_every_hook_is_documented():
    from tladapt import hookspecs

    page = (ROOT / "docs" / "hooks.md").read_text()
    names = [n for n in dir(hookspecs) if n.startswith("tladapt_")]
    assert len(names) == 13
    for name in names:
        assert f"## `{name}(" in page


def test_plugin_contract_errors_are_clean_and_come_before_any_run(tmp_path, capsys):
    bad = tmp_path / "misspelt.py"
    bad.write_text("import tladapt\n\nclass Misspelt:\n    @tladapt.hookimpl\n"
                   "    def tladapt_loss(self, trainer):\n        return {}\n")
    runs = tmp_path / "runs"
    assert main(["run", "-p", str(bad), "--runs-dir", str(runs)]) == 2
    assert "plugin 'misspelt' does not fit the hook contract: unknown hook 'tladapt_loss'" in capsys.readouterr().err
    assert not runs.exists()  # nothing was started


@pytest.mark.parametrize("text, message", [
    ("[plugins.dann]\ndropout = 1.5\n", "plugins.dann.dropout must be >= 0, < 1, got 1.5"),
    ("[trainer]\nlr = nan\n", "trainer.lr must be a finite number, got nan"),
])
def test_a_second_config_with_an_error_fails_before_the_first_trains(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    runs = tmp_path / "runs"
    assert main(["run", str(ROOT / "tladapt/configs/default.toml"), str(bad), "--runs-dir", str(runs)]) == 2
    assert message in capsys.readouterr().err
    assert not runs.exists()


def test_divergence_exits_1_with_a_message(tmp_path, capsys):
    argv = ["run", "--runs-dir", str(tmp_path), "--set", "trainer.lr=1e30", "--set", "trainer.schedule='constant'",
            "--set", "trainer.steps=30", "--set", "experiment.seeds=[0]", "--set", "data.tasks=['webcam->dslr']",
            str(ROOT / "tladapt/configs/default.toml")]
    assert main(argv) == 1
    assert "became non-finite" in capsys.readouterr().err


@pytest.mark.parametrize("batch_runs", [1, 2])
def test_keep_going_trains_the_runs_after_a_failed_one_and_lists_it(tmp_path, capsys, batch_runs):
    diverging = tmp_path / "diverging.toml"
    diverging.write_text(f'extends = "{ROOT / "tladapt/configs/default.toml"}"\n[experiment]\nmethod = "diverging"\n'
                         '[trainer]\nlr = 1e30\nschedule = "constant"\n')
    runs = tmp_path / "runs"
    argv = ["run", str(diverging), str(ROOT / "tladapt/configs/default.toml"), "--runs-dir", str(runs),
            "--set", "trainer.steps=30", "--set", "trainer.eval_every=30", "--set", "trainer.progress=false",
            "--set", "model.hidden=[16]", "--set", "experiment.seeds=[0, 1]", "--set", f"trainer.batch_runs={batch_runs}"]
    failed = lambda: {p.parent for p in runs.glob("default/amazon_to_webcam/diverging/*/traceback.txt")}
    assert main(argv) == 1  # without --keep-going the first divergence stops the command
    assert len(failed()) == batch_runs and not (runs / "default/amazon_to_webcam/source_only").exists()
    before = failed()
    capsys.readouterr()

    assert main(argv + ["--keep-going"]) == 1  # still a failure, but every other run trained
    out, err = capsys.readouterr()
    now = failed() - before
    assert len(now) == 2  # both seeds failed, one by one or as one batch
    for run_dir in now:
        assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
        assert f"{run_dir}: TrainingDiverged" in err
    assert "2 run(s) failed" in err and err.count("became non-finite") == 2
    finished = list(runs.glob("default/amazon_to_webcam/source_only/*/results.json"))
    assert len(finished) == 2 and "source_only" in out and "diverging" not in out
    assert main(["run", "--resume", str(runs), "--keep-going"]) == 1  # every failed run retried, each fails again
    assert f"{len(failed())} run(s) failed" in capsys.readouterr().err

    assert main(argv[:-2] + ["--keep-going", "--set", "trainer.lr=0.01"]) == 0  # nothing failed: status 0


def test_table_keeps_configs_apart_and_counts_each_seed_once(tmp_path, capsys):
    from tladapt.tables import build_table, render_table

    def run(seed, acc, config_id, stamp):
        return {"dataset": "d", "task": "a->b", "method": "m", "seed": seed, "config_id": config_id,
                "final": {"oracle/target_acc": acc}, "run_dir": f"runs/x/t/m/seed{seed}-{stamp}"}

    table = render_table(build_table([run(0, 50.0, "aaaa", 1), run(0, 60.0, "aaaa", 2), run(1, 70.0, "aaaa", 1),
                                      run(0, 10.0, "bbbb", 1)]))
    rows = {line.split("|")[4].strip(): line for line in table.splitlines()[4:]}
    assert set(rows) == {"m [aaaa]", "m [bbbb]"}
    assert "65.00 ± 7.07" in rows["m [aaaa]"] and "| 2 " in rows["m [aaaa]"]  # seed 0's latest run: 60
    assert "10.00" in rows["m [bbbb]"]


@pytest.mark.parametrize("config, loss", [("selftaught_digits_dae.toml", "loss/reconstruction"),
                                          ("selftaught_digits_simclr.toml", "loss/contrastive")])
def test_a_pretraining_run_ends_with_its_runs_what_they_recorded_and_the_next_step(tmp_path, capsys, config, loss):
    # the documented self-taught step 1 (no target head, so no oracle/target_acc), at 6 steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = ["run", str(ROOT / "experiments/taxonomy" / config), "--runs-dir", str(tmp_path), "--set", "trainer.steps=6",
            "--set", "trainer.log_every=3", "--set", "trainer.eval_every=3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    [run_dir] = [p.parent for p in tmp_path.rglob("results.json")]
    results = json.loads((run_dir / "results.json").read_text())
    events = EventAccumulator(str(run_dir))
    events.Reload()
    logged = {(e.step, e.value) for e in events.Scalars(loss)}
    # each evaluation record holds the training scalars TensorBoard got at its step
    assert [(h["step"], h[loss]) for h in results["history"]] == [(s, pytest.approx(v)) for s, v in sorted(logged)]
    assert [h["step"] for h in results["history"]] == [3, 6] and "oracle/target_acc" not in results["final"]
    assert f"  {run_dir}" in out.splitlines()  # the run directory the next step needs
    row = next(line for line in out.splitlines() if line.startswith("| self_taught"))
    assert f"{results['final'][loss]:.4g}" in [c.strip() for c in row.split("|")]
    assert "--init-from RUN_DIR" in out and f"tladapt table {tmp_path / 'self_taught'} --metric {loss}" in out
    assert main(["table", str(tmp_path), "--metric", loss]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| self_taught"))
    assert row.split("|")[5].strip() == f"{results['final'][loss]:.4g}"
    assert main(["table", str(tmp_path)]) == 2  # no target accuracy: the error names the tags to choose from
    assert f"recorded tags are {', '.join(sorted(k for k in results['final'] if '/' in k))} (tabulate one with " \
           "tladapt table --metric TAG)" in capsys.readouterr().err
