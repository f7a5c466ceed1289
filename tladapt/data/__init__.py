"""Data: domains, bundled real benchmarks and the device-resident paired pipeline."""

from tladapt.data.domain import Domain, check_task

__all__ = ["Domain", "check_task"]
