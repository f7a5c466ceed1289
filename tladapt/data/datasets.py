"""Registry and loaders of the real domain-adaptation benchmarks bundled with tladapt.

Six classic benchmarks ship inside the package as compressed ``.npz`` files under
``tladapt/data/bundled`` (about 8 MB in all; see ``bundled/PROVENANCE.md`` for each
file's origin, checksum and encoding). They are written by ``scripts/pack_datasets.py``,
which checks that decoding reproduces the original arrays bit for bit. Nothing here
reads anything outside the package at run time, and nothing is downloaded.

=======================  ==========================================  ====================
dataset                  domains (n)                                 input shape
=======================  ==========================================  ====================
office_caltech10_surf    amazon 958, caltech 1123, dslr 157,         (800,)  SURF BoW
                         webcam 295
mnist_usps_jda           mnist 2000, usps 1800                       (1, 16, 16)
coil20_jda               coil1 720, coil2 720                        (1, 32, 32)
amazon_review_400        books 2000, dvd 1999, electronics 1998,     (400,)  bag of words
                         kitchen 1999
digits                   usps 7291, usps_test 2007, mnist 10000      (1, 28, 28)
=======================  ==========================================  ====================

Typical use::

    from tladapt.data.datasets import DATASETS, load_domain
    src = load_domain("office_caltech10_surf", "caltech")   # Domain, x (1123, 800) float32
    tgt = load_domain("office_caltech10_surf", "amazon")
    DATASETS["office_caltech10_surf"].reference_1nn[("caltech", "amazon")]   # 23.70

User datasets are named ``"package.module:function"``, image folders and TLlib image
lists ``"image_folder:/root"`` and ``"image_list:/root"`` (:mod:`tladapt.data.images`);
see :func:`load_domain`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a domain is built, so listing datasets stays fast
    import torch

    from tladapt.data.augment import ImageFormat
    from tladapt.data.domain import Domain

__all__ = ["DatasetInfo", "DATASETS", "load_domain", "describe_datasets"]

_JDA = (
    "M. Long, J. Wang, G. Ding, J. Sun, P. S. Yu. Transfer Feature Learning with Joint "
    "Distribution Adaptation. ICCV 2013"
)


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of one bundled benchmark (no data is loaded to build it).

    Attributes:
        name: registry key, e.g. ``"office_caltech10_surf"``.
        domains: the domain names :func:`load_domain` accepts for this dataset.
        description: one paragraph: what the inputs are and how the loader
            preprocesses them.
        paper: citation of the dataset / feature release (and of the paper whose
            1-NN numbers are in ``reference_1nn``).
        reference_1nn: published accuracy in **percent** of a Euclidean 1-NN
            classifier trained on all source samples and tested on all target
            samples, after the loader's preprocessing, keyed by
            ``(source_domain, target_domain)``. From JDA (Long et al., ICCV 2013)
            Table 2, "NN" column; empty where no such number is published.
            ``tests/test_datasets.py`` reproduces every entry exactly.
        input_shape: shape of one preprocessed input, without the sample dimension:
            ``(d,)`` for feature datasets, ``(1, H, W)`` for images.
        classes: class names; index ``k`` names label ``k`` (labels are 0-based).
    """

    name: str
    domains: tuple[str, ...]
    description: str
    paper: str
    reference_1nn: dict[tuple[str, str], float] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    classes: tuple[str, ...] = ()


def _surf_reference() -> dict[tuple[str, str], float]:
    letter = {"A": "amazon", "C": "caltech", "D": "dslr", "W": "webcam"}
    table = {  # JDA (ICCV 2013) Table 2, column "NN"; the 12 tasks average 31.37.
        "CA": 23.70, "CW": 25.76, "CD": 25.48, "AC": 26.00, "AW": 29.83, "AD": 25.48,
        "WC": 19.86, "WA": 22.96, "WD": 59.24, "DC": 26.27, "DA": 28.50, "DW": 63.39,
    }
    return {(letter[k[0]], letter[k[1]]): v for k, v in table.items()}


_DIGIT_NAMES = tuple(str(d) for d in range(10))


@functools.cache
def _digits_format() -> ImageFormat:
    from tladapt.data.augment import ImageFormat

    return ImageFormat(max_value=1.0, mean=None, std=None, augment=False, crop_fraction=1.0)


def __getattr__(name: str):
    """``DIGITS_FORMAT``: the bundled ``digits`` are image domains: floats in [0, 1], no
    normalisation, and ``augment.train = "auto"`` leaves them unaugmented (their exact
    published inputs). Made on first use (PEP 562): :class:`tladapt.data.augment.ImageFormat`
    imports torch, and reading the registry must not."""
    if name == "DIGITS_FORMAT":
        return _digits_format()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Every bundled benchmark, by name. Values are :class:`DatasetInfo`.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="office_caltech10_surf",
            domains=("amazon", "caltech", "dslr", "webcam"),
            description=(
                "Office+Caltech-10: the 10 classes shared by Office-31 (Amazon, DSLR, Webcam) "
                "and Caltech-256, each image an 800-bin bag of SURF visual words (codebook "
                "from Amazon). Loader: divide each row by its sum (l1), then population "
                "z-score (ddof=0) each feature within the domain; constant features -> 0."
            ),
            paper=(
                "B. Gong, Y. Shi, F. Sha, K. Grauman. Geodesic Flow Kernel for Unsupervised "
                "Domain Adaptation. CVPR 2012 (images: Saenko et al., ECCV 2010; Griffin et "
                f"al., Caltech-256, 2007). 1-NN reference: {_JDA}, Table 2"
            ),
            reference_1nn=_surf_reference(),
            input_shape=(800,),
            classes=(
                "back_pack", "bike", "calculator", "headphones", "keyboard",
                "laptop_computer", "monitor", "mouse", "mug", "projector",
            ),
        ),
        DatasetInfo(
            name="mnist_usps_jda",
            domains=("mnist", "usps"),
            description=(
                "The JDA/TCA digit pair: 2000 MNIST and 1800 USPS images, 16x16 greyscale in "
                "[0, 1]. Loader: per-sample l2 normalisation; x is (n, 1, 16, 16), upright."
            ),
            paper=f"{_JDA} (data files of the JDA code release, Dec 2012)",
            reference_1nn={("usps", "mnist"): 44.70, ("mnist", "usps"): 65.94},
            input_shape=(1, 16, 16),
            classes=_DIGIT_NAMES,
        ),
        DatasetInfo(
            name="coil20_jda",
            domains=("coil1", "coil2"),
            description=(
                "COIL-20 (20 objects, 72 poses, 32x32 greyscale in [0, 1]) split by pose into "
                "two domains of 720 images, 36 per object, as in JDA: coil1 = poses in "
                "[0, 85] U [180, 265] degrees, coil2 = [90, 175] U [270, 355]. Loader: "
                "per-sample l2 normalisation; x is (n, 1, 32, 32), upright."
            ),
            paper=(
                "S. A. Nene, S. K. Nayar, H. Murase. Columbia Object Image Library (COIL-20). "
                f"Tech. Rep. CUCS-005-96, 1996. Split and 1-NN reference: {_JDA}, Table 2"
            ),
            reference_1nn={("coil1", "coil2"): 83.61, ("coil2", "coil1"): 82.78},
            input_shape=(1, 32, 32),
            classes=tuple(f"obj{k}" for k in range(1, 21)),
        ),
        DatasetInfo(
            name="amazon_review_400",
            domains=("books", "dvd", "electronics", "kitchen"),
            description=(
                "Amazon product reviews (Blitzer et al.), 4 domains of about 2000 reviews, "
                "balanced positive/negative, as l1-normalised bags of the 400 most frequent "
                "words (mSDA release; used by CORAL, EasyTL, SKADA-Bench). Not DANN's 5000-d "
                "version. Loader: l1 per row (a no-op here), then population z-score per "
                "domain, as in EasyTL's demo_amazon_review.m; constant features -> 0."
            ),
            paper=(
                "J. Blitzer, M. Dredze, F. Pereira. Biographies, Bollywood, Boom-boxes and "
                "Blenders: Domain Adaptation for Sentiment Classification. ACL 2007. Features: "
                "M. Chen, Z. Xu, K. Weinberger, F. Sha. Marginalized Denoising Autoencoders "
                "for Domain Adaptation. ICML 2012"
            ),
            reference_1nn={},
            input_shape=(400,),
            classes=("negative", "positive"),
        ),
        DatasetInfo(
            name="digits",
            domains=("usps", "usps_test", "mnist"),
            description=(
                "Deep-DA digits at a common 28x28: full USPS train (7291) and test (2007), "
                "bilinearly upsampled from 16x16 once at load (torch interpolate, "
                "align_corners=False, clipped to [0, 1]), and the official MNIST test set (10000) with its "
                "exact pixels x/255. Values in [0, 1], no further normalisation. MNIST train "
                "is not bundled (too large); use `mnist` as the MNIST domain."
            ),
            paper=(
                "J. J. Hull. A Database for Handwritten Text Recognition Research. IEEE "
                "TPAMI 1994 (USPS); Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. "
                "Gradient-Based Learning Applied to Document Recognition. Proc. IEEE 1998 "
                "(MNIST)"
            ),
            reference_1nn={},
            input_shape=(1, 28, 28),
            classes=_DIGIT_NAMES,
        ),
    )
}


# --------------------------------------------------------------------------- decoding

def _npz_resource(dataset: str):
    # Traversable.joinpath with several parts needs Python 3.11; chain for 3.10.
    return importlib.resources.files("tladapt.data").joinpath("bundled").joinpath(f"{dataset}.npz")


def _open_npz(dataset: str) -> np.lib.npyio.NpzFile:
    """The bundled npz of ``dataset``, read through importlib.resources (zip-safe)."""
    return np.load(io.BytesIO(_npz_resource(dataset).read_bytes()), allow_pickle=False)


def decode_x(npz, domain: str) -> np.ndarray:
    """Decode the stored inputs of ``domain`` back to the original source array.

    ``npz`` maps keys to arrays (an open ``NpzFile`` or a dict). The stored array
    ``{domain}_x`` is interpreted by the string ``{domain}_enc``:

    * ``raw``: stored as is (SURF uint8 counts, USPS-1800 float64, MNIST uint8).
    * ``k/256`` and ``k/4080``: integer ``k``, decoded as ``k / 256.0`` resp.
      ``k / 4080.0`` in float64 (correctly rounded IEEE division).
    * ``l1_counts``: non-negative integer counts ``C``, decoded as
      ``C / C.sum(1, keepdims=True)`` in float64.
    * ``codebook``: uint16 indices into the float32 array ``codebook``.

    Returns the array exactly as in the original file, one sample per row, in the
    source's pixel order (see ``PROVENANCE.md``). ``scripts/pack_datasets.py``
    checks this against the source files with ``np.array_equal``.

    Raises:
        ValueError: on an unknown encoding.
    """
    stored = npz[f"{domain}_x"]
    enc = str(npz[f"{domain}_enc"])
    if enc == "raw":
        return stored
    if enc == "k/256":
        return stored.astype(np.float64) / 256.0
    if enc == "k/4080":
        return stored.astype(np.float64) / 4080.0
    if enc == "l1_counts":
        counts = stored.astype(np.float64)
        return counts / counts.sum(axis=1, keepdims=True)
    if enc == "codebook":
        return npz["codebook"][stored.astype(np.intp)]
    raise ValueError(f"domain {domain!r}: unknown stored encoding {enc!r}")


@functools.lru_cache(maxsize=None)
def _decoded(dataset: str, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """(original x, 0-based uint8 labels) of one bundled domain, cached, read-only."""
    with _open_npz(dataset) as npz:
        x, y = decode_x(npz, domain), npz[f"{domain}_y"]
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.lru_cache(maxsize=None)
def _n_samples(dataset: str, domain: str) -> int:
    with _open_npz(dataset) as npz:
        return int(npz[f"{domain}_y"].shape[0])


# ----------------------------------------------------------------------- preprocessing

def _l1_zscore(x: np.ndarray) -> np.ndarray:
    """Rows divided by their sum, then population z-score per column; std 0 -> 0."""
    x = x.astype(np.float64)
    x = x / x.sum(axis=1, keepdims=True)
    mean, std = x.mean(axis=0), x.std(axis=0)
    ok = std > 0
    out = np.zeros_like(x)
    out[:, ok] = (x[:, ok] - mean[ok]) / std[ok]
    return out


def _l2_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _preprocess(dataset: str, domain: str, x: np.ndarray) -> np.ndarray:
    """float64 array of shape ``(n, *input_shape)``, the benchmark's usual preprocessing."""
    n = x.shape[0]
    if dataset in ("office_caltech10_surf", "amazon_review_400"):
        return _l1_zscore(x)
    if dataset == "mnist_usps_jda":  # pixels stored row-major (C order): upright
        return _l2_rows(x).reshape(n, 1, 16, 16)
    if dataset == "coil20_jda":  # pixels stored column-major (MATLAB order): transpose
        return _l2_rows(x).reshape(n, 32, 32).transpose(0, 2, 1).reshape(n, 1, 32, 32)
    if dataset == "digits":
        if domain == "mnist":
            return x.astype(np.float64).reshape(n, 1, 28, 28) / 255.0
        import torch

        small = torch.from_numpy(x.astype(np.float64).reshape(n, 1, 16, 16))
        big = torch.nn.functional.interpolate(
            small, size=(28, 28), mode="bilinear", align_corners=False
        )
        # Interpolation weights that do not sum to exactly 1 leave a few values one
        # ulp above 1.0; clip so the range stays exactly [0, 1].
        return big.clamp_(0.0, 1.0).numpy()
    raise AssertionError(f"no preprocessing defined for {dataset!r}")  # registry bug


# ------------------------------------------------------------------------- public API

def _check_names(dataset: str, domain: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise ValueError(
            f"unknown dataset {dataset!r}: expected one of {', '.join(sorted(DATASETS))} "
            "(or 'package.module:function' for a user dataset)"
        )
    info = DATASETS[dataset]
    if domain not in info.domains:
        raise ValueError(
            f"unknown domain {domain!r} for dataset {dataset!r}: expected one of "
            f"{', '.join(info.domains)}"
        )
    return info


def _load_user_domain(spec: str, domain: str) -> Domain:
    from tladapt.data.domain import Domain

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"dataset {spec!r}: a user dataset must be written 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"dataset {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func) or isinstance(func, type):
        raise ValueError(f"dataset {spec!r}: module {module_name!r} has no function {attr!r} (found "
                         f"{type(func).__name__}): expected a function(domain_name) -> Domain")
    try:
        result = func(domain)
    except Exception as exc:  # the user's code: say which key ran it
        raise ValueError(f"data.dataset = {spec!r}: {attr}({domain!r}) raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, Domain):
        raise TypeError(
            f"dataset {spec!r}: {attr}({domain!r}) returned {type(result).__name__}, expected a Domain"
        )
    return result


def load_domain(dataset: str, domain: str, dtype: torch.dtype | None = None, images=None) -> Domain:
    """Load one domain of a bundled benchmark, preprocessed as the benchmark's papers do.

    Args:
        dataset: a key of :data:`DATASETS`, or ``"package.module:function"`` for a
            user dataset: ``function(domain)`` is imported and called and must
            return a :class:`Domain`, which is returned unchanged (``dtype`` is
            not applied; the function owns its own preprocessing).
            ``"image_folder:/root"`` or ``"image_list:/root"``: an image dataset
            (:func:`tladapt.data.images.load_image_domain`; ``dtype`` not applied).
        domain: one of ``DATASETS[dataset].domains``.
        dtype: floating dtype of the returned ``x`` (None: ``torch.float32``). Preprocessing is always done
            in float64 numpy and cast at the end, so ``torch.float64`` gives the
            exact values behind the published 1-NN numbers.
        images: :class:`tladapt.data.images.ImageOptions` for image datasets
            (default: 256, centre crop, the default cache folder).

    Returns:
        A :class:`Domain` named ``domain`` with fresh tensors (safe to modify):
        ``x`` of shape ``(n, *DATASETS[dataset].input_shape)`` and dtype ``dtype``;
        ``y`` of shape ``(n,)``, int64, 0-based (index into ``classes``);
        ``classes`` from the registry; the default ``transform`` (cast to float32).

        Preprocessing (whole-domain, so a target domain's statistics are its own):

        * ``office_caltech10_surf``, ``amazon_review_400``: features ``(n, d)``;
          each row divided by its sum, then each feature z-scored with the
          population std (ddof=0) computed within this domain; a constant feature
          becomes 0. Gong et al. (CVPR 2012) README / GFK, JDA, CORAL code;
          EasyTL's Amazon demo.
        * ``mnist_usps_jda``: ``(n, 1, 16, 16)`` upright, each sample scaled to
          unit l2 norm (JDA code).
        * ``coil20_jda``: ``(n, 1, 32, 32)`` upright (the source stores pixels in
          MATLAB column-major order), each sample scaled to unit l2 norm.
        * ``digits``: ``(n, 1, 28, 28)`` in [0, 1]: MNIST test pixels ``/ 255``
          exactly; USPS 16x16 upsampled to 28x28 by
          ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
          in float64 (then clipped to [0, 1] against rounding) so that both digit
          sources share an input shape. These are image domains (``image`` =
          :data:`DIGITS_FORMAT`): the run's ``[augment]`` section can augment them.

    Raises:
        ValueError: unknown ``dataset`` or ``domain`` (the message lists the valid
            choices); a malformed or unimportable user spec; a non-floating ``dtype``.
        TypeError: a user dataset function that does not return a Domain.
    """
    if not isinstance(dataset, str) or not isinstance(domain, str):
        raise TypeError(
            f"dataset and domain must be str, got {type(dataset).__name__} and {type(domain).__name__}"
        )
    if dataset.startswith(("image_folder:", "image_list:")):
        from tladapt.data.images import ImageDataset, ImageOptions, load_image_domain

        return load_image_domain(ImageDataset.parse(dataset), domain, images or ImageOptions())
    if ":" in dataset:
        return _load_user_domain(dataset, domain)
    import torch

    from tladapt.data.domain import Domain

    dtype = torch.float32 if dtype is None else dtype
    info = _check_names(dataset, domain)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    x_orig, y = _decoded(dataset, domain)
    x = _preprocess(dataset, domain, x_orig)
    return Domain(
        name=domain,
        storage=torch.tensor(x, dtype=dtype),  # torch.tensor always copies
        y=torch.tensor(y, dtype=torch.int64),
        classes=info.classes,
        image=_digits_format() if dataset == "digits" else None,
    )


def describe_datasets() -> list[dict]:
    """One row per (bundled dataset, domain), for the ``tladapt datasets`` listing.

    Returns:
        A list of dicts with keys ``dataset`` (str), ``domain`` (str), ``n``
        (int, number of samples), ``input_shape`` (tuple of int, one preprocessed
        input) and ``n_classes`` (int), in registry order. Only the small label
        arrays are read; user datasets are not listed.
    """
    return [
        {
            "dataset": info.name,
            "domain": domain,
            "n": _n_samples(info.name, domain),
            "input_shape": info.input_shape,
            "n_classes": len(info.classes),
        }
        for info in DATASETS.values()
        for domain in info.domains
    ]
