"""The errors tladapt raises on purpose, each with its own exit status of the ``tladapt`` command."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config, override, plugin option or input is invalid; the message names the key and
    what was expected. Raised before any run directory exists (exit status 2)."""


class PluginError(RuntimeError):
    """Plugins broke the contract during a run: two of them returned the same loss name or
    both returned source weights, or a hook returned a value of the wrong type (exit status 1)."""


class TrainingDiverged(RuntimeError):
    """A logged loss became NaN or infinite; the run stops without writing ``results.json``
    (exit status 1)."""
