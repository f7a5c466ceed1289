"""Self-supervised objectives and their input corruptions, for learning a representation
without labels (self-taught learning: Raina, Battle, Lee, Packer & Ng, ICML 2007).

Every function works on a batch on the training device with tensor ops only (no host
sync, no Python loop over samples), drawing its randomness from torch's generator of
that device, so a seeded run is reproducible. Used by the ``autoencoder`` and ``simclr``
plugins.

* :func:`mask_noise`: the masking corruption of denoising autoencoders (Vincent, Larochelle,
  Bengio & Manzagol, ICML 2008).
* :func:`corrupt_features`: SCARF's view of a feature vector (Bahri, Jiang, Tay & Metzler,
  ICLR 2022): a random subset of the features replaced by draws from their marginal.
* :func:`jitter_images`: a random affine view of small images (scale, rotation, shift;
  the crop-and-resize of SimCLR, Chen, Kornblith, Norouzi & Hinton, ICML 2020, as one
  ``grid_sample``) plus Gaussian pixel noise.
* :func:`nt_xent`: SimCLR's normalised temperature-scaled cross-entropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mask_noise(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Zero each entry of ``x`` independently with probability ``rate`` (masking noise).

    Args:
        x: any shape, float.
        rate: in [0, 1).

    Returns:
        A tensor like ``x``.
    """
    return x * (torch.rand_like(x) >= rate)


def corrupt_features(x: torch.Tensor, rate: float) -> torch.Tensor:
    """SCARF's corruption: each entry ``x[i, j]`` is, with probability ``rate``, replaced by
    ``x[k, j]`` of a uniformly drawn row ``k`` of the same batch (a draw from feature ``j``'s
    empirical marginal), independently per entry.

    Args:
        x: ``(b, d)`` float features.
        rate: corruption probability in [0, 1) (0.6 in the paper).

    Returns:
        ``(b, d)``, same dtype and device.
    """
    rows = torch.randint(x.shape[0], x.shape, device=x.device)
    return torch.where(torch.rand_like(x) < rate, x.gather(0, rows), x)


def jitter_images(x: torch.Tensor, scale: tuple[float, float] = (0.8, 1.0), max_rotation: float = 15.0,
                  max_shift: float = 0.125, noise: float = 0.0) -> torch.Tensor:
    """A random affine view of each image: sample a region of side ``s ~ U(scale)`` times the
    image's (zoom in by ``1/s``), rotate
    by ``U(-max_rotation, max_rotation)`` degrees, shift by ``U(-max_shift, max_shift)`` of
    the side along each axis (bilinear, zeros outside), then add ``N(0, noise²)`` per pixel.

    Args:
        x: ``(b, c, h, w)`` float images.
        scale: range of the sampled region's side as a fraction of the image's, in (0, 1].
        max_rotation: degrees.
        max_shift: fraction of the image side.
        noise: standard deviation of the additive Gaussian noise (0: none).

    Returns:
        ``(b, c, h, w)``, same dtype and device.
    """
    b = x.shape[0]
    u = torch.rand(b, 4, device=x.device, dtype=x.dtype)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    angle = math.radians(max_rotation) * (2 * u[:, 1] - 1)
    shift = 2 * max_shift * (2 * u[:, 2:] - 1)  # affine_grid's coordinates span [-1, 1]: 2 per side
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + noise * torch.randn_like(out) if noise else out


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al., ICML 2020, eq. 1) over ``2b`` views.

    With ``z`` the L2-normalised rows of ``cat(z1, z2)`` and ``s_ij = z_i·z_j / τ``, the
    loss of view ``i`` with positive ``p(i)`` (its other view) is
    ``-log(exp(s_i,p(i)) / Σ_{k≠i} exp(s_ik))``; the result is its mean over all ``2b`` views.

    Args:
        z1, z2: ``(b, d)`` float projections of two views of the same ``b`` samples.
        temperature: τ > 0.

    Returns:
        0-dim tensor.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.arange(2 * b, device=z.device).roll(b)  # view i's other view: i + b mod 2b
    return F.cross_entropy(sim, positive)
