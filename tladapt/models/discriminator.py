"""The domain discriminator of the adversarial methods (DANN, CDAN)."""

from __future__ import annotations

import torch
from torch import nn


class DomainDiscriminator(nn.Sequential):
    """MLP domain classifier: ``(b, in_features)`` float features -> ``(b,)`` logits.

    ``Linear -> ReLU -> Dropout`` per hidden size, then ``Linear(1)`` (the 3-layer
    discriminator of Ganin et al. 2016 with ``hidden=[1024, 1024]``).
    """

    def __init__(self, in_features: int, hidden: list[int], dropout: float):
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(in_features, size), nn.ReLU(), nn.Dropout(dropout)]
            in_features = size
        super().__init__(*layers, nn.Linear(in_features, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Domain logits ``(b,)``; positive means "target"."""
        return super().forward(features).squeeze(1)
