"""Unsupervised transfer: cluster a target with no labels anywhere, in representations
transferred from a source, and score it against the hidden target labels (an oracle).

The last row of Pan & Yang's taxonomy (TKDE 2010): source and target are both unlabelled and
the target task is unsupervised (clustering, dimension reduction). What transfers is the
representation the target is clustered in:

* ``input``: the raw target inputs (no transfer, the baseline);
* a run directory: the ``layer`` features (default the backbone's top) of a trained model,
  e.g. a source-only model, a model after UDA alignment (DANN, MMD, CORAL), or a self-taught
  representation (``autoencoder`` / ``simclr`` pre-training on the unlabelled source).

Clusterings (scikit-learn): k-means (Lloyd, ``n_init = 10``), a Gaussian mixture with
diagonal covariances (full ones are singular in 500-800 dimensions from a few hundred
samples), and spectral clustering on a 10-nearest-neighbour graph (Ng, Jordan & Weiss,
NIPS 2001). The number of clusters is the number of target classes, the usual protocol of
clustering benchmarks.

Scores (:func:`score_clusters`) read the hidden target labels and are therefore **oracle**
numbers, named so everywhere they are shown: NMI (arithmetic normalisation, Strehl & Ghosh,
JMLR 2002), ARI (Hubert & Arabie, J. Classification 1985), and cluster accuracy: the best
one-to-one matching of clusters to classes (Hungarian algorithm, ``scipy.optimize.
linear_sum_assignment``).

Dimension reduction transferred from the source (:func:`reduction_scores`): PCA fit on the
source and applied to the target, against PCA fit on the target itself and the raw input,
scored by the accuracy of a k-NN classifier on the target under stratified cross-validation
(oracle: it reads target labels; nothing is fit on them but the k-NN of each fold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ClusterScores", "contingency", "nmi", "ari", "cluster_accuracy", "score_clusters", "cluster_labels",
           "check_clustering", "METHODS", "SPECTRAL_NEIGHBOURS", "represent", "knn_folds", "check_knn", "knn_accuracy",
           "check_reduction", "reduction_scores", "cluster_task", "clusterable_target"]

METHODS = ("kmeans", "gmm", "spectral")


@dataclass(frozen=True)
class ClusterScores:
    """Oracle scores of one clustering against the hidden labels.

    Attributes:
        nmi: normalised mutual information in [0, 1].
        ari: adjusted Rand index in [-1, 1] (0: chance).
        acc: cluster accuracy in percent (best one-to-one cluster -> class matching).
    """

    nmi: float
    ari: float
    acc: float


# ---------------------------------------------------------------- the scores
def contingency(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts ``n[i, j]`` of samples of the ``i``-th distinct class with the ``j``-th distinct
    cluster (distinct values in sorted order), ``(classes, clusters)`` int64.

    Raises:
        ValueError: for inputs of different lengths, empty or not 1-D.
    """
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"expected two non-empty label vectors of one length, got {y_true.size} and {y_pred.size}")
    _, rows = np.unique(y_true, return_inverse=True)
    _, cols = np.unique(y_pred, return_inverse=True)
    table = np.zeros((rows.max() + 1, cols.max() + 1), dtype=np.int64)
    np.add.at(table, (rows, cols), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Normalised mutual information ``I(U; V) / ((H(U) + H(V)) / 2)`` (natural logs cancel).

    1.0 when both partitions are one cluster (``H = 0``), as scikit-learn defines it.
    """
    n = contingency(y_true, y_pred)
    total = n.sum()
    h_u, h_v = _entropy(n.sum(1)), _entropy(n.sum(0))
    if h_u == 0 and h_v == 0:
        return 1.0
    nz = n > 0
    p = n[nz] / total
    outer = np.outer(n.sum(1), n.sum(0))[nz] / total**2
    mi = float((p * np.log(p / outer)).sum())
    return max(mi, 0.0) / ((h_u + h_v) / 2)


def ari(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie, 1985):
    ``(Σ C(n_ij, 2) - E) / ((Σ C(a_i, 2) + Σ C(b_j, 2)) / 2 - E)`` with
    ``E = Σ C(a_i, 2) Σ C(b_j, 2) / C(n, 2)``; 1.0 for identical partitions, also in the
    degenerate cases where the denominator is 0 or there is no pair (one sample), as
    scikit-learn's ``adjusted_rand_score``."""
    n = contingency(y_true, y_pred).astype(np.float64)
    if n.sum() < 2:  # one sample: no pair to disagree on
        return 1.0
    pairs = lambda m: (m * (m - 1) / 2).sum()  # noqa: E731
    index, a, b = pairs(n), pairs(n.sum(1)), pairs(n.sum(0))
    expected = a * b / pairs(np.array([n.sum()]))
    denom = (a + b) / 2 - expected
    return 1.0 if denom == 0 else float((index - expected) / denom)


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Cluster accuracy in percent: the fraction of samples whose cluster is matched to their
    class under the best one-to-one matching (``linear_sum_assignment`` on the contingency
    table; with more clusters than classes, unmatched clusters count as wrong)."""
    from scipy.optimize import linear_sum_assignment

    n = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(n, maximize=True)
    return 100.0 * float(n[rows, cols].sum()) / float(n.sum())


def score_clusters(y_true: np.ndarray, y_pred: np.ndarray) -> ClusterScores:
    """NMI, ARI and cluster accuracy of a clustering ``y_pred`` against labels ``y_true`` (oracle)."""
    return ClusterScores(nmi(y_true, y_pred), ari(y_true, y_pred), cluster_accuracy(y_true, y_pred))


# ---------------------------------------------------------------- clustering and representations
#: Neighbours of each sample in the spectral clustering's affinity graph (the sample included).
SPECTRAL_NEIGHBOURS = 10


def check_clustering(n_samples: int, n_clusters: int, method: str) -> None:
    """That ``method`` can cluster ``n_samples`` samples into ``n_clusters`` (what
    :func:`cluster_labels` would otherwise leave to scikit-learn's errors).

    Raises:
        ValueError: for an unknown method, ``n_clusters`` outside ``[1, n_samples]``, or
            spectral clustering of fewer samples than its :data:`SPECTRAL_NEIGHBOURS`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}: expected one of {', '.join(METHODS)}")
    if not 1 <= n_clusters <= n_samples:
        raise ValueError(f"{method} cannot make {n_clusters} clusters of {n_samples} samples: expected 1 to "
                         f"{n_samples} clusters")
    if method == "spectral" and n_samples < SPECTRAL_NEIGHBOURS:
        raise ValueError(f"spectral clustering links each sample to its {SPECTRAL_NEIGHBOURS} nearest neighbours "
                         f"(itself included): expected at least {SPECTRAL_NEIGHBOURS} samples, got {n_samples}")


def cluster_labels(x: np.ndarray, n_clusters: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Cluster the rows of ``x`` without labels.

    Args:
        x: ``(n, d)`` float features.
        n_clusters: k, from 1 to n.
        method: ``"kmeans"`` (``KMeans(n_init=10)``), ``"gmm"`` (``GaussianMixture``,
            diagonal covariances, ``reg_covar = 1e-4``, k-means initialisation) or
            ``"spectral"`` (``SpectralClustering``, affinity graph of the
            :data:`SPECTRAL_NEIGHBOURS` = 10 nearest neighbours, k-means label assignment;
            needs n >= 10).
        seed: the estimator's ``random_state``.

    Returns:
        ``(n,)`` int cluster indices.

    Raises:
        ValueError: as :func:`check_clustering` (an unknown method, too many clusters,
            spectral clustering of fewer than 10 samples), before any fit.
    """
    from sklearn.cluster import KMeans, SpectralClustering
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, dtype=np.float64)
    check_clustering(len(x), n_clusters, method)
    if method == "kmeans":
        return KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(x)
    if method == "gmm":
        return GaussianMixture(n_clusters, covariance_type="diag", reg_covar=1e-4, random_state=seed).fit_predict(x)
    return SpectralClustering(n_clusters, affinity="nearest_neighbors", n_neighbors=SPECTRAL_NEIGHBOURS,
                              random_state=seed, assign_labels="kmeans").fit_predict(x)


def represent(domain, spec: str, layer: str = "backbone") -> np.ndarray:
    """The representation ``spec`` of every sample of ``domain``, ``(n, d)`` float32 numpy.

    Args:
        domain: a :class:`tladapt.data.Domain`.
        spec: ``"input"`` (the flattened model inputs) or a run directory whose model's
            ``layer`` features are used (:func:`tladapt.transfer.extract_features`).
        layer: as :func:`tladapt.transfer.extract_features`.

    Raises:
        ConfigError: as :func:`tladapt.transfer.load_model`.
    """
    from tladapt.transfer import extract_features, load_model

    if spec == "input":
        return domain.inputs().flatten(1).float().numpy()
    _, model = load_model(spec, domain.input_shape)
    return extract_features(model, domain.inputs(), layer).numpy()


def knn_folds(y: np.ndarray, folds: int = 5, seed: int = 0):
    """The stratified cross-validation of :func:`knn_accuracy`: ``min(folds, smallest class)``
    folds (every fold tests a sample of every class), shuffled with ``seed``.

    Args:
        y: ``(n,)`` int class labels.

    Returns:
        A ``sklearn.model_selection.StratifiedKFold``.

    Raises:
        ValueError: when ``folds < 2`` or a class has fewer than 2 samples (no split trains
            and tests on it).
    """
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.unique(np.asarray(y), return_counts=True)[1].min())
    if folds < 2 or smallest < 2:
        raise ValueError(f"k-NN cross-validation needs at least 2 folds and 2 samples of every class, got {folds} "
                         f"folds and {smallest} sample(s) in the smallest class")
    return StratifiedKFold(min(folds, smallest), shuffle=True, random_state=seed)


def check_knn(y: np.ndarray, k: int, folds: int = 5, seed: int = 0) -> int:
    """That a ``k``-NN classifier can be cross-validated on labels ``y`` as :func:`knn_accuracy`
    does; returns the number of folds it uses.

    Raises:
        ValueError: as :func:`knn_folds`, or for ``k`` outside ``[1, smallest training fold]``
            (a fold's classifier needs ``k`` training samples).
    """
    cv = knn_folds(y, folds, seed)
    y = np.asarray(y)
    smallest = min(len(train) for train, _ in cv.split(np.zeros((len(y), 1)), y))
    if not 1 <= k <= smallest:
        raise ValueError(f"k = {k} neighbours: expected 1 to {smallest} (the fewest training samples of the "
                         f"{cv.get_n_splits()} cross-validation folds of {len(y)} samples)")
    return cv.get_n_splits()


def knn_accuracy(x: np.ndarray, y: np.ndarray, k: int = 1, folds: int = 5, seed: int = 0) -> float:
    """Accuracy (%) of a Euclidean k-NN classifier under stratified cross-validation on
    ``(x, y)`` (an oracle score of a representation: it reads ``y``).

    Args:
        x: ``(n, d)`` float features.
        y: ``(n,)`` int class labels.
        k: neighbours, at most the smallest training fold (:func:`check_knn`).
        folds: at most this many folds: fewer when the smallest class has fewer samples
            (:func:`knn_folds`: ``min(folds, smallest class)``, every fold testing every class).
        seed: the shuffle of the folds.

    Raises:
        ValueError: as :func:`check_knn` (a class of fewer than 2 samples, ``k`` too large).
    """
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    check_knn(y, k, folds, seed)
    return 100.0 * float(cross_val_score(KNeighborsClassifier(k), x, y, cv=knn_folds(y, folds, seed)).mean())


def check_reduction(n_components: int, dims: int, n_source: int, n_target: int) -> None:
    """That PCA to ``n_components`` can be fit on both the source and the target.

    Raises:
        ValueError: unless ``1 <= n_components <= min(dims, n_source, n_target)`` (PCA keeps
            at most as many components as features and as samples; clamping would score
            another reduction than the one asked for).
    """
    limit = min(dims, n_source, n_target)
    if not 1 <= n_components <= limit:
        raise ValueError(f"{n_components} components: expected 1 to {limit} (the fewest of {dims} input dimensions, "
                         f"{n_source} source and {n_target} target samples)")


def reduction_scores(source_x: np.ndarray, target_x: np.ndarray, target_y: np.ndarray, n_components: int,
                     k: int = 1, seed: int = 0) -> dict[str, float]:
    """Dimension reduction transferred from the source, scored on the target by k-NN (oracle).

    Args:
        source_x, target_x: ``(n_s, d)`` and ``(n_t, d)`` float inputs.
        target_y: ``(n_t,)`` int target labels (read by the k-NN score only).
        n_components: the reduced dimension, from 1 to ``min(d, n_s, n_t)``.
        k, seed: as :func:`knn_accuracy`.

    Returns:
        ``{"input": acc, "pca_target": acc, "pca_source": acc}``: k-NN accuracy (%) on the
        raw target, on PCA fit on the target, and on PCA fit on the **source** and applied
        to the target (the transferred reduction), each with exactly ``n_components``
        dimensions.

    Raises:
        ValueError: as :func:`check_reduction` and :func:`check_knn`, before any fit.
    """
    from sklearn.decomposition import PCA

    check_reduction(n_components, target_x.shape[1], len(source_x), len(target_x))
    check_knn(target_y, k, seed=seed)
    on_source = PCA(n_components, random_state=seed).fit(source_x).transform(target_x)
    on_target = PCA(n_components, random_state=seed).fit_transform(target_x)
    return {"input": knn_accuracy(target_x, target_y, k, seed=seed),
            "pca_target": knn_accuracy(on_target, target_y, k, seed=seed),
            "pca_source": knn_accuracy(on_source, target_y, k, seed=seed)}


@dataclass(frozen=True)
class ClusterRow:
    """One (task, representation, method) cell: oracle scores over seeds."""

    task: str
    representation: str
    method: str
    scores: list[ClusterScores]


def cluster_task(config, task: str, representations: dict[str, str], methods: list[str], layer: str = "backbone"
                 ) -> list[ClusterRow]:
    """Cluster the target of ``task`` in each representation with each method, one clustering
    per seed of ``config.experiment.seeds``, scored against the hidden labels (oracle).

    Args:
        config: a :class:`tladapt.config.Config` (dataset, class subsets, seeds).
        task: ``"source->target"``; only the target is clustered.
        representations: label -> ``"input"`` or a run directory (:func:`represent`).
        methods: names from :data:`METHODS`.
        layer: the feature layer of run representations.

    Returns:
        One :class:`ClusterRow` per representation and method, in the order given.

    Raises:
        ConfigError: as :func:`clusterable_target`.
        ValueError: as :func:`check_clustering` for a method the target does not suit
            (checked before any representation is computed).
    """
    target = clusterable_target(config, task)
    y = target.y.numpy()
    k = len(np.unique(y))
    for method in methods:
        check_clustering(len(y), k, method)
    rows = []
    for label, spec in representations.items():
        x = represent(target, spec, layer)
        for method in methods:
            rows.append(ClusterRow(task, label, method,
                                   [score_clusters(y, cluster_labels(x, k, method, seed)) for seed in config.experiment.seeds]))
    return rows


def clusterable_target(config, task: str):
    """The target domain of ``task`` (class subsets applied) that :func:`cluster_task` clusters.

    Raises:
        ConfigError: when it has fewer than :data:`tladapt.data.tasks.MIN_CLASSES` classes (one
            cluster of one class scores NMI = ARI = 1 and 100 % whatever the representation);
            as :func:`tladapt.data.tasks.load_task`.
    """
    from tladapt.data.tasks import MIN_CLASSES, load_task
    from tladapt.errors import ConfigError

    _, target = load_task(config.data, task)
    n = len(np.unique(target.y.numpy()))
    if n < MIN_CLASSES:
        raise ConfigError(f"data.target_classes: the target of task {task!r} has {n} class "
                          f"({', '.join(target.classes)}): a clustering score needs at least {MIN_CLASSES} classes "
                          f"(one class scores NMI = ARI = 1 whatever the representation)")
    return target


def run_label(spec: str) -> str:
    """A short name for a representation: ``input``, or a run's method from its results.json."""
    import json

    path = Path(spec)
    if spec == "input" or not (path / "results.json").is_file():
        return spec
    return json.loads((path / "results.json").read_text()).get("method", path.name)
