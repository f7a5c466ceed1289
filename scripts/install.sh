#!/usr/bin/env bash
# Create .venv in the repository and install tladapt into it.
#   scripts/install.sh          the package and its command-line tool
#   scripts/install.sh --test   also pytest and the pytorch-adapt reference used by the tests
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: on a CPU-only machine with a local CPU wheel this takes it,
# where an open range would pull a multi-GB CUDA build. GPU users may install any
# torch >= 2.1 before running this script; pip then keeps it.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" torch==2.13.0
if [ "${1:-}" = "--test" ]; then
    "${pip[@]}" -e '.[test]'
    # The reference extra, without its dependencies: pytorch-adapt asks for torchvision,
    # which would replace the CPU torch with a 5.7 GB CUDA build; the layers and hooks
    # we compare against import without it. Pins come from pyproject's [reference] extra.
    reference=$(.venv/bin/python -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["reference"]))')
    "${pip[@]}" --no-deps $reference
else
    "${pip[@]}" -e .
fi
