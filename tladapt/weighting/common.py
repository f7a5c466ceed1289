"""What the importance-weight estimators share: input checks, the Gaussian kernel and its
median-heuristic width (conventions: :mod:`tladapt.weighting`)."""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import torch

from tladapt.discrepancy import kernel_bandwidths


ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_points(x: Any, name: str) -> torch.Tensor:
    """Validate one sample and return it as a float64 tensor (same device for tensors)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            a = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise ValueError(f"{name} must be an array of shape (n, d): {exc}") from None
        if a.dtype.kind not in "iuf":
            raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
        t = torch.from_numpy(np.array(a, dtype=np.float64, copy=True))
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n, d), got {tuple(t.shape)}; reshape 1-D data to (n, 1)"
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}, need n >= 1 and d >= 1")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return t


def _as_pair(source: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xs = _as_points(source, "source")
    xt = _as_points(target, "target")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(
            f"target has {xt.shape[1]} features, source has {xs.shape[1]}: they must match"
        )
    return xs, xt


def _out_device(device, *inputs: Any) -> torch.device:
    """``device`` if given, else the device of the first tensor input (CPU for NumPy)."""
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def _check_positive(value, name: str, *, allow_inf: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0, got {value!r}") from None
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be {'> 0' if allow_inf else 'finite and > 0'}, got {value!r}")
    return v


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def median_sigma(
    source: ArrayLike, target: ArrayLike | None = None, *, max_points: int = 2000, seed: int = 0
) -> float:
    """Median-heuristic kernel width ``sigma`` of the pooled sample (Gretton et al., JMLR 2012).

    ``sigma = sqrt(median ||z_i - z_j||^2)`` over the pairs ``i < j`` of the pooled points
    ``z = cat(source, target)``, i.e. the median pairwise distance; computed by
    :func:`tladapt.discrepancy.kernel_bandwidths` (``bandwidth="median"``, one scale), so
    ``sigma**2`` equals that module's median bandwidth, fall-backs included (a zero median
    falls back to the mean squared distance, all-identical points to 1).

    Args:
        source: ``(n_s, d)`` array or tensor.
        target: ``(n_t, d)`` array or tensor, or ``None`` for the source alone.
        max_points: if the pool has more points, a uniform subsample of this many
            (drawn proportionally from both samples with a ``torch.Generator`` seeded
            by ``seed``) is used: ``O(max_points^2)`` time and memory.
        seed: seed of that subsample.

    Returns:
        ``sigma`` > 0, a Python float (convention: ``k = exp(-d^2 / (2 sigma^2))``).

    Raises:
        ValueError: bad shapes, empty or non-finite input, ``max_points < 2``.
    """
    max_points = _check_int(max_points, "max_points", 2)
    if target is None:
        xs = _as_points(source, "source")
        xt = xs[:0]
    else:
        xs, xt = _as_pair(source, target)
    xt = xt.to(xs.device)
    n_s, n_t = xs.shape[0], xt.shape[0]
    if n_s + n_t > max_points:
        gen = torch.Generator().manual_seed(int(seed))
        k_s = max(1, round(max_points * n_s / (n_s + n_t)))
        k_t = max_points - k_s
        xs = xs[torch.randperm(n_s, generator=gen)[:k_s].to(xs.device)]
        xt = xt[torch.randperm(n_t, generator=gen)[:k_t].to(xt.device)] if n_t else xt
    if xt.shape[0] == 0:  # the pooled median of one sample: split it (pairs are pooled anyway)
        if xs.shape[0] < 2:
            return 1.0
        xs, xt = xs[: xs.shape[0] // 2], xs[xs.shape[0] // 2 :]
    sigma2 = kernel_bandwidths(xs, xt, bandwidth="median", scales=(1.0,))
    return float(sigma2[0].sqrt())


def _resolve_sigma(sigma, xs: torch.Tensor, xt: torch.Tensor) -> float:
    if sigma is None:
        return median_sigma(xs, xt)
    return _check_positive(sigma, "sigma")


def _kernel_block(a: torch.Tensor, b: torch.Tensor, coef: float, diagonal: bool = False) -> torch.Tensor:
    """``exp(coef * ||a_i - b_j||^2)`` for one tile, in place (one ``(r, c)`` buffer + one temp).

    Few features: exact differences (no cancellation); many: one GEMM. ``diagonal``
    marks a tile of ``K(x, x)`` on the diagonal (``a is b``): its diagonal is set to 1.
    """
    d = a.shape[1]
    if d <= 4:
        t = (a[:, :1] - b[:, 0].unsqueeze(0)).square_()
        for k in range(1, d):
            t.add_((a[:, k : k + 1] - b[:, k].unsqueeze(0)).square_())
    else:
        t = torch.addmm((b * b).sum(1).unsqueeze(0), a, b.t(), alpha=-2.0)
        t.add_((a * a).sum(1, keepdim=True)).clamp_(min=0)
    if diagonal:
        t.fill_diagonal_(0.0)
    return t.mul_(coef).exp_()
