"""``tladapt plugins``: each plugin's origin, hooks and options with defaults and help."""

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
    from tladapt.manager import available_plugins

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
    return 0
