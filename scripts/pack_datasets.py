#!/usr/bin/env python
"""Pack the six real DA benchmarks into ``tladapt/data/bundled/<dataset>.npz``.

Usage::

    python scripts/pack_datasets.py [DATA_DIR]     # default: ../shared/data from the repo

Steps, each of which aborts the run on failure:

1. Verify every file listed in ``DATA_DIR/SHA256SUMS``.
2. Read the original files (MATLAB .mat, HDF5, IDX .gz) and check the shapes,
   label ranges and the facts the encodings rely on (e.g. the two JDA files of a
   pair hold the same data swapped; class names agree with the image names).
3. Encode each input array in its smallest exact form (see ``decode_x`` in
   ``tladapt/data/datasets.py``), labels as 0-based uint8, class names as a
   unicode array, and write one npz per dataset (deflate level 9, fixed zip
   timestamps so that re-running the script gives identical bytes).
4. Re-open each written npz and check with ``np.array_equal`` (and equal dtype)
   that ``tladapt.data.datasets.decode_x`` returns the original arrays bit for bit.
5. Write ``tladapt/data/bundled/PROVENANCE.md`` (origins, source checksums,
   encodings, npz sizes and checksums, loader preprocessing).

Needs scipy and h5py (packing only; the package itself reads just the npz files).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import scipy.io as sio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tladapt.data.datasets import DATASETS, decode_x  # noqa: E402

OUT = REPO / "tladapt" / "data" / "bundled"

JDA_REPO = "AngryCarrot/JDA @ 12167daf32b01a07b85fdfa3db57a42b3be7eefe"
SKADA_REPO = "scikit-adaptation/skada-bench @ e04399f55724b1accbed8ae1050e3c6c73fd481a"

# Static provenance text per dataset: (origin, preprocessing applied by load_domain).
ORIGIN = {
    "office_caltech10_surf": (
        f"`github.com/{JDA_REPO}`, folder `data/` (Gong's standard SURF release). Identical "
        "copies: `chamwen/JPDA` `data/Office/`, `skada-bench` `data/OFFICE_31_SURF_DATASET/`, "
        "and the official CORAL release (`VisionLearningGroup/CORAL`, "
        "`code/CORAL_Source_Code.zip`, `data/`, same MD5). Class names read from the "
        "`*_imgs.mat` image names (checked by this script).",
        "l1 per row (divide by the row sum), then population z-score (ddof=0) of each "
        "feature within the domain; a constant feature becomes 0. Gives exactly JDA "
        "Table 2's NN column (mean 31.37).",
    ),
    "mnist_usps_jda": (
        f"`github.com/{JDA_REPO}`, `data/MNIST_vs_USPS.mat` (MNIST = `X_src`, USPS = "
        "`X_tar`, stored transposed to one sample per row). `data/USPS_vs_MNIST.mat` holds "
        "the same arrays swapped (checked by this script), so it is not stored twice.",
        "per-sample l2 normalisation; x reshaped to (n, 1, 16, 16) in C order (upright). "
        "Gives JDA Table 2's NN column: USPS->MNIST 44.70, MNIST->USPS 65.94.",
    ),
    "coil20_jda": (
        f"`github.com/{JDA_REPO}`, `data/COIL_1.mat` (coil1 = `X_src`, coil2 = `X_tar`, "
        "stored transposed to one sample per row, pixels in MATLAB column-major order). "
        "`data/COIL_2.mat` holds the same arrays swapped (checked by this script).",
        "per-sample l2 normalisation; x reshaped to (n, 32, 32) and transposed (Fortran "
        "order) so images are upright, returned as (n, 1, 32, 32). Gives JDA Table 2's NN "
        "column: COIL1->COIL2 83.61, COIL2->COIL1 82.78.",
    ),
    "amazon_review_400": (
        f"`github.com/{SKADA_REPO}`, folder `data/amazon_review/` (deleted in later "
        "commits). Features by Chen et al. (mSDA, ICML 2012). Domain `electronics` is the "
        "file `elec_400.mat`. Labels 0 = negative, 1 = positive, positives first, as in "
        "the files.",
        "l1 per row (a no-op: rows already sum to 1), then population z-score (ddof=0) per "
        "domain as in EasyTL's `demo_amazon_review.m` (jindongwang/transferlearning); a "
        "constant feature becomes 0.",
    ),
    "digits": (
        "USPS: `github.com/niuers/Learning-From-Data-A-Short-Course @ "
        "35684e893b63bf4039bafcc6d34fe935851baf9a`, `data/usps.h5` (the Kaggle packaging; "
        "groups train/test). MNIST test: `github.com/caroline1677/"
        "Group16-JDA-Reproduction-COMP7404 @ 9ea1b38c...` (full hash not recorded), "
        "`data/prepared_mnist_usps/data/MNIST/raw/`; MD5s equal the canonical ones that "
        "torchvision checks (images 9fb629c4189551a2d022fa330f9573f3, labels "
        "ec29112dd5afa0611ce80d1b7f02629c).",
        "USPS train (`usps`) and test (`usps_test`): 16x16 upsampled once at load to 28x28 "
        "with `torch.nn.functional.interpolate(mode='bilinear', align_corners=False)` in "
        "float64, clipped to [0, 1] (rounding leaves a few values one ulp above 1); MNIST test (`mnist`): exact pixels x / 255. No "
        "further normalisation. Both sides share the input shape (1, 28, 28), the "
        "deep-DA (ADDA/DANN-style) setting. MNIST train is not available offline.",
    ),
}

ENC_TEXT = {
    "raw": "stored as is",
    "k/256": "uint8 k, decoded k / 256.0 in float64",
    "k/4080": "uint16 k, decoded k / 4080.0 in float64",
    "l1_counts": "uint8 counts C (smallest integer vector proportional to the row), "
    "decoded C / C.sum(1) in float64",
    "codebook": "uint16 index into the sorted float32 `codebook` of the unique values",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_checksums(data: Path) -> dict[str, str]:
    """Check every file in SHA256SUMS; returns {relative path: sha256}."""
    if not (data / "SHA256SUMS").is_file():
        raise SystemExit(f"no SHA256SUMS in {data}: pass the folder holding the original files")
    sums = {}
    for line in (data / "SHA256SUMS").read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*").removeprefix("./")
        got = sha256(data / name)
        if got != digest:
            raise SystemExit(f"checksum mismatch for {name}: expected {digest}, got {got}")
        sums[name] = digest
    print(f"verified {len(sums)} checksums in {data / 'SHA256SUMS'}")
    return sums


def labels0(y: np.ndarray, base: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y).ravel().astype(np.int64) - base
    assert y.min() == 0 and y.max() == n_classes - 1, (y.min(), y.max())
    return y.astype(np.uint8)


def exact_int(x: np.ndarray, scale: float, dtype) -> np.ndarray:
    """Integer k with k / scale == x bit for bit, as ``dtype``; raises otherwise."""
    k = np.round(x * scale)
    info = np.iinfo(dtype)
    if not (k.min() >= info.min and k.max() <= info.max and np.array_equal(k / scale, x)):
        raise SystemExit(f"values are not exact multiples of 1/{scale:g} within {dtype}")
    return k.astype(dtype)


def l1_counts(x: np.ndarray) -> np.ndarray:
    """Smallest non-negative integer rows C with C / C.sum(1) == x exactly, as uint8."""
    out = np.zeros(x.shape, np.uint8)
    for i, row in enumerate(x):
        smallest = row[row > 0].min()
        for j in range(1, 256):  # j = count of the rarest word in the row
            c = np.round(row * round(j / smallest))
            if c.max() <= 255 and np.array_equal(c / c.sum(), row):
                out[i] = c
                break
        else:
            raise SystemExit(f"row {i} is not a uint8 count vector divided by its sum")
    return out


# ---------------------------------------------------------------------------- readers
# Each returns (arrays to store, {domain: original x}, {domain: labels 0-based},
# [(source file, note)], extra checks text).

def read_office(data: Path, classes: tuple[str, ...]):
    files = {"amazon": "amazon", "caltech": "Caltech10", "dslr": "dslr", "webcam": "webcam"}
    store, orig, ys, used = {}, {}, {}, []
    for dom, stem in files.items():
        f = f"office_caltech10_surf/{stem}_SURF_L10.mat"
        g = f"office_caltech10_surf/{stem}_SURF_L10_imgs.mat"
        m = sio.loadmat(data / f)
        fts, y = m["fts"], labels0(m["labels"], 1, 10)
        assert fts.dtype == np.uint8 and fts.shape[1] == 800 and fts.shape[0] == y.shape[0]
        assert (fts.astype(np.int64).sum(1) > 0).all(), "an all-zero SURF histogram"
        names = [str(n[0]) for n in sio.loadmat(data / g)["imgNames"].ravel()]
        assert len(names) == len(y)
        for name, k in zip(names, y):  # label k <-> class name k, from the image names
            hits = [c for c in classes if f"_{c}_" in name]
            assert hits == [classes[k]], (name, k, hits)
        store[f"{dom}_x"], store[f"{dom}_enc"], store[f"{dom}_y"] = fts, np.array("raw"), y
        orig[dom], ys[dom] = fts, y
        used += [f, g]
    return store, orig, ys, used


def read_jda_pair(data: Path, folder: str, files: tuple[str, str], doms: tuple[str, str]):
    a = sio.loadmat(data / folder / files[0])
    b = sio.loadmat(data / folder / files[1])
    for ka, kb in (("X_src", "X_tar"), ("X_tar", "X_src"), ("Y_src", "Y_tar"), ("Y_tar", "Y_src")):
        assert np.array_equal(a[ka], b[kb]) and a[ka].dtype == b[kb].dtype, (files, ka)
    orig = {doms[0]: np.ascontiguousarray(a["X_src"].T), doms[1]: np.ascontiguousarray(a["X_tar"].T)}
    n_classes = int(a["Y_src"].max())
    ys = {doms[0]: labels0(a["Y_src"], 1, n_classes), doms[1]: labels0(a["Y_tar"], 1, n_classes)}
    return orig, ys, [f"{folder}/{files[0]}", f"{folder}/{files[1]}"]


def read_mnist_usps_jda(data: Path, classes):
    orig, ys, used = read_jda_pair(
        data, "mnist_usps_jda", ("MNIST_vs_USPS.mat", "USPS_vs_MNIST.mat"), ("mnist", "usps")
    )
    store = {
        "mnist_x": exact_int(orig["mnist"], 256.0, np.uint8), "mnist_enc": np.array("k/256"),
        "usps_x": orig["usps"], "usps_enc": np.array("raw"),
    }
    store.update({f"{d}_y": y for d, y in ys.items()})
    return store, orig, ys, used


def read_coil(data: Path, classes):
    orig, ys, used = read_jda_pair(data, "coil20_jda", ("COIL_1.mat", "COIL_2.mat"), ("coil1", "coil2"))
    store = {}
    for d in ("coil1", "coil2"):
        store[f"{d}_x"], store[f"{d}_enc"] = exact_int(orig[d], 4080.0, np.uint16), np.array("k/4080")
        store[f"{d}_y"] = ys[d]
    return store, orig, ys, used


def read_amazon(data: Path, classes):
    files = {"books": "books", "dvd": "dvd", "electronics": "elec", "kitchen": "kitchen"}
    store, orig, ys, used = {}, {}, {}, []
    for dom, stem in files.items():
        f = f"amazon_review_400/{stem}_400.mat"
        m = sio.loadmat(data / f)
        x, y = m["fts"], labels0(m["labels"], 0, 2)
        assert x.dtype == np.float64 and x.shape[1] == 400 and (x >= 0).all()
        store[f"{dom}_x"], store[f"{dom}_enc"], store[f"{dom}_y"] = l1_counts(x), np.array("l1_counts"), y
        orig[dom], ys[dom] = x, y
        used.append(f)
    return store, orig, ys, used


def read_idx(path: Path, magic: int, header: int) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    assert int.from_bytes(raw[:4], "big") == magic
    return np.frombuffer(raw, np.uint8, offset=header)


def read_digits(data: Path, classes):
    with h5py.File(data / "usps" / "usps.h5", "r") as h:
        usps = {"usps": (h["train/data"][()], h["train/target"][()]),
                "usps_test": (h["test/data"][()], h["test/target"][()])}
    codebook = np.unique(np.concatenate([x.ravel() for x, _ in usps.values()]))
    assert codebook.dtype == np.float32 and len(codebook) <= 65536
    store = {"codebook": codebook}
    orig, ys = {}, {}
    for d, (x, t) in usps.items():
        assert x.shape[1] == 256 and x.dtype == np.float32
        store[f"{d}_x"] = np.searchsorted(codebook, x).astype(np.uint16)
        store[f"{d}_enc"] = np.array("codebook")
        orig[d], ys[d] = x, labels0(t, 0, 10)
    images = read_idx(data / "mnist_test/t10k-images-idx3-ubyte.gz", 2051, 16).reshape(-1, 28, 28)
    labels = read_idx(data / "mnist_test/t10k-labels-idx1-ubyte.gz", 2049, 8)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    orig["mnist"], ys["mnist"] = images, labels0(labels, 0, 10)
    store.update({"mnist_x": images, "mnist_enc": np.array("raw")})
    store.update({f"{d}_y": y for d, y in ys.items()})
    used = ["usps/usps.h5", "mnist_test/t10k-images-idx3-ubyte.gz", "mnist_test/t10k-labels-idx1-ubyte.gz"]
    return store, orig, ys, used


READERS = {
    "office_caltech10_surf": read_office,
    "mnist_usps_jda": read_mnist_usps_jda,
    "coil20_jda": read_coil,
    "amazon_review_400": read_amazon,
    "digits": read_digits,
}


# ---------------------------------------------------------------------------- writing

def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but deflate level 9 and fixed timestamps (reproducible)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    tmp.replace(path)


def verify_npz(path: Path, name: str, orig: dict, ys: dict) -> None:
    """Decoded arrays equal the originals bit for bit (values and dtype)."""
    with np.load(path, allow_pickle=False) as npz:
        assert tuple(npz["classes"]) == DATASETS[name].classes
        assert set(DATASETS[name].domains) == set(orig)
        for d in DATASETS[name].domains:
            x = decode_x(npz, d)
            if not (x.dtype == orig[d].dtype and np.array_equal(x, orig[d])):
                raise SystemExit(f"{name}/{d}: decoded inputs differ from the source file")
            y = npz[f"{d}_y"]
            if not (y.dtype == np.uint8 and np.array_equal(y, ys[d])):
                raise SystemExit(f"{name}/{d}: decoded labels differ from the source file")


def provenance(records: list[dict]) -> str:
    total = sum(r["size"] for r in records)
    lines = [
        "# Bundled benchmark data: provenance",
        "",
        "Written by `scripts/pack_datasets.py` from the offline copies in `shared/data`",
        "(see its README for the full provenance notes). Every original file was checked",
        "against `SHA256SUMS`, and decoding each npz was checked to reproduce the original",
        "arrays bit for bit (`np.array_equal`, same dtype). Labels are stored 0-based as",
        "uint8 (MATLAB's 1-based labels minus 1). Inputs are stored one sample per row",
        "(the JDA files' column-wise `X` arrays are transposed). Loaders:",
        "`tladapt.data.datasets.load_domain`; the decoding rules: `decode_x` there.",
        "",
        f"Total bundled size: {total:,} bytes ({total / 2**20:.2f} MiB).",
        "",
    ]
    for r in records:
        info = DATASETS[r["name"]]
        origin, prep = ORIGIN[r["name"]]
        lines += [
            f"## `{r['name']}.npz`",
            "",
            f"* **Paper.** {info.paper}.",
            f"* **Origin.** {origin}",
            f"* **Size.** {r['size']:,} bytes; SHA-256 `{r['sha']}`.",
            "* **Source files (SHA-256).**",
        ]
        lines += [f"  - `{f}` `{r['sums'][f]}`" for f in r["used"]]
        lines += ["* **Stored arrays.**"]
        for d in info.domains:
            st, enc = r["store"][f"{d}_x"], str(r["store"][f"{d}_enc"])
            o = r["orig"][d]
            lines.append(
                f"  - `{d}`: n = {len(o)}, original {o.dtype} {o.shape} -> `{d}_x` "
                f"{st.dtype} {st.shape}, {ENC_TEXT[enc]}; labels `{d}_y` uint8."
            )
        if "codebook" in r["store"]:
            cb = r["store"]["codebook"]
            lines.append(f"  - `codebook`: {cb.dtype} ({len(cb)},), the sorted unique USPS values.")
        lines += [
            f"  - `classes`: {', '.join(info.classes)}.",
            f"* **Loader preprocessing.** {prep}",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(REPO / ".." / "shared" / "data"),
                        help="folder with SHA256SUMS and the original files (default ../shared/data)")
    args = parser.parse_args(argv)
    data = Path(args.data).resolve()
    sums = verify_checksums(data)
    OUT.mkdir(parents=True, exist_ok=True)
    records = []
    for name, reader in READERS.items():
        info = DATASETS[name]
        store, orig, ys, used = reader(data, info.classes)
        store["classes"] = np.array(info.classes)
        path = OUT / f"{name}.npz"
        write_npz(path, store)
        verify_npz(path, name, orig, ys)
        size = path.stat().st_size
        records.append(dict(name=name, store=store, orig=orig, used=used, sums=sums,
                            size=size, sha=sha256(path)))
        print(f"{name:24s} {size:>10,d} bytes  exact  "
              + ", ".join(f"{d}:{len(orig[d])}" for d in info.domains))
    (OUT / "PROVENANCE.md").write_text(provenance(records))
    total = sum(r["size"] for r in records)
    print(f"{'total':24s} {total:>10,d} bytes ({total / 2**20:.2f} MiB); wrote {OUT / 'PROVENANCE.md'}")


if __name__ == "__main__":
    main()
