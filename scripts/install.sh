#!/usr/bin/env bash
# Create .venv in the repository and install tladapt into it.
#   scripts/install.sh            the package and its command-line tool (CPU torch 2.13.0 when no torch is present)
#   scripts/install.sh --vision   also torchvision, for image datasets and torchvision backbones
#   scripts/install.sh --test     --vision, plus pytest and the pytorch-adapt reference used by the tests
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in ""|--vision|--test) ;; *) echo "usage: scripts/install.sh [--vision|--test]" >&2; exit 2 ;; esac
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
pip=("$py" -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: on a CPU-only machine with a local CPU wheel this takes it,
# where an open range would pull a multi-GB CUDA build. GPU users may install any
# torch >= 2.1 before running this script; pip then keeps it.
# (With --vision or --test and no torch yet, the torch/torchvision pair below comes instead.)
[ -n "$mode" ] || "$py" -c "import torch" 2>/dev/null || "${pip[@]}" torch==2.13.0
if [ -n "$mode" ] && ! "$py" -c "import torchvision" 2>/dev/null; then
    # torchvision must match torch exactly. The CPU torch 2.13.0 has no torchvision beside it
    # (PyPI's fails to import: 'operator torchvision::nms does not exist'), so take a pair
    # that works on the CPU: on x86_64 a CUDA build (~5.5 GB in the venv) that runs on the CPU.
    if [ "$(uname -m)" = "aarch64" ]; then
        "${pip[@]}" torch==2.9.1 torchvision==0.24.1
    else
        "${pip[@]}" torch==2.14.1 torchvision==0.29.1
    fi
fi
if [ "$mode" = "--test" ]; then
    "${pip[@]}" -e '.[vision,test]'
    # The reference extra, without its dependencies: its pins (torchmetrics, pytorch-metric-learning)
    # are from 2023 and would otherwise replace our torch. Pins come from pyproject's [reference] extra.
    reference=$("$py" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["reference"]))')
    "${pip[@]}" --no-deps $reference
elif [ "$mode" = "--vision" ]; then
    "${pip[@]}" -e '.[vision]'
else
    "${pip[@]}" -e .
fi
