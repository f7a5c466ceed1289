"""Closed-form transfer subspaces: TCA, JDA and BDA as one generalised eigenproblem, in torch.

* Pan, Tsang, Kwok & Yang, "Domain Adaptation via Transfer Component Analysis", IEEE TNN
  2011 (TCA): a projection that minimises the MMD between the domains' marginals.
* Long, Wang, Ding, Sun & Yu, "Transfer Feature Learning with Joint Distribution
  Adaptation", ICCV 2013 (JDA): also the class-conditional MMDs, with target
  pseudo-labels refined over iterations.
* Wang, Chen, Hu, Peng & Yu, "Balanced Distribution Adaptation for Transfer Learning",
  ICDM 2017 (BDA): a balance factor μ between the marginal and conditional terms.

With ``X`` the ``(n, m)`` stacked inputs (source then target), ``K`` either ``X`` itself
(``"primal"``) or an ``(n, n)`` kernel matrix, ``H = I - 1/n`` the centring matrix and ``M``
the MMD matrix, the projection ``A`` solves::

    min tr(Aᵀ Kᵀ M K A) + λ ||A||²   s.t.  Aᵀ Kᵀ H K A = I

i.e. the ``dim`` smallest generalised eigenvalues of ``(KᵀMK + λI) a = φ KᵀHK a``. As in the
authors' MATLAB code, ``M = C e₀e₀ᵀ + Σ_c e_c e_cᵀ`` (JDA; ``C`` classes, ``e₀`` the
marginal indicator ``1/n_s`` / ``-1/n_t``, ``e_c`` the class-``c`` one) normalised to unit
Frobenius norm; BDA takes ``(1 - μ) C e₀e₀ᵀ + μ Σ_c e_c e_cᵀ`` (``μ = 0.5`` is JDA); TCA
``e₀e₀ᵀ`` alone. The embedding is ``Z = K A`` (rows are samples), each row l2-normalised
"for better classification", and the pseudo-labels of the next iteration are a 1-NN
classifier's on ``Z``.

The eigenproblem is solved exactly: ``P = KᵀMK + λI`` is positive definite, so with
``P = LLᵀ`` the problem is the symmetric ``L⁻¹ (KᵀHK) L⁻ᵀ v = (1/φ) v`` and ``A = L⁻ᵀ V`` for
its ``dim`` largest eigenvalues, ``P``-normalised (``AᵀPA = I``) as SciPy's
``scipy.linalg.eigh(KᵀHK, P)`` (tests/test_subspace.py compares the two). MATLAB's ``eigs(...,
'SM')`` is iterative and may return another basis of nearly degenerate eigenspaces, which
is the main reason per-task 1-NN accuracies differ from the paper's by a point or two.
Everything runs in float64 on the inputs' device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["SubspaceOptions", "SubspaceFit", "kernel_matrix", "mmd_matrix_factors", "transfer_projection",
           "nearest_neighbour", "fit_subspace"]

Method = Literal["tca", "jda", "bda"]
Kernel = Literal["primal", "linear", "rbf"]


@dataclass(frozen=True)
class SubspaceOptions:
    """The options of :func:`fit_subspace` (the ``jda`` plugin's, with the same names).

    Attributes:
        method: ``"tca"`` (marginal MMD, one solve), ``"jda"`` or ``"bda"`` (marginal and
            conditional, ``iterations`` solves with refined pseudo-labels).
        dim: k, the subspace dimension (100 in JDA).
        lam: λ > 0, the regularisation (JDA: 0.1 digits and COIL, 1.0 SURF and PIE).
        kernel: ``"primal"`` (a linear map of the inputs, an ``(m, m)`` problem),
            ``"linear"`` (``K = X Xᵀ``) or ``"rbf"`` (``exp(-gamma ||x - y||²)``), both
            ``(n, n)`` problems.
        gamma: the RBF kernel's γ.
        iterations: T (10 in JDA).
        mu: BDA's balance μ in [0, 1] (0.5: JDA).
        normalize_inputs: l2-normalise every input first (JDA's code).
    """

    method: Method = "jda"
    dim: int = 100
    lam: float = 0.1
    kernel: Kernel = "primal"
    gamma: float = 1.0
    iterations: int = 10
    mu: float = 0.5
    normalize_inputs: bool = True


def kernel_matrix(kernel: Kernel, a: torch.Tensor, b: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``k(a_i, b_j)`` for ``"linear"`` (``a bᵀ``) and ``"rbf"`` (``exp(-γ ||a_i - b_j||²)``):
    ``(n, m)`` and ``(p, m)`` -> ``(n, p)``.

    Raises:
        ValueError: for another kernel name (``"primal"`` has no kernel matrix).
    """
    if kernel == "linear":
        return a @ b.T
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(a, b).square())
    raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")


def mmd_matrix_factors(y_source: torch.Tensor, n_target: int, num_classes: int,
                       y_target: torch.Tensor | None = None, method: Method = "jda",
                       mu: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The MMD matrix ``M = E diag(w) Eᵀ`` as its factors ``(E, w)``, with ``||M||_F = 1``.

    Columns of ``E`` (``(n_s + n_t, 1 + C)``): ``e₀`` (``1/n_s`` on the source rows, ``-1/n_t``
    on the target's) and, with pseudo-labels ``y_target`` (JDA, BDA), one ``e_c`` per class
    (``1/n_s^c`` on the source rows of class ``c``, ``-1/n_t^c`` on the target rows
    pseudo-labelled ``c``, 0 where a domain has no sample of ``c``). Weights as in the
    authors' code: TCA ``w₀ = 1``; JDA ``w₀ = C``, ``w_c = 1``; BDA ``w₀ = (1 - μ) C``,
    ``w_c = μ``. The ``(n, n)`` matrix is never formed: ``||M||_F² = ||diag(√w) EᵀE diag(√w)||_F²``.

    Args:
        y_source: ``(n_s,)`` int64 labels in ``0 .. C - 1``.
        n_target: n_t.
        num_classes: C.
        y_target: ``(n_t,)`` int64 pseudo-labels, or None (the marginal term alone, as in
            JDA's first iteration and in TCA).
        method, mu: as in :class:`SubspaceOptions`.

    Returns:
        ``(E, w)``: float64 ``(n, 1)`` or ``(n, 1 + C)``, and the matching weights.
    """
    n_s, device = y_source.shape[0], y_source.device
    e0 = torch.cat([torch.full((n_s,), 1.0 / n_s, dtype=torch.float64, device=device),
                    torch.full((n_target,), -1.0 / n_target, dtype=torch.float64, device=device)])
    if y_target is None or method == "tca":
        columns, weights = e0[:, None], torch.ones(1, dtype=torch.float64, device=device)
    else:
        onehot_s = F.one_hot(y_source, num_classes).double()
        onehot_t = F.one_hot(y_target, num_classes).double()
        e_s = onehot_s / onehot_s.sum(0).clamp(min=1)
        e_t = -onehot_t / onehot_t.sum(0).clamp(min=1)
        columns = torch.cat([e0[:, None], torch.cat([e_s, e_t])], dim=1)
        share = 0.5 if method == "jda" else mu  # JDA's weights are BDA's at μ = 0.5, up to the scale
        weights = torch.cat([torch.full((1,), (1 - share) * num_classes, dtype=torch.float64, device=device),
                             torch.full((num_classes,), share, dtype=torch.float64, device=device)])
    root = weights.sqrt()
    gram = (columns.T @ columns) * root[:, None] * root[None, :]
    return columns, weights / torch.linalg.matrix_norm(gram)


def transfer_projection(k: torch.Tensor, columns: torch.Tensor, weights: torch.Tensor, dim: int,
                        lam: float) -> torch.Tensor:
    """The ``dim`` smallest generalised eigenvectors of ``(KᵀMK + λI) a = φ KᵀHK a``.

    Args:
        k: ``(n, p)`` float64: the inputs (``p = m``, primal) or the kernel matrix (``p = n``).
        columns, weights: ``M``'s factors from :func:`mmd_matrix_factors`.
        dim: how many eigenvectors, ``1 <= dim <= p``.
        lam: λ > 0.

    Returns:
        ``A``, ``(p, dim)`` float64, ``Aᵀ (KᵀMK + λI) A = I``, by increasing φ (decreasing
        ``1/φ``); each column's sign is fixed so that its largest-magnitude entry is positive.

    Raises:
        ValueError: for ``dim`` outside ``1 .. p`` or ``lam <= 0``.
    """
    p = k.shape[1]
    if not 1 <= dim <= p:
        raise ValueError(f"dim must lie in 1..{p} (the problem's size), got {dim}")
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    km = k.T @ columns  # (p, 1 + C)
    penalty = (km * weights) @ km.T + lam * torch.eye(p, dtype=k.dtype, device=k.device)
    centred = k - k.mean(dim=0, keepdim=True)  # H K
    spread = centred.T @ centred  # Kᵀ H K (H is idempotent)
    chol = torch.linalg.cholesky(penalty)
    half = torch.linalg.solve_triangular(chol, spread, upper=False)
    sym = torch.linalg.solve_triangular(chol, half.T, upper=False).T
    _, vectors = torch.linalg.eigh((sym + sym.T) / 2)
    top = vectors[:, -dim:].flip(1)
    a = torch.linalg.solve_triangular(chol.T, top, upper=True)
    sign = torch.sign(a.gather(0, a.abs().argmax(0, keepdim=True)))
    return a * sign


def nearest_neighbour(train: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                      chunk: int = 4096) -> torch.Tensor:
    """1-NN (Euclidean) predictions ``(q,)`` int64 of ``query`` ``(q, d)`` from ``train`` ``(n, d)``
    and its ``labels``; ties go to the first training sample (as MATLAB's ``knnclassify``)."""
    return torch.cat([labels[torch.cdist(query[i:i + chunk], train).argmin(dim=1)]
                      for i in range(0, query.shape[0], chunk)])


@dataclass
class SubspaceFit:
    """A fitted transfer subspace.

    Attributes:
        options: what it was fitted with.
        basis: the training inputs the map is expressed in, ``(n, m)`` float64 (source rows
            then target rows, l2-normalised when ``options.normalize_inputs``): a kernel
            map needs them to embed new samples; None for ``"primal"``.
        projection: ``A``, ``(m, k)`` (primal) or ``(n, k)`` (kernels), float64.
        pseudo_labels: ``(T, n_t)`` int64, the 1-NN pseudo-labels of the target after each
            solve (the last row is the final one).
        objective: ``(T,)`` float64, ``tr(Aᵀ KᵀMK A)`` of each solve (the MMD term it minimised).
    """

    options: SubspaceOptions
    basis: torch.Tensor | None
    projection: torch.Tensor
    pseudo_labels: torch.Tensor
    objective: torch.Tensor

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding of new (or training) samples ``(q, m)`` -> ``(q, k)`` float64, rows
        l2-normalised, exactly as the training samples were embedded."""
        x = x.double()
        if self.options.normalize_inputs:
            x = F.normalize(x, dim=1)
        k = x if self.basis is None else kernel_matrix(self.options.kernel, x, self.basis, self.options.gamma)
        return F.normalize(k @ self.projection, dim=1)


def fit_subspace(x_source: torch.Tensor, y_source: torch.Tensor, x_target: torch.Tensor, num_classes: int,
                 options: SubspaceOptions = SubspaceOptions()) -> SubspaceFit:
    """TCA, JDA or BDA on the labelled source and the unlabelled target (the papers' Algorithm 1).

    Each of the ``T`` solves (one for TCA) builds ``M`` from the source labels and the
    previous solve's target pseudo-labels (none at first), solves
    :func:`transfer_projection`, embeds both domains (rows l2-normalised) and relabels the
    target with a 1-NN classifier trained on the embedded source. Target labels are never
    read (there are none here).

    Args:
        x_source: ``(n_s, m)`` float; y_source: ``(n_s,)`` int64 in ``0 .. C - 1``.
        x_target: ``(n_t, m)`` float, same device.
        num_classes: C.
        options: :class:`SubspaceOptions`.

    Returns:
        A :class:`SubspaceFit`; ``fit.embed(x)`` maps any samples.

    Raises:
        ValueError: as :func:`transfer_projection` (``dim`` larger than the problem).
    """
    o = options
    x = torch.cat([x_source, x_target]).double()
    if o.normalize_inputs:
        x = F.normalize(x, dim=1)
    k = x if o.kernel == "primal" else kernel_matrix(o.kernel, x, x, o.gamma)
    n_s = x_source.shape[0]
    pseudo, history, objective = None, [], []
    for _ in range(1 if o.method == "tca" else o.iterations):
        columns, weights = mmd_matrix_factors(y_source, x_target.shape[0], num_classes, pseudo, o.method, o.mu)
        a = transfer_projection(k, columns, weights, o.dim, o.lam)
        projected = columns.T @ (k @ a)  # (1 + C, k): tr(Aᵀ KᵀMK A) = Σ_c w_c ||e_cᵀ K A||²
        objective.append((weights * projected.square().sum(1)).sum())
        z = F.normalize(k @ a, dim=1)
        pseudo = nearest_neighbour(z[:n_s], y_source, z[n_s:])
        history.append(pseudo)
    basis = None if o.kernel == "primal" else x
    return SubspaceFit(o, basis, a, torch.stack(history), torch.stack(objective))
