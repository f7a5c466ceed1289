"""``tladapt plugins``: each plugin's origin, hooks and options with defaults and help, and
every validator (built in or contributed by a plugin) with its direction."""

from __future__ import annotations

import argparse
import dataclasses

from tabulate import tabulate

from tladapt.cli.args import add_plugin_arg
from tladapt.options import field_bounds, field_default, field_help


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt plugins``."""
    plugins = sub.add_parser("plugins", help="list installed plugins, their hooks and options")
    add_plugin_arg(plugins)
    plugins.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt plugins``; returns the exit status."""
    from tladapt.manager import BROKEN, available_plugins

    plugins, _ = available_plugins(args.plugin)
    if not plugins:
        print("no plugins installed")
    for name, info in sorted(plugins.items()):
        doc = (info.cls.__doc__ or "").strip().splitlines()
        print(f"{name}  ({info.origin}; {info.cls.__module__}:{info.cls.__qualname__})")
        if doc:
            print(f"  {doc[0]}")
        print(f"  hooks: {', '.join(info.hooks) or '(none)'}")
        opts = info.options_class
        if opts is not None:
            rows = [[f.name, getattr(f.type, "__name__", str(f.type)), repr(field_default(f)), field_bounds(f),
                     field_help(f)] for f in dataclasses.fields(opts)]
            print("  " + tabulate(rows, headers=["option", "type", "default", "range", "help"],
                                  tablefmt="plain", disable_numparse=True).replace("\n", "\n  "))
        print()
    for name, error in sorted(BROKEN.items()):
        print(f"{name}  (BROKEN: {error})\n")
    _print_validators(plugins)
    return 0


def _print_validators(plugins: dict) -> None:
    """The validators of the built-in plugin and of every plugin that implements
    ``tladapt_validators`` (constructed with its default options)."""
    from tladapt.manager import make_plugin_manager
    from tladapt.validators import available_validators

    contributing = [(info, {}) for info in plugins.values() if "tladapt_validators" in info.hooks]
    found = available_validators(make_plugin_manager(contributing))
    print("validators (label-free model selection; logged as validator/<name>; tladapt select --validator NAME)")
    rows = [[name, c.validator.direction, c.plugin, (type(c.validator).__doc__ or "").strip().splitlines()[0]]
            for name, c in found.items()]
    print("  " + tabulate(rows, headers=["validator", "best", "from", "what"], tablefmt="plain",
                          disable_numparse=True).replace("\n", "\n  "))
