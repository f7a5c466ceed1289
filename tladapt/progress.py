"""Progress of a whole command: one bar over every run, a line per finished run off a terminal.

A command that trains several runs (``tladapt run`` over configs x tasks x seeds) makes one
:class:`Progress` and hands it to each run. On a terminal it shows one tqdm bar over the
steps of all runs, described as ``run k/N task method seed s`` with the latest source
validation accuracy (label-free); off a terminal (CI logs, pipes) it prints one summary line
per finished run instead. The oracle target accuracy is shown only when asked for.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

SOURCE_VAL = "metrics/source_val_acc"
ORACLE = "oracle/target_acc"


class Progress:
    """One progress display for ``runs`` runs of ``steps`` steps in all.

    Args:
        runs: how many runs the command will train (for ``run k/N``).
        steps: their steps in all (the bar's length).
        enabled: False shows nothing (``trainer.progress = false``).
        oracle: also show the oracle target accuracy (it reads target labels).
        stream: where to write (default ``sys.stderr``).
        terminal: draw a bar (True) or print a line per finished run (False); default:
            whether ``stream`` is a terminal.
    """

    def __init__(self, runs: int, steps: int, *, enabled: bool = True, oracle: bool = False,
                 stream: TextIO | None = None, terminal: bool | None = None):
        self.runs, self.enabled, self.oracle = runs, enabled, oracle
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.run = 0
        self._label, self._started = "", 0.0
        self._bar = None
        if enabled and self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=steps, file=self.stream, dynamic_ncols=True, leave=False, unit="step")

    def start_run(self, task: str, method: str, seed: int | list[int]) -> None:
        """A run begins: the bar says ``run k/N task method seed s``; for runs trained together
        (a list of seeds, :mod:`tladapt.batched`) ``runs k-l/N ... seeds a,b,c``."""
        seeds = seed if isinstance(seed, list) else [seed]
        first, self.run = self.run + 1, self.run + len(seeds)
        if len(seeds) == 1:
            self._label = f"run {self.run}/{self.runs} {task} {method} seed {seeds[0]}"
        else:
            self._label = (f"runs {first}-{self.run}/{self.runs} {task} {method} "
                           f"seeds {','.join(map(str, seeds))}")
        self._started = time.perf_counter()
        if self._bar is not None:
            self._bar.set_description(self._label, refresh=False)
            self._bar.set_postfix_str("", refresh=True)

    def _metrics(self, metrics: dict[str, float]) -> str:
        parts = []
        if SOURCE_VAL in metrics:
            parts.append(f"source val {metrics[SOURCE_VAL]:.1f}%")
        if self.oracle and ORACLE in metrics:
            parts.append(f"target (oracle) {metrics[ORACLE]:.1f}%")
        return ", ".join(parts)

    def step(self, metrics: dict[str, float] | None = None, runs: int = 1) -> None:
        """One training step is done (of ``runs`` runs trained together); ``metrics``: the
        evaluation made at this step, if any."""
        if self._bar is not None:
            self._bar.update(runs)
            if metrics:
                self._bar.set_postfix_str(self._metrics(metrics), refresh=False)

    def advance(self, steps: int) -> None:
        """``steps`` steps that need no training now (a resumed run's checkpointed ones)."""
        if self._bar is not None and steps:
            self._bar.update(steps)

    def end_run(self, final: dict[str, float]) -> None:
        """A run finished with the final evaluation ``final``; off a terminal, print its summary."""
        if self.enabled and not self.terminal:
            took = time.perf_counter() - self._started
            metrics = self._metrics(final)
            print(f"{self._label}: {metrics + ', ' if metrics else ''}{took:.1f} s", file=self.stream, flush=True)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
