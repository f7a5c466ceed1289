"""Unsupervised transfer: clustering scores exact against scikit-learn and brute force, the
clusterings, the transferred dimension reduction, and `tladapt cluster`."""

import itertools
import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from tladapt.clustering import (METHODS, SPECTRAL_NEIGHBOURS, ari, check_knn, cluster_accuracy, cluster_labels,
                                contingency, knn_accuracy, nmi, reduction_scores, score_clusters)

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
    assert "Dimension reduction to 20 dims, scored by 1-NN accuracy (%) on the target under 5-fold CV (ORACLE)" in out
    rows = cluster_task(fast_config("experiment.seeds=[0, 1]"), "webcam->dslr",
                        {"input": "input", "source_only": src["run_dir"]}, ["kmeans"])
    assert [r.representation for r in rows] == ["input", "source_only"] and len(rows[0].scores) == 2
    mean_acc = sum(s.acc for s in rows[1].scores) / 2
    assert f"{mean_acc:.1f}" in out  # the printed mean is the library's
    assert main(["cluster", str(config), "--features", str(tmp_path / "missing")]) == 2


def test_scores_of_one_to_three_samples_equal_scikit_learn_without_warnings():
    # every labelling of 1-3 samples; ari([1], [1]) was nan with a RuntimeWarning (0 / 0 expected pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in (1, 2, 3):
            for y in itertools.product(range(n), repeat=n):
                for z in itertools.product(range(n), repeat=n):
                    assert ari(y, z) == pytest.approx(adjusted_rand_score(y, z), abs=1e-12), (y, z)
                    assert nmi(y, z) == pytest.approx(normalized_mutual_info_score(y, z), abs=1e-12), (y, z)
    assert ari([1], [1]) == 1.0


def test_spectral_clustering_needs_its_neighbours_and_is_refused_before_scikit_learn_fails():
    from sklearn.cluster import SpectralClustering

    g = np.random.default_rng(0)
    x = g.normal(size=(SPECTRAL_NEIGHBOURS - 1, 3))
    with pytest.raises(ValueError, match="n_neighbors"):  # the limit is scikit-learn's own
        SpectralClustering(2, affinity="nearest_neighbors", n_neighbors=SPECTRAL_NEIGHBOURS).fit(x)
    with pytest.raises(ValueError, match="expected at least 10 samples, got 9"):
        cluster_labels(x, 2, "spectral")
    assert len(set(cluster_labels(np.vstack([x, x[:1] + 5]), 2, "spectral"))) == 2  # 10 samples: fine
    with pytest.raises(ValueError, match="kmeans cannot make 10 clusters of 9 samples"):
        cluster_labels(x, 10, "kmeans")


def test_knn_folds_are_the_smallest_class_at_most_and_k_is_bounded_by_the_training_folds():
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    g = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], [10, 10, 3])  # the smallest class has 3 samples: 3 folds, not 5
    x = g.normal(size=(23, 4)) + y[:, None]
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    expected = 100 * cross_val_score(KNeighborsClassifier(2), x, y, cv=folds).mean()
    assert knn_accuracy(x, y, k=2) == pytest.approx(expected) and check_knn(y, 2) == 3
    fewest = min(len(train) for train, _ in folds.split(x, y))
    assert knn_accuracy(x, y, k=fewest) > 0
    with pytest.raises(ValueError, match=f"k = {fewest + 1} neighbours: expected 1 to {fewest} "):
        knn_accuracy(x, y, k=fewest + 1)
    with pytest.raises(ValueError, match="2 samples of every class, got 5 folds and 1 sample"):
        knn_accuracy(x[:21], np.append(y[:20], 2))


def test_a_reduction_is_never_clamped():
    g = np.random.default_rng(2)
    source, target, y = g.normal(size=(30, 6)), g.normal(size=(20, 6)), np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match=r"7 components: expected 1 to 6 \(the fewest of 6 input dimensions, "
                                         r"30 source and 20 target samples\)"):
        reduction_scores(source, target, y, 7)
    with pytest.raises(ValueError, match="0 components"):
        reduction_scores(source, target, y, 0)
    full = reduction_scores(source, target, y, 6)  # every component: a rotation, k-NN distances unchanged
    assert full["pca_target"] == pytest.approx(full["input"])


@pytest.fixture
def no_clustering(monkeypatch):
    """Fail the test if a clustering or a representation is computed (the checks come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr("tladapt.clustering.cluster_labels", refuse)
    monkeypatch.setattr("tladapt.clustering.represent", refuse)


SURF = ["--set", "data.dataset='office_caltech10_surf'", "--set", "data.tasks=['webcam->dslr']"]
DSLR_CLASSES = [12, 21, 12, 13, 10, 24, 22, 12, 8, 23]  # samples per class of the bundled dslr (157)


def fewest_training_samples(counts, folds=5):
    """The smallest training fold of scikit-learn's stratified split (seed 0) of these class sizes."""
    from sklearn.model_selection import StratifiedKFold

    y = np.repeat(np.arange(len(counts)), counts)
    return min(len(train) for train, _ in StratifiedKFold(folds, shuffle=True, random_state=0).split(y[:, None], y))


@pytest.mark.parametrize("argv, message", [
    (["--knn", "0", "--reduce", "10"], "--knn must be an integer >= 1 (neighbours), got 0"),
    (["--knn", "3"], "--knn sets the k-NN score of the --reduce table: give --reduce N too"),
    (["--reduce", "-5"], "--reduce must be an integer >= 1 (the reduced dimension), got -5"),
    (["--reduce", "0"], "--reduce must be an integer >= 1"),
    (["--reduce", "100000"], "--reduce 100000 on webcam->dslr: 100000 components: expected 1 to 157 (the fewest of "
                             "800 input dimensions, 295 source and 157 target samples)"),
    (["--knn", "100000", "--reduce", "10"], "--reduce 10 --knn 100000 (the k-NN score) on the target of webcam->dslr: "
                                            f"k = 100000 neighbours: expected 1 to {fewest_training_samples(DSLR_CLASSES)} "),
])
def test_the_cluster_command_refuses_bad_options_before_any_work(tmp_path, capsys, no_clustering, argv, message):
    from tladapt.cli import main

    config = tmp_path / "c.toml"
    config.write_text("[experiment]\nseeds = [0]\n")
    assert main(["cluster", str(config), *SURF, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_cluster_command_checks_methods_and_features_against_the_data(tmp_path, fast_config, capsys,
                                                                         monkeypatch, no_clustering):
    from tladapt.cli import main
    from tladapt.experiment import run_experiment

    config = tmp_path / "c.toml"
    config.write_text("[experiment]\nseeds = [0]\n")
    # two classes of dslr, 8 + 10 samples, against a graph of 20 neighbours
    monkeypatch.setattr("tladapt.clustering.SPECTRAL_NEIGHBOURS", 20)
    small = [*SURF, "--set", "data.source_classes=[8, 4]", "--set", "data.target_classes=[8, 4]"]
    assert main(["cluster", str(config), *small, "--method", "spectral"]) == 2
    assert "--method spectral on the target of webcam->dslr: spectral clustering links each sample to its 20 " \
           "nearest neighbours (itself included): expected at least 20 samples, got 18" in capsys.readouterr().err
    assert main(["cluster", str(config), *small]) == 2  # the default methods include spectral
    assert "(it is one of the default methods: choose others with --method)" in capsys.readouterr().err
    [digits] = run_experiment(fast_config("data.dataset='mnist_usps_jda'", "data.tasks=['mnist->usps']",
                                          "model.backbone='lenet'", "trainer.steps=2", "trainer.eval_every=2"))
    assert main(["cluster", str(config), *SURF, "--method", "kmeans", "--features", digits["run_dir"]]) == 2
    err = capsys.readouterr().err
    assert f"--features {digits['run_dir']} (--layer backbone) on the target of webcam->dslr (800,): lenet expects" \
           in err and "Traceback" not in err
    [surf] = run_experiment(fast_config("trainer.steps=2", "trainer.eval_every=2"))
    assert main(["cluster", str(config), *SURF, "--method", "kmeans", "--features", surf["run_dir"],
                 "--layer", "nope"]) == 2
    assert "(--layer nope) on the target of webcam->dslr (800,): unknown layer 'nope'" in capsys.readouterr().err

