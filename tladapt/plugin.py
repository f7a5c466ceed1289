"""What a plugin author needs besides the hook marker: loss terms and documented options."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from tladapt.options import option

if TYPE_CHECKING:  # annotations only: importing tladapt must not import torch
    import torch

__all__ = ["Term", "option"]


class Term(NamedTuple):
    """One named loss term returned from ``tladapt_losses``.

    Attributes:
        value: 0-dim float tensor on the training device, the unweighted loss.
        weight: its coefficient in the total loss (a float, or a 0-dim tensor
            for a schedule computed on the device). The trainer adds
            ``weight * value`` to the total and logs ``value`` as ``loss/<name>``.
    """

    value: torch.Tensor
    weight: float | torch.Tensor = 1.0
