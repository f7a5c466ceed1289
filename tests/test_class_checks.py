"""Class selections and multi-task configs checked before any work: same-domain tasks that would
test on training samples, one-class heads and clusterings, multi-task runs of one task or with
bad extra domains, nothing to train; the labelled/test counts a run's numbers rest on."""

import re
from pathlib import Path

import pytest
import torch

from tladapt.cli import main
from tladapt.clustering import cluster_task
from tladapt.config import ConfigError, load_config
from tladapt.data.datasets import DATASETS, load_domain
from tladapt.data.tasks import load_task
from tladapt.experiment import prepare, run_experiment

TAXONOMY = Path(__file__).resolve().parents[1] / "experiments" / "taxonomy"
SURF = DATASETS["office_caltech10_surf"].classes


def refused_before_any_run(config, match):
    """``run_experiment(config)`` raises a ConfigError matching ``match`` and makes no run directory."""
    with pytest.raises(ConfigError, match=match) as raised:
        run_experiment(config)
    assert not Path(config.experiment.runs_dir).exists()
    return str(raised.value)


# ---------------------------------------------------------------- #2: one domain, shared classes
@pytest.mark.parametrize("source, target, shared", [
    ("[0, 1, 2, 3, 4]", "[0, 1]", SURF[:2]),  # a target subset of the source's classes
    ("[0, 1, 2, 3, 4, 5]", "[4, 5, 6, 7, 8, 9]", SURF[4:6]),  # overlapping subsets
    ("[]", str(list(SURF)).replace('"', "'"), SURF),  # every class, written two ways
    (str([SURF[3], 1, 2]).replace('"', "'"), "[3]", SURF[3:4]),  # a name on one side, its index on the other
])
def test_a_same_domain_task_whose_classes_overlap_is_refused_before_any_run(fast_config, source, target, shared):
    config = fast_config("data.tasks=['webcam->webcam']", f"data.source_classes={source}",
                         f"data.target_classes={target}", "data.target_labels_per_class=3")
    message = refused_before_any_run(config, r"'webcam->webcam': the source and the target are the same domain "
                                             rf"and share {len(shared)} of their classes \({', '.join(shared)};")
    assert "data.allow_same_domain = true" in message


def test_the_taxonomy_configs_refuse_a_same_domain_overlap(tmp_path):
    for name, classes in (("digits_low_source.toml", ("[0, 1, 2, 3, 4]", "[0, 1]")),
                          ("mtl_digits.toml", ("[0, 1, 2, 3, 4, 5]", "[4, 5, 6, 7, 8, 9]"))):
        config = load_config(TAXONOMY / name, ["data.tasks=['mnist->mnist']", f"data.source_classes={classes[0]}",
                                               f"data.target_classes={classes[1]}",
                                               f"experiment.runs_dir='{tmp_path}'"])
        with pytest.raises(ConfigError, match="'mnist->mnist': the source and the target are the same domain"):
            prepare(config)


def test_one_domain_with_disjoint_classes_is_a_different_task_and_allow_same_domain_allows_overlap(fast_config):
    source, target = load_task(fast_config(
        "data.tasks=['webcam->webcam']", "data.source_classes=[0, 1, 2, 3, 4]",
        "data.target_classes=[5, 6, 7, 8, 9]").data, "webcam->webcam")
    assert not set(source.classes) & set(target.classes)
    assert len(source) + len(target) == len(load_domain("office_caltech10_surf", "webcam"))
    source, target = load_task(fast_config(
        "data.tasks=['webcam->webcam']", "data.source_classes=[0, 1, 2]", "data.target_classes=[1, 2]",
        "data.allow_same_domain=true").data, "webcam->webcam")
    assert target.classes == SURF[1:3]


# ---------------------------------------------------------------- #9: at least two classes
@pytest.mark.parametrize("overrides, match", [
    (("data.source_classes=[0, 1, 2, 3, 4]", "data.target_classes=[5]", "data.target_labels_per_class=3"),
     rf"data.target_classes: the target domain 'dslr' keeps 1 class \({SURF[5]}\): expected at least 2 classes"),
    (("data.source_classes=[1]", "data.target_classes=[1]"),
     rf"data.source_classes: the source domain 'webcam' keeps 1 class \({SURF[1]}\): expected at least 2"),
    (("data.source_labels=false", "data.target_classes=[4]", "data.target_labels_per_class=3"),
     r"data.target_classes: the target domain 'dslr' keeps 1 class"),
    (("data.target_labels_per_class=3", "model.shared_head=false", "plugins.multitask.domains=['amazon']",
      "plugins.multitask.classes=[0]"),
     rf"plugins.multitask.classes keeps 1 class of domain 'amazon' \({SURF[0]}\): expected at least 2"),
])
def test_a_head_of_one_class_is_refused_before_any_run(fast_config, overrides, match):
    refused_before_any_run(fast_config(*overrides), match)


def test_a_one_class_target_under_the_source_head_is_partial_da_and_runs(fast_config):
    [r] = run_experiment(fast_config("data.target_classes=[3]", "trainer.replacement=true", "trainer.steps=2",
                                     "trainer.eval_every=2"))
    assert r["classes"]["head"] == list(SURF)  # the source-sized head: 10-way predictions, not trivial


def test_clustering_a_one_class_target_is_refused_before_any_clustering(tmp_path, capsys):
    config = load_config(TAXONOMY / "cluster_surf.toml", ["data.source_classes=[0]", "data.target_classes=[0]"])
    with pytest.raises(ConfigError, match=r"data.target_classes: the target of task '.*' has 1 class .*"
                                          r"a clustering score needs at least 2 classes"):
        cluster_task(config, config.data.tasks[0], {"input": "input"}, ["kmeans"])
    assert main(["cluster", str(TAXONOMY / "cluster_surf.toml"), "--set", "data.source_classes=[0]",
                 "--set", "data.target_classes=[0]", "--method", "kmeans"]) == 2
    captured = capsys.readouterr()
    assert "needs at least 2 classes" in captured.err and "oracle NMI" not in captured.out


# ---------------------------------------------------------------- #4, #11, #14: multitask and plugins, before work
MTL = ("data.target_labels_per_class=3", "model.shared_head=false")


@pytest.mark.parametrize("option, match", [
    ("plugins.multitask.domains=['foo']", r"plugins.multitask.domains: unknown domain 'foo' for dataset "
                                          r"'office_caltech10_surf': expected one of amazon, caltech, dslr, webcam"),
    ("plugins.multitask.classes=['zzz']", r"plugins.multitask.classes: unknown class 'zzz'"),
    ("plugins.multitask.classes=[0, 0]", r"plugins.multitask.classes: class '.*' is selected twice"),
    ("plugins.multitask.classes=[99]", r"plugins.multitask.classes: unknown class 99"),
])
def test_bad_extra_domains_and_classes_are_refused_before_any_run(fast_config, option, match):
    refused_before_any_run(fast_config(*MTL, "plugins.multitask.domains=['amazon']", option), match)


def test_an_extra_domain_of_another_input_shape_is_refused_before_any_run(fast_config, tmp_path, monkeypatch):
    (tmp_path / "shapes.py").write_text(
        "import torch\nfrom tladapt.data import Domain\n"
        "def domains(name):\n"
        "    d = 3 if name == 'wide' else 2\n"
        "    return Domain(name, torch.randn(40, d), torch.arange(40) % 2, ('a', 'b'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = fast_config(*MTL, "data.dataset='shapes:domains'", "data.tasks=['s->t']", "trainer.batch_size=8",
                         "plugins.multitask.domains=['wide']")
    refused_before_any_run(config, r"plugins.multitask.domains: 'wide' has input shape \(3,\), expected the "
                                   r"task's \(2,\)")


@pytest.mark.parametrize("overrides, why", [
    (("data.target_labels_per_class=0",), r"1 \(source\): no target sample is labelled"),
    (("data.target_labels_per_class=0", "model.shared_head=true"), r"1 \(source\): no target sample is labelled"),
    (("data.source_labels=false",), r"1 \(target\): the source is unlabelled \(data.source_labels = false\)"),
])
def test_a_multitask_run_of_fewer_than_two_tasks_is_refused_before_any_run(tmp_path, overrides, why):
    config = load_config(TAXONOMY / "mtl_digits.toml", [*overrides, f"experiment.runs_dir='{tmp_path / 'runs'}'",
                                                        "experiment.seeds=[0]"])
    message = refused_before_any_run(config, r"plugins.multitask needs at least two labelled tasks, but this run "
                                             rf"has {why}")
    assert "set model.shared_head = false" not in message  # the config already has it (#14)


def test_an_unlabelled_source_run_with_no_loss_plugin_is_refused_before_any_run(tmp_path):
    config = load_config(TAXONOMY / "selftaught_digits_base.toml", [f"experiment.runs_dir='{tmp_path / 'runs'}'"])
    refused_before_any_run(config, r"nothing to train: data.source_labels = false and "
                                   r"data.target_labels_per_class = 0 leave no supervised loss, and no active plugin "
                                   r"has a loss \(tladapt_losses\)")


def test_the_uncertainty_recipe_of_the_multitask_configs_files_its_runs_as_its_own_method():
    for name in ("mtl_digits.toml", "mtl_surf.toml"):
        comment = next(line for line in (TAXONOMY / name).read_text().splitlines()
                       if "weighting='uncertainty'" in line)
        overrides = re.findall(r"--set (\S+)", comment)
        config, _ = prepare(load_config(TAXONOMY / name, overrides), tasks=False)
        assert config.plugins["multitask"]["weighting"] == "uncertainty"
        assert config.experiment.method == "mtl_uncertainty"


# ---------------------------------------------------------------- #10: the counts a number rests on
def test_results_record_the_labelled_and_test_counts_and_the_clamped_classes(fast_config):
    dslr = load_domain("office_caltech10_surf", "dslr")
    sizes = torch.bincount(dslr.y).tolist()
    [r] = run_experiment(fast_config("data.target_labels_per_class=1000", "trainer.replacement=true", "trainer.steps=2", "trainer.eval_every=2"))
    assert r["splits"] == {"source_train": 265, "source_val": 30, "target_labelled": sum(sizes) - 10,
                           "target_test": 10, "target_labels_per_class": 1000, "clamped": list(SURF)}
    assert 265 + 30 == len(load_domain("office_caltech10_surf", "webcam"))
    k = 9  # between the smallest and the largest dslr class
    assert min(sizes) <= k < max(sizes)
    [r] = run_experiment(fast_config(f"data.target_labels_per_class={k}", "trainer.steps=2", "trainer.eval_every=2"))
    assert r["splits"]["target_labelled"] == sum(min(k, n - 1) for n in sizes)
    assert r["splits"]["target_test"] == sum(sizes) - r["splits"]["target_labelled"]
    assert r["splits"]["clamped"] == [c for c, n in zip(SURF, sizes) if n - 1 < k]
    [r] = run_experiment(fast_config("trainer.steps=2", "trainer.eval_every=2"))
    assert r["splits"]["target_labelled"] is None and r["splits"]["clamped"] == []
    assert r["splits"]["target_test"] == len(dslr)


def test_tladapt_run_says_when_k_was_clamped(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(
        "[experiment]\nseeds = [0, 1]\n[data]\ndataset = 'office_caltech10_surf'\ntasks = ['webcam->dslr']\n"
        "[model]\nhidden = [32]\n[trainer]\nsteps = 2\neval_every = 2\nprogress = false\nreplacement = true\n")
    args = ["run", str(tmp_path / "c.toml"), "--runs-dir", str(tmp_path / "runs")]
    assert main([*args, "--set", "data.target_labels_per_class=1000"]) == 0
    err = capsys.readouterr().err
    labelled = len(load_domain("office_caltech10_surf", "dslr")) - 10
    notes = [line for line in err.splitlines() if line.startswith("tladapt: note:")]
    assert len(notes) == 1, err  # one per config and task, not per seed
    assert "data.target_labels_per_class = 1000 exceeds what 10 class(es) can give" in notes[0]
    assert f"{labelled} labelled, 10 test samples of oracle/target_acc" in notes[0]
    assert main([*args, "--set", "data.target_labels_per_class=3"]) == 0
    assert "tladapt: note:" not in capsys.readouterr().err
