"""Plugin discovery and the per-run pluggy ``PluginManager``.

Plugins come from the entry-point group ``tladapt`` (``name = "pkg.module:Class"``)
and from ``-p`` on the command line, like pytest: ``-p pkg.module``,
``-p path/to/file.py`` or either followed by ``:Class`` (the Python API also takes
plugin classes). Loading a plugin and enabling it are separate: an installed or
``-p`` plugin is *available*; it takes part in a run only when the config enables it
with a ``[plugins.<name>]`` table (``--enable NAME`` adds that table to every config,
see :func:`tladapt.config.load_configs`). A plugin that only measures runs (it
implements nothing but ``tladapt_validators``) cannot change what is trained: it takes
part in every run once available and is no part of the method's name.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pluggy

from tladapt import hookspecs
from tladapt.errors import ConfigError
from tladapt.options import validate_dataclass

PROJECT = "tladapt"

#: Hooks that only measure a run; a plugin implementing nothing else needs no enabling.
MEASURING_HOOKS = frozenset({"tladapt_validators"})


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

    @property
    def measures_only(self) -> bool:
        """True for a plugin whose only hooks measure runs (:data:`MEASURING_HOOKS`, i.e.
        it contributes validators): it cannot change what is trained, so it takes part in
        every run once available and is no part of a method's name."""
        return bool(self.hooks) and set(self.hooks) <= MEASURING_HOOKS

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


def _has_hooks(obj) -> bool:
    return any(hasattr(m, f"{PROJECT}_impl") for _, m in inspect.getmembers(obj, callable))


def _plugin_class(module, spec: str, attr: str | None) -> type:
    if attr:
        try:
            cls = getattr(module, attr)
        except AttributeError:
            raise ConfigError(f"-p {spec}: module has no attribute {attr!r}") from None
        if not inspect.isclass(cls) or not _has_hooks(cls):
            raise ConfigError(f"-p {spec}: {attr} is not a plugin: a plugin is a class with "
                              f"@tladapt.hookimpl methods (see docs/writing-a-plugin.md)")
        return cls
    candidates = [
        obj for _, obj in inspect.getmembers(module, inspect.isclass)
        if obj.__module__ == module.__name__ and _has_hooks(obj)
    ]
    if len(candidates) != 1:
        found = ", ".join(c.__name__ for c in candidates) or "none"
        raise ConfigError(
            f"-p {spec}: expected exactly one class with @tladapt.hookimpl methods, found {found}; "
            f"name one as {spec}:ClassName"
        )
    return candidates[0]


def plugin_name(cls: type) -> str:
    """The name a plugin class given to the Python API goes by: its ``name`` attribute, else
    its class name in snake case (``EntropyMin`` -> ``entropy_min``)."""
    return getattr(cls, "name", None) or re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls.__name__).lower()


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
    except SyntaxError as err:
        raise ConfigError(f"-p {spec}: {err.filename}:{err.lineno}: SyntaxError: {err.msg}") from None
    except ConfigError:
        raise
    except ImportError as err:
        raise ConfigError(f"-p {spec}: cannot import: {err}") from None
    except Exception as err:  # the plugin's module raised while it was imported
        raise ConfigError(f"-p {spec}: {_raised_at(err)}: {type(err).__name__}: {err}") from None
    cls = _plugin_class(module, spec, attr or None)
    return PluginInfo(getattr(cls, "name", default_name), cls, f"-p {spec}")


def _raised_at(err: BaseException) -> str:
    """``file:line`` of the innermost frame of ``err``'s traceback."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"


#: Installed plugins whose entry point failed to import at the last :func:`installed_plugins`
#: call: name -> the error, said once per process on stderr and again when a config asks for one.
BROKEN: dict[str, str] = {}


def installed_plugins() -> dict[str, PluginInfo]:
    """All plugins registered under the entry-point group ``tladapt`` that import, by name.

    A plugin whose entry point fails to import (a broken third-party package) does not
    break the commands that do not use it: it is left out with a warning on stderr (once
    per process) and recorded in :data:`BROKEN`, and :func:`resolve_active` fails only
    when a config enables it.
    """
    found = {}
    for ep in importlib.metadata.entry_points(group=PROJECT):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
        try:
            cls = ep.load()
        except Exception as err:  # a broken third-party plugin must say which one, and only matter when used
            error = f"entry point {ep.name} = {ep.value!r} of {dist} failed to import: {type(err).__name__}: {err}"
            if BROKEN.get(ep.name) != error:
                print(f"tladapt: warning: {error} (commands that do not use plugin {ep.name!r} are unaffected)",
                      file=sys.stderr)
            BROKEN[ep.name] = error
            continue
        BROKEN.pop(ep.name, None)
        found[ep.name] = PluginInfo(ep.name, cls, f"entry point of {dist}")
    return found


def available_plugins(extra: Iterable[str | type] = ()) -> tuple[dict[str, PluginInfo], list[str]]:
    """Installed plugins plus those loaded with ``-p`` (specs) or given as classes.

    Loading does not enable: a plugin takes part in a run only when its config has a
    ``[plugins.<name>]`` table.

    Returns:
        ``(plugins by name, names of the loaded extra plugins in order)``.

    Raises:
        ConfigError: as :func:`load_cli_plugin`; for a class without ``@tladapt.hookimpl``
            methods; when an extra plugin's name clashes with another plugin.
    """
    plugins = installed_plugins()
    loaded = []
    for spec in extra:
        if isinstance(spec, str):
            info = load_cli_plugin(spec)
        else:
            if not inspect.isclass(spec) or not _has_hooks(spec):
                raise ConfigError(f"plugin {spec!r} is not a plugin: a plugin is a class with "
                                  f"@tladapt.hookimpl methods")
            info = PluginInfo(plugin_name(spec), spec, f"class {spec.__module__}.{spec.__qualname__}")
        if info.name in plugins:
            raise ConfigError(f"{info.origin}: plugin name {info.name!r} is taken by {plugins[info.name].origin}")
        plugins[info.name] = info
        loaded.append(info.name)
    return plugins, loaded


def resolve_active(plugins: dict[str, PluginInfo], tables: dict[str, dict]) -> list[tuple[PluginInfo, dict]]:
    """The plugins taking part in a run, sorted by name, with their option tables: those the
    config enables, plus every available plugin that only measures
    (:attr:`PluginInfo.measures_only`, e.g. one that contributes validators).

    Sorting makes a run independent of the order plugins were named in.

    Raises:
        ConfigError: for a ``[plugins.<name>]`` table naming no available plugin,
            listing the available ones; or invalid options (checked here, before
            any training).
    """
    for name in tables:
        if name not in plugins and name in BROKEN:
            raise ConfigError(f"[plugins.{name}] enables plugin {name!r}, which is installed but broken: "
                              f"{BROKEN[name]}; fix or reinstall its package")
        if name not in plugins:
            raise ConfigError(f"unknown plugin {name!r} in [plugins.{name}]: available plugins are "
                              f"{', '.join(sorted(plugins)) or '(none)'} (load one from a file or module with -p)")
    names = sorted(set(tables) | {name for name, info in plugins.items() if info.measures_only})
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
            or only one of ``tladapt_state_dict`` / ``tladapt_load_state_dict``, naming
            the plugin and where it came from.
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
            pair = {"tladapt_state_dict", "tladapt_load_state_dict"}
            if len(pair & set(info.hooks)) == 1:
                missing = (pair - set(info.hooks)).pop()
                raise ConfigError(f"plugin {name!r} ({info.origin}) implements {(pair & set(info.hooks)).pop()} "
                                  f"without {missing}: its state could be saved but never restored, or the reverse")
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


def hook_frames(pm: pluggy.PluginManager, where) -> list[tuple[str, str]]:
    """``(plugin name, hook name)`` of each registered hook implementation running in ``where``.

    Args:
        pm: the plugin manager whose implementations to look for.
        where: a frame (the stack from it up to the outermost call) or a traceback (the
            frames from the outermost call down to where the exception was raised).

    Returns:
        The matches, outermost first (the last one is the plugin code nearest the frame or
        the raise); ``[]`` when no plugin code is on that stack.
    """
    codes = {}
    for name in dir(pm.hook):
        if name.startswith(PROJECT + "_"):
            for impl in getattr(pm.hook, name).get_hookimpls():
                code = getattr(getattr(impl.function, "__func__", impl.function), "__code__", None)
                if code is not None:
                    codes[code] = (impl.plugin_name, name)
    frames = []
    if hasattr(where, "tb_frame"):
        while where is not None:
            frames.append(where.tb_frame)
            where = where.tb_next
    else:
        while where is not None:
            frames.append(where)
            where = where.f_back
        frames.reverse()
    return [codes[f.f_code] for f in frames if f.f_code in codes]
