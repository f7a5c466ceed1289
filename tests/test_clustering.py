"""Unsupervised transfer: clustering scores exact against scikit-learn and brute force, the
clusterings, the transferred dimension reduction, and `tladapt cluster`."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from tladapt.clustering import (METHODS, ari, cluster_accuracy, cluster_labels, contingency, knn_accuracy, nmi,
                                reduction_scores, score_clusters)

CASES = [(40, 3, 3), (40, 3, 5), (25, 4, 2), (60, 5, 5), (12, 2, 1), (30, 1, 3)]  # n, classes, clusters


@pytest.mark.parametrize("n, classes, clusters", CASES)
def test_nmi_and_ari_equal_scikit_learn(n, classes, clusters):
    g = np.random.default_rng(n + classes + clusters)
    for _ in range(5):
        y, z = g.integers(0, classes, n), g.integers(0, clusters, n)
        assert nmi(y, z) == pytest.approx(normalized_mutual_info_score(y, z), abs=1e-12)
        assert ari(y, z) == pytest.approx(adjusted_rand_score(y, z), abs=1e-12)


def brute_force_accuracy(y, z):
    """Best one-to-one class -> cluster matching by trying every injective map."""
    classes, clusters = np.unique(y), np.unique(z)
    best = 0
    for image in itertools.permutations(list(clusters) + [None] * max(0, len(classes) - len(clusters)), len(classes)):
        best = max(best, sum(int(np.sum((y == c) & (z == m))) for c, m in zip(classes, image) if m is not None))
    return 100.0 * best / len(y)


@pytest.mark.parametrize("n, classes, clusters", CASES)
def test_cluster_accuracy_is_the_best_one_to_one_matching(n, classes, clusters):
    g = np.random.default_rng(7 * n + classes)
    for _ in range(5):
        y, z = g.integers(0, classes, n), g.integers(0, clusters, n)
        assert cluster_accuracy(y, z) == pytest.approx(brute_force_accuracy(y, z), abs=1e-12)


def test_known_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    relabelled = np.array([5, 5, 3, 3, 9, 9])  # the same partition under other names
    assert score_clusters(y, relabelled) == score_clusters(y, y)
    s = score_clusters(y, relabelled)
    assert (s.nmi, s.ari, s.acc) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(100.0))
    assert contingency(y, [0, 1, 0, 1, 0, 1]).tolist() == [[1, 1], [1, 1], [1, 1]]
    assert cluster_accuracy(y, [0, 0, 0, 0, 0, 0]) == pytest.approx(100 / 3)  # one cluster matches one class
    assert ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)  # worse than chance
    with pytest.raises(ValueError, match="one length"):
        contingency([0, 1], [0])


@pytest.mark.parametrize("method", METHODS)
# well-separated blobs make a nearest-neighbour graph of disconnected parts: scikit-learn says so
@pytest.mark.filterwarnings("ignore:Graph is not fully connected:UserWarning")
def test_every_method_finds_separated_blobs(method):
    g = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    x = g.normal(size=(120, 6)) * 0.3 + np.eye(4, 6)[y] * 6
    assert cluster_accuracy(y, cluster_labels(x, 4, method, seed=0)) == 100.0
    with pytest.raises(ValueError, match="unknown clustering method 'dbscan'"):
        cluster_labels(x, 4, "dbscan")


def test_a_reduction_fit_on_the_source_keeps_what_the_targets_own_pca_drops():
    """The class signal lies in a direction of small target variance but large source variance:
    PCA fit on the target keeps its noisy high-variance directions, PCA fit on the source keeps
    the informative one, and the k-NN oracle score shows it."""
    g = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    target = np.column_stack([(2 * y - 1) * 1.0 + 0.2 * g.normal(size=200), 5 * g.normal(size=(200, 3))])
    source = np.column_stack([20 * g.normal(size=300), 0.1 * g.normal(size=(300, 3))])
    scores = reduction_scores(source, target, y, n_components=1)
    assert scores["pca_source"] > 95 and scores["pca_target"] < 70
    assert knn_accuracy(target[:, :1], y) == pytest.approx(scores["pca_source"])  # PCA on the source = axis 0


def test_the_cluster_command_scores_raw_and_run_representations(tmp_path, fast_config, capsys):
    from tladapt.cli import main
    from tladapt.clustering import cluster_task
    from tladapt.experiment import run_experiment

    [src] = run_experiment(fast_config())
    config = tmp_path / "c.toml"
    config.write_text("[data]\ndataset = 'office_caltech10_surf'\ntasks = ['webcam->dslr']\n"
                      "[experiment]\nseeds = [0, 1]\n")
    assert main(["cluster", str(config), "--features", src["run_dir"], "--method", "kmeans", "--reduce", "20"]) == 0
    out = capsys.readouterr().out
    assert "oracle NMI" in out and "ORACLE" in out and "PCA fit on source" in out and "encoder: source_only" in out
    rows = cluster_task(fast_config("experiment.seeds=[0, 1]"), "webcam->dslr",
                        {"input": "input", "source_only": src["run_dir"]}, ["kmeans"])
    assert [r.representation for r in rows] == ["input", "source_only"] and len(rows[0].scores) == 2
    mean_acc = sum(s.acc for s in rows[1].scores) / 2
    assert f"{mean_acc:.1f}" in out  # the printed mean is the library's
    assert main(["cluster", str(config), "--features", str(tmp_path / "missing")]) == 2
