"""Write the label-free swept configs of experiments/algorithms.md from finished sweeps.

    .venv/bin/python experiments/algorithms_swept.py runs/algorithms_sweeps/office_caltech10_surf

For every study in ``<folder>/optuna.db`` (the studies of ``experiments/algorithms_sweep.sh``,
one per method), the best complete trial by the study's own objective (``validator/im`` by
default: label-free; a study whose objective is an ``oracle/`` tag is refused) gives a config
``experiments/algorithms/<benchmark>/swept/<method>.toml``: it extends the method's config and
sets the trial's parameters, under the method name ``<method> (im-swept)`` (``im``: the
objective's validator), so its runs sit beside
the paper-settings runs in the same tables. The method's config and the space are read from the
``tladapt sweep`` command recorded in the trial's runs (``provenance.command`` of config.json).
Nothing is trained here.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import optuna

import tladapt


def _toml_value(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _trial_command(folder: Path, config_id: str) -> list[str]:
    """The recorded ``tladapt sweep`` command of a run of ``config_id`` in ``folder``."""
    for results in sorted(folder.glob("*/*/*/results.json")):
        if json.loads(results.read_text()).get("config_id") == config_id:
            return shlex.split(json.loads((results.parent / "config.json").read_text())["provenance"]["command"])
    raise SystemExit(f"{folder}: no finished run of config {config_id}")


def swept_config(study: optuna.Study, folder: Path) -> tuple[Path, str]:
    """The path and text of the swept config of ``study``'s best trial."""
    objective = study.user_attrs.get("objective", "validator/im")
    if objective.startswith("oracle/"):
        raise SystemExit(f"study {study.study_name} optimises {objective}: an ORACLE choice, not written")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial
    command = _trial_command(folder, best.user_attrs["config_id"])
    config = Path(command[command.index("sweep") + 1])
    space = command[command.index("--space") + 1]
    method = tladapt.load_config(config).experiment.method  # as the method's runs are labelled
    values = dict(best.params)
    lines = [f"# {method} with the hyper-parameters the label-free sweep chose (written by",
             f"# experiments/algorithms_swept.py; do not edit): study {study.study_name},",
             f"# space {space}, {len(complete)} complete trials, seed 0 on the design tasks;",
             f"# best trial {best.number}: {objective} = {best.value:.4f}"
             + (f" (the config's own values, trial 0: {complete[0].value:.4f})" if complete[0].number == 0
                else " (the config's own values, trial 0, did not complete)"),
             f'extends = "../{config.name}"', "", "[experiment]",
             f'method = "{method} ({objective.split("/")[-1]}-swept)"']
    sections: dict[str, list[str]] = {}
    for key, value in sorted(values.items()):
        section, name = key.rsplit(".", 1)
        sections.setdefault(section, []).append(f"{name} = {_toml_value(value)}")
    for section, items in sections.items():
        lines += ["", f"[{section}]", *items]
    return config.parent / "swept" / config.name, "\n".join(lines) + "\n"


def main() -> None:
    """Write ``swept/<method>.toml`` beside each study's config, for every sweep folder given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders, e.g. runs/algorithms_sweeps/digits_jda")
    for folder in parser.parse_args().folders:
        storage = f"sqlite:///{(folder / 'optuna.db').resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for name in optuna.get_all_study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            path, text = swept_config(study, folder)
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"{path}: {text.splitlines()[3][2:]}")


if __name__ == "__main__":
    main()
