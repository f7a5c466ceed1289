"""Plugin discovery and the per-run pluggy ``PluginManager``.

Plugins come from the entry-point group ``tladapt`` (``name = "pkg.module:Class"``)
and from ``-p`` on the command line, like pytest: ``-p pkg.module``,
``-p path/to/file.py`` or either followed by ``:Class``. A plugin found through
an entry point is *installed*; it takes part in a run when the config has a
``[plugins.<name>]`` table. A plugin named with ``-p`` always takes part.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pluggy

from tladapt import hookspecs
from tladapt.errors import ConfigError, PluginError
from tladapt.options import validate_dataclass

PROJECT = "tladapt"


@dataclass(frozen=True)
class PluginInfo:
    """An available plugin: its name, class and where it came from.

    Attributes:
        name: the name used in ``[plugins.<name>]`` tables.
        cls: the plugin class; constructed once per run.
        origin: ``"entry point <dist> <version>"`` or ``"-p <spec>"``.
    """

    name: str
    cls: type
    origin: str

    @property
    def options_class(self) -> type | None:
        """The plugin's nested ``Options`` dataclass, or None if it takes no options."""
        opts = getattr(self.cls, "Options", None)
        return opts if dataclasses.is_dataclass(opts) else None

    @property
    def hooks(self) -> list[str]:
        """Names of the hooks the plugin implements."""
        return sorted(
            name for name, member in inspect.getmembers(self.cls)
            if callable(member) and hasattr(member, f"{PROJECT}_impl")
        )

    def resolve(self, table: dict[str, Any]) -> dict[str, Any]:
        """The plugin's full options (defaults filled in) for a config table, as plain data.

        Raises:
            ConfigError: as :meth:`make`.
        """
        opts_cls = self.options_class
        if opts_cls is None:
            self.make(table)
            return {}
        return dataclasses.asdict(validate_dataclass(opts_cls, table, f"plugins.{self.name}"))

    def make(self, table: dict[str, Any]) -> object:
        """Construct the plugin for one run from its config table.

        Raises:
            ConfigError: for unknown or ill-typed options, naming the plugin, the
                key and the valid keys.
        """
        opts_cls = self.options_class
        if opts_cls is None:
            if table:
                raise ConfigError(f"plugin {self.name!r} takes no options, got {', '.join(table)}")
            return self.cls()
        return self.cls(validate_dataclass(opts_cls, table, f"plugins.{self.name}"))


def _plugin_class(module, spec: str, attr: str | None) -> type:
    if attr:
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ConfigError(f"-p {spec}: module has no attribute {attr!r}") from None
    candidates = [
        obj for _, obj in inspect.getmembers(module, inspect.isclass)
        if obj.__module__ == module.__name__
        and any(hasattr(m, f"{PROJECT}_impl") for _, m in inspect.getmembers(obj, callable))
    ]
    if len(candidates) != 1:
        found = ", ".join(c.__name__ for c in candidates) or "none"
        raise ConfigError(
            f"-p {spec}: expected exactly one class with @tladapt.hookimpl methods, found {found}; "
            f"name one as {spec}:ClassName"
        )
    return candidates[0]


def load_cli_plugin(spec: str) -> PluginInfo:
    """Load a plugin named on the command line.

    Args:
        spec: ``pkg.module``, ``path/to/file.py``, optionally ``:ClassName``. The
            plugin's name is the class attribute ``name`` if set, else the module's
            last dotted part or the file's stem.

    Raises:
        ConfigError: if the module or file cannot be imported or holds no single
            plugin class.
    """
    target, _, attr = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise ConfigError(f"-p {spec}: no such file {path}")
            mod_name = f"tladapt_cli_plugin_{path.stem}"
            mspec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mod_name] = module
            mspec.loader.exec_module(module)
            default_name = path.stem
        else:
            module = importlib.import_module(target)
            default_name = target.rsplit(".", 1)[-1]
    except ImportError as err:
        raise ConfigError(f"-p {spec}: cannot import: {err}") from None
    cls = _plugin_class(module, spec, attr or None)
    return PluginInfo(getattr(cls, "name", default_name), cls, f"-p {spec}")


def installed_plugins() -> dict[str, PluginInfo]:
    """All plugins registered under the entry-point group ``tladapt``, by name.

    Raises:
        ConfigError: if an entry point fails to load (naming it).
    """
    found = {}
    for ep in importlib.metadata.entry_points(group=PROJECT):
        try:
            cls = ep.load()
        except Exception as err:  # a broken third-party plugin must say which one
            raise ConfigError(f"entry point {ep.name} = {ep.value!r} failed to load: {err}") from err
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
        found[ep.name] = PluginInfo(ep.name, cls, f"entry point of {dist}")
    return found


def available_plugins(cli_specs: Iterable[str] = ()) -> tuple[dict[str, PluginInfo], list[str]]:
    """Installed plugins plus those named with ``-p``.

    Returns:
        ``(plugins by name, names of the -p plugins)``.

    Raises:
        ConfigError: when a ``-p`` plugin's name clashes with another plugin.
    """
    plugins = installed_plugins()
    forced = []
    for spec in cli_specs:
        info = load_cli_plugin(spec)
        if info.name in plugins:
            raise ConfigError(f"-p {spec}: plugin name {info.name!r} is taken by {plugins[info.name].origin}")
        plugins[info.name] = info
        forced.append(info.name)
    return plugins, forced


def resolve_active(plugins: dict[str, PluginInfo], tables: dict[str, dict], forced: Iterable[str] = ()) -> list[tuple[PluginInfo, dict]]:
    """The plugins taking part in a run, sorted by name, with their option tables.

    Sorting makes a run independent of the order plugins were named in.

    Raises:
        ConfigError: for a ``[plugins.<name>]`` table naming no available plugin,
            listing the available ones; or invalid options (checked here, before
            any training).
    """
    for name in tables:
        if name not in plugins:
            raise ConfigError(f"unknown plugin {name!r} in [plugins.{name}]: available plugins are {', '.join(sorted(plugins)) or '(none)'}")
    names = sorted(set(tables) | set(forced))
    active = [(plugins[name], tables.get(name, {})) for name in names]
    make_plugin_manager(active)  # options and hook names are checked now, before any run starts
    return active


def make_plugin_manager(active: list[tuple[PluginInfo, dict]]) -> pluggy.PluginManager:
    """A fresh ``PluginManager`` with the built-in validators plugin
    (:class:`tladapt.validators.CoreValidators`, named ``tladapt``) and one new instance of
    each active plugin.

    Raises:
        ConfigError: if a plugin implements a misspelt hook or a hook with arguments
            the specification does not have (pluggy's validation and ``check_pending``),
            naming the plugin and where it came from.
    """
    from tladapt.validators import CoreValidators  # a built-in plugin in every manager

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(CoreValidators(), name=CoreValidators.name)
    name = None
    try:
        for info, table in active:
            name = info.name
            pm.register(info.make(table), name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        name = pm.get_name(err.plugin) or name
        hooks = sorted(n for n in dir(hookspecs) if n.startswith(PROJECT + "_"))
        raise ConfigError(f"plugin {name!r} does not fit the hook contract: {err} "
                          f"(the hooks are {', '.join(hooks)})") from None
    return pm


def call_each(hook: pluggy.HookCaller, **kwargs) -> list[tuple[str, Any]]:
    """Call every implementation of ``hook`` in pluggy's order, keeping who returned what.

    Returns:
        ``[(plugin name, result)]`` for the implementations that returned
        something other than None. Used where results must be attributed, e.g.
        to report two plugins that return the same loss name.
    """
    results = []
    for impl in reversed(hook.get_hookimpls()):
        result = impl.function(*[kwargs[name] for name in impl.argnames])
        if result is not None:
            results.append((impl.plugin_name, result))
    return results
