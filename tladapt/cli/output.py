"""Number formatting shared by the sub-commands' tables."""

from __future__ import annotations


def significant(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits (``0.000412``, ``1.23``, ``1.2e-07``), so that
    a small distance is not printed as 0; an exact 0 prints as ``0``."""
    return f"{value:.{digits}g}"
