"""Model selection after the fact: pick, per task and seed, the evaluation point and/or the
configuration that a validator scores best, reading only recorded files (``results.json``).

DomainBed's lesson (Gulrajani & Lopez-Paz, ICLR 2021): selection is a step of its own, over
recorded runs, so that any validator can be applied, compared and re-computed without
retraining. ``oracle`` selects with the target labels; it is labelled oracle in every output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from tladapt.errors import ConfigError

ORACLE_TAG = "oracle/target_acc"
Over = Literal["steps", "configs", "both"]

#: Columns that identify one table row (a method on a task of an experiment).
GROUP = ["experiment", "dataset", "task", "method"]


@dataclass(frozen=True)
class Selection:
    """How each reported number was chosen.

    Attributes:
        name: ``"last"`` (the last evaluation point: no choice, label-free), ``"oracle"``
            (the best target accuracy: uses target labels), a validator name (``"im"``) or
            another recorded tag (``"metrics/source_val_acc"``).
        tag: the evaluation-record key whose value is maximised or minimised (``"step"``
            for ``last``).
        direction: ``"max"`` or ``"min"``.
        over: ``"steps"`` (evaluation points of each run), ``"configs"`` (the last point of
            each configuration of a method) or ``"both"``.
    """

    name: str
    tag: str
    direction: str
    over: Over = "steps"

    @property
    def is_oracle(self) -> bool:
        """Whether the choice reads target labels."""
        return self.tag.startswith("oracle/")

    @property
    def label(self) -> str:
        """What the selection is, in words, for table headers (oracle ones say so)."""
        where = {"steps": "evaluation point of each run", "configs": "configuration (at its last step)",
                 "both": "configuration and evaluation point"}[self.over]
        if self.name == "last":
            return "selection: the last evaluation point of each run (label-free)"
        if self.is_oracle:
            return f"selection: ORACLE (target labels; {self.tag}) picks the {where}: an upper bound, not a result"
        best = "highest" if self.direction == "max" else "lowest"
        return f"selection: label-free, the {where} with the {best} {self.tag}"


def metric_direction(tag: str) -> str:
    """Which way a reported tag is better: ``"min"`` for a training loss (``loss/...``),
    ``"max"`` for everything else (accuracies)."""
    return "min" if tag.startswith("loss/") else "max"


def make_selection(name: str, directions: dict[str, str], over: Over = "steps") -> Selection:
    """Resolve ``--select`` / ``--validator`` against the runs' recorded validator directions.

    Args:
        name: ``last``, ``oracle``, a validator name (``im`` or ``validator/im``) or an
            accuracy tag (``metrics/source_val_acc``; maximised).
        directions: ``{validator name: direction}`` as recorded in the runs.
        over: see :class:`Selection`.

    Raises:
        ConfigError: for an unknown name (listing the recorded validators), or ``last``
            over configurations (the last step picks no configuration).
    """
    if over not in ("steps", "configs", "both"):
        raise ConfigError(f"--over {over!r}: expected steps, configs or both")
    if name == "last":
        if over != "steps":
            raise ConfigError("--validator last picks no configuration: name a validator to select over configs")
        return Selection("last", "step", "max", over)
    if name == "oracle":
        return Selection("oracle", ORACLE_TAG, "max", over)
    short = name.removeprefix("validator/")
    if short in directions:
        return Selection(short, f"validator/{short}", directions[short], over)
    if "/" in name and name.endswith("_acc"):
        return Selection(name, name, "max", over)
    raise ConfigError(f"unknown validator {name!r}: the runs recorded {', '.join(sorted(directions)) or 'none'} "
                      f"(or use last, oracle, or an accuracy tag such as metrics/source_val_acc)")


def choose(evals: pd.DataFrame, selection: Selection, metric: str = ORACLE_TAG) -> pd.DataFrame:
    """Apply ``selection`` to the evaluation records of finished runs.

    Args:
        evals: one row per evaluation point (:func:`tladapt.tables.evaluations_frame`), with
            columns ``GROUP``, ``config_id``, ``seed``, ``run_dir``, ``step`` and the tags.
        selection: what to maximise or minimise, and over what.
        metric: the tag reported for the chosen model (the oracle target accuracy by default).

    Returns:
        One row per ``GROUP`` (+ ``config_id`` when selecting over steps) and seed, with
        ``selected`` (``metric`` at the chosen point), ``last`` (``metric`` at the last point
        of the chosen run), ``oracle_best`` (the best ``metric`` among the candidates: the
        upper bound of any selection; the lowest for a loss, :func:`metric_direction`),
        ``score``, ``step``, ``config_id`` and ``run_dir`` of the choice. A candidate
        without a score (NaN) is never chosen unless all are.

    Raises:
        ConfigError: when a tag is not recorded in any run.
    """
    for tag in {selection.tag, metric} - {"step"}:
        if tag not in evals.columns:
            raise ConfigError(f"no run recorded {tag!r}; recorded tags are "
                              f"{', '.join(c for c in evals.columns if '/' in c)}")
    keys = GROUP + (["config_id"] if selection.over == "steps" else []) + ["seed"]
    last_step = evals.groupby("run_dir")["step"].transform("max")
    candidates = evals[last_step == evals["step"]] if selection.over == "configs" else evals
    score = candidates[selection.tag].astype(float)
    ordered = score if selection.direction == "max" else -score
    candidates = candidates.assign(_order=ordered.fillna(-np.inf), score=score)
    # the first best candidate in record order (earliest step, earliest run) wins ties
    best = candidates.loc[candidates.groupby(keys, sort=False)["_order"].idxmax()]
    last = evals[last_step == evals["step"]].set_index("run_dir")[metric]
    grouped = candidates.groupby(keys, sort=False)[metric]
    bound = (grouped.min() if metric_direction(metric) == "min" else grouped.max()).rename("oracle_best")
    out = best[keys + ["config_id", "run_dir", "step", "score"]].loc[:, lambda d: ~d.columns.duplicated()].copy()
    out["selected"] = best[metric].to_numpy()
    out["last"] = last.loc[best["run_dir"]].to_numpy()
    return out.join(bound, on=keys).reset_index(drop=True)


def summarize(chosen: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample std (``ddof = 1``; NaN for one seed) and count over seeds of ``selected``,
    ``last`` and ``oracle_best`` per ``by`` group, in first-appearance order."""
    stats = chosen.groupby(by, sort=False)[["selected", "last", "oracle_best"]].agg(["mean", "std", "count"])
    stats.columns = [f"{col}_{stat}".replace("_count", "_n") for col, stat in stats.columns]
    stats = stats.rename(columns={"selected_n": "n"}).drop(columns=["last_n", "oracle_best_n"])
    return stats.reset_index()


def weighted_spearman(scores: np.ndarray, accuracies: np.ndarray, power: float = 2.0) -> float:
    """Weighted Spearman correlation between validator scores and accuracies (Musgrave et al.,
    "Three new validators and a large-scale benchmark ranking for UDA", 2022, section 4), which
    weighs the checkpoints a validator ranks high most, since those are the ones it would select.

    Each point gets the weight ``w_i = (r_i / max_j r_j) ** power`` where ``r_i`` is the dense
    rank of its score (1 for the lowest); the correlation is the ``w``-weighted Pearson
    correlation of the weighted ranks of scores and accuracies, the weighted rank of a value
    being the total weight of the smaller values plus ``(c + 1) / 2`` times the mean weight
    of its ``c`` ties (the definition of the ``WeightedCorr`` package that the paper's code
    uses). Non-finite scores count as the lowest score. Pass scores already oriented so that
    higher is better (negate those of "min" validators).

    Args:
        scores, accuracies: ``(n,)`` floats, ``n >= 2``.
        power: the weight exponent; 2 as in the paper's code.

    Returns:
        The correlation in ``[-1, 1]``; NaN when either side is constant.
    """
    s = np.asarray(scores, dtype=np.float64).copy()
    a = np.asarray(accuracies, dtype=np.float64)
    finite = np.isfinite(s)
    if not finite.any():
        return float("nan")
    s[~finite] = s[finite].min()
    from scipy.stats import rankdata  # scipy.stats takes seconds to import: only when correlating

    dense = rankdata(s, method="dense")
    w = (dense / dense.max()) ** power

    def weighted_rank(x: np.ndarray) -> np.ndarray:
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        group_weight = np.bincount(inverse, weights=w)
        below = np.cumsum(group_weight) - group_weight
        return (below + (counts + 1) / 2 * group_weight / counts)[inverse]

    rs, ra = weighted_rank(s), weighted_rank(a)
    ms, ma = np.average(rs, weights=w), np.average(ra, weights=w)
    cov = np.sum(w * (rs - ms) * (ra - ma))
    var = np.sum(w * (rs - ms) ** 2) * np.sum(w * (ra - ma) ** 2)
    return float(cov / np.sqrt(var)) if var > 0 else float("nan")
