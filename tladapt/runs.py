"""Run directories, TensorBoard logging without per-step host syncs, atomic files.

Layout: ``<root>/<experiment>/<task>/<method>/seed<k>-<timestamp>/`` holding the
TensorBoard event file, ``config.json`` (the fully resolved config),
``results.json`` and ``checkpoint.pt``. A run never writes into an existing
directory.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text.replace("->", "_to_")).strip("_") or "_"


def new_run_dir(root: str | Path, experiment: str, task: str, method: str, seed: int) -> Path:
    """Create and return a fresh run directory; never reuses an existing one.

    The name is ``seed<k>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... appended
    when a run of the same second exists. Creation is atomic (``mkdir`` without
    ``exist_ok``), so concurrent runs cannot share a directory.
    """
    parent = Path(root) / _slug(experiment) / _slug(task) / _slug(method)
    parent.mkdir(parents=True, exist_ok=True)
    stem = f"seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1, 10_000):
        path = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {parent}")


def find_checkpoint(spec: str, task: str, seed: int) -> Path:
    """The checkpoint a run starts from (``model.init_from``), for one task and seed.

    ``spec`` may hold the fields ``{source}``, ``{target}``, ``{task}`` (as in run
    directory names, e.g. ``amazon_to_webcam``) and ``{seed}``, so that one config
    starts every task and seed from its own source run, e.g.
    ``"runs/src/office_caltech10_surf/{task}/source_only"``. After filling them in it
    names, in this order of preference:

    * a checkpoint file;
    * a run directory holding ``checkpoint.pt``;
    * a method directory holding run directories ``seed<seed>-<timestamp>``: the latest
      of this seed's that holds a ``checkpoint.pt``.

    Args:
        spec: the ``model.init_from`` string.
        task: ``"source->target"``.
        seed: the run's seed.

    Returns:
        The checkpoint file's path.

    Raises:
        ConfigError: for an unknown ``{field}`` or when no checkpoint is found, naming
            what was looked for.
    """
    from tladapt.errors import ConfigError

    source, _, target = task.partition("->")
    try:
        path = Path(spec.format(source=source.strip(), target=target.strip(), task=_slug(task), seed=seed))
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"model.init_from={spec!r}: unknown field {err} (fields: {{source}}, {{target}}, "
                          f"{{task}}, {{seed}})") from None
    if path.is_file():
        return path
    if (path / "checkpoint.pt").is_file():
        return path / "checkpoint.pt"
    runs = sorted(path.glob(f"seed{seed}-*/checkpoint.pt")) if path.is_dir() else []
    if runs:
        return runs[-1]
    raise ConfigError(f"model.init_from={spec!r}: no checkpoint for task {task!r}, seed {seed}: {path} is not a "
                      f"checkpoint file, a run directory with checkpoint.pt, or a folder of seed{seed}-* runs "
                      f"(train the source model with trainer.checkpoint = true)")


def atomic_write_bytes(path: str | Path, write) -> None:
    """Write a file atomically: ``write(fileobj)`` into a temporary sibling, then rename.

    A crash leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared like any file
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomically ``torch.save`` a checkpoint dict."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


class RunLogger:
    """TensorBoard writer plus on-device accumulation of per-step scalars.

    ``log(tag, value)`` adds a 0-dim tensor (or float) to a running sum without
    reading it; ``flush(step)`` reads all sums in one host transfer and writes
    their means since the last flush. So a training step never blocks on the
    device for logging.

    Args:
        run_dir: the run's directory (from :func:`new_run_dir`).
    """

    def __init__(self, run_dir: str | Path):
        self.writer = SummaryWriter(log_dir=str(run_dir))
        self._sums: dict[str, torch.Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def log(self, tag: str, value: torch.Tensor | float) -> None:
        """Accumulate one value of a scalar tag (no host sync)."""
        if isinstance(value, torch.Tensor):
            value = value.detach()
        self._sums[tag] = self._sums.get(tag, 0.0) + value
        self._counts[tag] = self._counts.get(tag, 0) + 1

    def flush(self, step: int) -> dict[str, float]:
        """Write the mean of each tag since the last flush at ``step``; return them."""
        if not self._sums:
            return {}
        tags = list(self._sums)
        tensors = [t for t in tags if isinstance(self._sums[t], torch.Tensor)]
        values = dict(zip(tensors, torch.stack([self._sums[t].float() for t in tensors]).tolist())) if tensors else {}
        means = {}
        for tag in tags:
            total = values[tag] if tag in values else self._sums[tag]
            means[tag] = total / self._counts[tag]
            self.writer.add_scalar(tag, means[tag], step)
        self._sums.clear()
        self._counts.clear()
        return means

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        """Write already-computed host floats (evaluation metrics) at ``step``."""
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """Write a histogram (reads ``values`` to the host; call outside the step)."""
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """Write the run's hparams entry into its own event file (no sub-run directory)."""
        params = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        exp, ssi, sei = hparams(params, metrics)
        file_writer = self.writer.file_writer
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
