"""Distances between two domains' features: proxy A-distance and MMD.

Both use no class labels, so they may be computed on the whole (unlabelled) target.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from tladapt.discrepancy import mmd


def _as_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array with at least 2 rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def proxy_a_distance(source, target, *, classifier: str = "logistic", seed: int = 0,
                     test_fraction: float = 0.5, balance: bool = True, repeats: int = 5) -> float:
    """Proxy A-distance ``2 (1 - 2 eps)``, clipped to ``[0, 2]``.

    Ben-David, Blitzer, Crammer & Pereira, "Analysis of representations for domain
    adaptation", NIPS 2007 (and Ganin et al., JMLR 2016, §5.1.4): ``eps`` is the
    held-out error of a linear classifier trained to tell source (0) from target (1)
    samples. 0 means the domains are indistinguishable, 2 perfectly separable.

    Procedure: with ``balance`` the larger domain is subsampled (seeded) to the size of
    the smaller one, so chance error is 0.5 whatever the sizes (otherwise a majority
    vote already gives a large distance for unequal domains); a stratified, seeded
    ``test_fraction`` split is held out; features are standardised on the training half;
    the classifier is an L2 logistic regression with ``C`` chosen by 3-fold CV on the
    training half from ``{0.001, 0.01, 0.1, 1, 10}`` (``"logistic"``) or a ``LinearSVC``
    with ``C = 1`` (``"svm"``). ``eps`` is averaged over ``repeats`` seeded
    subsample/split draws (seeds ``seed .. seed + repeats - 1``) to reduce its variance.

    A held-out error above 0.5 (worse than chance) gives 0 after clipping. It happens
    systematically on features standardised per domain (e.g. the bundled SURF inputs):
    both domains then have mean exactly 0, so whatever mean difference the training
    half shows is reversed in the held-out half.

    Args:
        source: ``(n, d)`` float tensor or array (any float dtype; computed in float64).
        target: ``(m, d)``, same ``d``.
        classifier: ``"logistic"`` or ``"svm"``.
        seed: seeds the subsampling, the split and the classifier.
        repeats: number of draws averaged, >= 1.
        test_fraction: held-out share, in (0, 1).
        balance: subsample to equal domain sizes first.

    Returns:
        A Python float in ``[0, 2]``.

    Raises:
        ValueError: for non-2-D inputs, fewer than 2 rows, NaN/inf, different feature
            sizes, fewer than 4 samples per domain after balancing, an unknown
            ``classifier`` or ``test_fraction`` outside (0, 1).
    """
    xs, xt = _as_numpy(source, "source"), _as_numpy(target, "target")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"source has {xs.shape[1]} features, target {xt.shape[1]}: they must match")
    if classifier not in ("logistic", "svm"):
        raise ValueError(f"classifier must be 'logistic' or 'svm', got {classifier!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    errors = [_domain_error(xs, xt, classifier, seed + r, test_fraction, balance) for r in range(repeats)]
    error = float(np.mean(errors))
    return float(np.clip(2.0 * (1.0 - 2.0 * error), 0.0, 2.0))


def _domain_error(xs, xt, classifier, seed, test_fraction, balance) -> float:
    """Held-out error of one linear domain classifier (one draw of :func:`proxy_a_distance`)."""
    rng = np.random.default_rng(seed)
    if balance:
        n = min(len(xs), len(xt))
        xs = xs[rng.permutation(len(xs))[:n]]
        xt = xt[rng.permutation(len(xt))[:n]]
    if min(len(xs), len(xt)) < 4:
        raise ValueError(f"proxy A-distance needs at least 4 samples per domain, got {len(xs)} and {len(xt)}")
    x = np.concatenate([xs, xt])
    y = np.concatenate([np.zeros(len(xs), dtype=np.int64), np.ones(len(xt), dtype=np.int64)])
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    if classifier == "logistic":
        make = lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))  # noqa: E731
        folds = min(3, int(np.bincount(y_tr).min()))
        if folds >= 2:
            best = max(_CS, key=lambda c: cross_val_score(make(c), x_tr, y_tr, cv=folds).mean())
        else:
            best = 1.0
        model = make(best)
    else:
        model = make_pipeline(StandardScaler(), LinearSVC(C=1.0, max_iter=5000, random_state=seed))
    model.fit(x_tr, y_tr)
    return float((model.predict(x_te) != y_te).mean())


_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def mmd_distance(source, target, *, max_samples: int = 1000, seed: int = 0) -> float:
    """Squared MMD between two feature sets (:func:`tladapt.discrepancy.mmd`, Gretton et al., JMLR 2012).

    Gaussian multi-kernel with the median-heuristic bandwidth times the DAN scales,
    biased (V-statistic) estimator. The median bandwidth makes it invariant to a
    global rescaling of the features, so values of different layers are comparable
    in order of magnitude (not exactly). Each domain is subsampled (seeded) to at most
    ``max_samples`` rows to bound the ``O(n^2)`` cost.

    Args:
        source: ``(n, d)`` float tensor or array.
        target: ``(m, d)``, same ``d``.
        max_samples: cap on rows per domain.
        seed: seeds the subsampling.

    Returns:
        A Python float, ``>= 0`` (up to rounding).

    Raises:
        ValueError: as :func:`proxy_a_distance` for malformed inputs.
    """
    xs = torch.from_numpy(_as_numpy(source, "source"))
    xt = torch.from_numpy(_as_numpy(target, "target"))
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"source has {xs.shape[1]} features, target {xt.shape[1]}: they must match")
    gen = torch.Generator().manual_seed(seed)
    xs = xs[torch.randperm(len(xs), generator=gen)[:max_samples]]
    xt = xt[torch.randperm(len(xt), generator=gen)[:max_samples]]
    return float(mmd(xs, xt))
