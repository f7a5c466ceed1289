"""Hyper-parameter sweeps on Optuna: a search space in TOML over any config key, trials that
are ordinary tladapt runs, a study stored beside the runs, several worker processes, and a
sweep that continues where it was killed.

A trial is the base config with the trial's values applied as ``--set`` overrides: all its
tasks and seeds, run by :func:`tladapt.experiment.run_experiment` with ``resume=True`` in
the base config's runs directory. Runs are found again by their config fingerprint, so a
trial interrupted by a kill continues from its runs' checkpoints when Optuna retries it,
finished runs are never redone, and ``tladapt table`` / ``tladapt select`` read a sweep like
any runs (one configuration per trial). The objective is the mean over the trial's runs of a
recorded score at their last evaluation point: a label-free validator by default; the
oracle (``oracle/target_acc``) only when named, and then labelled oracle everywhere.

Storage: ``sqlite:///<experiment folder>/optuna.db`` by default (Optuna's RDB storage, with
heartbeats so that trials of a killed worker are noticed and retried); any RDB URL
(PostgreSQL for many machines) or a journal file (``journal:PATH``) for shared filesystems.
See docs/model-selection.md for the SLURM-array recipe.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tladapt.errors import ConfigError

Kind = Literal["uniform", "loguniform", "int", "categorical"]
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "halving")


@dataclass(frozen=True)
class Param:
    """One searched config key.

    Attributes:
        key: a dotted config key, e.g. ``trainer.lr`` or ``plugins.dann.weight``.
        kind: ``uniform`` / ``loguniform`` (floats in ``[low, high]``), ``int`` (integers in
            ``[low, high]``, ``step``), or ``categorical`` (one of ``choices``).
        low, high: the range (``kind != categorical``).
        step: the integer step of ``int``.
        choices: the values of ``categorical`` (numbers, strings, booleans).
    """

    key: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    step: int = 1
    choices: tuple = ()


@dataclass(frozen=True)
class SearchSpace:
    """A search space file: ``[params."<key>"]`` tables plus ``[sampler]`` and ``[pruner]``.

    Attributes:
        params: the searched keys.
        sampler: ``tpe`` (default), ``random`` or ``grid`` (every combination of
            categorical params; then every param must be categorical).
        seed: the sampler's seed.
        pruner: ``none`` (default), ``median`` (Optuna's MedianPruner) or ``halving``
            (successive halving); intermediate values are the running mean of the
            objective after each run of a trial, and a pruned trial stops between runs.
        startup_trials: trials before the sampler (TPE) and the median pruner act.
        defaults_first: the first trial of a new study is the base config's own values of
            the searched keys (so that "the default configuration" is one of the trials).
    """

    params: tuple[Param, ...]
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "none"
    startup_trials: int = 5
    defaults_first: bool = False
    source: str = field(default="", compare=False)

    def grid(self) -> dict[str, list]:
        """The grid of a ``grid`` sampler: ``{key: choices}``."""
        return {p.key: list(p.choices) for p in self.params}

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's value of every param (``optuna.Trial.suggest_*``)."""
        values = {}
        for p in self.params:
            if p.kind == "categorical":
                values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
            elif p.kind == "int":
                values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=p.step)
            else:
                values[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.kind == "loguniform")
        return values

    def corners(self) -> list[dict[str, Any]]:
        """Two assignments that together use every param's extremes (low/first, high/last),
        for checking the configs they make before any trial starts."""
        def pick(p: Param, end: int):
            if p.kind == "categorical":
                return p.choices[0 if end == 0 else -1]
            value = p.low if end == 0 else p.high
            return int(value) if p.kind == "int" else float(value)
        return [{p.key: pick(p, end) for p in self.params} for end in (0, 1)]


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space TOML file.

    Example::

        [params."trainer.lr"]
        type = "loguniform"
        low = 1e-3
        high = 1e-1

        [params."plugins.dann.weight"]
        type = "categorical"
        choices = [0.1, 0.3, 1.0]

        [sampler]
        name = "tpe"      # tpe | random | grid
        seed = 0

        [pruner]
        name = "median"   # none | median | halving

    Raises:
        ConfigError: naming the file, the param and what was expected.
    """
    from tladapt.config import parse_toml_file

    path = Path(path)
    data = parse_toml_file(path, f"--space: no such file {path}")
    unknown = set(data) - {"params", "sampler", "pruner"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}: expected params, sampler, pruner")
    tables = data.get("params", {})
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f'{path}: no [params."<config key>"] table: nothing to search')
    params = []
    for key, spec in tables.items():
        where = f'{path}: [params."{key}"]'
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a table with type = uniform | loguniform | int | categorical")
        kind = spec.get("type")
        allowed = {"categorical": {"type", "choices"}, "int": {"type", "low", "high", "step"}}.get(
            kind, {"type", "low", "high"})
        extra = set(spec) - allowed
        if kind not in ("uniform", "loguniform", "int", "categorical"):
            raise ConfigError(f"{where}: type = {kind!r}, expected uniform, loguniform, int or categorical")
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for type {kind}: "
                              f"expected {', '.join(sorted(allowed))}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices or any(isinstance(c, (list, dict)) for c in choices):
                raise ConfigError(f"{where}: choices must be a non-empty list of numbers, strings or booleans")
            params.append(Param(key, kind, choices=tuple(choices)))
            continue
        low, high = spec.get("low"), spec.get("high")
        number = (int,) if kind == "int" else (int, float)
        if not all(isinstance(v, number) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
            raise ConfigError(f"{where}: low and high must be finite {'integers' if kind == 'int' else 'numbers'}")
        if not low < high:
            raise ConfigError(f"{where}: low = {low} must be < high = {high}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
        step = spec.get("step", 1)
        if kind == "int" and (not isinstance(step, int) or step < 1):
            raise ConfigError(f"{where}: step must be an integer >= 1, got {step!r}")
        params.append(Param(key, kind, float(low), float(high), step if kind == "int" else 1))
    sampler, pruner = data.get("sampler", {}), data.get("pruner", {})
    for name, table, keys, names in (("sampler", sampler, {"name", "seed", "startup_trials", "defaults_first"},
                                      SAMPLERS),
                                     ("pruner", pruner, {"name"}, PRUNERS)):
        if not isinstance(table, dict) or set(table) - keys:
            raise ConfigError(f"{path}: [{name}] takes {', '.join(sorted(keys))}")
        if table.get("name", names[0]) not in names:
            raise ConfigError(f"{path}: [{name}] name = {table['name']!r}, expected one of {', '.join(names)}")
    space = SearchSpace(tuple(params), sampler.get("name", "tpe"), int(sampler.get("seed", 0)),
                        pruner.get("name", "none"), int(sampler.get("startup_trials", 5)),
                        bool(sampler.get("defaults_first", False)), path.read_text())
    if space.sampler == "grid" and any(p.kind != "categorical" for p in space.params):
        raise ConfigError(f"{path}: the grid sampler needs every param categorical (its choices are the grid)")
    return space


@dataclass(frozen=True)
class SweepSpec:
    """Everything a worker needs to take part in a sweep (picklable; plain data).

    Attributes:
        config_path: the base config file (None: the bundled defaults).
        overrides: ``--set`` assignments applied before each trial's values.
        seeds: ``--seeds`` or None.
        runs_dir: ``--runs-dir`` or None (the config's ``experiment.runs_dir``).
        space_path: the search-space file.
        trials: the number of finished trials the study should end with.
        objective: the tag averaged over a trial's runs, e.g. ``validator/im``.
        direction: ``"max"`` or ``"min"`` (the validator's).
        storage: an Optuna storage URL or ``journal:PATH``.
        study: the study name.
        heartbeat: seconds between a running trial's heartbeats (RDB storages); a trial
            whose worker has been silent for 3 heartbeats is failed and retried.
        plugins: ``-p`` plugin specs.
    """

    config_path: str | None
    overrides: tuple[str, ...]
    seeds: str | None
    runs_dir: str | None
    space_path: str
    trials: int
    objective: str
    direction: str
    storage: str
    study: str
    heartbeat: int = 20
    plugins: tuple[str, ...] = ()

    def trial_config(self, values: dict[str, Any]):
        """The base config with a trial's ``values`` applied (validated).

        Raises:
            ConfigError: as :func:`tladapt.config.load_config`.
        """
        from tladapt.config import load_config

        sets = [*self.overrides, *(f"{k}={json.dumps(v)}" for k, v in values.items())]
        config = load_config(self.config_path, sets, self.seeds)
        if self.runs_dir:
            config.experiment.runs_dir = self.runs_dir
        return config


def experiment_folder(config) -> Path:
    """``<runs_dir>/<experiment name>``: where a sweep keeps its study, beside its runs."""
    from tladapt.runs import slug  # the rule that names run directories

    return Path(config.experiment.runs_dir) / slug(config.experiment.name)


def default_study_name(config, space: SearchSpace, objective: str) -> str:
    """``<experiment>-<8 hex>``, the hex from the base config, the space and the objective:
    the same command names the same study (so it continues), another space another study."""
    digest = hashlib.sha1(json.dumps([config.fingerprint(), space.source, objective]).encode()).hexdigest()[:8]
    return f"{config.experiment.name}-{digest}"


def storage_for(url: str, heartbeat: int):
    """An Optuna storage: RDB (``sqlite:///...``, ``postgresql://...``, ...) with heartbeats
    and retry of stale trials, or a journal file (``journal:PATH``; no heartbeats)."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=5),
                      engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)


def default_values(space: SearchSpace, resolved: dict[str, Any]) -> dict[str, Any]:
    """The base config's value of every searched key (``resolved``: the prepared config's
    ``to_dict()``, plugin defaults filled in).

    Raises:
        ConfigError: for a value outside its param's range or choices.
    """
    values = {}
    for p in space.params:
        node: Any = resolved
        for part in p.key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        inside = node in p.choices if p.kind == "categorical" else (
            isinstance(node, (int, float)) and p.low <= node <= p.high)
        if not inside:
            raise ConfigError(f"[sampler] defaults_first: the base config's {p.key} = {node!r} is outside the "
                              f"searched {'choices' if p.kind == 'categorical' else 'range'} of {p.key}")
        values[p.key] = node
    return values


def make_sampler(space: SearchSpace, seed: int):
    """The space's Optuna sampler with ``seed``. Workers make one per trial, seeded with the
    space's seed plus the trial's number, so that parallel workers never draw the same values
    from identically seeded generators (the history they condition on is the shared study)."""
    import optuna

    if space.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.startup_trials)


def quiet_optuna() -> None:
    """Optuna's INFO lines and its experimental-feature warnings (heartbeats, retry) off:
    the sweep prints its own progress line per trial."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def open_study(spec: SweepSpec, space: SearchSpace):
    """Create the study, or load it when it exists (the same command continues it)."""
    import optuna

    quiet_optuna()
    sampler = make_sampler(space, space.seed)
    pruner = {"none": optuna.pruners.NopPruner(),
              "median": optuna.pruners.MedianPruner(n_startup_trials=space.startup_trials),
              "halving": optuna.pruners.SuccessiveHalvingPruner()}[space.pruner]
    study = optuna.create_study(storage=storage_for(spec.storage, spec.heartbeat), sampler=sampler, pruner=pruner,
                                study_name=spec.study, load_if_exists=True,
                                direction="maximize" if spec.direction == "max" else "minimize")
    recorded = study.user_attrs.get("objective")
    if recorded is None:
        study.set_user_attr("objective", spec.objective)
        study.set_user_attr("oracle", spec.objective.startswith("oracle/"))
    elif recorded != spec.objective:
        raise ConfigError(f"study {spec.study!r} optimises {recorded!r}, not {spec.objective!r}: "
                          f"use another --study name")
    return study


@contextmanager
def file_lock(path: Path):
    """An exclusive ``fcntl`` lock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def finished_count(study) -> tuple[int, int, int]:
    """``(finished, running, waiting)`` trials. Finished: complete, pruned, or failed and not
    retried (a trial failed because its worker died and queued again does not count)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    retried |= {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   or (t.state == TrialState.FAIL and t.number not in retried) for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return finished, running, waiting


def _heartbeat(storage, trial_id: int, interval: int, stop: threading.Event) -> None:
    while not stop.wait(interval):
        storage.record_heartbeat(trial_id)


def run_trial(spec: SweepSpec, space: SearchSpace, study, trial) -> tuple[str, float | None, dict]:
    """Run one trial: its config's runs (resumed when they exist), reporting the running mean
    of the objective after each run for pruning.

    Returns:
        ``(state, value, info)``: ``"complete"``, ``"pruned"`` or ``"fail"``, the objective
        (None unless complete) and ``{"config_id", "runs", "error"}``.
    """
    from tladapt.config import parse_task
    from tladapt.errors import TrainingDiverged
    from tladapt.experiment import prepare

    values = space.suggest(trial)
    config = spec.trial_config(values)
    info: dict[str, Any] = {"config_id": prepare(config, spec.plugins)[0].fingerprint(), "runs": []}
    scores = []
    step = 0
    try:
        for task in config.data.tasks:
            parse_task(task)
            for seed in config.experiment.seeds:
                one = spec.trial_config(values)
                one.data.tasks, one.experiment.seeds = [task], [seed]
                result = run_or_reuse(one, spec.plugins)
                info["runs"].append(result["run_dir"])
                scores.append(float(result["final"].get(spec.objective, math.nan)))
                trial.report(sum(scores) / len(scores), step)
                step += 1
                if trial.should_prune():
                    return "pruned", None, info
    except TrainingDiverged as err:
        info["error"] = str(err)
        return "fail", None, info
    if not scores or any(math.isnan(s) for s in scores):
        info["error"] = f"{spec.objective} is not recorded (or NaN) in {sum(map(math.isnan, scores))} run(s)"
        return "fail", None, info
    return "complete", sum(scores) / len(scores), info


def run_or_reuse(config, plugins: tuple[str, ...]) -> dict:
    """The results of ``config``'s one run (one task, one seed), through
    :func:`tladapt.experiment.run_experiment` with ``resume=True``: an earlier finished run of
    the same fingerprint is reused, an interrupted one continues from its checkpoint in its own
    directory, and only a missing one starts afresh."""
    from tladapt.experiment import run_experiment

    (result,) = run_experiment(config, plugins, resume=True)
    return result


def worker(spec: SweepSpec, worker_id: int = 0, gpu: int | None = None) -> int:
    """One worker process: take trials until the study has ``spec.trials`` finished ones.

    Trials are asked under a file lock in the experiment folder (``.<study>.lock`` beside the
    runs), so that workers that share the runs directory — on one machine or on a shared
    filesystem — never start more trials than needed; a worker waits while the remaining
    trials run elsewhere, and takes over any that Optuna retries after their worker died.

    Returns:
        The number of trials this worker finished.
    """
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import optuna
    from optuna.storages import fail_stale_trials

    space = load_space(spec.space_path)
    study = open_study(spec, space)
    lock = experiment_folder(spec.trial_config({})) / f".{spec.study}.lock"
    done_here = 0
    while True:
        with file_lock(lock):
            fail_stale_trials(study)
            finished, running, waiting = finished_count(study)
            if finished >= spec.trials:
                return done_here
            trial = None
            if finished + running < spec.trials or waiting:
                study.sampler = make_sampler(space, space.seed + len(study.get_trials(deepcopy=False)))
                trial = study.ask()
        if trial is None:  # the last trials run in other workers: wait for them (or for their heartbeats to stop)
            time.sleep(max(1, spec.heartbeat // 2))
            continue
        stop = threading.Event()
        # Optuna's heartbeat API takes the storage and the trial id. The study holds an RDB
        # storage behind Optuna's cache (not an RDBStorage instance); a journal has no heartbeats.
        storage = study._storage
        if getattr(storage, "get_heartbeat_interval", lambda: None)() is not None:
            storage.record_heartbeat(trial._trial_id)
            threading.Thread(target=_heartbeat, args=(storage, trial._trial_id, spec.heartbeat, stop),
                             daemon=True).start()
        try:
            state, value, info = run_trial(spec, space, study, trial)
        finally:
            stop.set()
        for key, val in info.items():
            trial.set_user_attr(key, val)
        with file_lock(lock):  # tell and print together: the progress lines count 1, 2, ... N in order
            study.tell(trial, value, state={"complete": optuna.trial.TrialState.COMPLETE,
                                            "pruned": optuna.trial.TrialState.PRUNED,
                                            "fail": optuna.trial.TrialState.FAIL}[state])
            print(progress_line(study, trial.number, state, value, spec, worker_id), flush=True)
        done_here += 1


def progress_line(study, number: int, state: str, value: float | None, spec: SweepSpec, worker_id: int) -> str:
    """``trial k/N (worker w): <objective> = v; best b (trial j)``."""
    finished, _, _ = finished_count(study)
    oracle = " [ORACLE]" if spec.objective.startswith("oracle/") else ""
    shown = f"{spec.objective}{oracle} = {value:.4f}" if value is not None else state
    try:
        best = study.best_trial
        best_text = f"best {best.value:.4f} (trial {best.number})"
    except ValueError:
        best_text = "no complete trial yet"
    return f"trial {finished}/{spec.trials} (#{number}, worker {worker_id}): {shown}; {best_text}"


def summary(study, spec: SweepSpec, top: int = 10) -> str:
    """The final table: the best ``top`` complete trials with their values and params, and
    how many trials ended in each state."""
    from tabulate import tabulate
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value,
                      reverse=spec.direction == "max")
    keys = sorted({k for t in trials for k in t.params})
    rows = [[t.number, f"{t.value:.4f}", t.user_attrs.get("config_id", ""), *(t.params.get(k) for k in keys)]
            for t in complete[:top]]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    oracle = "ORACLE selection (target labels): an upper bound, not a result. " \
        if spec.objective.startswith("oracle/") else "label-free objective. "
    best = "best: none" if not complete else f"best: trial {complete[0].number}, {spec.objective} = " \
                                                f"{complete[0].value:.4f}, {complete[0].params}"
    head = (f"study {spec.study!r}: {oracle}objective = mean over a trial's runs of {spec.objective} at the last "
            f"evaluation point ({'higher' if spec.direction == 'max' else 'lower'} is better)\n"
            f"trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"\n{best}\n")
    return head + tabulate(rows, headers=["trial", spec.objective, "config_id", *keys], tablefmt="github")
