"""Instance weighting for covariate shift: KMM, KLIEP or a discriminative density ratio.

Under covariate shift (``p_T(y|x) = p_S(y|x)``, ``p_T(x) != p_S(x)``) the target risk
is the source risk reweighted by the importance ``w(x) = p_T(x) / p_S(x)``. This
plugin estimates ``w`` at every labelled source training point once per run (or
periodically, in feature space) with one of the estimators of
:mod:`tladapt.weighting` and hands the trainer per-sample weights for the source
cross-entropy:

* ``estimator = "kmm"``: Kernel Mean Matching, Huang, Smola, Gretton, Borgwardt &
  Schölkopf, "Correcting Sample Selection Bias by Unlabeled Data", NIPS 2007
  (:func:`tladapt.weighting.kmm_weights`);
* ``estimator = "kliep"``: the Kullback-Leibler Importance Estimation Procedure,
  Sugiyama, Nakajima, Kashima, von Bünau & Kawanabe, "Direct Importance Estimation
  with Model Selection and Its Application to Covariate Shift Adaptation", NIPS 2007
  (:class:`tladapt.weighting.KLIEP`), with its likelihood cross-validation of the width;
* ``estimator = "discriminative"``: a logistic-regression domain classifier,
  ``w(x) = p(T|x) / p(S|x) * n_s / n_t``, Bickel, Brückner & Scheffer,
  "Discriminative Learning Under Covariate Shift", JMLR 10, 2009
  (:class:`tladapt.weighting.DiscriminativeRatio`).

Kernel convention (KMM, KLIEP): ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))``; ``sigma``
is a width (a length). ``sigma = 0`` (the default) is the median heuristic
(:func:`tladapt.weighting.median_sigma`, the median pairwise distance of the pooled
source + target sample); KLIEP then cross-validates ``median * (0.1, 0.2, 0.5, 1, 2, 5)``
by held-out target log-likelihood (no labels involved).

How the loss is reduced
-----------------------
With ``w`` the final weights (after ``clip`` and ``normalize``), the trainer's source
term for a batch of ``b`` source samples is::

    loss/source = (1/b) * sum_{i in batch} w_i * CE_i

(:meth:`tladapt.trainer.Trainer.losses`; no per-batch renormalisation). With
``normalize = true`` the weights have mean exactly 1 over the whole source training
split, so the expectation of this term over uniformly drawn batches is
``(1/n_s) sum_i w_i CE_i = sum_i q_i CE_i`` with ``q_i = w_i / n_s`` a probability
vector: the importance-weighted empirical risk, on the same scale as the unweighted
loss (so learning rates and the weights of other loss terms keep their meaning).
A batch's own mean weight varies around 1; the estimate is unbiased, not
self-normalised per batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

import tladapt
from tladapt.config import ConfigError
from tladapt.weighting import KLIEP, DiscriminativeRatio, kmm_weights

__all__ = ["InstanceWeighting", "estimate_weights", "clip_and_normalize", "effective_sample_size"]


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of non-negative weights.

    Args:
        weights: ``(n,)`` float tensor, any device, ``w >= 0``.

    Returns:
        A Python float in ``[1, n]`` (``n`` for uniform weights); 0.0 if all weights are 0.
        Reads the value to the host (call outside the training step).
    """
    w = weights.detach().double()
    denom = float((w * w).sum())
    return float(w.sum()) ** 2 / denom if denom > 0 else 0.0


def clip_and_normalize(weights: torch.Tensor, clip: float | None, normalize: bool) -> torch.Tensor:
    """Cap the weights at ``clip`` and/or rescale them to mean 1, in float64 on the input's device.

    * ``normalize`` only: ``w / mean(w)``.
    * ``clip`` only: ``min(w, clip)`` (the raw estimator's scale is kept).
    * both: ``min(c * w, clip)`` with the one scale ``c > 0`` that makes the mean exactly 1
      (found exactly by sorting: a water-filling), so the maximum is ``<= clip`` *and*
      the mean is 1. Needs ``clip >= 1``; if fewer than ``n / clip`` weights are
      positive, mean 1 is unreachable and the positive weights are all set to ``clip``.

    Args:
        weights: ``(n,)`` non-negative float tensor.
        clip: the maximum weight (``> 0``; ``>= 1`` with ``normalize``) or None.
        normalize: rescale to mean 1 over the ``n`` given weights.

    Returns:
        ``(n,)`` float64 tensor on the same device.

    Raises:
        ValueError: negative or non-finite weights, all weights zero with ``normalize``,
            ``clip <= 0``, or ``clip < 1`` with ``normalize``.
    """
    w = weights.detach().to(torch.float64)
    if w.ndim != 1 or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be a finite, non-negative (n,) tensor")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip!r}")
    if not normalize:
        return w if clip is None else w.clamp(max=clip)
    n = w.numel()
    total = float(w.sum())
    if total <= 0:
        raise ValueError("all weights are zero: cannot normalise to mean 1")
    if clip is None:
        return w * (n / total)
    if clip < 1:
        raise ValueError(f"clip must be >= 1 when normalising to mean 1, got {clip!r}")
    # k largest weights clipped, the rest scaled by c_k = (n - k clip) / (sum of the rest);
    # the right k is the first one where c_k * w_(k+1) <= clip (f(c) = sum min(c w, clip)
    # is non-decreasing in c, so the solution is unique on the positive weights).
    s, _ = torch.sort(w, descending=True)
    rest = torch.flip(torch.cumsum(torch.flip(s, [0]), 0), [0])  # rest[k] = sum s[k:]
    for k in range(n):
        if float(rest[k]) <= 0:
            break
        c = (n - k * clip) / float(rest[k])
        if c * float(s[k]) <= clip * (1 + 1e-12):
            return (w * c).clamp(max=clip)
    return torch.where(w > 0, torch.full_like(w, clip), w)


def estimate_weights(source: torch.Tensor, target: torch.Tensor, options: "InstanceWeighting.Options",
                     seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Raw importance weights ``w(x_i) ~ p_T(x_i) / p_S(x_i)`` at the source points.

    Args:
        source: ``(n_s, d)`` float tensor (inputs flattened to 2-D, or features).
        target: ``(n_t, d)`` float tensor, same ``d``, same device.
        options: the plugin's options (``estimator``, ``sigma``, ``kmm_B``,
            ``kmm_eps``, ``kliep_centers``, ``kliep_folds``, ``disc_C``).
        seed: seeds KLIEP's centre and fold draws.

    Returns:
        ``(weights, info)``: ``(n_s,)`` float32 tensor on ``source``'s device, ``w >= 0``,
        *before* ``clip`` / ``normalize`` (KMM: ``beta``, sum in
        ``n_s (1 +- eps)``; KLIEP: mean 1 by its constraint; discriminative: the plain
        ratio estimate); ``info``: JSON-serialisable details (``sigma`` used,
        KMM's solver and certified MMD² gap, KLIEP's cross-validation scores).
    """
    o = options
    sigma = o.sigma if o.sigma > 0 else None
    if o.estimator == "kmm":
        eps = o.kmm_eps if o.kmm_eps >= 0 else None
        w, info = kmm_weights(source, target, sigma=sigma, B=o.kmm_B, eps=eps, return_info=True,
                              device=source.device)
        return w, {"sigma": info.sigma, "solver": info.method, "mmd2_gap": info.gap, "eps": info.eps,
                   "converged": bool(info.converged)}
    if o.estimator == "kliep":
        model = KLIEP(sigma, n_centers=o.kliep_centers, n_folds=o.kliep_folds, seed=seed)
        model.fit(source, target, device=source.device)
        return model.weights(source), {"sigma": model.sigma_, "cv_scores": {f"{s:.6g}": v for s, v in model.cv_scores_.items()},
                                       "log_likelihood": model.score_}
    from sklearn.linear_model import LogisticRegression

    model = DiscriminativeRatio(LogisticRegression(C=o.disc_C, max_iter=1000)).fit(source, target, device=source.device)
    return model.weights(source), {"C": o.disc_C}


class InstanceWeighting:
    """Importance-weights the source cross-entropy by ``w(x) ~ p_T(x) / p_S(x)``.

    ``tladapt_fit_start`` estimates the weights over the whole ``trainer.source``
    (``(n_s, ...)``, labels unused) against the whole unlabelled ``trainer.target``,
    then applies ``clip`` and ``normalize`` (:func:`clip_and_normalize`) and keeps
    them as ``self.weights``, a ``(n_s,)`` float32 tensor on the training device.
    ``tladapt_source_weights`` returns ``self.weights[batch.idx_s]`` (a gather on the
    device, no host sync); the trainer's source term is then
    ``mean_i(w_i * CE_i)`` over the batch (see the module docstring).

    ``space = "input"``: the estimator sees the model inputs, flattened to
    ``(n, prod(input_shape))`` float32. ``space = "features"``: it sees the backbone
    features ``(n, feature_dim)`` of the current model, computed in eval mode under
    ``torch.no_grad()`` (outside any step's autograd graph), at fit start (the
    initial, untrained backbone) and again after every ``refresh_every`` steps in
    ``tladapt_step_end`` (a periodic whole-dataset pass that reads to the host).

    Logged at each evaluation: ``weights/histogram`` (a histogram of the weights),
    ``weights/ess`` (Kish's effective sample size ``(sum w)^2 / sum w^2``),
    ``weights/ess_fraction`` (``ess / n_s``), ``weights/max``, ``weights/min``, ``weights/sigma``
    (the kernel width used; KMM and KLIEP) and ``weights/estimate_seconds`` (wall time
    spent estimating so far, refreshes included). ``results.json`` gets an
    ``instance_weighting`` entry with the same numbers and the estimator's details.

    Raises:
        ConfigError: naming ``plugins.instance_weighting.<key>`` for an option out of range.
    """

    capture_safe = True  # per-step work: device ops of static shapes (trainer.compile = "cudagraph")

    @dataclass
    class Options:
        """``[plugins.instance_weighting]`` options."""

        estimator: Literal["kmm", "kliep", "discriminative"] = tladapt.option(
            "kmm", "kmm (Huang et al. 2007) | kliep (Sugiyama et al. 2007) | discriminative (Bickel et al. 2009)")
        space: Literal["input", "features"] = tladapt.option(
            "input", "estimate on raw inputs, or on backbone features refreshed every refresh_every steps")
        refresh_every: int = tladapt.option(
            500, "space='features': re-estimate after every this many steps (0: only at fit start)", ge=0)
        sigma: float = tladapt.option(
            0.0, "kernel width of k = exp(-|x-y|^2/(2 sigma^2)) (kmm, kliep); 0: median heuristic "
                 "(kliep: cross-validated over median * 0.1..5)", ge=0)
        kmm_B: float = tladapt.option(1000.0, "KMM upper bound B on each weight", gt=0)
        kmm_eps: float = tladapt.option(
            -1.0, "KMM sum tolerance |sum beta - n_s| <= n_s eps; < 0: the paper's (sqrt(n_s) - 1)/sqrt(n_s)")
        kliep_centers: int = tladapt.option(100, "KLIEP Gaussian basis functions (target points; paper: 100)", ge=1)
        kliep_folds: int = tladapt.option(5, "KLIEP likelihood cross-validation folds", ge=2)
        disc_C: float = tladapt.option(
            1.0, "inverse L2 strength of the logistic-regression domain classifier (discriminative)", gt=0)
        clip: float = tladapt.option(0.0, "maximum weight (after normalisation: >= 1); 0: no clipping", ge=0)
        normalize: bool = tladapt.option(True, "rescale the weights to mean 1 over the source training split")

    def __init__(self, options: Options):
        o = options
        where = "plugins.instance_weighting"  # single options are bounded in Options; these combine two
        if o.normalize and 0 < o.clip < 1:
            raise ConfigError(f"{where}.clip must be >= 1 with normalize = true (weights have mean 1), got {o.clip}")
        if o.estimator == "kmm" and o.kmm_eps >= 0 and o.kmm_B * 1.0 < 1.0 - o.kmm_eps:
            raise ConfigError(f"{where}.kmm_B={o.kmm_B} is infeasible with kmm_eps={o.kmm_eps}: "
                              f"need kmm_B >= 1 - kmm_eps")
        self.options = o
        self.weights: torch.Tensor | None = None
        self.raw_weights: torch.Tensor | None = None
        self.seconds = 0.0
        self.estimates = 0
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ estimation
    @staticmethod
    def _points(trainer, domain, space: str) -> torch.Tensor:
        """``(n, d)`` float32 points of ``domain`` in ``space`` (``input``/``features``), on the device."""
        with torch.no_grad():
            return domain.map(lambda x: x.flatten(1) if space == "input" else trainer.backbone(x)).float()

    def estimate(self, trainer) -> None:
        """(Re-)estimate ``self.weights`` ``(n_source,)`` float32 on ``trainer.device``."""
        o = self.options
        start = time.perf_counter()
        was_training = trainer.modules.training
        if o.space == "features":
            trainer.modules.eval()
        try:
            xs, xt = self._points(trainer, trainer.source, o.space), self._points(trainer, trainer.target, o.space)
        finally:
            trainer.modules.train(was_training)
        raw, info = estimate_weights(xs, xt, o, seed=trainer.seed)
        raw = raw.clamp(min=0.0)  # a QP solution may hold -1e-12 for a zero weight
        final = clip_and_normalize(raw, o.clip or None, o.normalize)
        raw, final = raw.to(trainer.device, torch.float32), final.to(trainer.device, torch.float32)
        if self.weights is None:
            self.raw_weights, self.weights = raw, final
        else:  # a refresh writes in place: a captured step keeps reading the same tensor
            self.raw_weights.copy_(raw)
            self.weights.copy_(final)
        self.seconds += time.perf_counter() - start
        self.estimates += 1
        self.info = info

    def summary(self) -> dict[str, float]:
        """ESS, its fraction of ``n_s``, max and min weight, sigma and estimation time (host floats)."""
        w = self.weights
        ess = effective_sample_size(w)
        out = {"weights/ess": ess, "weights/ess_fraction": ess / w.numel(), "weights/max": float(w.max()),
               "weights/min": float(w.min()), "weights/estimate_seconds": self.seconds}
        if "sigma" in self.info:
            out["weights/sigma"] = float(self.info["sigma"])
        return out

    # ------------------------------------------------------------------ hooks
    @tladapt.hookimpl
    def tladapt_fit_start(self, trainer):
        if not trainer.resuming:  # a resumed run gets its weights from tladapt_load_state_dict
            self.estimate(trainer)

    @tladapt.hookimpl
    def tladapt_state_dict(self):
        """The weights (final and raw), the estimator's details and the time and count of estimates."""
        return {"weights": self.weights, "raw_weights": self.raw_weights, "info": self.info,
                "seconds": self.seconds, "estimates": self.estimates}

    @tladapt.hookimpl
    def tladapt_load_state_dict(self, trainer, state):
        """Restore :meth:`tladapt_state_dict` (weights onto the training device)."""
        self.weights = state["weights"].to(trainer.device)
        self.raw_weights = state["raw_weights"].to(trainer.device)
        self.info, self.seconds, self.estimates = state["info"], state["seconds"], state["estimates"]

    @tladapt.hookimpl
    def tladapt_source_weights(self, batch):
        return self.weights[batch.idx_s]

    @tladapt.hookimpl
    def tladapt_step_end(self, trainer, step):
        o = self.options
        if o.space == "features" and o.refresh_every and (step + 1) % o.refresh_every == 0 \
                and step + 1 < trainer.config.trainer.steps:
            self.estimate(trainer)

    @tladapt.hookimpl
    def tladapt_evaluate(self, trainer, metrics):
        metrics.update(self.summary())
        trainer.histogram("weights/histogram", self.weights)

    @tladapt.hookimpl
    def tladapt_fit_end(self, trainer, results):
        o = self.options
        results["instance_weighting"] = {
            "estimator": o.estimator, "space": o.space, "n_source": int(self.weights.numel()),
            "estimates": self.estimates, **{k.split("/", 1)[1]: v for k, v in self.summary().items()},
            "info": self.info,
        }
