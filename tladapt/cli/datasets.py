"""``tladapt datasets``: bundled datasets, domains, sizes, input shapes and class counts."""

from __future__ import annotations

import argparse

from tabulate import tabulate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tladapt datasets``."""
    datasets = sub.add_parser("datasets", help="list bundled datasets and domains")
    datasets.set_defaults(func=main)


def main(args) -> int:
    """Run ``tladapt datasets``; returns the exit status."""
    from tladapt.data.datasets import describe_datasets

    print(tabulate(describe_datasets(), headers="keys", tablefmt="github"))
    return 0
