"""Where a run's numbers come from: versions, plugins, code, machine, command and time.

:func:`environment` is what ``config.json`` records when a run directory is made;
:func:`run_record` adds what ``results.json`` records when the run ends (the device,
intra-op threads and wall time per phase). Runs are bit-identical only for the same
torch build, platform and intra-op thread count (docs/runs.md), which is why those are
recorded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

__all__ = ["environment", "run_record", "git_state"]


@functools.lru_cache(maxsize=8)
def git_state(folder: str) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git working tree holding ``folder``, or None
    (not in a repository, or no git)."""
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def _version(module: str) -> str | None:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=64)
def _file_hash(path: str) -> str | None:
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return None


def _plugin(info) -> dict[str, Any]:
    """A plugin's origin, class, source file (with the first 12 hex digits of its SHA-1, a
    version for a ``-p`` file) and its distribution's version when installed."""
    cls = info.cls
    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    dists = _distributions().get(cls.__module__.split(".")[0], [])
    return {"origin": info.origin, "class": f"{cls.__module__}:{cls.__qualname__}", "file": file,
            "sha1": _file_hash(file) if file else None, "version": _version(dists[0]) if dists else None}


def environment(config, active: Iterable, run_dir: str | Path) -> dict[str, Any]:
    """What ``config.json["provenance"]`` records for a new run.

    Args:
        config: the run's resolved config (its ``experiment.runs_dir`` is the runs root).
        active: the run's ``(PluginInfo, table)`` pairs.
        run_dir: the run directory.

    Returns:
        ``tladapt``, ``torch``, ``numpy`` and ``python`` versions, the ``platform``, each
        active plugin's origin, class, file and version (``plugins``), the git commit and
        dirtiness of the working directory's repository and of tladapt's own (``git``,
        None outside a repository), the ``command`` line, the working directory ``cwd``
        and ``run_dir`` relative to the runs root. JSON data only.
    """
    import numpy
    import torch

    import tladapt

    root = Path(config.experiment.runs_dir)
    try:
        relative = str(Path(run_dir).resolve().relative_to(root.resolve()))
    except ValueError:
        relative = str(run_dir)
    return {
        "tladapt": tladapt.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "plugins": {info.name: _plugin(info) for info, _ in active},
        "git": {"cwd": git_state(os.getcwd()), "tladapt": git_state(str(Path(tladapt.__file__).parent))},
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "cwd": os.getcwd(),
        "run_dir": relative,
    }


def run_record(trainer, wall: dict[str, float]) -> dict[str, Any]:
    """What ``results.json["provenance"]`` records when a run ends: :func:`environment`'s
    entries (from the run's ``config.json``), the ``device`` (with the CUDA device's name),
    the intra-op ``threads`` the run used, and ``wall_seconds`` per phase (``setup``,
    ``fit_start``, ``train``, ``evaluate``, ``checkpoint``, ``total``; summed over the
    processes of a resumed run), all of them timing fields that differ between runs."""
    import json

    import torch

    try:
        recorded = json.loads((trainer.run_dir / "config.json").read_text()).get("provenance", {})
    except (OSError, ValueError):
        recorded = {}
    device = str(trainer.device)
    if trainer.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(trainer.device)})"
    return {**recorded, "device": device, "threads": torch.get_num_threads(),
            "wall_seconds": {k: round(v, 3) for k, v in wall.items()}}
