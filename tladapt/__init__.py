"""tladapt: a small, pluggy-based domain-adaptation framework for PyTorch.

The core holds the plugin contract (:mod:`tladapt.hookspecs`), the trainer that
calls it, GPU-resident data pipelines, models and the losses' math. Algorithms
live in plugins registered under the entry-point group ``tladapt``.

The Python API (:mod:`tladapt.api`: ``run``, ``load_config``, ``build_config``,
``load_run``, ``frame``, ``table``, ``TrainedRun``) and the config classes (``Config``
and its sections) are imported on first use (PEP 562), so ``import tladapt`` does not
import torch. See ``docs/python-api.md``.
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

_API = ("TrainedRun", "load_config", "build_config", "run", "load_run", "frame", "table")
_CONFIG = ("Config", "ExperimentSection", "DataSection", "AugmentSection", "ModelSection", "TrainerSection",
           "ValidationSection", "ConfigError")

__all__ = ["hookimpl", "Term", "option", "__version__", *_API, *_CONFIG]


def __getattr__(name: str):
    if name in _API:
        from tladapt import api

        return getattr(api, name)
    if name in _CONFIG:
        from tladapt import config

        return getattr(config, name)
    raise AttributeError(f"module 'tladapt' has no attribute {name!r}")
