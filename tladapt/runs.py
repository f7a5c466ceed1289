"""Run directories, their status, TensorBoard logging without per-step host syncs, atomic files.

Layout: ``<root>/<experiment>/<task>/<method>/seed<k>-<timestamp>/`` holding the
TensorBoard event files, ``config.json`` (the fully resolved config),
``status.json`` (:class:`RunStatus`), ``results.json`` once finished,
``checkpoint.pt`` (the last checkpoint), ``best.pt`` (with ``trainer.keep_best``)
and ``traceback.txt`` when the run failed. A new run never writes into an existing
directory; only resuming a run continues in its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and TensorBoard load on first use: reading run states (tladapt table) needs neither
    import torch
    from torch.utils.tensorboard import SummaryWriter

from tladapt.errors import ConfigError


def slug(text: str) -> str:
    """``text`` as one path component: ``->`` becomes ``_to_``, other unsafe runs of characters ``_``."""
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text.replace("->", "_to_")).strip("_") or "_"


def new_run_dir(root: str | Path, experiment: str, task: str, method: str, seed: int) -> Path:
    """Create and return a fresh run directory; never reuses an existing one.

    The name is ``seed<k>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... appended
    when a run of the same second exists. Creation is atomic (``mkdir`` without
    ``exist_ok``), so concurrent runs cannot share a directory.
    """
    parent = run_parent(root, experiment, task, method)
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
    source, _, target = task.partition("->")
    try:
        path = Path(spec.format(source=source.strip(), target=target.strip(), task=slug(task), seed=seed))
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

    A crash leaves either the old file or the new one, never a partial file; a process
    killed mid-write (``kill -9``) leaves a hidden ``.<name>.<random>.tmp`` sibling, which
    :func:`clean_temp_files` removes when the run is resumed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
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


TEMP_SUFFIX = ".tmp"


def clean_temp_files(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files a killed process left in ``run_dir`` (from
    :func:`atomic_write_bytes`); call only when no process writes there. Returns them."""
    stray = [p for p in Path(run_dir).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stray:
        p.unlink()
    return stray


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode()))


# ------------------------------------------------------------------ run status
State = Literal["running", "interrupted", "failed", "finished", "unknown"]


def _proc_stat(pid: int) -> list[str]:
    """The fields of Linux ``/proc/<pid>/stat`` after the command name (state first), [] where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _process_start(pid: int) -> str:
    """The kernel's start time of process ``pid`` (Linux ``/proc``), '' where unknown: with the
    pid it tells a live run from a dead one whose pid was reused."""
    stat = _proc_stat(pid)
    return stat[19] if len(stat) > 19 else ""


@dataclass
class RunStatus:
    """What state a run directory is in: the contents of its ``status.json``.

    Attributes:
        state: ``running`` (a process is training it, or was killed: see :attr:`live`),
            ``interrupted`` (stopped by Ctrl-C/SIGTERM after a checkpoint), ``failed``
            (an error stopped it; ``error`` and ``traceback.txt`` say why), ``finished``
            (``results.json`` is complete) or ``unknown`` (no ``status.json`` and no results).
        step: optimizer steps done at the last checkpoint (0: none yet).
        steps: the run's ``trainer.steps``.
        error: one line for a failed run: the error's type and message.
        traceback: the file name of the saved traceback (``traceback.txt``) or ''.
        pid, host, process_start: the process that last wrote the status.
        updated: when, as ISO 8601 local time.
        dataset, task, method, seed, config_id: which run this is (as in ``results.json``).
    """

    state: State
    step: int = 0
    steps: int = 0
    error: str = ""
    traceback: str = ""
    dataset: str = ""
    task: str = ""
    method: str = ""
    seed: int = -1
    config_id: str = ""
    pid: int = 0
    host: str = ""
    process_start: str = ""
    updated: str = ""

    @property
    def live(self) -> bool:
        """True when the run is ``running`` in a process that still exists on this host (a run
        marked ``running`` whose process is gone was killed, e.g. by ``kill -9``, and can be resumed)."""
        if self.state != "running" or self.host != socket.gethostname() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        if _proc_stat(self.pid)[:1] in (["Z"], ["X"]):  # killed, not yet reaped by its parent
            return False
        return not self.process_start or _process_start(self.pid) in ("", self.process_start)

    @property
    def finished(self) -> bool:
        """True for a run whose ``results.json`` is complete."""
        return self.state == "finished"


def write_status(run_dir: str | Path, state: State, **fields: Any) -> RunStatus:
    """Atomically write ``status.json`` for this process: ``state`` plus the given
    :class:`RunStatus` fields; fields not given keep their value from the current file
    (``error`` and ``traceback`` are cleared unless the state is ``failed``)."""
    old = dataclasses.asdict(read_status(run_dir))
    if state != "failed":
        old.update(error="", traceback="")
    status = RunStatus(**{**old, **fields, "state": state, "pid": os.getpid(), "host": socket.gethostname(),
                          "process_start": _process_start(os.getpid()),
                          "updated": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
    write_json(Path(run_dir) / "status.json", dataclasses.asdict(status))
    return status


def read_status(run_dir: str | Path) -> RunStatus:
    """The run's :class:`RunStatus` from its ``status.json``; a directory without one (a run
    from before status files) is ``finished`` when it has ``results.json``, else ``unknown``."""
    run_dir = Path(run_dir)
    try:
        data = json.loads((run_dir / "status.json").read_text())
    except FileNotFoundError:
        return RunStatus("finished" if (run_dir / "results.json").is_file() else "unknown")
    known = {f.name for f in dataclasses.fields(RunStatus)}
    return RunStatus(**{k: v for k, v in data.items() if k in known})


def run_parent(root: str | Path, experiment: str, task: str, method: str) -> Path:
    """The folder holding the run directories of one experiment, task and method."""
    return Path(root) / slug(experiment) / slug(task) / slug(method)


def find_run(root: str | Path, experiment: str, task: str, method: str, seed: int, config_id: str) -> Path | None:
    """The run directory to continue for ``(config_id, task, seed)``, or None when there is none.

    Among the directories ``seed<k>-*`` of :func:`run_parent` whose status names
    ``config_id``: the latest finished one, else the latest unfinished one.

    Raises:
        ConfigError: when the only matching runs are live (training in another process).
    """
    runs = [(path, read_status(path)) for path in sorted(run_parent(root, experiment, task, method).glob(f"seed{seed}-*"))
            if path.is_dir()]
    runs = [(path, status) for path, status in runs if status.config_id == config_id and status.seed == seed]
    finished = [path for path, status in runs if status.finished]
    if finished:
        return finished[-1]
    resumable = [path for path, status in runs if not status.live]
    if runs and not resumable:
        path, status = runs[-1]
        raise ConfigError(f"run {path} is being trained by process {status.pid} on {status.host}: "
                          f"wait for it or stop it before resuming")
    return resumable[-1] if resumable else None


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every run directory at or below ``root`` (a directory holding ``config.json``), sorted."""
    root = Path(root)
    if (root / "config.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("config.json"))


# ------------------------------------------------------------------ TensorBoard


class RunLogger:
    """TensorBoard writer plus on-device accumulation of per-step scalars.

    ``log(tag, value)`` adds a 0-dim tensor (or float) to a running sum without
    reading it; ``flush(step)`` reads all sums in one host transfer and writes
    their means since the last flush. So a training step never blocks on the
    device for logging. A tensor tag's sum is a float32 buffer on the value's device,
    made at the tag's first value and from then on updated in place (and zeroed in
    place at a flush), so its address never changes and a CUDA graph that captured
    the adds replays them; :meth:`host_tallies` and :meth:`add_host_tallies` let the
    replaying code account for the host side (counts, float values).

    The event file is opened at the first write. A resumed run passes ``purge_step``,
    the first step it will log again: TensorBoard then hides whatever the interrupted
    process wrote at that step or later (``SummaryWriter(purge_step=...)``), so the
    curves continue without duplicate steps.

    Args:
        run_dir: the run's directory (from :func:`new_run_dir`).
        purge_step: on resume, the checkpoint's step + 1; None for a new run.
        write: False: nothing is written (every ``SummaryWriter`` call is a no-op), as on the
            ranks other than 0 of a distributed run (:mod:`tladapt.distributed`).
        reduce: applied at each :meth:`flush` to the stacked ``(tags,)`` tensor sums before
            the means are taken (a distributed run averages them over the ranks); None: as they are.
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None, write: bool = True,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.run_dir, self.purge_step, self.write, self.reduce = Path(run_dir), purge_step, write, reduce
        self._writer: SummaryWriter | _NullWriter | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._floats: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._pending: list[tuple[str, torch.Tensor | float]] = []
        self.queued = False  # True: every value is queued for drain() (tladapt.batched reads the queue)

    @property
    def writer(self) -> SummaryWriter:
        """The run's ``SummaryWriter``, opened on first use (a no-op writer when not ``write``)."""
        if self._writer is None and not self.write:
            self._writer = _NullWriter()
        if self._writer is None:
            if self.purge_step is not None:
                _wait_for_a_later_event_file_name(self.run_dir)
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=self.purge_step)
        return self._writer

    def state_dict(self) -> dict:
        """The sums and counts not yet written (logged since the last :meth:`flush`): a tensor
        tag's sum as a tensor (plus any float values of it), a float tag's as a float."""
        sums = {}
        for tag, count in self._counts.items():
            if count:
                sums[tag] = self._buffers[tag].clone() + self._floats.get(tag, 0.0) if tag in self._buffers \
                    else self._floats.get(tag, 0.0)
        return {"sums": sums, "counts": {tag: c for tag, c in self._counts.items() if c}}

    def load_state_dict(self, state: dict, device: torch.device | str) -> None:
        """Replace the pending sums by a saved :meth:`state_dict` (tensor sums copied into this
        logger's buffers, made on ``device`` where missing, so their addresses stay)."""
        import torch

        for buffer in self._buffers.values():
            buffer.zero_()
        self._floats.clear()
        for tag, value in state["sums"].items():
            if isinstance(value, (float, int)):
                self._floats[tag] = float(value)
            elif tag in self._buffers:
                self._buffers[tag].copy_(value)
            else:
                self._buffers[tag] = value.to(device=device, dtype=torch.float32)
        self._counts = dict(state["counts"])

    def log(self, tag: str, value: torch.Tensor | float, count: int = 1) -> None:
        """Accumulate one value of a scalar tag (no host sync); with ``count``, ``value`` is
        the sum of that many values (batched runs add a window of steps at once).

        Inside a function being compiled by ``torch.compile`` (or with :attr:`queued` set,
        as batched runs do inside ``torch.func`` transforms) the value is only queued,
        becoming an output of the compiled graph, and added by :meth:`drain`, so that the
        compiled code never depends on, or recompiles for, the logger's bookkeeping.
        """
        import torch

        if self.queued or torch.compiler.is_compiling():
            self._pending.append((tag, value))
            return
        if isinstance(value, torch.Tensor):
            buffer = self._buffers.get(tag)
            if buffer is None:
                self._buffers[tag] = value.detach().to(torch.float32, copy=True)
            else:
                buffer.add_(value.detach())
        else:
            self._floats[tag] = self._floats.get(tag, 0.0) + value
        self._counts[tag] = self._counts.get(tag, 0) + count

    def drain(self) -> None:
        """Add the values queued by a compiled function (see :meth:`log`)."""
        for tag, value in self.take_queue():
            self.log(tag, value)

    def take_queue(self) -> list[tuple[str, torch.Tensor | float]]:
        """The queued ``(tag, value)`` pairs, removed from the queue."""
        pending, self._pending = self._pending, []
        return pending

    def flush(self, step: int) -> dict[str, float]:
        """Write the mean of each tag since the last flush at ``step``; return them."""
        tags = [tag for tag, count in self._counts.items() if count]
        if not tags:
            return {}
        import torch

        tensors = sorted(t for t in tags if t in self._buffers)  # one order on every rank for reduce
        values = {}
        if tensors:
            sums = torch.stack([self._buffers[t] for t in tensors])
            values = dict(zip(tensors, (sums if self.reduce is None else self.reduce(sums)).tolist()))
        means = {}
        for tag in tags:
            means[tag] = (values.get(tag, 0.0) + self._floats.get(tag, 0.0)) / self._counts[tag]
            self.writer.add_scalar(tag, means[tag], step)
        for buffer in self._buffers.values():
            buffer.zero_()
        self._floats.clear()
        self._counts.clear()
        return means

    def host_tallies(self) -> tuple[dict[str, int], dict[str, float]]:
        """Copies of the host side of the running sums: counts per tag and float values."""
        return dict(self._counts), dict(self._floats)

    def add_host_tallies(self, counts: dict[str, int], floats: dict[str, float]) -> None:
        """Add counts and float values as if the ``log`` calls behind them ran again (the
        tensor adds being replayed on the device, e.g. by a CUDA graph)."""
        for tag, count in counts.items():
            self._counts[tag] = self._counts.get(tag, 0) + count
        for tag, value in floats.items():
            self._floats[tag] = self._floats.get(tag, 0.0) + value

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
        from torch.utils.tensorboard.summary import hparams

        exp, ssi, sei = hparams(params, metrics)
        file_writer = self.writer.file_writer
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)

    def flush_to_disk(self) -> None:
        """Hand every event written so far to the operating system (before a checkpoint, so
        that a killed process loses nothing the checkpoint's step has logged)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (if one was opened)."""
        if self._writer is not None:
            self._writer.close()


class _NullWriter:
    """Stands for a ``SummaryWriter`` where nothing is written: every method does nothing."""

    def __getattr__(self, name: str) -> Any:
        if name == "file_writer":
            return self
        return lambda *args, **kwargs: None


def _wait_for_a_later_event_file_name(run_dir: Path) -> None:
    """Event files are read in name order and named ``events.out.tfevents.<unix seconds>.<host>.<pid>...``:
    wait until a new file's second is past every existing file's, so a resumed run's file sorts last."""
    seconds = [int(m.group(1)) for p in run_dir.glob("events.out.tfevents.*")
               if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", p.name))]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)
