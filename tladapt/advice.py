"""``tladapt advise``: which transfer regime to use, measured on the user's own labelled
target samples rather than read off a rule of thumb.

The CS231n rule (small/large target x similar/different domains, :func:`recommend`) picked
the winning regime in 3 of 20 cells of ``experiments/inductive.md``: the unlabelled domain
distances it needs do not measure the similarity that matters, and in domain adaptation the
source head is a strong prior the rule ignores. The advice here is computed instead
(:func:`advise_task`):

* **A source head** (the model's head predicts the target's classes, by name) **and fewer
  than** :data:`FROM_SOURCE_AT` **labelled samples per class**: ``finetune_all``, keep the
  head and fine-tune gently. One sample per class cannot be split, and 2-4 leave one held-out
  sample per class per fold, too few to overrule a strong prior: in the 164 cells of
  ``experiments/advise.md`` the switches earlier rules made there changed 5 cells by +0.7,
  +0.8, +2.3, -3.0 and -7.0 points. The cross-validation is still run and shown.
* **Otherwise** (a new head, or enough labels) the default is ``from_source``
  (:func:`default_regime`): a new head has nothing to protect, and with enough labels the
  source head stops paying for itself. At k >= 2 the four regimes are cross-validated on the
  labelled samples alone (:func:`cross_validate_regimes`). Each of ``folds`` seeded
  stratified splits trains every regime on about two thirds of them (``k_train`` per class,
  the trainer's own k-shot split rule, :func:`tladapt.data.tasks.split_target`) and scores it
  on the rest; the fine-tuning regimes run the real trainer for ``steps`` steps from the
  shared source model, the linear ones fit on its frozen features. Another regime replaces
  ``from_source`` only when its gain over it, paired fold by fold, clears ``margin`` points
  and ``noise`` standard errors, and a linear regime (a frozen backbone) must clear them over
  ``finetune_all`` too (:func:`choose_regime`).
* **k = 0**: no advice. Which regime wins depends on how the target's labels relate to the
  features; a distance between unlabelled domains does not say (``experiments/inductive.md``).

The decision (:func:`decide`) is a pure function of what was measured, so a recorded
measurement can be decided again. The classic rule's pick is computed beside it for reference.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tladapt.config import Config, ConfigError
from tladapt.data.domain import Domain
from tladapt.data.tasks import load_task, split_target
from tladapt.transfer import (FINETUNE_REGIMES, REGIMES, candidate_layers, extract_features, fit_linear, head_for,
                              layer_distances, load_model, regime_config, source_accuracy, task_splits)

SMALL_BELOW = 10.0
"""Classic rule: labelled target samples per class below which the target is "small"."""
SIMILAR_BELOW = 1.0
"""Classic rule: proxy A-distance below which two domains are "similar"."""
FOLDS = 3
"""Cross-validation splits of the labelled samples (k >= 2)."""
MARGIN = 1.0
"""Points by which a regime must beat the default (:func:`default_regime`) in cross-validation to be advised."""
NOISE = 2.0
"""Paired standard errors (over the folds) by which it must beat the default, too: ~ the
one-sided 90 % quantile of Student's t with the 2 degrees of freedom of 3 folds (1.89)."""
FROM_SOURCE_AT = 5.0
"""Labelled samples per class from which the default is ``from_source`` even where the source
head predicts the target's classes, and below which a source head is kept whatever the
cross-validation says (:func:`default_regime`, :func:`decide`). The measured cells have k = 3
and k = 10 on either side of it (``experiments/advise.md``): the value between them is a
choice, not a fit."""


# ---------------------------------------------------------------- the classic rule (for reference)
def labelled_per_class(config: Config, task: str) -> float:
    """Mean labelled target samples per class that ``data.target_labels_per_class`` gives
    (``min(k, n_c - 1)`` per class, as :func:`tladapt.data.tasks.split_target`); uses only class counts."""
    k = config.data.target_labels_per_class
    counts = torch.bincount(load_task(config.data, task)[1].y)
    counts = counts[counts > 0]
    return float(torch.clamp(counts - 1, max=k).float().mean())


def recommend(labels_per_class: float, distance: float, small_below: float = SMALL_BELOW,
              similar_below: float = SIMILAR_BELOW) -> tuple[str, str]:
    """The CS231n rule: small/large x similar/different -> one of :data:`tladapt.transfer.REGIMES`.

    Args:
        labels_per_class: labelled target samples per class (float, >= 0).
        distance: proxy A-distance in [0, 2] between source and target at the decision layer.
        small_below: "small" means ``labels_per_class < small_below``.
        similar_below: "similar" means ``distance < similar_below``.

    Returns:
        ``(regime key, one-line reason with the numbers)``.
    """
    small = labels_per_class < small_below
    similar = distance < similar_below
    regime = {(True, True): "linear_top", (False, True): "finetune_all",
              (True, False): "linear_early", (False, False): "from_source"}[(small, similar)]
    reason = (f"{labels_per_class:.1f} labelled/class {'<' if small else '>='} {small_below:g} -> "
              f"{'small' if small else 'large'}; PAD {distance:.2f} {'<' if similar else '>='} "
              f"{similar_below:g} -> {'similar' if similar else 'different'}")
    return regime, reason


def classic_rule(config: Config, task: str, model_dir: str | Path, small_below: float = SMALL_BELOW,
                 similar_below: float = SIMILAR_BELOW, distances: dict[str, dict[str, float]] | None = None) -> dict:
    """Measure one task without labels and apply the CS231n rule (the advice of issue 6, kept
    for reference and for ``experiments/inductive/run.py``).

    The decision distance is the PAD at the source model's top features (``"backbone"``,
    the features regime 1 would use). The "earlier layer" for regime 3 is the hidden
    (neither input nor top) candidate layer with the smallest PAD (earlier on ties);
    ``"input"`` when the model has a single block. The raw input is not a candidate: a
    linear classifier on it transfers nothing from the source (and on inputs standardised
    per domain its PAD is ~0 by construction, see :func:`tladapt.distance.proxy_a_distance`),
    so it is not measured (``tladapt distance`` does).

    The distances depend only on the task's unlabelled domains and the source model, not on
    ``k`` or the seed: pass ``distances`` (this function's earlier ``"distances"`` for the
    same task and model) to reuse them; they are measured otherwise.

    Returns:
        ``{"task", "labels_per_class", "distances": {layer: {pad, mmd}}, "decision_layer",
        "early_layer", "regime", "reason"}``.
    """
    _, model = load_model(model_dir)
    layers = candidate_layers(model["backbone"])
    hidden = layers[1:-1] or ["input"]
    if distances is None:
        distances = layer_distances(config, task, hidden + ["backbone"], model_dir)
    early = min(hidden, key=lambda layer: (distances[layer]["pad"], layers.index(layer)))
    per_class = labelled_per_class(config, task)
    regime, reason = recommend(per_class, distances["backbone"]["pad"], small_below, similar_below)
    return {"task": task, "labels_per_class": per_class, "distances": distances, "decision_layer": "backbone",
            "early_layer": early, "regime": regime, "reason": reason}


# ---------------------------------------------------------------- cross-validation on the labelled samples
def train_per_class(labelled: Domain) -> int:
    """Training samples per class of a cross-validation split: two thirds of the largest
    class's labelled samples, at least 1 (``split_target`` then keeps at least one per class
    for scoring): 1 of 2, 2 of 3, 6 of 10."""
    return max(1, math.floor(2 * int(torch.bincount(labelled.y).max()) / 3))


def _finetune_score(config: Config, regime: str, model_dir: str | Path, labelled: Domain, k_train: int,
                    seed: int, source_name: str, steps: int, run_root: Path) -> float:
    """Accuracy (%) on the held-out part of ``labelled`` of one fine-tuning regime trained on
    ``split_target(labelled, k_train, seed)``'s labelled part (the trainer's own split)."""
    from tladapt.experiment import prepare
    from tladapt.manager import make_plugin_manager
    from tladapt.runs import new_run_dir
    from tladapt.trainer import Trainer

    cfg = regime_config(config, regime, model_dir, steps)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, target_labels_per_class=k_train),
                              experiment=dataclasses.replace(cfg.experiment, runs_dir=str(run_root)))
    cfg, active = prepare(cfg, tasks=False)  # it trains on `labelled`, not on the config's task data
    run_dir = new_run_dir(run_root, "advise_cv", labelled.name, regime, seed)
    trainer = Trainer(cfg, None, labelled, make_plugin_manager(active), run_dir, seed, source_name=source_name)
    return trainer.fit()["final"]["oracle/target_acc"]


def cross_validate_regimes(config: Config, model_dir: str | Path, labelled: Domain, early_layer: str,
                           source_name: str, folds: int = FOLDS, steps: int = 300, seed: int = 0,
                           progress=None) -> dict[str, list[float]]:
    """Each regime's accuracy (%) on held-out labelled samples, one value per fold.

    Fold ``f`` is ``split_target(labelled, train_per_class(labelled), 1000 * seed + f + 1)``:
    the regimes train on its labelled part and are scored on its rest. ``linear_top`` /
    ``linear_early``: :func:`tladapt.transfer.fit_linear` on the source model's
    ``backbone`` / ``early_layer`` features; ``finetune_all`` / ``from_source``: a trainer run
    of :func:`tladapt.transfer.regime_config` (``steps`` steps) from ``model_dir``, in a
    temporary directory that is removed afterwards. Nothing but ``labelled`` is read.

    Args:
        config: the task's config (trainer settings of the fine-tuning runs).
        model_dir: the source model's run directory.
        labelled: the user's labelled target samples (labels in the run's label space).
        early_layer: the layer of ``linear_early``.
        source_name: the source domain's name (for the runs' records).
        folds: number of splits.
        steps: fine-tuning steps per run.
        seed: seeds the splits.
        progress: called with no argument after each regime fit (e.g. a tqdm ``update``).

    Raises:
        ConfigError: if some split leaves fewer than two classes to train a linear classifier.
    """
    _, model = load_model(model_dir, labelled.input_shape)
    k_train = train_per_class(labelled)
    scores: dict[str, list[float]] = {r: [] for r in REGIMES}
    with tempfile.TemporaryDirectory(prefix="tladapt-advise-") as tmp:
        for f in range(folds):
            fold_seed = 1000 * seed + f + 1
            train, held = split_target(labelled, k_train, fold_seed)
            for regime, layer in (("linear_top", "backbone"), ("linear_early", early_layer)):
                x = extract_features(model, train.inputs(), layer).numpy()
                clf = fit_linear(x, train.y.numpy(), seed=fold_seed)
                pred = clf.predict(extract_features(model, held.inputs(), layer).numpy())
                scores[regime].append(100.0 * float((pred == held.y.numpy()).mean()))
                if progress:
                    progress()
            for regime in FINETUNE_REGIMES:
                scores[regime].append(_finetune_score(config, regime, model_dir, labelled, k_train, fold_seed,
                                                      source_name, steps, Path(tmp)))
                if progress:
                    progress()
    return scores


def default_regime(new_head: bool, labels_per_class: float) -> str:
    """The regime :func:`decide` starts from.

    ``finetune_all`` when the source head predicts the target's classes and there are fewer
    than :data:`FROM_SOURCE_AT` labelled samples per class (a strong prior, fine-tuned gently;
    :func:`decide` keeps it); else ``from_source``, which cross-validation may replace. A new
    head has nothing to protect: train it and the backbone at the full learning rate (it won
    every different-task SURF design cell at k <= 10 by 7-16 points). With enough labels a
    source head stops paying for itself: at k = 10, ``from_source`` was within 1 point of the
    winner in 15 of 17 same-task cells measured before round 4 of ``experiments/advise.md``
    and in 10 of 10 of round 4's, never more than 1 point below ``finetune_all``
    (``finetune_all``: 9 of 17 and 6 of 10).

    Args:
        new_head: whether the target's classes need a new head.
        labels_per_class: mean labelled target samples per class (float, >= 0).
    """
    return "from_source" if new_head or labels_per_class >= FROM_SOURCE_AT else "finetune_all"


def paired_gain(scores: dict[str, list[float]], regime: str, baseline: str = "finetune_all") -> tuple[float, float]:
    """Mean and standard error of ``regime``'s gain over ``baseline``, fold by fold.

    Both were scored on the same held-out samples of each fold, so the gain is paired:
    ``d_f = scores[regime][f] - scores[baseline][f]``; the standard error is
    ``stdev(d) / sqrt(folds)`` (``inf`` with one fold: no noise estimate).

    Returns:
        ``(mean gain, standard error)`` in points.
    """
    d = [a - b for a, b in zip(scores[regime], scores[baseline], strict=True)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return statistics.fmean(d), se


def _clears(gain: tuple[float, float], margin: float, noise: float) -> bool:
    """Whether a paired gain ``(mean, standard error)`` clears ``margin`` points and ``noise`` standard errors."""
    return gain[0] >= margin and gain[0] >= noise * gain[1]


def choose_regime(scores: dict[str, list[float]], margin: float = MARGIN, noise: float = NOISE,
                  default: str = "finetune_all") -> tuple[str, str]:
    """The advised regime from cross-validation scores (regime -> accuracy (%) per fold).

    ``default`` (:func:`default_regime`) is advised unless another regime's paired gain over
    it (:func:`paired_gain`) clears both ``margin`` points and ``noise`` standard errors; a
    linear regime (``linear_top``, ``linear_early``: the backbone frozen) must also clear them
    over every fine-tuning regime (:data:`tladapt.transfer.FINETUNE_REGIMES`): a frozen
    backbone is advised only when no fine-tuning does as well. Among the regimes that clear,
    the best mean accuracy.

    Returns:
        ``(regime, one-line reason with the numbers)``.
    """
    means = {r: statistics.fmean(v) for r, v in scores.items()}
    gains = {r: paired_gain(scores, r, default) for r in scores if r != default}
    rivals = {r: [b for b in FINETUNE_REGIMES if b not in (r, default) and b in scores] for r in gains}
    clear = [r for r, g in gains.items() if _clears(g, margin, noise)
             and all(_clears(paired_gain(scores, r, b), margin, noise) for b in rivals[r])]
    if not clear:
        best = max(gains, key=lambda r: (gains[r][0], r))
        g, se = gains[best]
        why = f"(best: {best} {g:+.1f} ± {se:.1f})"
        if _clears(gains[best], margin, noise):
            b = rivals[best][0]
            g2, se2 = paired_gain(scores, best, b)
            why = (f"(best: {best} {g:+.1f} ± {se:.1f}, but {g2:+.1f} ± {se2:.1f} over {b}: a frozen backbone "
                   f"must beat every fine-tuning regime)")
        return default, (f"cross-validation: no regime beats {default} ({means[default]:.1f}%) by {margin:g} points "
                         f"and {noise:g} standard errors {why}")
    best = max(clear, key=lambda r: (means[r], r))
    g, se = gains[best]
    return best, (f"cross-validation: {means[best]:.1f}% on held-out labelled samples, {g:+.1f} ± {se:.1f} points "
                  f"over {default}")


def decide(cv: dict[str, list[float]], source_acc: float | None, chance: float, labels_per_class: float,
           margin: float = MARGIN, noise: float = NOISE, new_head: bool | None = None) -> tuple[str, str, str]:
    """The advice from what :func:`advise_task` measured; a pure function of its inputs, so a
    recorded measurement can be decided again (``experiments/advise/run.py`` does).

    * A source head (it predicts the target's classes) and fewer than :data:`FROM_SOURCE_AT`
      labelled samples per class: ``finetune_all``, whatever the cross-validation says. One
      sample per class cannot be split, and 2-4 leave one held-out sample per class per fold:
      too few to overrule the source head (``experiments/advise.md``: in the 164 measured cells
      the earlier rules' switches there changed 5 cells by +0.7, +0.8, +2.3, -3.0 and -7.0 points).
    * Otherwise (a new head, or enough labels) the default is ``from_source``
      (:func:`default_regime`): with ``cv`` (k >= 2), :func:`choose_regime` from it; without
      (k = 1, a new head), ``from_source``.

    Args:
        cv: regime -> cross-validated accuracies (%) per fold; empty when k = 1.
        source_acc: the source head's accuracy (%) on the labelled samples (reported in the
            reason only); None when no source head predicts the target's classes, or it is not
            measured (a source-free run).
        chance: 100 / number of target classes (%).
        labels_per_class: mean labelled samples per class (:func:`labelled_per_class`).
        margin, noise: of :func:`choose_regime`.
        new_head: whether the target's classes need a new head; None: ``source_acc is None``.

    Returns:
        ``(regime, basis, reason)``; basis ``"cross-validation"``, ``"few labels, a source head"``
        or ``"k = 1, a new head"``.
    """
    new_head = source_acc is None if new_head is None else new_head
    default = default_regime(new_head, labels_per_class)
    if default == "finetune_all":
        measured = "" if source_acc is None else f"; the source head gets {source_acc:.1f}% of them (chance {chance:.1f}%)"
        if cv:
            means = {r: statistics.fmean(v) for r, v in cv.items()}
            best = max(means, key=lambda r: (means[r], r == "finetune_all"))
            measured += f"; cross-validation's best: {best} {means[best]:.1f}% (finetune_all {means['finetune_all']:.1f}%)"
        return ("finetune_all", "few labels, a source head",
                f"{labels_per_class:.1f} labelled samples per class (< {FROM_SOURCE_AT:g}){measured}: too few to overrule "
                f"the source head (one held-out sample per class per fold at most); keep it and fine-tune gently")
    if cv:
        regime, reason = choose_regime(cv, margin, noise, default)
        return regime, "cross-validation", reason
    return ("from_source", "k = 1, a new head",
            "one labelled sample per class cannot be cross-validated and no source head predicts these classes: "
            "a new head, trained with the backbone at the full learning rate")


# ---------------------------------------------------------------- the advice
def require_labels(config: Config) -> None:
    """Refuse to advise without labelled target samples.

    Raises:
        ConfigError: when ``data.target_labels_per_class`` is 0.
    """
    if config.data.target_labels_per_class == 0:
        raise ConfigError("tladapt advise needs labelled target samples: set data.target_labels_per_class >= 1 "
                          "(e.g. --set data.target_labels_per_class=3). Which regime wins depends on the target's "
                          "labels; a distance between unlabelled domains does not tell (experiments/inductive.md)")


@dataclass
class Advice:
    """What ``tladapt advise`` measured and advises for one task.

    Attributes:
        task: ``"source->target"``.
        k: ``data.target_labels_per_class``.
        labels_per_class: mean labelled samples per class the split gives.
        regime: the advised key of :data:`tladapt.transfer.REGIMES`.
        reason: why, with the numbers.
        basis: ``"cross-validation"``, ``"few labels, a source head"`` or ``"k = 1, a new head"``
            (:func:`decide`).
        cv: regime -> held-out accuracies (%) per fold; empty for k = 1.
        source_acc_labelled: the source head's accuracy (%) on the labelled samples, or None
            when the source head does not predict the target's classes.
        chance: 100 / number of target classes.
        classic: the CS231n rule's regime (reference only) and ``classic_reason``.
        distances: layer -> ``{"pad", "mmd"}`` (unlabelled, for the classic rule).
        early_layer: the layer of ``linear_early`` (the hidden layer of smallest PAD).
    """

    task: str
    k: int
    labels_per_class: float
    regime: str
    reason: str
    basis: str
    cv: dict[str, list[float]] = field(default_factory=dict)
    source_acc_labelled: float | None = None
    chance: float = 0.0
    classic: str = ""
    classic_reason: str = ""
    distances: dict[str, dict[str, float]] = field(default_factory=dict)
    early_layer: str = "input"


def advise_task(config: Config, task: str, model_dir: str | Path, seed: int | None = None, *, steps: int = 300,
                folds: int = FOLDS, margin: float = MARGIN, noise: float = NOISE, small_below: float = SMALL_BELOW,
                similar_below: float = SIMILAR_BELOW, progress=None,
                distances: dict[str, dict[str, float]] | None = None) -> Advice:
    """Advise a regime for one task from its labelled target samples and a source model.

    Args:
        config: the task's config; ``data.target_labels_per_class`` gives the labelled samples.
        task: ``"source->target"``.
        model_dir: the source model's run directory (shared by every regime).
        seed: whose labelled split to use (default: the config's first seed), as a trainer
            run of that seed draws it.
        steps, folds, margin, noise: of the cross-validation (:func:`cross_validate_regimes`,
            :func:`choose_regime`); the decision is :func:`decide`.
        small_below, similar_below: thresholds of the classic rule (:func:`recommend`).
        progress: as :func:`cross_validate_regimes`.
        distances: the classic rule's distances, when already measured for this task and
            model (an earlier advice's ``distances``); see :func:`classic_rule`.

    Raises:
        ConfigError: when ``data.target_labels_per_class`` is 0, or as :func:`load_model`.
    """
    require_labels(config)
    k = config.data.target_labels_per_class
    seed = config.experiment.seeds[0] if seed is None else seed
    rule = classic_rule(config, task, model_dir, small_below, similar_below, distances)
    early, per_class = rule["early_layer"], rule["labels_per_class"]
    splits = task_splits(config, task, seed)
    labelled = splits.target_labelled
    head = head_for(model_dir, labelled.classes)  # as a fine-tuning run from the model picks its head
    chance = 100.0 / len(torch.unique(labelled.y))
    source_acc = None
    if head is not None and not config.data.source_free:
        source_acc = source_accuracy(load_model(model_dir, head=head)[1], labelled)
    advice = Advice(task, k, per_class, "", "", "", source_acc_labelled=source_acc, chance=chance,
                    classic=rule["regime"], classic_reason=rule["reason"], distances=rule["distances"], early_layer=early)
    if int(torch.bincount(labelled.y).max()) >= 2:
        advice.cv = cross_validate_regimes(config, model_dir, labelled, early, task.split("->")[0].strip(), folds,
                                           steps, seed, progress)
    advice.regime, advice.basis, advice.reason = decide(advice.cv, source_acc, chance, per_class, margin, noise,
                                                        new_head=head is None)
    return advice
