"""The self_training plugin: pseudo-label loss, CBST thresholds, EMA teacher, refresh,
warm-up, options, edge cases, a real run and composition with DANN.

Expected values are computed here independently (by hand, ``math`` or NumPy), not
with the plugin's helpers.
"""

from __future__ import annotations

import importlib.metadata
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tladapt
from tladapt.config import ConfigError, build_config
from tladapt.data.datasets import load_domain
from tladapt.data.domain import Domain
from tladapt.data.pipeline import Batch, PairedPipeline
from tladapt.manager import PluginInfo, make_plugin_manager
from tladapt.trainer import Outputs, Trainer
from tladapt_plugins.dann import DANN
from tladapt_plugins.self_training import (
    PseudoLabelBank,
    SelfTraining,
    class_balanced_thresholds,
    ema_update,
    pseudo_label_loss,
    ramp_weight,
    select,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------------- helpers
class FakeTrainer:
    """The few trainer attributes the plugin reads, without data or an optimizer."""

    def __init__(self, n_target: int, num_classes: int, in_features: int = 4):
        self.device = torch.device("cpu")
        self.backbone = nn.Linear(in_features, 3)
        self.head = nn.Linear(3, num_classes)
        self.target = Domain("t", torch.randn(n_target, in_features), None, tuple(map(str, range(num_classes))))
        self.num_classes = num_classes
        self.step = 0
        self.logs: dict[str, list] = {}

    def log(self, tag, value):
        self.logs.setdefault(tag, []).append(value)


def make_plugin(trainer: FakeTrainer, **options) -> SelfTraining:
    plugin = SelfTraining(SelfTraining.Options(**options))
    plugin.tladapt_setup(trainer=trainer)
    plugin.tladapt_fit_start(trainer=trainer)
    return plugin


def step_inputs(trainer: FakeTrainer, logits_t: torch.Tensor, idx_t: torch.Tensor):
    b, k = logits_t.shape
    x_t = trainer.target.inputs(idx_t)
    batch = Batch(x_s=x_t, y_s=torch.zeros(b, dtype=torch.long), idx_s=idx_t, x_t=x_t, idx_t=idx_t)
    out = Outputs(torch.zeros(b, 3), torch.zeros(b, 3), torch.zeros(b, k), logits_t)
    return batch, out


def ce(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(z) for z in logits)) - logits[label]


def numpy_cbst(conf: np.ndarray, labels: np.ndarray, k: int, p: float, valid: np.ndarray) -> np.ndarray:
    """λ_c = the m-th largest confidence of class c, m = max(1, ceil(p n_c)) in exact arithmetic."""
    out = np.full(k, np.inf)
    for c in range(k):
        values = np.sort(conf[(labels == c) & valid])[::-1]
        if len(values):
            out[c] = values[max(1, math.ceil(Fraction(str(p)) * len(values))) - 1]
    return out


# ---------------------------------------------------------------------- the loss
def test_pseudo_label_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0], [0.5, -0.5, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 2, 1])
    mask = torch.tensor([True, False, True, True])
    loss = pseudo_label_loss(logits, labels, mask)
    expected = (ce([2, 0, -1], 0) + ce([1, 1, 3], 2) + ce([0.5, -0.5, 0], 1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # Gradient of the mean CE over the selected rows: (softmax - onehot) / 3; unselected row 0.
    p = torch.softmax(logits.detach(), 1)
    grad = (p - F.one_hot(labels, 3)) / 3
    grad[1] = 0
    torch.testing.assert_close(logits.grad, grad)


@pytest.mark.parametrize("num_classes", [2, 7])
def test_no_sample_selected_gives_zero_loss_and_zero_gradient(num_classes):
    torch.manual_seed(0)
    logits = torch.randn(6, num_classes, requires_grad=True)
    loss = pseudo_label_loss(logits, logits.argmax(1), torch.zeros(6, dtype=torch.bool))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))

    # Through the plugin: threshold 1.0 and unsaturated logits select nothing.
    trainer = FakeTrainer(n_target=10, num_classes=num_classes)
    plugin = make_plugin(trainer, threshold=1.0)
    logits_t = (0.1 * torch.randn(6, num_classes)).requires_grad_()
    batch, out = step_inputs(trainer, logits_t, torch.arange(6))
    terms = plugin.tladapt_losses(trainer=trainer, batch=batch, out=out)
    assert set(terms) == {"pseudo_label"}
    value = terms["pseudo_label"].value
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(logits_t.grad, torch.zeros_like(logits_t))
    assert trainer.logs["self_training/mask_rate"][0].item() == 0.0


def test_unselected_non_finite_ce_does_not_leak_nan():
    logits = torch.tensor([[0.0, -math.inf], [3.0, 0.0]], requires_grad=True)
    loss = pseudo_label_loss(logits, torch.tensor([1, 0]), torch.tensor([False, True]))
    assert loss.item() == pytest.approx(ce([3, 0], 0))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.equal(logits.grad[0], torch.zeros(2))


# ---------------------------------------------------------------------- selection
def test_class_balanced_thresholds_hand_case():
    conf = torch.tensor([0.6, 0.9, 0.7, 0.8, 0.55, 0.95, 0.4])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    # class 0: 0.9 0.8 0.7 0.6, p=0.5 -> m=2 -> 0.8; class 1: 0.95 0.55 0.4 -> m=ceil(1.5)=2 -> 0.55; class 2: none.
    thr = class_balanced_thresholds(conf, labels, 3, 0.5)
    assert thr[:2].tolist() == pytest.approx([0.8, 0.55])
    assert thr[2].item() == math.inf
    assert select(conf, labels, thr).tolist() == [False, True, False, True, True, True, False]


@pytest.mark.parametrize("num_classes,fraction", [(2, 0.5), (2, 0.3), (5, 0.2), (5, 1.0), (10, 0.35)])
def test_class_balanced_thresholds_match_numpy(num_classes, fraction):
    rng = np.random.default_rng(num_classes)
    n = 200
    labels = rng.integers(0, num_classes, n)
    labels[labels == num_classes - 1] = 0  # the last class is never predicted
    if num_classes == 2:  # exactly 10 predictions of class 1: 0.3 * 10 must count as 3, not 4
        labels = np.r_[np.zeros(n - 10, int), np.ones(10, int)]
    conf = rng.random(n).astype(np.float32)
    valid = rng.random(n) < 0.8
    got = class_balanced_thresholds(torch.from_numpy(conf), torch.from_numpy(labels), num_classes, fraction,
                                    torch.from_numpy(valid))
    want = numpy_cbst(conf, labels, num_classes, fraction, valid)
    assert got.dtype == torch.float32 and got.shape == (num_classes,)
    np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))
    assert not torch.isnan(got).any()
    if num_classes > 2:
        assert got[-1].item() == math.inf
    # The selected count per class is exactly max(1, ceil(p n_c)) (confidences are distinct).
    mask = select(torch.from_numpy(conf), torch.from_numpy(labels), got).numpy() & valid
    for c in range(num_classes):
        n_c = int(((labels == c) & valid).sum())
        assert mask[labels == c].sum() == (max(1, math.ceil(Fraction(str(fraction)) * n_c)) if n_c else 0)


def test_class_never_pseudo_labelled_keeps_statistics_finite():
    trainer = FakeTrainer(n_target=12, num_classes=4)
    plugin = make_plugin(trainer, selection="class_balanced", class_fraction=0.5)
    # Class 3 is never the argmax; class 2 never either: two silent classes.
    logits_t = torch.tensor([[3.0, 0, 0, -1], [0, 2.0, 0, -1], [2.5, 0, 0, -1], [0, 1.0, 0, -1],
                             [1.0, 0, 0, -1], [0, 4.0, 0, -1]], requires_grad=True)
    batch, out = step_inputs(trainer, logits_t, torch.tensor([0, 1, 2, 3, 4, 5]))
    terms = plugin.tladapt_losses(trainer=trainer, batch=batch, out=out)
    # Class 0 (3 samples: conf ranks 3.0 > 2.5 > 1.0) keeps ceil(1.5)=2, class 1 keeps 2 of 3.
    selected = [0, 2, 1, 5]
    expected = sum(ce(logits_t[i].tolist(), int(logits_t[i].argmax())) for i in selected) / 4
    assert terms["pseudo_label"].value.item() == pytest.approx(expected, rel=1e-6)
    assert trainer.logs["self_training/mask_rate"][0].item() == pytest.approx(4 / 6)
    thr = plugin.thresholds(4)
    assert thr[2].item() == math.inf and thr[3].item() == math.inf

    metrics = {}
    target_labels = torch.tensor([0, 1, 1, 1, 0, 1, 2, 2, 3, 3, 0, 0])
    plugin.tladapt_evaluate(trainer=trainer, metrics=metrics, target_labels=target_labels)
    assert [metrics[f"self_training/count_class_{k}"] for k in range(4)] == [2.0, 2.0, 0.0, 0.0]
    assert metrics["self_training/labelled_frac"] == pytest.approx(6 / 12)
    assert metrics["self_training/selected_frac"] == pytest.approx(4 / 12)
    # selected pseudo-labels 0,0,1,1 for indices 0,2,1,5; truth 0,1,1,1 -> 3 of 4 right.
    assert metrics["oracle/pseudo_label_acc"] == pytest.approx(75.0)
    # all stored: indices 0..5 labelled 0,1,0,1,0,1 vs truth 0,1,1,1,0,1 -> 5 of 6.
    assert metrics["oracle/pseudo_label_acc_all"] == pytest.approx(500 / 6)
    assert all(math.isfinite(v) for v in metrics.values())


def test_evaluate_before_any_pseudo_label_has_no_nan_and_no_accuracy():
    trainer = FakeTrainer(n_target=5, num_classes=3)
    plugin = make_plugin(trainer, selection="class_balanced")
    metrics = {}
    plugin.tladapt_evaluate(trainer=trainer, metrics=metrics, target_labels=torch.tensor([0, 1, 2, 0, 1]))
    assert "oracle/pseudo_label_acc" not in metrics and "oracle/pseudo_label_acc_all" not in metrics
    assert metrics["self_training/selected_frac"] == 0.0
    assert all(math.isfinite(v) for v in metrics.values())


# ---------------------------------------------------------------------- refresh, warm-up, entropy
def test_refresh_every_keeps_pseudo_labels_for_n_steps():
    trainer = FakeTrainer(n_target=4, num_classes=3)
    plugin = make_plugin(trainer, refresh_every=3, threshold=0.0)
    idx = torch.tensor([2, 0])
    a = torch.tensor([[5.0, 0, 0], [0, 5.0, 0]])   # labels 0, 1
    b = torch.tensor([[0, 0, 5.0], [0, 0, 5.0]])   # labels 2, 2
    for step, logits, want in [(0, a, [0, 1]), (1, b, [0, 1]), (2, b, [0, 1]), (3, b, [2, 2])]:
        trainer.step = step
        logits = logits.clone().requires_grad_()
        batch, out = step_inputs(trainer, logits, idx)
        loss = plugin.tladapt_losses(trainer=trainer, batch=batch, out=out)["pseudo_label"].value
        expected = (ce(logits[0].tolist(), want[0]) + ce(logits[1].tolist(), want[1])) / 2
        assert loss.item() == pytest.approx(expected, rel=1e-6), step
        assert plugin.bank.labels[idx].tolist() == want
    assert plugin.bank.stamp.tolist() == [3, -1, 3, -1]
    # Stored confidence is the softmax probability of the stored label.
    assert plugin.bank.confidence[2].item() == pytest.approx(math.exp(5) / (math.exp(5) + 2), rel=1e-6)


def test_bank_refresh_only_stale_samples():
    bank = PseudoLabelBank(5, "cpu")
    bank.refresh(torch.tensor([0, 1]), torch.tensor([3, 4]), torch.tensor([0.5, 0.6]), step=0, every=2)
    labels, conf = bank.refresh(torch.tensor([1, 2]), torch.tensor([1, 1]), torch.tensor([0.9, 0.9]), step=1, every=2)
    assert labels.tolist() == [4, 1] and conf.tolist() == pytest.approx([0.6, 0.9])
    assert bank.valid.tolist() == [True, True, True, False, False]
    assert bank.stamp.tolist() == [0, 0, 1, -1, -1]


def test_warmup_and_linear_ramp():
    assert [ramp_weight(s, 2, 4) for s in range(8)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [ramp_weight(s, 1, 0) for s in range(3)] == [0.0, 1.0, 1.0]
    trainer = FakeTrainer(n_target=4, num_classes=2)
    plugin = make_plugin(trainer, weight=0.5, warmup_steps=1, ramp_steps=2)
    got = []
    for step in range(4):
        trainer.step = step
        batch, out = step_inputs(trainer, torch.randn(2, 2), torch.tensor([0, 1]))
        got.append(plugin.tladapt_losses(trainer=trainer, batch=batch, out=out)["pseudo_label"].weight)
    assert got == [0.0, 0.25, 0.5, 0.5]


def test_entropy_term_only_when_weighted():
    trainer = FakeTrainer(n_target=4, num_classes=3)
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    batch, out = step_inputs(trainer, logits, torch.tensor([0, 1]))
    assert "entropy" not in make_plugin(trainer).tladapt_losses(trainer=trainer, batch=batch, out=out)
    terms = make_plugin(trainer, entropy_weight=0.3).tladapt_losses(trainer=trainer, batch=batch, out=out)
    p = [math.e / (math.e + 2), 1 / (math.e + 2), 1 / (math.e + 2)]
    h0 = -sum(q * math.log(q) for q in p)
    assert terms["entropy"].weight == 0.3
    assert terms["entropy"].value.item() == pytest.approx((h0 + math.log(3)) / 2, rel=1e-6)


# ---------------------------------------------------------------------- EMA teacher
def test_ema_update_equals_formula():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    before = [p.detach().clone() for p in teacher.parameters()]
    student(torch.randn(8, 3))  # changes the student's running statistics
    ema_update(teacher, student, 0.9)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s.detach())
    torch.testing.assert_close(teacher[1].running_mean, student[1].running_mean)
    assert teacher[1].num_batches_tracked.item() == 1
    ema_update(teacher, student, 0.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s.detach())


def config(steps: int, tmp_path, plugins: dict, dataset="office_caltech10_surf", task="webcam->dslr",
           **trainer) -> tladapt.config.Config:
    return build_config({
        "experiment": {"name": "st", "runs_dir": str(tmp_path)},
        "data": {"dataset": dataset, "tasks": [task]},
        "model": {"backbone": "mlp", "hidden": [64], "dropout": trainer.pop("dropout", 0.5)},
        "trainer": {"steps": steps, "device": "cpu", "progress": False, "checkpoint": False,
                    "eval_every": steps, "log_every": max(1, steps // 4), **trainer},
        "plugins": plugins,
    })


def make_trainer(cfg, tmp_path, extra=()) -> Trainer:
    active = [(PluginInfo("self_training", SelfTraining, "test"), cfg.plugins["self_training"])]
    active += [(PluginInfo(name, cls, "test"), cfg.plugins[name]) for name, cls in extra]
    pm = make_plugin_manager(sorted(active, key=lambda a: a[0].name))
    return Trainer(cfg, load_domain("office_caltech10_surf", "webcam"), load_domain("office_caltech10_surf", "dslr"),
                   pm, tmp_path / "run", seed=0)


def test_ema_teacher_is_plugin_state_not_optimised(tmp_path):
    cfg = config(3, tmp_path, {"self_training": {"teacher": "ema", "ema_decay": 0.8}}, dropout=0.0)
    trainer = make_trainer(cfg, tmp_path)
    plugin = trainer.pm.get_plugin("self_training")
    teacher = plugin.teacher
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert set(trainer.modules) == {"backbone", "head"}
    start = [p.detach().clone() for p in teacher.parameters()]
    trainer.pm.hook.tladapt_fit_start(trainer=trainer)
    pipeline = PairedPipeline(trainer.source, trainer.target, 32, 0)
    batch = pipeline.next()
    with torch.no_grad():  # the pseudo-labels come from the teacher on batch.x_t (eval mode)
        want = F.softmax(teacher(batch.x_t), 1).argmax(1)
    trainer.train_step(batch)
    assert torch.equal(plugin.bank.labels[batch.idx_t], want)
    trainer.pm.hook.tladapt_step_end(trainer=trainer, step=0)
    student = list(trainer.backbone.parameters()) + list(trainer.head.parameters())
    for t, t0, s in zip(teacher.parameters(), start, student):
        torch.testing.assert_close(t, 0.8 * t0 + 0.2 * s.detach())
    trainer.evaluate()  # puts the trainer's modules back in train mode, not the teacher
    assert not teacher.training and trainer.backbone.training


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize("table,key", [
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": -0.1}, "threshold"),
    ({"class_fraction": 0.0}, "class_fraction"),
    ({"ema_decay": 1.2}, "ema_decay"),
    ({"refresh_every": 0}, "refresh_every"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"entropy_weight": -1.0}, "entropy_weight"),
    ({"teacher": "student"}, "teacher"),
    ({"selection": "top_k"}, "selection"),
    ({"threshold": "high"}, "threshold"),
])
def test_invalid_options_name_the_key(table, key):
    with pytest.raises(ConfigError, match=rf"plugins\.self_training\.{key}"):
        PluginInfo("self_training", SelfTraining, "test").make(table)


def test_valid_options_and_unknown_key():
    plugin = PluginInfo("self_training", SelfTraining, "test").make(
        {"teacher": "ema", "selection": "class_balanced", "threshold": 1, "class_fraction": 1.0})
    assert plugin.options.teacher == "ema" and plugin.options.threshold == 1
    with pytest.raises(ConfigError, match="unknown key plugins.self_training.thresh"):
        PluginInfo("self_training", SelfTraining, "test").make({"thresh": 0.5})


# ---------------------------------------------------------------------- real runs
def _cli_plugins() -> list[str]:
    """``-p`` the plugin unless the ``self_training`` entry point is installed (then a clash)."""
    installed = {ep.name for ep in importlib.metadata.entry_points(group="tladapt")}
    return [] if "self_training" in installed else ["tladapt_plugins.self_training:SelfTraining"]


@pytest.mark.parametrize("dataset,task,n_target,num_classes", [
    ("office_caltech10_surf", "webcam->dslr", 157, 10),   # multi-class
    ("amazon_review_400", "books->kitchen", 1999, 2),     # binary
])
def test_real_run(tmp_path, dataset, task, n_target, num_classes):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tladapt.experiment import run_experiment

    plugins = {"self_training": {"teacher": "ema", "selection": "class_balanced", "class_fraction": 0.5,
                                 "refresh_every": 5, "warmup_steps": 20, "ramp_steps": 20, "entropy_weight": 0.1}}
    (result,) = run_experiment(config(100, tmp_path, plugins, dataset, task, eval_every=50), _cli_plugins())
    final = result["final"]
    assert result["method"] == "self_training" and final["step"] == 100
    assert all(math.isfinite(v) for v in final.values())
    assert 0 <= final["oracle/pseudo_label_acc"] <= 100 and 0 < final["self_training/labelled_frac"] <= 1
    assert sum(final[f"self_training/count_class_{k}"] for k in range(num_classes)) == pytest.approx(
        final["self_training/selected_frac"] * n_target)
    assert f"self_training/count_class_{num_classes}" not in final
    events = EventAccumulator(result["run_dir"])
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in ("self_training/mask_rate", "loss/pseudo_label", "loss/entropy", "loss/total"):
        assert len(scalars[tag]) == 4 and all(math.isfinite(v) for v in scalars[tag]), tag
    assert all(0 <= v <= 1 for v in scalars["self_training/mask_rate"])
    # Mean ramp over steps 0..24 with 20 warm-up steps: (1 + 2 + ... + 5) / 20 / 25.
    assert scalars["self_training/ramp"][0] == pytest.approx(15 / 500)
    assert scalars["self_training/ramp"][-1] == 1.0


def test_composition_with_dann_total_is_weighted_sum(tmp_path):
    plugins = {"self_training": {"weight": 0.7, "entropy_weight": 0.25},
               "dann": {"weight": 0.4, "hidden": [32], "dropout": 0.0}}
    cfg = config(10, tmp_path, plugins, dropout=0.0)
    trainer = make_trainer(cfg, tmp_path, extra=[("dann", DANN)])
    trainer.pm.hook.tladapt_fit_start(trainer=trainer)
    batch = PairedPipeline(trainer.source, trainer.target, 32, 0).next()
    out = trainer.forward(batch)  # no dropout anywhere: train_step's forward gives the same outputs
    # Put the threshold between the 16th and 17th teacher confidence: half the batch is selected.
    conf_sorted = F.softmax(out.logits_t.detach(), 1).max(1).values.sort().values
    threshold = float(conf_sorted[15] + conf_sorted[16]) / 2
    trainer.pm.get_plugin("self_training").options.threshold = threshold
    terms = trainer.losses(batch, out)
    assert set(terms) == {"source", "domain", "pseudo_label", "entropy"}
    assert [terms[n].weight for n in ("source", "domain", "pseudo_label", "entropy")] == [1.0, 0.4, 0.7, 0.25]
    with torch.no_grad():
        probs = F.softmax(out.logits_t, 1)
        conf, labels = probs.max(1)
        keep = conf >= threshold
        ce_t = F.cross_entropy(out.logits_t, labels, reduction="none")
        want_pl = (ce_t * keep).sum() / keep.sum()
    assert keep.sum() == 16
    torch.testing.assert_close(terms["pseudo_label"].value, want_pl)
    expected = sum(t.weight * t.value.detach() for t in terms.values())
    total = trainer.train_step(batch)
    torch.testing.assert_close(total.detach(), expected)
    # And a whole (short) fit with both plugins completes with finite results.
    trainer = make_trainer(cfg, tmp_path / "fit", extra=[("dann", DANN)])
    results = trainer.fit()
    assert all(math.isfinite(v) for v in results["final"].values())


STEP_OPTIONS = [
    {"teacher": "model", "selection": "threshold", "entropy_weight": 0.1},
    {"teacher": "ema", "selection": "class_balanced", "refresh_every": 3, "warmup_steps": 1, "ramp_steps": 2},
]


def prepared_steps(tmp_path, options, device="cpu"):
    """A trainer, its self_training plugin and 4 (batch, out) pairs computed ahead of the step hooks."""
    trainer = make_trainer(config(4, tmp_path, {"self_training": options}, device=device), tmp_path)
    trainer.pm.hook.tladapt_fit_start(trainer=trainer)
    pipeline = PairedPipeline(trainer.source, trainer.target, 32, 0)
    batches = [pipeline.next() for _ in range(4)]
    return trainer, trainer.pm.get_plugin("self_training"), [(b, trainer.forward(b)) for b in batches]


@pytest.mark.parametrize("options", STEP_OPTIONS)
def test_training_step_reads_nothing_back_cpu(tmp_path, monkeypatch, options):
    """CPU stand-in for the CUDA check below: no Python-level read of a tensor value
    (``.item()``, ``.tolist()``, ``bool(t)``, ...) in ``tladapt_losses`` / ``tladapt_step_end``."""
    trainer, plugin, steps = prepared_steps(tmp_path, options)

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor value was read back to the host in the training step")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
            patch.setattr(torch.Tensor, name, forbidden)
        for step, (batch, out) in enumerate(steps):
            trainer.step = step
            terms = plugin.tladapt_losses(trainer=trainer, batch=batch, out=out)
            plugin.tladapt_step_end(trainer=trainer)
    assert all(torch.isfinite(t.value) for t in terms.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for torch.cuda.set_sync_debug_mode")
@pytest.mark.parametrize("options", STEP_OPTIONS)
def test_training_step_has_no_host_sync(tmp_path, options):
    trainer, plugin, steps = prepared_steps(tmp_path, options, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, (batch, out) in enumerate(steps):
            trainer.step = step
            plugin.tladapt_losses(trainer=trainer, batch=batch, out=out)
            plugin.tladapt_step_end(trainer=trainer)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    metrics = {}
    plugin.tladapt_evaluate(trainer=trainer, metrics=metrics, target_labels=trainer._target_labels)
    assert all(math.isfinite(v) for v in metrics.values())
