"""Data: domains, bundled real benchmarks and the device-resident paired pipeline.

``Domain`` and ``check_task`` are imported on first use (PEP 562), so that reading the
dataset registry (``tladapt datasets``) does not import torch.
"""

from __future__ import annotations

__all__ = ["Domain", "check_task"]


def __getattr__(name: str):
    if name in __all__:
        from tladapt.data import domain

        return getattr(domain, name)
    raise AttributeError(f"module 'tladapt.data' has no attribute {name!r}")
