"""Arguments shared by several ``tladapt`` sub-commands."""

from __future__ import annotations

import argparse


def add_plugin_arg(parser: argparse.ArgumentParser) -> None:
    """``-p/--plugin PLUGIN`` (repeatable): load a plugin from a module or file (does not enable it)."""
    parser.add_argument("-p", "--plugin", action="append", default=[], metavar="PLUGIN",
                        help="load a plugin: pkg.module or path/to/file.py, optionally :Class. Loading does not "
                             "enable: a config enables it with a [plugins.NAME] table, --enable NAME in every config")


def add_enable_arg(parser: argparse.ArgumentParser) -> None:
    """``--enable NAME`` (repeatable): enable an available plugin in every config."""
    parser.add_argument("--enable", action="append", default=[], metavar="NAME",
                        help="enable plugin NAME (installed or loaded with -p) in every config, with its default "
                             "options; configs that name their method get '+NAME' appended")


def add_set_arg(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): override a config value."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (TOML syntax), e.g. trainer.steps=500; plugins.NAME.KEY=VALUE "
                             "applies to the configs that enable NAME and never enables it")
