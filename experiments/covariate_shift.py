"""Known-answer covariate-shift experiment for :mod:`tladapt.weighting`.

Shimodaira's 1-D polynomial regression (Shimodaira, "Improving predictive inference
under covariate shift by weighting the log-likelihood function", J. Statist. Plann.
Inference 90, 2000, Section 7), also the toy problem of the KLIEP paper (Sugiyama et
al., NIPS 2007):

* ``y = -x + x^3 + e``, ``e ~ N(0, 0.3^2)``;
* source (training) inputs ``x ~ N(0.5, 0.5^2)``, target (test) inputs ``x ~ N(0, 0.3^2)``;
* the model is a straight line ``y = a + b x`` -- misspecified -- fitted by (weighted)
  least squares on ``n_source`` labelled source points.

Under this covariate shift the ordinary least-squares line fits the source region
(``x`` around 0.5-1, where the cubic bends) and extrapolates badly on the target;
weighting the squared errors by ``w(x) = p_T(x) / p_S(x)`` targets the line that is
best on the target. The weights are estimated from the source inputs and
``n_target`` *unlabelled* target inputs by KMM, KLIEP and a domain classifier; the
true ratio (``oracle``) is the known answer. The target error is the mean squared
error on ``n_test`` fresh labelled target points (noise variance 0.09 included).

Usage::

    python experiments/covariate_shift.py                 # 20 seeds, writes experiments/covariate_shift.md
    python experiments/covariate_shift.py --seeds 5 --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from tladapt.weighting import discriminative_weights, kliep_weights, kmm_weights

SOURCE = (0.5, 0.5)  # mean, std of the source inputs
TARGET = (0.0, 0.3)  # mean, std of the target inputs
NOISE = 0.3

#: Weighting methods, in table order (label, description).
METHODS: dict[str, str] = {
    "unweighted": "ordinary least squares (all weights 1)",
    "oracle": "true density ratio N(0, 0.3^2) / N(0.5, 0.5^2)",
    "kmm": "KMM, exact QP (median sigma, B = 1000, default eps)",
    "kmm_apg": "KMM, tiled APG solver (same problem, default tol = 1e-5)",
    "kliep": "KLIEP (100 centres, 5-fold likelihood CV over median sigma x {0.1 .. 5})",
    "logreg": "domain classifier: logistic regression on x",
    "logreg_quad": "domain classifier: logistic regression on (x, x^2)",
}


NOTES = """Reading (the default run): every estimated weighting recovers most of the oracle's gain. `kmm`
and `kmm_apg` solve the *same* QP and reach the same MMD (the APG solution is
certified within 1e-5 in MMD^2, measured within ~3e-6 of the exact optimum), yet
they differ downstream: the Gaussian kernel matrix is so ill-conditioned that the
objective does not pin the weights down, and the exact interior-point optimum is a
sparse, extreme weighting (about 90 of the 100 weights at 0 on most seeds, hence
the small ESS and the larger spread), while the first-order solver started from
uniform weights and stopped at the tolerance keeps them spread out (an implicit
regularisation). Compare KMM solutions by objective, not by weights; for
downstream use the tolerance acts as a regulariser.
"""


def f_true(x: np.ndarray) -> np.ndarray:
    return -x + x**3


def make_problem(seed: int, n_source: int = 100, n_target: int = 100, n_test: int = 10000):
    """One draw: labelled source, unlabelled target, labelled target test set (float64)."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(*SOURCE, size=n_source)
    ys = f_true(xs) + rng.normal(0.0, NOISE, size=n_source)
    xt = rng.normal(*TARGET, size=n_target)
    x_test = rng.normal(*TARGET, size=n_test)
    y_test = f_true(x_test) + rng.normal(0.0, NOISE, size=n_test)
    return xs, ys, xt, x_test, y_test


def fit_wls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least squares line: ``argmin_(a,b) sum_i w_i (y_i - a - b x_i)^2``."""
    X = np.stack([np.ones_like(x), x], 1)
    sw = np.sqrt(np.asarray(w, dtype=np.float64))
    coef, *_ = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)
    return coef


def weights(method: str, xs: np.ndarray, xt: np.ndarray) -> np.ndarray:
    """Importance weights of the source points by one of :data:`METHODS`."""
    S, T = xs[:, None], xt[:, None]
    if method == "unweighted":
        return np.ones_like(xs)
    if method == "oracle":
        return norm.pdf(xs, *TARGET) / norm.pdf(xs, *SOURCE)
    if method == "kmm":
        w = kmm_weights(S, T, method="qp")
    elif method == "kmm_apg":
        w = kmm_weights(S, T, method="apg")
    elif method == "kliep":
        w = kliep_weights(S, T)
    elif method == "logreg":
        w = discriminative_weights(S, T)
    elif method == "logreg_quad":
        clf = make_pipeline(PolynomialFeatures(2), StandardScaler(), LogisticRegression(max_iter=1000))
        w = discriminative_weights(S, T, classifier=clf)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    return w.double().numpy()


def ess(w: np.ndarray) -> float:
    """Effective sample size of a weighting, ``(sum w)^2 / sum w^2`` (Kish)."""
    return float(w.sum() ** 2 / (w**2).sum())


def run(seeds, methods=tuple(METHODS), n_source=100, n_target=100, n_test=10000, return_ess=False):
    """Target test MSE of each method for each seed: ``{method: np.ndarray (len(seeds),)}``.

    With ``return_ess``, also the weights' effective sample sizes, same layout.
    """
    errors = {m: [] for m in methods}
    sizes = {m: [] for m in methods}
    for seed in seeds:
        xs, ys, xt, x_test, y_test = make_problem(seed, n_source, n_target, n_test)
        for m in methods:
            w = weights(m, xs, xt)
            a, b = fit_wls(xs, ys, w)
            errors[m].append(float(np.mean((y_test - a - b * x_test) ** 2)))
            sizes[m].append(ess(w))
    errors = {m: np.asarray(v) for m, v in errors.items()}
    return (errors, {m: np.asarray(v) for m, v in sizes.items()}) if return_ess else errors


def table(errors: dict[str, np.ndarray], sizes: dict[str, np.ndarray] | None = None) -> str:
    base = errors["unweighted"]
    lines = [
        "| method | target MSE (mean ± std) | vs unweighted | seeds where it beats unweighted |"
        + (" weights' ESS (mean) |" if sizes else ""),
        "|---|---:|---:|---:|" + ("---:|" if sizes else ""),
    ]
    for m, e in errors.items():
        wins = "" if m == "unweighted" else f"{int((e < base).sum())}/{len(e)}"
        lines.append(
            f"| `{m}`: {METHODS[m]} | {e.mean():.4f} ± {e.std(ddof=1):.4f} | "
            f"{e.mean() / base.mean():.3f} | {wins} |"
            + (f" {sizes[m].mean():.1f} |" if sizes else "")
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=20, help="number of seeds (0 .. N-1)")
    p.add_argument("--n-source", type=int, default=100)
    p.add_argument("--n-target", type=int, default=100)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    errors, sizes = run(
        range(args.seeds), n_source=args.n_source, n_target=args.n_target, n_test=args.n_test, return_ess=True
    )
    elapsed = time.perf_counter() - t0
    tab = table(errors, sizes)
    print(tab)
    print(f"({elapsed:.1f} s)")
    if not args.no_write:
        cmd = "python experiments/covariate_shift.py" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:])
        )
        text = (
            "# Covariate shift: Shimodaira's polynomial regression\n\n"
            f"Produced by `{cmd}` ({args.seeds} seeds, {elapsed:.0f} s on 2 CPU cores).\n\n"
            "`y = -x + x^3 + N(0, 0.3^2)`; source `x ~ N(0.5, 0.5^2)` "
            f"({args.n_source} labelled points), target `x ~ N(0, 0.3^2)` "
            f"({args.n_target} unlabelled points for the weights, {args.n_test} labelled "
            "test points); a straight line fitted by weighted least squares "
            "(Shimodaira 2000; KLIEP paper's toy). Target MSE includes the noise variance "
            "0.09; the best line on the target has MSE about 0.094. Mean ± standard "
            "deviation over the seeds; ESS = (sum w)^2 / sum w^2 of the source weights.\n\n"
            + tab
            + "\n\n"
            + NOTES
        )
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
