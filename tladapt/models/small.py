"""The small backbones trained from scratch: an MLP for vectors and LeNet for digits.

Both map ``(b, *input_shape)`` float32 inputs to ``(b, out_features)`` features and
expose ``out_features``; weights start from PyTorch's default initialisation under the
run's seed.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Sequential):
    """Fully connected feature extractor for vector inputs (SURF, bag-of-words); images are
    flattened (a pixel MLP, a cheap baseline for small digits and COIL images).

    ``Linear -> ReLU -> Dropout`` per hidden size; features are the last hidden layer.

    Args:
        in_features: input dimension d; inputs are ``(b, d)`` float32 (or any ``(b, ...)`` with
            ``d`` entries per sample).
        hidden: hidden sizes, at least one; ``out_features = hidden[-1]``.
        dropout: dropout probability after each hidden layer.

    Raises:
        ValueError: if ``hidden`` is empty or holds a non-positive size.
    """

    def __init__(self, in_features: int, hidden: list[int], dropout: float = 0.5):
        if not hidden or min(hidden) <= 0:
            raise ValueError(f"model.hidden must be a non-empty list of positive sizes, got {hidden}")
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(in_features, size), nn.ReLU(), nn.Dropout(dropout)]
            in_features = size
        super().__init__(*layers)
        self.out_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, d)`` float32, or images ``(b, c, h, w)`` flattened to ``d = c h w``, -> ``(b, out_features)``."""
        return super().forward(x.flatten(1))


class LeNet(nn.Module):
    """LeNet-5 style feature extractor as used for digits in DANN/ADDA experiments.

    ``conv5x5(20) -> maxpool2 -> ReLU -> conv5x5(50) -> dropout -> maxpool2 -> ReLU
    -> Linear(500) -> ReLU -> dropout`` (the Caffe LeNet of ADDA, Tzeng et al. CVPR
    2017, and TLlib's digits backbone). Works for 16x16, 28x28 and 32x32 inputs.

    Args:
        input_shape: ``(channels, height, width)``, height and width ≥ 16.
        dropout: dropout probability.

    Raises:
        ValueError: for inputs that are not ``(c, h, w)`` with h, w ≥ 16.
    """

    def __init__(self, input_shape: tuple[int, ...], dropout: float = 0.5):
        super().__init__()
        if len(input_shape) != 3 or min(input_shape[1:]) < 16:
            raise ValueError(
                f"lenet expects inputs of shape (channels, height, width) with height and "
                f"width >= 16, got {tuple(input_shape)}"
            )
        c, h, w = input_shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(20, 50, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU(),
        )
        side = lambda n: ((n - 4) // 2 - 4) // 2  # noqa: E731  (two conv5 + pool2 stages)
        flat = 50 * side(h) * side(w)
        self.fc = nn.Sequential(nn.Linear(flat, 500), nn.ReLU(), nn.Dropout(dropout))
        self.out_features = 500

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, h, w)`` float32 -> ``(b, 500)`` features."""
        return self.fc(self.conv(x).flatten(1))
