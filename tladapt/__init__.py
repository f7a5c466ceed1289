"""tladapt: a small, pluggy-based domain-adaptation framework for PyTorch.

The core holds the plugin contract (:mod:`tladapt.hookspecs`), the trainer that
calls it, GPU-resident data pipelines, models and the losses' math. Algorithms
live in plugins registered under the entry-point group ``tladapt``.
"""

import importlib.metadata

import pluggy

try:
    __version__ = importlib.metadata.version("tladapt")  # one source: pyproject.toml
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

#: Marker for hook implementations in plugins: ``@tladapt.hookimpl``.
hookimpl = pluggy.HookimplMarker("tladapt")

from tladapt.plugin import Term, option  # noqa: E402  (needs hookimpl defined first)

__all__ = ["hookimpl", "Term", "option", "__version__"]
