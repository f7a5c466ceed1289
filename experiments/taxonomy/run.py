"""The transfer-learning taxonomy on bundled data (issue 13): a different target task with and
without a self-taught (unlabelled-source) representation, multi-task learning, and clustering
(unsupervised transfer). Each section writes its table into experiments/taxonomy.md.

Usage (from the repository root; one section at a time, `nice -n 10`, one CPU thread):

    nice -n 10 .venv/bin/python experiments/taxonomy/run.py different   # ~30 min
    nice -n 10 .venv/bin/python experiments/taxonomy/run.py multitask   # ~20 min
    nice -n 10 .venv/bin/python experiments/taxonomy/run.py cluster     # ~10 min
    .venv/bin/python experiments/taxonomy/run.py SECTION --table-only

Every number is a target (or task) accuracy on held-out samples: oracle numbers, never used
to choose anything. Configs are the files of experiments/taxonomy/ with the overrides shown.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import statistics
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from tladapt.config import load_config
from tladapt.experiment import run_experiment
from tladapt.transfer import run_feature_transfer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MD = HERE.parent / "taxonomy.md"
SEEDS = [0, 1, 2]
K = [1, 3, 10]
# the COIL configs' MLP (LeNet on 32x32 takes ~250 ms a step here), also for COIL's self-taught runs, whose
# base config (selftaught_digits_base.toml) has the digits' LeNet
COIL = ["model.backbone='mlp'", "model.hidden=[256, 128]"]


def fmt(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


EXTRA: list[str] = []  # --set overrides given on the command line, applied to every config (e.g. a smoke test)
ONLY: list[str] = []  # --task: cluster only these tasks


def cfg(name: str, *overrides: str, runs_dir: str):
    return load_config(HERE / name, [f"experiment.runs_dir='{runs_dir}'", *overrides, *EXTRA])


def accs(results: list[dict], tag: str = "oracle/target_acc") -> list[float]:
    return [r["final"][tag] for r in results]


def write_section(marker: str, text: str, md: Path = MD) -> None:
    old = md.read_text() if md.exists() else f"<!-- {marker} -->\n<!-- /{marker} -->\n"
    head, _, rest = old.partition(f"<!-- {marker} -->")
    _, _, tail = rest.partition(f"<!-- /{marker} -->")
    md.write_text(f"{head}<!-- {marker} -->\n{text}\n<!-- /{marker} -->{tail}")


# ---------------------------------------------------------------- a different target task (+ self-taught)
DIFFERENT = {  # name: (source config, target config, extra overrides of both)
    "digits": ("digits_low_source.toml", "digits_high_finetune.toml", []),
    "coil": ("coil_low_source.toml", "coil_high_finetune.toml", COIL),
}


def pretrain(name: str, runs_dir: str) -> dict[str, str]:
    """The source runs of one dataset: supervised, DAE and SimCLR (both without source labels)."""
    src, _, extra = DIFFERENT[name]
    base = load_config(HERE / src)
    classes = [f"data.source_classes={json.dumps(base.data.source_classes)}",
               f"data.target_classes={json.dumps(base.data.target_classes)}"]
    unlabelled = [f"data.dataset='{base.data.dataset}'", f"data.tasks={json.dumps(base.data.tasks)}", *classes, *extra]
    runs = {"supervised": run_experiment(cfg(src, *extra, runs_dir=runs_dir))[0]["run_dir"]}
    for method, file in (("dae", "selftaught_digits_dae.toml"), ("simclr", "selftaught_digits_simclr.toml")):
        runs[method] = run_experiment(cfg(file, *unlabelled, runs_dir=runs_dir))[0]["run_dir"]
    # the control of a representation: the same network untrained (one step of a zero-weight loss)
    runs["random"] = run_experiment(cfg("selftaught_digits_dae.toml", *unlabelled, "plugins.autoencoder.weight=0.0",
                                        "trainer.steps=1", "trainer.eval_every=1", "experiment.method='untrained'",
                                        runs_dir=runs_dir))[0]["run_dir"]
    return runs


def different(runs_dir: str) -> dict:
    raw = {}
    for name, (_, tgt, extra) in DIFFERENT.items():
        runs = pretrain(name, runs_dir)
        raw[name] = {"runs": runs, "cells": {}}
        for k in K:
            over = [*extra, f"data.target_labels_per_class={k}", f"experiment.seeds={SEEDS}"]
            scratch = [*over, "plugins.finetune.init='scratch'"]
            cell = {
                "target alone (from scratch)": accs(run_experiment(cfg(tgt, *scratch, "experiment.method='alone'",
                                                                       runs_dir=runs_dir))),
                "joint: source + target heads, from scratch": accs(run_experiment(cfg(
                    tgt, *scratch, "trainer.source_weight=1.0", "experiment.method='joint'", runs_dir=runs_dir))),
            }
            cell["no transfer: linear on the raw input"] = accs(run_feature_transfer(
                cfg(tgt, *over, runs_dir=runs_dir), runs["supervised"], "input", method="linear_input"))
            cell["untrained network -> linear on its features"] = accs(run_feature_transfer(
                cfg(tgt, *over, runs_dir=runs_dir), runs["random"], "backbone", method="linear_untrained"))
            for source, label in (("supervised", "supervised source (labels)"), ("dae", "self-taught DAE (no labels)"),
                                  ("simclr", "self-taught SimCLR (no labels)")):
                run = runs[source]
                cell[f"{label} -> fine-tune, new head"] = accs(run_experiment(cfg(
                    tgt, *over, f"model.init_from='{run}'", f"experiment.method='finetune_from_{source}'",
                    runs_dir=runs_dir)))
                cell[f"{label} -> linear on frozen features"] = accs(run_feature_transfer(
                    cfg(tgt, *over, runs_dir=runs_dir), run, "backbone", method=f"linear_from_{source}"))
            raw[name]["cells"][str(k)] = cell
            print(name, k, {m: round(statistics.fmean(v), 1) for m, v in cell.items()}, file=sys.stderr, flush=True)
    return raw


def different_table(raw: dict) -> str:
    out = []
    titles = {"digits": "MNIST digits 0-4 -> USPS digits 5-9 (LeNet)",
              "coil": "COIL-20 objects 1-10 (COIL1) -> objects 11-20 (COIL2) (pixel MLP 256-128)"}
    for name, rec in raw.items():
        methods = list(next(iter(rec["cells"].values())))
        rows = [[m, *(fmt(rec["cells"][str(k)][m]) for k in K)] for m in methods]
        out.append(f"**{titles[name]}**, target accuracy (%) on the target's test rest, mean ± std over seeds "
                   f"{SEEDS} (k labelled target samples per class):\n")
        out.append(tabulate(rows, headers=["method", *(f"k = {k}" for k in K)], tablefmt="github") + "\n")
    return "\n".join(out)


# ---------------------------------------------------------------- multi-task learning
def multitask(runs_dir: str) -> dict:
    raw = {}
    for name, file in (("digits", "mtl_digits.toml"), ("surf", "mtl_surf.toml")):
        base = cfg(file, f"experiment.seeds={SEEDS}", runs_dir=runs_dir)
        domains = base.plugins["multitask"].get("domains", [])
        source_name, target_name = base.data.tasks[0].split("->")
        plain = lambda c, **data: dataclasses.replace(  # noqa: E731  (no multitask plugin, one shared head)
            c, plugins={}, data=dataclasses.replace(c.data, **data),
            model=dataclasses.replace(c.model, shared_head=True))
        tasks = {}
        alone_src = run_experiment(dataclasses.replace(plain(base, target_labels_per_class=0), experiment=dataclasses.replace(
            base.experiment, method="source_alone")))
        tasks[source_name] = {"alone": accs(alone_src, "metrics/source_val_acc")}
        for domain in [target_name, *domains]:
            task = f"{source_name}->{domain}"
            c = plain(base, tasks=[task])
            c = dataclasses.replace(c, trainer=dataclasses.replace(c.trainer, source_weight=0.0))
            alone = run_experiment(dataclasses.replace(c, experiment=dataclasses.replace(c.experiment, method="alone")))
            # inductive: the source-alone model of the same seed, then the target's labels only
            induct = []
            for seed, src in zip(SEEDS, alone_src):
                ci = dataclasses.replace(c, experiment=dataclasses.replace(c.experiment, method="inductive", seeds=[seed]),
                                         model=dataclasses.replace(c.model, init_from=src["run_dir"]))
                induct += run_experiment(ci)
            tasks[domain] = {"alone": accs(alone), "inductive": accs(induct),
                             f"{source_name} after inductive": accs(induct, "metrics/source_val_acc")}
        for weighting in ("fixed", "uncertainty"):
            results = run_experiment(cfg(file, f"experiment.seeds={SEEDS}", f"plugins.multitask.weighting='{weighting}'",
                                         f"experiment.method='mtl_{weighting}'", runs_dir=runs_dir))
            tasks[source_name][f"mtl_{weighting}"] = accs(results, "metrics/source_val_acc")
            tasks[target_name][f"mtl_{weighting}"] = accs(results)
            for domain in domains:
                tasks[domain][f"mtl_{weighting}"] = accs(results, f"oracle/{domain}_acc")
        raw[name] = {"k": base.data.target_labels_per_class, "tasks": tasks, "source": source_name}
        print(name, json.dumps({d: {m: round(statistics.fmean(v), 1) for m, v in t.items()} for d, t in tasks.items()}),
              file=sys.stderr, flush=True)
    return raw


def multitask_table(raw: dict) -> str:
    out = []
    titles = {"digits": "MNIST + USPS (JDA 16x16, LeNet)", "surf": "Office+Caltech10 SURF, four domains (MLP 256)"}
    for name, rec in raw.items():
        tasks, source = rec["tasks"], rec["source"]
        others = [d for d in tasks if d != source]
        rows = [["each task alone", *(fmt(tasks[d]["alone"]) for d in tasks)]]
        rows.append([f"inductive: {source} first, then each other task",
                     fmt(tasks[others[0]][f"{source} after inductive"]) + " (after 1st)",
                     *(fmt(tasks[d]["inductive"]) for d in others)])
        for weighting in ("fixed", "uncertainty"):
            rows.append([f"multi-task, {weighting} weights", *(fmt(tasks[d][f"mtl_{weighting}"]) for d in tasks)])
        means = []
        for row_key in ("alone", None, "mtl_fixed", "mtl_uncertainty"):
            if row_key is None:
                vals = [statistics.fmean(tasks[others[0]][f"{source} after inductive"])] + \
                       [statistics.fmean(tasks[d]["inductive"]) for d in others]
            else:
                vals = [statistics.fmean(tasks[d][row_key]) for d in tasks]
            means.append(f"{statistics.fmean(vals):.1f}")
        for row, mean in zip(rows, means):
            row.append(mean)
        out.append(f"**{titles[name]}**, {rec['k']} labelled samples per class in every task; accuracy (%) on each "
                   f"task's held-out samples ({source}: its held-out 10 % split, `metrics/source_val_acc`; the "
                   f"others: their test rest, oracle), mean ± std over seeds {SEEDS}:\n")
        out.append(tabulate(rows, headers=["method", *tasks, "mean"], tablefmt="github") + "\n")
    return "\n".join(out)


# ---------------------------------------------------------------- clustering (unsupervised transfer)
CLUSTER = [  # (name, dataset, task, config of the source-only and DANN runs, overrides)
    ("surf", "office_caltech10_surf", "amazon->webcam", "../office_caltech10/source_only.toml", []),
    ("surf", "office_caltech10_surf", "webcam->dslr", "../office_caltech10/source_only.toml", []),
    ("digits", "mnist_usps_jda", "mnist->usps", "../digits_jda/source_only.toml", []),
]


def cluster(runs_dir: str) -> dict:
    from tladapt.cli import main as cli

    raw = {}
    for name, dataset, task, source_only, extra in CLUSTER:
        if ONLY and task not in ONLY:
            continue
        common = [f"data.tasks=['{task}']", "experiment.seeds=[0]", "trainer.checkpoint=true", *extra]
        src = run_experiment(cfg(source_only, *common, runs_dir=runs_dir))[0]["run_dir"]
        dann = run_experiment(cfg(source_only.replace("source_only", "dann"), *common, runs_dir=runs_dir))[0]["run_dir"]
        if name == "digits":
            pre = cfg("selftaught_digits_dae.toml", f"data.tasks=['{task}']", "data.source_classes=[]",
                      "data.target_classes=[]", runs_dir=runs_dir)
        else:
            pre = cfg(source_only, *common, "data.source_labels=false", "data.source_val_fraction=0.0",
                      "trainer.optimizer='adam'", "trainer.lr=0.001", "model.dropout=0.0", "trainer.schedule='constant'",
                      "experiment.method='dae'", runs_dir=runs_dir)
            pre = dataclasses.replace(pre, plugins={"autoencoder": {"hidden": [256]}})
        dae = run_experiment(pre)[0]["run_dir"]
        config = ROOT / "experiments" / "taxonomy" / f"cluster_{name}.toml"
        argv = ["cluster", str(config.relative_to(ROOT)), "--set", f"data.tasks=['{task}']", "--seeds", "0-2",
                "--features", src, "--features", dann, "--features", dae, "--reduce", "50"]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli(argv) == 0
        raw[task] = {"command": "tladapt " + " ".join(argv), "output": buf.getvalue()}
        print(buf.getvalue(), file=sys.stderr, flush=True)
    return raw


def cluster_table(raw: dict) -> str:
    return "\n".join(f"```bash\n{rec['command']}\n```\n\n{rec['output']}" for rec in raw.values())


SECTIONS = {"different": (different, different_table, "DIFFERENT"), "multitask": (multitask, multitask_table, "MULTITASK"),
            "cluster": (cluster, cluster_table, "CLUSTER")}


def main() -> int:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("section", choices=SECTIONS)
    ap.add_argument("--runs-dir", default="runs/taxonomy")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="override every config (smoke tests only)")
    ap.add_argument("--out", type=Path, help="write results_SECTION.json and taxonomy.md there (smoke tests) "
                                             "instead of into experiments/")
    ap.add_argument("--task", action="append", default=[], help="cluster: only these tasks")
    args = ap.parse_args()
    EXTRA.extend(args.set)
    ONLY.extend(args.task)
    run, table, marker = SECTIONS[args.section]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    results = (args.out or HERE) / f"results_{args.section}.json"
    md = args.out / "taxonomy.md" if args.out else MD
    if args.table_only:
        raw = json.loads(results.read_text())
    else:
        raw = run(args.runs_dir)
        if results.exists():  # keep the entries (tasks, datasets) this invocation did not measure
            raw = {**json.loads(results.read_text()), **raw}
        results.write_text(json.dumps(raw, indent=1))
    text = table(raw)
    write_section(marker, text, md)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
