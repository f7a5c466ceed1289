"""Importance weights for covariate shift: KMM, KLIEP and a discriminative density ratio.

Under covariate shift (``p_T(y|x) = p_S(y|x)``, ``p_T(x) != p_S(x)``) a source sample
reweighted by ``w(x) = p_T(x) / p_S(x)`` is an unbiased stand-in for the target
distribution. This package estimates ``w`` at the source points in three ways, one module each
(:mod:`~tladapt.weighting.kmm`, whose QP solvers are in :mod:`~tladapt.weighting.kmm_solvers`;
:mod:`~tladapt.weighting.kliep`; :mod:`~tladapt.weighting.discriminative`; what they share is in
:mod:`~tladapt.weighting.common`):

* :func:`kmm_weights` -- Kernel Mean Matching (Huang, Smola, Gretton, Borgwardt and
  Schölkopf, "Correcting sample selection bias by unlabeled data", NIPS 2007): the
  weights whose weighted source mean embedding is closest to the target's, a QP.
* :class:`KLIEP` / :func:`kliep_weights` -- the Kullback-Leibler Importance Estimation
  Procedure (Sugiyama, Nakajima, Kashima, von Bünau and Kawanabe, NIPS 2007; Sugiyama
  et al., "Direct importance estimation for covariate shift adaptation", AISM 60(4),
  2008): a Gaussian-basis model of ``w`` fitted by maximum target likelihood, with
  its likelihood cross-validation for the bandwidth.
* :class:`DiscriminativeRatio` / :func:`discriminative_weights` -- a probabilistic
  domain classifier, ``w(x) = p(T|x) / p(S|x) * n_s / n_t`` (e.g. Bickel, Brückner and
  Scheffer, "Discriminative learning under covariate shift", JMLR 10, 2009).

Kernel convention
-----------------
One Gaussian kernel throughout::

    k(x, y) = exp(-||x - y||^2 / (2 * sigma^2))

``sigma`` is the kernel *width* (a length, in the units of the features), as in the
KMM and KLIEP papers. It is the same kernel as :mod:`tladapt.discrepancy`, whose
``bandwidth`` argument is ``sigma**2`` (a variance): ``gaussian_kernel(x, y,
bandwidth=sigma**2)`` there is ``k`` here. scikit-learn's ``rbf`` ``gamma`` is
``1 / (2 sigma^2)``. The default width is the median heuristic, :func:`median_sigma`:
the square root of :mod:`tladapt.discrepancy`'s ``"median"`` bandwidth on the pooled
sample (so the two modules pick the same kernel on the same data).

Inputs and outputs
------------------
Every estimator takes ``source`` ``(n_s, d)`` and ``target`` ``(n_t, d)`` as NumPy
arrays or torch tensors (any real dtype, any device; 1-D data must be reshaped to
``(n, 1)``) and returns the weights as a ``float32`` tensor of shape ``(n_s,)`` on
``device`` if given, otherwise on the device of ``source`` (CPU for NumPy input).
Bad input raises :class:`ValueError` naming the argument before any computation.
"""

from __future__ import annotations

from tladapt.weighting.common import ArrayLike, median_sigma
from tladapt.weighting.discriminative import DiscriminativeRatio, discriminative_weights
from tladapt.weighting.kliep import KLIEP, KLIEP_SIGMA_SCALES, kliep_weights
from tladapt.weighting.kmm import KMM_METHODS, KMMInfo, kmm_weights
from tladapt.weighting.kmm_solvers import solve_kmm_qp

__all__ = [
    "ArrayLike",
    "KMMInfo",
    "KLIEP",
    "DiscriminativeRatio",
    "median_sigma",
    "kmm_weights",
    "solve_kmm_qp",
    "kliep_weights",
    "discriminative_weights",
    "KMM_METHODS",
    "KLIEP_SIGMA_SCALES",
]
