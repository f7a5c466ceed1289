"""Different target tasks: class subsets built exactly, a head per label set, init_from by class
names, the UDA check, feature transfer and tables with class subsets."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tladapt.config import ConfigError
from tladapt.data import Domain, check_task
from tladapt.data.datasets import _decoded, load_domain
from tladapt.data.tasks import class_selection, load_task, select_classes, split_task
from tladapt.experiment import prepare, run_experiment
from tladapt.tables import build_table, render_table
from tladapt.transfer import run_feature_transfer, task_splits

from helpers import make_trainer

LOW, HIGH = "data.source_classes=[0, 1, 2, 3, 4]", "data.target_classes=[5, 6, 7, 8, 9]"


# ---------------------------------------------------------------- class subsets, built exactly
@pytest.mark.parametrize("dataset, domain, selection, wanted", [
    ("mnist_usps_jda", "mnist", [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]),
    ("mnist_usps_jda", "usps", ["9", "5", 7, "6", 8], [5, 6, 7, 8, 9]),  # names, indices, any order
    ("coil20_jda", "coil2", [f"obj{k}" for k in range(11, 21)], list(range(10, 20))),
    ("coil20_jda", "coil1", list(range(10)), list(range(10))),
])
def test_class_subsets_keep_exactly_the_selected_rows_relabelled_in_dataset_order(dataset, domain, selection, wanted):
    full = load_domain(dataset, domain)
    sub = select_classes(full, selection)
    _, raw_labels = _decoded(dataset, domain)  # the stored labels, read independently of the Domain
    rows = np.flatnonzero(np.isin(raw_labels, wanted))  # an independent selection of the same rows
    assert len(sub) == len(rows) and len(rows) > 0
    assert torch.equal(sub.x, full.x[torch.from_numpy(rows)])
    expected = np.searchsorted(np.array(wanted), raw_labels[rows])  # class wanted[j] -> label j
    assert sub.y.tolist() == expected.tolist()
    assert sub.classes == tuple(full.classes[k] for k in wanted)
    assert sub.y.dtype == torch.int64


def test_class_selection_errors_name_the_key():
    classes = ("a", "b", "c")
    assert class_selection(classes, [], "k") == [0, 1, 2]
    assert class_selection(classes, ["c", 0], "k") == [0, 2]
    with pytest.raises(ConfigError, match=r"data.source_classes: unknown class 'z': expected a name of a, b, c or an index 0..2"):
        class_selection(classes, ["z"], "data.source_classes")
    with pytest.raises(ConfigError, match="unknown class 3"):
        class_selection(classes, [3], "k")
    with pytest.raises(ConfigError, match="class 'b' is selected twice"):
        class_selection(classes, ["b", 1], "k")


def test_unknown_classes_and_a_uda_target_with_other_classes_fail_before_any_run(fast_config, tmp_path):
    with pytest.raises(ConfigError, match="data.target_classes: unknown class 'monitr'"):
        run_experiment(fast_config("data.target_classes=['monitr']"))
    with pytest.raises(ConfigError, match="data.target_classes has classes outside data.source_classes "
                                          r"\(laptop_computer, .*unsupervised DA needs"):
        run_experiment(fast_config(LOW, HIGH))
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_check_task_keeps_the_uda_rule_and_allows_a_labelled_different_task():
    x = torch.zeros(6, 2)
    src = Domain("s", x, torch.arange(6) % 3, ("a", "b", "c"))
    other = Domain("t", x, torch.arange(6) % 2, ("d", "e"))
    with pytest.raises(ValueError, match=r"target domain 't' has classes outside the source class set \('d', 'e'\)"):
        check_task(src, other)
    check_task(src, other, labelled_target=True)
    with pytest.raises(ValueError, match="source domain 's' has no labels"):
        check_task(src.unlabelled(), other, labelled_target=True)
    check_task(src.unlabelled(), other, source_labels=False)


def test_a_target_subset_of_the_source_classes_is_partial_da_in_the_source_label_space(fast_config):
    config = fast_config("data.target_classes=['mug', 'bike']")
    splits = task_splits(config, "webcam->dslr", 0)
    dslr = load_domain("office_caltech10_surf", "dslr")
    assert splits.shared_head and splits.target_rest.classes == dslr.classes
    keep = (dslr.y == 1) | (dslr.y == 8)  # bike = 1, mug = 8 in the full class list
    assert torch.equal(splits.target_rest.y, dslr.y[keep])  # labels are the source's indices
    t = make_trainer(config)
    assert t.head.out_features == 10 and t.source_head is t.head and "source_head" not in t.modules
    [r] = run_experiment(config)
    assert 0 <= r["final"]["oracle/target_acc"] <= 100


# ---------------------------------------------------------------- a head for the target task
def test_a_different_target_task_gets_its_own_head_trained_by_its_labels(fast_config):
    t = make_trainer(fast_config(LOW, HIGH, "data.target_labels_per_class=3"))
    assert t.head.out_features == 5 and t.source_head.out_features == 5 and t.source_head is not t.head
    assert t.classes == {"head": ("laptop_computer", "monitor", "mouse", "mug", "projector"),
                         "source_head": ("back_pack", "bike", "calculator", "headphones", "keyboard")}
    assert t.target_labelled.y.unique().tolist() == [0, 1, 2, 3, 4] and len(t.target_labelled) == 15
    # the source term trains the source head only, the labelled-target term the target head only
    t.start()
    batch = t.pipeline.next()
    terms = t.losses(batch, t.forward(batch))
    grads = torch.autograd.grad(terms["source"].value, [t.head.weight, t.source_head.weight], allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0
    grads = torch.autograd.grad(terms["target"].value, [t.head.weight, t.source_head.weight], allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1] is None
    results = t.fit()
    dslr = load_domain("office_caltech10_surf", "dslr")
    assert len(t._target_labels) == int((dslr.y >= 5).sum()) - 15  # the test rest: target classes only
    assert {"oracle/target_acc", "metrics/source_val_acc"} <= set(results["final"])
    assert results["classes"]["head"][0] == "laptop_computer"


def test_init_from_loads_the_backbone_and_only_heads_of_the_same_classes(fast_config):
    [src] = run_experiment(fast_config(LOW, "data.target_classes=[0, 1, 2, 3, 4]"))  # a DA run on classes 0-4
    saved = torch.load(Path(src["run_dir"]) / "checkpoint.pt", weights_only=True)
    assert saved["classes"] == {"head": ["back_pack", "bike", "calculator", "headphones", "keyboard"]}
    new_task = make_trainer(fast_config(LOW, HIGH, "data.target_labels_per_class=3", f"model.init_from='{src['run_dir']}'"))
    assert torch.equal(new_task.backbone[0].weight, saved["modules"]["backbone.0.weight"])
    assert not torch.equal(new_task.head.weight, saved["modules"]["head.weight"])  # a fresh head for classes 5-9
    assert torch.equal(new_task.source_head.weight, saved["modules"]["head.weight"])  # same classes: loaded
    assert new_task.init_report["head"].startswith("new") and new_task.init_report["source_head"].startswith("head of")
    same_task = make_trainer(fast_config(LOW, "data.target_classes=[0, 1, 2, 3, 4]", f"model.init_from='{src['run_dir']}'"))
    assert torch.equal(same_task.head.weight, saved["modules"]["head.weight"])
    # fine-tuning the new task: source loss off, the new head and the backbone train
    [r] = run_experiment(fast_config(LOW, HIGH, "data.target_labels_per_class=3", "trainer.source_weight=0",
                                     f"model.init_from='{src['run_dir']}'", "plugins.finetune.init='source'"))
    assert r["init_from"]["head"].startswith("new") and r["finetune"]["init_from"] == src["run_dir"]


def test_feature_transfer_and_tables_handle_a_different_target_task(fast_config):
    [src] = run_experiment(fast_config(LOW, "data.target_classes=[0, 1, 2, 3, 4]"))
    config = fast_config(LOW, HIGH, "data.target_labels_per_class=2")
    [r] = run_feature_transfer(config, src["run_dir"], "backbone")
    assert r["transfer"]["n_train"] == 10  # 2 per target class, target classes only
    splits = task_splits(config, "webcam->dslr", 0)
    assert r["transfer"]["n_test"] == len(splits.target_rest) and not splits.shared_head
    with pytest.raises(ConfigError, match="train_on='source\\+target' needs one label space"):
        run_feature_transfer(config, src["run_dir"], "backbone", train_on="source+target")
    table = render_table(build_table([src, r]))
    assert "59.24" not in table  # the published full-task 1-NN number is not shown beside class subsets
    [full] = run_experiment(fast_config())
    assert "59.24" in render_table(build_table([full]))


@pytest.mark.slow
def test_bundled_digits_0_4_to_usps_5_9_runs_from_its_config(tmp_path):
    from tladapt.config import load_config

    base = Path(__file__).resolve().parents[1] / "experiments" / "taxonomy"
    over = [f"experiment.runs_dir='{tmp_path}'", "trainer.steps=20", "trainer.eval_every=20", "trainer.progress=false"]
    [src] = run_experiment(load_config(base / "digits_low_source.toml", over))
    [tgt] = run_experiment(load_config(base / "digits_high_finetune.toml",
                                       over + [f"model.init_from='{src['run_dir']}'", "data.target_labels_per_class=3",
                                                "experiment.seeds=[0]"]))
    assert tgt["classes"]["head"] == ["5", "6", "7", "8", "9"] and tgt["init_from"]["head"].startswith("new")
    usps = load_domain("mnist_usps_jda", "usps")
    n_high = int((usps.y >= 5).sum())
    assert json.loads((Path(tgt["run_dir"]) / "config.json").read_text())["data"]["target_classes"] == [5, 6, 7, 8, 9]
    assert len(task_splits(load_config(base / "digits_high_finetune.toml", over + ["data.target_labels_per_class=3"]),
                           "mnist->usps", 0).target_rest) == n_high - 15


# ---------------------------------------------------------------- user datasets with their own class lists
@pytest.fixture
def two_label_sets(tmp_path, monkeypatch):
    (tmp_path / "label_sets.py").write_text(textwrap.dedent("""
        import torch
        from tladapt.data import Domain
        def load(name):
            g = torch.Generator().manual_seed(len(name))
            classes = {"animals": ("cat", "dog", "cow"), "vehicles": ("car", "bus")}[name]
            return Domain(name, torch.randn(60, 6, generator=g), torch.arange(60) % len(classes), classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "label_sets:load"


def test_a_user_dataset_whose_domains_have_different_class_lists(fast_config, two_label_sets):
    over = (f"data.dataset='{two_label_sets}'", "data.tasks=['animals->vehicles']", "trainer.batch_size=8")
    with pytest.raises(ValueError, match="target domain 'vehicles' has classes outside the source class set"):
        run_experiment(fast_config(*over))
    t = make_trainer(fast_config(*over, "data.target_labels_per_class=4"), task=("animals", "vehicles"))
    assert t.head.out_features == 2 and t.source_head.out_features == 3
    source, target = load_task(t.config.data, "animals->vehicles")
    splits = split_task(t.config.data, source, target, 0)
    assert not splits.shared_head and splits.target_labelled.classes == ("car", "bus")


# ---------------------------------------------------------------- an unlabelled source
def test_an_unlabelled_source_drops_its_labels_before_the_split_and_needs_a_plugin_loss(fast_config):
    config = fast_config("data.source_labels=false")
    with pytest.raises(ConfigError, match=r"nothing to train: data.source_labels = false .* no active plugin has a "
                                          r"loss \(tladapt_losses\)"):
        prepare(config)  # before any run; the run checks again at a step (a plugin may return no term)
    t = make_trainer(config, prepared=False)
    assert t.source.y is None and t.source_val.y is None and t.classes == {"head": None}
    # the split is a plain seeded split of the row indices: no stratification by the hidden labels
    webcam = load_domain("office_caltech10_surf", "webcam")
    from sklearn.model_selection import train_test_split
    train, _ = train_test_split(np.arange(len(webcam)), test_size=0.1, random_state=0)
    assert torch.equal(t.source.x, webcam.x[torch.from_numpy(np.sort(train))])
    t.start()
    batch = t.pipeline.next()
    assert batch.y_s is None
    with pytest.raises(ConfigError, match="nothing to train: data.source_labels = false"):
        t.losses(batch, t.forward(batch))
    # with labelled target samples the head trains on them alone and is evaluated
    [r] = run_experiment(fast_config("data.source_labels=false", "data.target_labels_per_class=3"))
    assert "oracle/target_acc" in r["final"] and "metrics/source_val_acc" not in r["final"]
