"""What a plugin author needs besides the hook marker: loss terms and documented options."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch


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


def option(default: Any, help: str) -> Any:
    """A dataclass field for a plugin option with its one-line documentation.

    ``help`` is shown by ``tladapt plugins``. Mutable defaults (lists) are copied
    per instance, so ``option([256, 256], "hidden sizes")`` is safe.

    Example::

        @dataclass
        class Options:
            weight: float = option(1.0, "coefficient of the domain loss")
    """
    meta = {"help": help}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
