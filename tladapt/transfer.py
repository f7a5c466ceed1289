"""Inductive transfer: features of a trained model, linear classifiers on them, and the
four fine-tuning regimes (which one to use: :mod:`tladapt.advice`, ``tladapt advise``).

The regimes are those of the CS231n notes (https://cs231n.github.io/transfer-learning/),
with the situation their rule of thumb assigns each to:

1. ``linear_top``   small & similar:    linear classifier on the frozen source network's top features;
2. ``finetune_all`` large & similar:    fine-tune the whole network (small backbone learning rate);
3. ``linear_early`` small & different:  linear classifier on features of an earlier layer;
4. ``from_source``  large & different:  train on the target, initialised from the source model.

Feature transferability by depth: Yosinski et al., "How transferable are features in
deep neural networks?", NIPS 2014. Domain distance: :mod:`tladapt.distance`.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from tabulate import tabulate
from torch import nn

from tladapt import checkpoint
from tladapt.config import Config, ConfigError, load_run_config, parse_task
from tladapt.data.datasets import load_domain
from tladapt.data.domain import Domain
from tladapt.data.tasks import TaskSplits, load_task, split_task
from tladapt.distance import mmd_distance, proxy_a_distance
from tladapt.init_from import matching_head
from tladapt.models import build_backbone
from tladapt.runs import RunLogger, new_run_dir, write_json, write_status

REGIMES = {
    "linear_top": "1. small & similar: linear classifier on the frozen source network's top features",
    "finetune_all": "2. large & similar: fine-tune the whole network",
    "linear_early": "3. small & different: linear classifier on an earlier layer's features",
    "from_source": "4. large & different: train on the target, initialised from the source model",
}
# ---------------------------------------------------------------- layers and features
def parametrised_layers(module: nn.Module, prefix: str = "") -> list[str]:
    """Paths of the leaf modules that own parameters, in definition order.

    Returns:
        e.g. ``["backbone.0", "backbone.3"]`` for ``MLP(d, [256, 128])`` with
        ``prefix="backbone"``, ``["backbone.conv.0", "backbone.conv.3", "backbone.fc.0"]`` for LeNet.
    """
    join = (lambda n: f"{prefix}.{n}" if n else prefix) if prefix else (lambda n: n)
    return [join(name) for name, m in module.named_modules()
            if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


def depth_region(module: nn.Module, depth: int, prefix: str = "backbone") -> list[str]:
    """Leaf-module paths of the first ``depth`` parametrised layers and what follows each.

    The region ends just before the ``depth+1``-th parametrised layer, so the
    activation/dropout/pooling after the last of them belongs to it. ``depth`` equal to
    the number of parametrised layers gives every leaf of ``module``.

    Raises:
        ConfigError: if ``depth`` is negative or exceeds the number of parametrised layers.
    """
    layers = parametrised_layers(module, prefix)
    if not 0 <= depth <= len(layers):
        raise ConfigError(f"freeze_depth={depth}: the backbone has {len(layers)} parametrised layers "
                          f"({', '.join(layers)}); expected 0..{len(layers)}")
    leaves = [f"{prefix}.{n}" for n, m in module.named_modules() if n and not list(m.children())]
    if depth == len(layers):
        return leaves
    return leaves[:leaves.index(layers[depth])] if depth else []


def candidate_layers(backbone: nn.Module) -> list[str]:
    """Layers whose output is a feature worth a linear classifier: ``"input"``, the end
    of each parametrised block but the last (``depth_region(backbone, i)[-1]``), and
    ``"backbone"`` (the top features). E.g. ``["input", "backbone.2", "backbone"]``
    for ``MLP(d, [256, 128])`` (``backbone.2`` is the dropout after the first ReLU,
    which is the identity in eval mode)."""
    n = len(parametrised_layers(backbone, "backbone"))
    return ["input"] + [depth_region(backbone, i)[-1] for i in range(1, n)] + ["backbone"]


def load_model(run_dir: str | Path, input_shape: tuple[int, ...] | None = None,
               head: str = "head") -> tuple[Config, nn.ModuleDict]:
    """The backbone and head of a finished run, in eval mode on the CPU.

    Args:
        run_dir: a run directory holding ``config.json`` and ``checkpoint.pt``.
        input_shape: one input's shape; default: that of the config's first task's source domain.
        head: which of the checkpoint's heads to load as ``head`` (e.g. ``"source_head"``,
            the one :func:`head_for` names).

    Returns:
        ``(the run's config, nn.ModuleDict(backbone=..., head=...))``.

    Raises:
        ConfigError: if ``config.json`` or ``checkpoint.pt`` is missing, the checkpoint has no
            module ``head``, or the weights do not fit the model the config describes.
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir}: no {name} (expected a run directory of a run with trainer.checkpoint = true)")
    config = load_run_config(run_dir)
    if input_shape is None:
        source_name, _ = parse_task(config.data.tasks[0])
        input_shape = load_domain(config.data.dataset, source_name).input_shape
    state = checkpoint.load(run_dir / "checkpoint.pt", f"the model of run {run_dir}")["modules"]
    m = config.model
    backbone = build_backbone(m.backbone, input_shape, m.hidden, m.dropout)
    if f"{head}.weight" not in state:
        raise ConfigError(f"{run_dir}/checkpoint.pt has no module {head!r}")
    model = nn.ModuleDict({"backbone": backbone, "head": nn.Linear(backbone.out_features, state[f"{head}.weight"].shape[0])})
    rename = {"backbone": "backbone", head: "head"}
    try:
        model.load_state_dict({f"{rename[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}": v for k, v in state.items()
                               if k.split(".", 1)[0] in rename}, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{run_dir}/checkpoint.pt does not fit the model of its config.json: {err}") from None
    return config, model.eval()


def head_classes(run_dir: str | Path) -> dict[str, tuple[str, ...] | None]:
    """The class names each head of a finished run predicts (its checkpoint's ``classes``):
    head name -> names, None for a head nothing trained (a self-taught pre-training run's).
    A checkpoint from before classes were recorded gives ``{}``.

    Raises:
        ConfigError: as :func:`tladapt.checkpoint.load`.
    """
    saved = checkpoint.load(Path(run_dir) / "checkpoint.pt", f"the model of run {run_dir}").get("classes", {})
    return {name: None if c is None else tuple(c) for name, c in saved.items()}


@torch.no_grad()
def extract_features(model: nn.ModuleDict, x: torch.Tensor, layer: str = "backbone", chunk: int = 1024) -> torch.Tensor:
    """The output of ``layer`` for inputs ``x``, through a forward hook, in eval mode.

    Args:
        model: a ``ModuleDict`` with ``backbone`` and ``head`` (:func:`load_model`, or
            a trainer's ``modules``); it is put in eval mode (dropout off).
        x: model inputs ``(n, *input_shape)`` float32, on the model's device.
        layer: ``"input"`` (``x`` itself), ``"backbone"`` (the top features), a submodule
            path such as ``"backbone.0"``, or ``"head"`` (logits).
        chunk: rows per forward pass.

    Returns:
        ``(n, d)`` float32 CPU tensor; outputs with more dimensions (conv maps) are flattened.

    Raises:
        ConfigError: if ``layer`` names no submodule (listing the valid paths).
    """
    if layer == "input":
        return x.flatten(1).float().cpu()
    try:
        target = model.get_submodule(layer)
    except AttributeError:
        raise ConfigError(f"unknown layer {layer!r}: expected 'input' or one of "
                          f"{', '.join(n for n, _ in model.named_modules() if n)}") from None
    model.eval()
    captured: list[torch.Tensor] = []
    handle = target.register_forward_hook(lambda _m, _i, out: captured.append(out.flatten(1).float().cpu()))
    try:
        for i in range(0, len(x), chunk):
            features = model["backbone"](x[i:i + chunk])
            if layer.split(".")[0] == "head":
                model["head"](features)
    finally:
        handle.remove()
    return torch.cat(captured)


def head_for(run_dir: str | Path, classes: tuple[str, ...]) -> str | None:
    """The head of a finished run that predicts ``classes`` (the same names in the same order),
    as ``model.init_from`` picks it (:func:`tladapt.init_from.matching_head`); None when the
    run has none (a target of other classes, or a run trained without labels): a fine-tuning
    run from it gets a new head. A checkpoint that records no classes offers its ``head``.

    Raises:
        ConfigError: as :func:`head_classes`.
    """
    return matching_head(head_classes(run_dir) or {"head": tuple(classes)}, classes)


@torch.no_grad()
def source_accuracy(model: nn.ModuleDict, domain: Domain) -> float:
    """Accuracy (%) of the model's own head on a labelled domain (eval mode, CPU).

    Raises:
        ValueError: if ``domain`` has no labels.
    """
    if domain.y is None:
        raise ValueError(f"domain {domain.name!r} has no labels")
    model.eval()
    return 100.0 * float((model["head"](model["backbone"](domain.inputs())).argmax(1) == domain.y).float().mean())


def fit_linear(x: np.ndarray, y: np.ndarray, classifier: str = "logistic", seed: int = 0):
    """Fit standardisation + a linear classifier (scikit-learn) on labelled features.

    Args:
        x: ``(n, d)`` float features; y: ``(n,)`` int labels.
        classifier: ``"logistic"`` (L2 ``LogisticRegression``, ``C=1``) or ``"svm"``
            (``LinearSVC``, ``C=1``, one-vs-rest as in DeCAF, Donahue et al., ICML 2014).
        seed: the classifier's ``random_state``.

    Returns:
        The fitted sklearn pipeline (``.predict(x) -> (n,) int``).

    Raises:
        ValueError: for an unknown ``classifier`` or fewer than 2 classes in ``y``.
    """
    if classifier not in ("logistic", "svm"):
        raise ValueError(f"classifier must be 'logistic' or 'svm', got {classifier!r}")
    if len(np.unique(y)) < 2:
        raise ValueError(f"a linear classifier needs at least 2 classes among its {len(y)} training samples")
    clf = (LogisticRegression(C=1.0, max_iter=2000, random_state=seed) if classifier == "logistic"
           else LinearSVC(C=1.0, max_iter=10000, random_state=seed))
    return make_pipeline(StandardScaler(), clf).fit(x, y)


def task_splits(config: Config, task: str, seed: int) -> TaskSplits:
    """The splits a trainer run of ``task`` with ``seed`` uses, without a trainer.

    Returns:
        :func:`tladapt.data.tasks.split_task` of the task's domains (class subsets
        applied): CPU domains identical to ``Trainer.source``, ``Trainer.target_labelled``
        and the trainer's test set, the rest's labels kept (for evaluation only).

    Raises:
        ConfigError / ValueError: as :func:`tladapt.data.tasks.load_task` and :func:`split_task`.
    """
    return split_task(config.data, *load_task(config.data, task), seed)


def run_feature_transfer(config: Config, model_dir: str | Path, layer: str = "backbone", *,
                         classifier: str = "logistic", train_on: str = "target", method: str | None = None
                         ) -> list[dict]:
    """Feature-based transfer: a linear classifier on a source model's ``layer`` features.

    For every task and seed of ``config``: the target is split like the trainer does
    (``data.target_labels_per_class`` labelled per class, seeded, stratified); the
    classifier is fit on the labelled target (``train_on="target"``) or on the source
    training split plus the labelled target (``"source+target"``); its accuracy on the
    unlabelled rest is the run's ``oracle/target_acc``. Each run gets its own run
    directory with ``config.json``, ``results.json`` (the trainer's schema, ``steps = 0``,
    plus ``transfer``) and a TensorBoard scalar ``oracle/target_acc``, so
    ``tladapt table`` lists it beside trained runs.

    Args:
        config: tasks, seeds, data split and ``experiment.runs_dir``/``name``.
        model_dir: the source model's run directory (:func:`load_model`).
        layer: as :func:`extract_features`.
        classifier: as :func:`fit_linear`.
        train_on: ``"target"`` or ``"source+target"``.
        method: label in run paths and tables; default ``linear@<layer>``.

    Returns:
        The runs' results dicts, task then seed order.

    Raises:
        ConfigError: for an unknown ``train_on``, ``train_on="target"`` with
            ``data.target_labels_per_class = 0``, ``layer = "head"`` of a run whose head was
            never trained (:func:`head_classes`: None), or as :func:`load_model` /
            :func:`extract_features`.
    """
    if train_on not in ("target", "source+target"):
        raise ConfigError(f"train_on must be 'target' or 'source+target', got {train_on!r}")
    if train_on == "target" and config.data.target_labels_per_class == 0:
        raise ConfigError("a classifier trained on the target needs data.target_labels_per_class > 0")
    method = method or f"linear@{layer}"
    _, model = load_model(model_dir)
    if layer.split(".")[0] == "head" and head_classes(model_dir).get("head", ()) is None:
        raise ConfigError(f"layer {layer!r}: the head of run {model_dir} was never trained (its classes are null: "
                          "a self-taught or unlabelled-source run), so its outputs are a random projection of the "
                          "backbone's features, not a source classifier's scores: use layer='backbone' or an "
                          "earlier layer")
    config = dataclasses.replace(config, experiment=dataclasses.replace(config.experiment, method=method))
    results = []
    for task in config.data.tasks:
        for seed in config.experiment.seeds:
            splits = task_splits(config, task, seed)
            source, labelled, rest = splits.source, splits.target_labelled, splits.target_rest
            if train_on == "source+target" and not splits.shared_head:
                raise ConfigError(f"train_on='source+target' needs one label space, but task {task!r} has a "
                                  "target with classes of its own (or an unlabelled source): use train_on='target'")
            parts = ([] if train_on == "target" else [source]) + ([] if labelled is None else [labelled])
            x = torch.cat([extract_features(model, d.inputs(), layer) for d in parts]).numpy()
            y = torch.cat([d.y for d in parts]).numpy()
            clf = fit_linear(x, y, classifier, seed)
            acc = 100.0 * float((clf.predict(extract_features(model, rest.inputs(), layer).numpy()) == rest.y.numpy()).mean())
            run_dir = new_run_dir(config.experiment.runs_dir, config.experiment.name, task, method, seed)
            write_json(run_dir / "config.json", config.to_dict())
            final = {"step": 0, "oracle/target_acc": acc, "metrics/train_acc": 100.0 * float((clf.predict(x) == y).mean())}
            result = {"task": task, "method": method, "dataset": config.data.dataset, "seed": seed, "steps": 0,
                      "final": final, "history": [final], "run_dir": str(run_dir), "classes": {"head": list(rest.classes)},
                      "splits": splits.counts(config.data.target_labels_per_class), "transfer": {"layer": layer, "classifier": classifier, "train_on": train_on,
                                   "init_from": str(model_dir), "n_train": int(len(y)), "n_test": len(rest)}}
            logger = RunLogger(run_dir)
            logger.scalars({k: v for k, v in final.items() if k != "step"}, 0)
            logger.close()
            write_json(run_dir / "results.json", result)
            write_status(run_dir, "finished", dataset=config.data.dataset, task=task, method=method, seed=seed,
                         config_id=config.fingerprint())
            results.append(result)
    return results


# ---------------------------------------------------------------- distances and the advice
def layer_distances(config: Config, task: str, layers: list[str], model_dir: str | Path | None = None,
                    seed: int = 0, progress=None) -> dict[str, dict[str, float]]:
    """Proxy A-distance and MMD² between the whole source and target domains at each layer.

    No labels are used. Layers other than ``"input"`` need ``model_dir`` (a source run).

    ``progress`` (optional) is called with no argument after each layer (e.g. a tqdm ``update``).

    Returns:
        ``{layer: {"pad": float in [0, 2], "mmd": float}}``.

    Raises:
        ConfigError: a layer other than ``"input"`` without ``model_dir``, or as :func:`extract_features`.
    """
    source, target = load_task(config.data, task)
    model = None
    if model_dir is not None:
        _, model = load_model(model_dir, source.input_shape)
    out = {}
    for layer in layers:
        if layer != "input" and model is None:
            raise ConfigError(f"layer {layer!r} needs a source model: pass --init-from RUN_DIR")
        xs = source.inputs().flatten(1) if model is None else extract_features(model, source.inputs(), layer)
        xt = target.inputs().flatten(1) if model is None else extract_features(model, target.inputs(), layer)
        out[layer] = {"pad": proxy_a_distance(xs, xt, seed=seed), "mmd": mmd_distance(xs, xt, seed=seed)}
        if progress:
            progress()
    return out


def pretrain_source(config: Config, steps: int | None = None) -> dict[str, str]:
    """Train a source-only model per task (first seed, no target labels, no plugins); return task -> run dir."""
    from tladapt.experiment import run_experiment

    cfg = dataclasses.replace(
        config, plugins={},
        experiment=dataclasses.replace(config.experiment, method="source_pretrain", seeds=config.experiment.seeds[:1]),
        data=dataclasses.replace(config.data, target_labels_per_class=0),
        trainer=dataclasses.replace(config.trainer, checkpoint=True, steps=steps or config.trainer.steps,
                                    eval_every=steps or config.trainer.steps))
    return {r["task"]: r["run_dir"] for r in run_experiment(cfg)}


FINETUNE_REGIMES = {"finetune_all": {"init": "source"}, "from_source": {"init": "source", "reinit_head": True}}
"""The ``[plugins.finetune]`` table of each fine-tuning regime."""


def regime_config(config: Config, regime: str, model_dir: str | Path, steps: int = 300,
                  backbone_lr_mult: float = 0.1) -> Config:
    """The config of a fine-tuning regime's run, derived from a task's config.

    ``finetune_all``: the ``finetune`` plugin, ``init = "source"`` (the source head is kept
    when it predicts the target's classes, else new), ``trainer.lr_mult = {backbone =
    backbone_lr_mult}``. ``from_source``: ``init = "source"``, ``reinit_head``, full learning
    rates. Both: source-free (``data.source_free``: the labelled target only, no source batch),
    ``steps`` steps with one evaluation at the end, no checkpoint, unlabelled batches drawn
    with replacement (a large k can leave fewer unlabelled target samples than a batch),
    method ``<regime>-k<k>`` (so ``tladapt table`` keeps the k values apart).

    Raises:
        ConfigError: for a regime that is not a fine-tuning one.
    """
    if regime not in FINETUNE_REGIMES:
        raise ConfigError(f"{regime!r} is not a fine-tuning regime: expected one of {', '.join(FINETUNE_REGIMES)}")
    lr_mult = {"backbone": backbone_lr_mult} if regime == "finetune_all" else {}
    return dataclasses.replace(
        config, plugins={"finetune": dict(FINETUNE_REGIMES[regime])},
        experiment=dataclasses.replace(config.experiment, method=f"{regime}-k{config.data.target_labels_per_class}"),
        data=dataclasses.replace(config.data, source_free=True),
        model=dataclasses.replace(config.model, init_from=str(model_dir)),
        trainer=dataclasses.replace(config.trainer, steps=steps, eval_every=steps, lr_mult=lr_mult, source_weight=0.0,
                                    checkpoint=False, progress=False, replacement=True))


def run_regimes(config: Config, task: str, model_dir: str | Path, early_layer: str, steps: int = 300,
                backbone_lr_mult: float = 0.1) -> dict[str, list[float]]:
    """Run the four regimes for one task over ``config.experiment.seeds``; return regime -> accuracies (%).

    ``linear_top``/``linear_early``: :func:`run_feature_transfer` on the labelled target at
    ``"backbone"``/``early_layer``; ``finetune_all``/``from_source``: :func:`regime_config`
    runs. Every regime of a seed trains on the same labelled samples and is tested on the
    same rest.

    Raises:
        ConfigError: if ``data.target_labels_per_class`` is 0 (nothing to train on).
    """
    from tladapt.experiment import run_experiment

    if config.data.target_labels_per_class == 0:
        raise ConfigError("the regimes train on labelled target samples: set data.target_labels_per_class > 0")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, tasks=[task]))
    k = config.data.target_labels_per_class
    accs = {}
    for regime, layer in (("linear_top", "backbone"), ("linear_early", early_layer)):
        accs[regime] = [r["final"]["oracle/target_acc"]
                        for r in run_feature_transfer(config, model_dir, layer, method=f"{regime}-k{k}")]
    for regime in FINETUNE_REGIMES:
        cfg = regime_config(config, regime, model_dir, steps, backbone_lr_mult)
        accs[regime] = [r["final"]["oracle/target_acc"] for r in run_experiment(cfg)]
    return {r: accs[r] for r in REGIMES}


def regimes_table(accs: dict[str, list[float]], recommended: str) -> str:
    """A markdown table of mean ± std target accuracy per regime, marking the advice and the winner."""
    means = {r: statistics.fmean(v) for r, v in accs.items()}
    best = max(means, key=lambda r: (round(means[r], 2), r == recommended))  # float32 accuracies: ties to 0.01
    rows = [[REGIMES[r], f"{means[r]:.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""), len(v),
             ("advised" if r == recommended else "") + (" best" if r == best else "")] for r, v in accs.items()]
    return tabulate(rows, headers=["regime", "target acc (%)", "seeds", ""], tablefmt="github")
