"""Arguments shared by several ``tladapt`` sub-commands."""

from __future__ import annotations

import argparse


def add_plugin_arg(parser: argparse.ArgumentParser) -> None:
    """``-p/--plugin PLUGIN`` (repeatable): load a plugin from a module or file."""
    parser.add_argument("-p", "--plugin", action="append", default=[], metavar="PLUGIN",
                        help="load and activate a plugin: pkg.module, path/to/file.py, optionally :Class")


def add_set_arg(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): override a config value."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. plugins.dann.weight=0.3 (TOML syntax)")
