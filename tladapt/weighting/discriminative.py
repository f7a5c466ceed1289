"""The density ratio from a probabilistic domain classifier (Bickel, Brückner and Scheffer,
"Discriminative learning under covariate shift", JMLR 10, 2009; conventions:
:mod:`tladapt.weighting`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from tladapt.weighting.common import ArrayLike, _as_pair, _as_points, _check_positive, _out_device


class DiscriminativeRatio:
    """Density ratio from a probabilistic domain classifier (Bickel et al., JMLR 2009).

    A classifier trained to tell target (label 1) from source (label 0) estimates
    ``p(T|x)``; by Bayes' rule ``p_T(x) / p_S(x) = p(T|x) / p(S|x) * n_s / n_t`` (the
    class-prior correction), computed from log-probabilities for stability. With
    logistic regression (the default) the log-ratio is linear in ``x``, exact e.g. for
    two Gaussians with a shared covariance.

    Args:
        classifier: an unfitted scikit-learn style classifier with ``fit`` and
            ``predict_proba`` (cloned before fitting); default
            ``sklearn.linear_model.LogisticRegression(max_iter=1000)``.
        clip: if given (> 0), weights are clipped to ``[0, clip]`` ...
        normalize: ... and then (if True) divided by their mean over the rows passed to
            :meth:`weights` (pass the source sample), so the final maximum may exceed
            ``clip``. Default False: the plain ratio estimate.

    Attributes (after :meth:`fit`): classifier_ (fitted), n_source_, n_target_.

    Raises:
        ValueError: ``clip`` not > 0; a classifier without ``predict_proba``.
    """

    def __init__(self, classifier: Any = None, *, clip: float | None = None, normalize: bool = False):
        if classifier is not None and not (
            hasattr(classifier, "fit") and hasattr(classifier, "predict_proba")
        ):
            raise ValueError("classifier must have fit() and predict_proba() (a probabilistic classifier)")
        self.classifier = classifier
        self.clip = None if clip is None else _check_positive(clip, "clip")
        self.normalize = bool(normalize)

    def fit(self, source: ArrayLike, target: ArrayLike, *, device=None) -> "DiscriminativeRatio":
        """Fit the domain classifier on ``source`` (label 0) and ``target`` (label 1).

        Args: source ``(n_s, d)``, target ``(n_t, d)`` (arrays or tensors); ``device``:
        default output device of :meth:`weights` (default that of ``source`` / CPU).
        Returns ``self``. Raises ValueError on bad input.
        """
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression

        xs, xt = _as_pair(source, target)
        self.device_ = _out_device(device, source, target)
        X = torch.cat([xs.cpu(), xt.cpu()]).numpy()
        y = np.r_[np.zeros(xs.shape[0], dtype=np.int64), np.ones(xt.shape[0], dtype=np.int64)]
        clf = LogisticRegression(max_iter=1000) if self.classifier is None else clone(self.classifier)
        clf.fit(X, y)
        self.classifier_ = clf
        self.n_source_, self.n_target_ = xs.shape[0], xt.shape[0]
        self.n_features_ = xs.shape[1]
        return self

    def weights(self, x: ArrayLike, *, device=None) -> torch.Tensor:
        """``w(x) = p(T|x) / p(S|x) * n_s / n_t`` (then clip / normalise): float32 ``(n,)``.

        Default device: that of ``x`` if a tensor, else the one chosen at :meth:`fit`.
        Raises ValueError if not fitted or on bad ``x``.
        """
        if not hasattr(self, "classifier_"):
            raise ValueError("DiscriminativeRatio is not fitted: call fit(source, target) first")
        xx = _as_points(x, "x")
        if xx.shape[1] != self.n_features_:
            raise ValueError(f"x has {xx.shape[1]} features, the fit had {self.n_features_}")
        out = _out_device(device, x) if (device is not None or isinstance(x, torch.Tensor)) else self.device_
        X = xx.cpu().numpy()
        classes = list(self.classifier_.classes_)
        i_s, i_t = classes.index(0), classes.index(1)
        if hasattr(self.classifier_, "predict_log_proba"):
            with np.errstate(divide="ignore"):
                lp = self.classifier_.predict_log_proba(X)
        else:
            with np.errstate(divide="ignore"):
                lp = np.log(self.classifier_.predict_proba(X))
        log_w = lp[:, i_t] - lp[:, i_s] + math.log(self.n_source_ / self.n_target_)
        w = np.exp(np.clip(log_w, -700.0, 700.0))
        if self.clip is not None:
            w = np.minimum(w, self.clip)
        if self.normalize:
            m = w.mean()
            if m > 0:
                w = w / m
        return torch.from_numpy(w).to(device=out, dtype=torch.float32)


def discriminative_weights(
    source: ArrayLike,
    target: ArrayLike,
    *,
    classifier: Any = None,
    clip: float | None = None,
    normalize: bool = False,
    device=None,
) -> torch.Tensor:
    """Domain-classifier density-ratio weights at the source points (Bickel et al., JMLR 2009).

    ``DiscriminativeRatio(classifier, clip=clip, normalize=normalize).fit(source,
    target).weights(source)``: ``w(x) = p(T|x) / p(S|x) * n_s / n_t``, optionally clipped
    to ``[0, clip]`` and then normalised to mean 1 over the source.

    Args:
        source: ``(n_s, d)``; target: ``(n_t, d)`` (arrays or tensors).
        classifier, clip, normalize: as :class:`DiscriminativeRatio`.
        device: output device; default that of ``source`` if a tensor, else CPU.

    Returns:
        ``(n_s,)`` float32 tensor of weights >= 0.

    Raises:
        ValueError: bad input or parameters, naming the argument.
    """
    model = DiscriminativeRatio(classifier, clip=clip, normalize=normalize)
    dev = _out_device(device, source, target)
    return model.fit(source, target, device=dev).weights(source, device=dev)
