"""The bundled real benchmarks: exact 1-NN reproduction, sizes, preprocessing, errors.

The reference numbers below are typed in from the papers / the data README, on
purpose independently of ``tladapt.data.datasets`` (which must agree with them).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

import tladapt.data.datasets as ds
from tladapt.data.datasets import DATASETS, describe_datasets, load_domain
from tladapt.data.domain import Domain

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "tladapt" / "data" / "bundled"
SHARED = REPO.parent / "shared" / "data"

# JDA (Long et al., ICCV 2013), Table 2, column "NN".
JDA_NN_SURF = {
    ("caltech", "amazon"): 23.70, ("caltech", "webcam"): 25.76, ("caltech", "dslr"): 25.48,
    ("amazon", "caltech"): 26.00, ("amazon", "webcam"): 29.83, ("amazon", "dslr"): 25.48,
    ("webcam", "caltech"): 19.86, ("webcam", "amazon"): 22.96, ("webcam", "dslr"): 59.24,
    ("dslr", "caltech"): 26.27, ("dslr", "amazon"): 28.50, ("dslr", "webcam"): 63.39,
}
JDA_NN_SURF_MEAN = 31.37
JDA_NN_OTHER = {
    "mnist_usps_jda": {("usps", "mnist"): 44.70, ("mnist", "usps"): 65.94},
    "coil20_jda": {("coil1", "coil2"): 83.61, ("coil2", "coil1"): 82.78},
}

# Per-domain sizes and per-class counts (labels 0..K-1), from the data README.
COUNTS = {
    "office_caltech10_surf": {
        "amazon": [92, 82, 94, 99, 100, 100, 99, 100, 94, 98],
        "caltech": [151, 110, 100, 138, 85, 128, 133, 94, 87, 97],
        "dslr": [12, 21, 12, 13, 10, 24, 22, 12, 8, 23],
        "webcam": [29, 21, 31, 27, 27, 30, 43, 30, 27, 30],
    },
    "mnist_usps_jda": {
        "mnist": [196, 227, 207, 202, 196, 179, 191, 206, 195, 201],
        "usps": [352, 241, 165, 166, 166, 126, 139, 172, 129, 144],
    },
    "coil20_jda": {"coil1": [36] * 20, "coil2": [36] * 20},
    "amazon_review_400": {
        "books": [1000, 1000], "dvd": [1000, 999], "electronics": [1000, 998], "kitchen": [1000, 999],
    },
    "digits": {
        "usps": [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644],
        "usps_test": [359, 264, 198, 166, 200, 160, 170, 147, 166, 177],
        "mnist": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    },
}
INPUT_SHAPES = {
    "office_caltech10_surf": (800,), "mnist_usps_jda": (1, 16, 16), "coil20_jda": (1, 32, 32),
    "amazon_review_400": (400,), "digits": (1, 28, 28),
}
OFFICE_CLASSES = ("back_pack", "bike", "calculator", "headphones", "keyboard",
                  "laptop_computer", "monitor", "mouse", "mug", "projector")


def one_nn_accuracy(dataset: str, source: str, target: str) -> float:
    """Percent accuracy of a Euclidean 1-NN fit on all source samples (float64 data)."""
    s = load_domain(dataset, source, dtype=torch.float64)
    t = load_domain(dataset, target, dtype=torch.float64)
    knn = KNeighborsClassifier(n_neighbors=1).fit(s.x.reshape(len(s), -1).numpy(), s.y.numpy())
    pred = knn.predict(t.x.reshape(len(t), -1).numpy())
    return 100.0 * float(np.mean(pred == t.y.numpy()))


# ------------------------------------------------------------------ (1) 1-NN reproduction

@pytest.mark.parametrize("task", sorted(JDA_NN_SURF))
def test_surf_1nn_matches_jda_table2(task):
    assert round(one_nn_accuracy("office_caltech10_surf", *task), 2) == JDA_NN_SURF[task]


def test_surf_1nn_mean_matches_jda_table2():
    accs = [one_nn_accuracy("office_caltech10_surf", *task) for task in JDA_NN_SURF]
    assert round(float(np.mean(accs)), 2) == JDA_NN_SURF_MEAN
    assert round(float(np.mean(list(JDA_NN_SURF.values()))), 2) == JDA_NN_SURF_MEAN


@pytest.mark.parametrize(
    "dataset,task", [(d, t) for d, tasks in JDA_NN_OTHER.items() for t in sorted(tasks)]
)
def test_jda_digits_and_coil_1nn_match_jda_table2(dataset, task):
    assert round(one_nn_accuracy(dataset, *task), 2) == JDA_NN_OTHER[dataset][task]


def test_registry_reference_numbers_are_the_published_ones():
    assert DATASETS["office_caltech10_surf"].reference_1nn == JDA_NN_SURF
    for dataset, table in JDA_NN_OTHER.items():
        assert DATASETS[dataset].reference_1nn == table
    assert DATASETS["amazon_review_400"].reference_1nn == {}
    assert DATASETS["digits"].reference_1nn == {}
    for info in DATASETS.values():  # every reference task names real domains
        assert all(s in info.domains and t in info.domains for s, t in info.reference_1nn)


# --------------------------------------------------- (2) shapes, sizes and class counts

def test_registry_matches_readme():
    assert sorted(DATASETS) == sorted(COUNTS)
    for name, domains in COUNTS.items():
        info = DATASETS[name]
        assert info.name == name
        assert info.domains == tuple(domains)
        assert info.input_shape == INPUT_SHAPES[name]
        assert len(info.classes) == len(next(iter(domains.values())))
        assert info.paper and info.description
    assert DATASETS["office_caltech10_surf"].classes == OFFICE_CLASSES
    assert DATASETS["mnist_usps_jda"].classes == tuple("0123456789")
    assert DATASETS["digits"].classes == tuple("0123456789")
    assert DATASETS["coil20_jda"].classes == tuple(f"obj{k}" for k in range(1, 21))
    assert DATASETS["amazon_review_400"].classes == ("negative", "positive")


@pytest.mark.parametrize("dataset,domain", [(d, m) for d in COUNTS for m in COUNTS[d]])
def test_domain_shapes_labels_and_class_counts(dataset, domain):
    dom = load_domain(dataset, domain)
    counts = COUNTS[dataset][domain]
    assert isinstance(dom, Domain) and dom.name == domain
    assert dom.x.dtype == torch.float32 and dom.x.shape == (sum(counts), *INPUT_SHAPES[dataset])
    assert dom.y.dtype == torch.int64 and dom.y.shape == (sum(counts),)
    assert torch.bincount(dom.y, minlength=len(counts)).tolist() == counts
    assert dom.classes == DATASETS[dataset].classes
    assert torch.isfinite(dom.x).all()
    assert dom.inputs(torch.arange(3)).dtype == torch.float32


def test_describe_datasets_lists_every_domain():
    rows = describe_datasets()
    got = {(r["dataset"], r["domain"]): r for r in rows}
    want = {(d, m) for d in COUNTS for m in COUNTS[d]}
    assert set(got) == want and len(rows) == len(want)
    for (d, m), r in got.items():
        assert r["n"] == sum(COUNTS[d][m])
        assert r["input_shape"] == INPUT_SHAPES[d]
        assert r["n_classes"] == len(COUNTS[d][m])


def test_npz_class_names_match_registry():
    for name, info in DATASETS.items():
        with np.load(BUNDLED / f"{name}.npz", allow_pickle=False) as npz:
            assert tuple(npz["classes"].tolist()) == info.classes


def test_provenance_lists_each_bundled_file_checksum():
    text = (BUNDLED / "PROVENANCE.md").read_text()
    for name in DATASETS:
        digest = hashlib.sha256((BUNDLED / f"{name}.npz").read_bytes()).hexdigest()
        assert digest in text, f"{name}.npz changed without re-running scripts/pack_datasets.py"


# --------------------------------------------------------------------- (3) preprocessing

@pytest.mark.parametrize("dataset", ["office_caltech10_surf", "amazon_review_400"])
def test_feature_domains_are_zscored_within_the_domain(dataset):
    for domain in DATASETS[dataset].domains:
        x = load_domain(dataset, domain, dtype=torch.float64).x.numpy()
        mean, std = x.mean(0), x.std(0)
        np.testing.assert_allclose(mean, 0.0, atol=1e-12)
        constant = std < 0.5
        np.testing.assert_allclose(std[~constant], 1.0, atol=1e-12)
        assert (x[:, constant] == 0).all()  # constant features are set to exactly 0
        if dataset == "amazon_review_400":
            assert constant.any()  # 4 to 7 of the 400 words never occur in a domain


def test_constant_features_become_exactly_zero():
    counts = np.array([[1, 1, 2], [2, 2, 4], [1, 3, 4]])  # after l1, column 2 is 0.5 throughout
    z = ds._l1_zscore(counts)
    assert (z[:, 2] == 0).all()
    np.testing.assert_allclose(z[:, :2].std(0), 1.0)


@pytest.mark.parametrize("dataset", ["mnist_usps_jda", "coil20_jda"])
def test_jda_image_rows_have_unit_l2_norm(dataset):
    for domain in DATASETS[dataset].domains:
        x = load_domain(dataset, domain, dtype=torch.float64).x
        np.testing.assert_allclose(x.flatten(1).norm(dim=1).numpy(), 1.0, atol=1e-12)
        assert (x >= 0).all()


def test_coil_images_use_fortran_order():
    raw = ds._decoded("coil20_jda", "coil1")[0]  # (720, 1024) as in the .mat, one row each
    x = load_domain("coil20_jda", "coil1", dtype=torch.float64).x.numpy()
    want = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_array_equal(x[:, 0], want.reshape(-1, 32, 32, order="F"))


def test_digits_share_28x28_in_unit_range_with_exact_mnist_pixels():
    mnist = load_domain("digits", "mnist", dtype=torch.float64).x
    assert torch.equal(mnist * 255, torch.round(mnist * 255))  # exactly k / 255
    assert mnist.min() == 0 and mnist.max() == 1
    usps = load_domain("digits", "usps", dtype=torch.float64).x
    assert usps.min() >= 0 and usps.max() <= 1
    small = torch.from_numpy(ds._decoded("digits", "usps")[0].astype(np.float64)).reshape(-1, 1, 16, 16)
    want = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    assert torch.equal(usps, want.clamp(0, 1))
    assert (usps - want).abs().max() < 1e-15  # the clip only removes rounding
    # USPS and MNIST are both upright: class-mean images agree better than transposed.
    def class_means(d):
        return torch.stack([d.x[d.y == k].mean(0).flatten() for k in range(10)])
    u, m = class_means(load_domain("digits", "usps")), class_means(load_domain("digits", "mnist"))
    mt = m.reshape(10, 28, 28).transpose(1, 2).reshape(10, -1)
    assert torch.cosine_similarity(u, m).mean() > torch.cosine_similarity(u, mt).mean()


def test_dtype_is_a_cast_of_the_float64_result_and_tensors_are_fresh():
    a = load_domain("office_caltech10_surf", "webcam", dtype=torch.float64)
    b = load_domain("office_caltech10_surf", "webcam")
    assert torch.equal(a.x.float(), b.x)
    a.x.zero_()
    a.y.zero_()
    c = load_domain("office_caltech10_surf", "webcam", dtype=torch.float64)
    assert torch.equal(c.x.float(), b.x) and torch.equal(c.y, b.y)


@pytest.mark.skipif(not SHARED.is_dir(), reason="original files in ../shared/data not present")
def test_bundled_arrays_decode_to_the_original_files_bit_for_bit():
    sio = pytest.importorskip("scipy.io")
    h5py = pytest.importorskip("h5py")
    import gzip

    def same(dataset, domain, x, y):
        got_x, got_y = ds._decoded(dataset, domain)
        assert got_x.dtype == x.dtype and np.array_equal(got_x, x), (dataset, domain)
        assert np.array_equal(got_y, np.asarray(y).ravel()), (dataset, domain)

    for dom, stem in [("amazon", "amazon"), ("caltech", "Caltech10"), ("dslr", "dslr"), ("webcam", "webcam")]:
        m = sio.loadmat(SHARED / f"office_caltech10_surf/{stem}_SURF_L10.mat")
        same("office_caltech10_surf", dom, m["fts"], m["labels"].astype(int) - 1)
    for dataset, f, (src, tar) in [
        ("mnist_usps_jda", "mnist_usps_jda/USPS_vs_MNIST.mat", ("usps", "mnist")),
        ("coil20_jda", "coil20_jda/COIL_2.mat", ("coil2", "coil1")),
    ]:
        m = sio.loadmat(SHARED / f)
        same(dataset, src, m["X_src"].T, m["Y_src"].astype(int) - 1)
        same(dataset, tar, m["X_tar"].T, m["Y_tar"].astype(int) - 1)
    for dom, stem in [("books", "books"), ("dvd", "dvd"), ("electronics", "elec"), ("kitchen", "kitchen")]:
        m = sio.loadmat(SHARED / f"amazon_review_400/{stem}_400.mat")
        same("amazon_review_400", dom, m["fts"], m["labels"])
    with h5py.File(SHARED / "usps/usps.h5", "r") as h:
        same("digits", "usps", h["train/data"][()], h["train/target"][()])
        same("digits", "usps_test", h["test/data"][()], h["test/target"][()])
    with gzip.open(SHARED / "mnist_test/t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(SHARED / "mnist_test/t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    same("digits", "mnist", images, labels)


# ---------------------------------------------------------------------------- (4) errors

def test_unknown_dataset_names_the_argument_and_lists_choices():
    with pytest.raises(ValueError) as err:
        load_domain("ofice", "amazon")
    msg = str(err.value)
    assert msg.startswith("unknown dataset 'ofice': expected one of amazon_review_400, coil20_jda, ")
    assert all(name in msg for name in DATASETS)


def test_unknown_domain_names_the_argument_and_lists_choices():
    with pytest.raises(ValueError) as err:
        load_domain("office_caltech10_surf", "amazn")
    msg = str(err.value)
    assert "unknown domain 'amazn'" in msg and "office_caltech10_surf" in msg
    assert "amazon, caltech, dslr, webcam" in msg


def test_bad_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        load_domain("office_caltech10_surf", "dslr", dtype=torch.int64)


def test_user_dataset_by_module_and_function(tmp_path, monkeypatch):
    (tmp_path / "my_da_data.py").write_text(textwrap.dedent("""
        import torch
        from tladapt.data.domain import Domain

        def make(domain):
            if domain not in ("a", "b"):
                raise ValueError(f"unknown domain {domain!r}")
            x = torch.full((4, 3), 1.0 if domain == "a" else 2.0)
            return Domain(domain, x, torch.tensor([0, 1, 0, 1]), ("neg", "pos"))

        def not_a_domain(domain):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    dom = load_domain("my_da_data:make", "b")
    assert dom.name == "b" and dom.x.shape == (4, 3) and float(dom.x[0, 0]) == 2.0
    with pytest.raises(ValueError, match="unknown domain 'c'"):
        load_domain("my_da_data:make", "c")
    with pytest.raises(TypeError, match="expected a Domain"):
        load_domain("my_da_data:not_a_domain", "a")
    with pytest.raises(ValueError, match="no function 'missing'"):
        load_domain("my_da_data:missing", "a")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_domain("no_such_module_xyz:make", "a")
    with pytest.raises(ValueError, match="package.module:function"):
        load_domain("my_da_data:", "a")


# ------------------------------------------------------- (5) no reading of ../shared

def test_loading_reads_only_the_packaged_npz(tmp_path):
    """Load every domain from another directory while auditing every file open."""
    script = textwrap.dedent("""
        import json, sys
        opened = []
        sys.addaudithook(lambda ev, args: opened.append(str(args[0])) if ev == "open" and args and isinstance(args[0], (str, bytes)) else None)
        from tladapt.data.datasets import DATASETS, load_domain
        n = {f"{d}/{m}": len(load_domain(d, m)) for d in DATASETS for m in DATASETS[d].domains}
        print(json.dumps({"n": n, "opened": opened, "h5py": "h5py" in sys.modules}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["n"] == {f"{d}/{m}": sum(c) for d in COUNTS for m, c in COUNTS[d].items()}
    opened = [os.path.abspath(os.path.join(tmp_path, p)) for p in report["opened"]]
    npz = {Path(p).name for p in opened if p.endswith(".npz")}
    assert npz == {f"{name}.npz" for name in DATASETS}  # positive control
    assert all(Path(p).parent == BUNDLED for p in opened if p.endswith(".npz"))
    forbidden = [p for p in opened
                 if f"{os.sep}shared{os.sep}" in p or p.endswith((".mat", ".h5", ".gz", "SHA256SUMS"))]
    assert forbidden == []
    assert not report["h5py"]
