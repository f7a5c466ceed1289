"""The four fine-tuning regimes x k labelled target samples per class, and whether `advise` picks the winner.

Usage (from the repository root; ~3 minutes on one CPU thread):

    OMP_NUM_THREADS=1 .venv/bin/python experiments/inductive/run.py [--seeds 0-4] [--steps 300]

1. Pre-trains one source-only model per task (experiments/inductive/base.toml, seed 0,
   1500 steps, no target labels) -- the equivalent of
   `tladapt run experiments/inductive/base.toml`.
2. For every task and k in K: `tladapt.advice.classic_rule` (the numbers and the CS231n rule), then the four
   regimes over the seeds (`run_regimes`, the same code as `tladapt advise --verify`),
   plus the source model applied as is to the same unlabelled rest (no target labels).
3. Writes experiments/inductive/results.json and the table of experiments/inductive.md
   (between the RESULTS markers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from tladapt.config import load_config, parse_seeds
from tladapt.experiment import run_experiment
from tladapt.advice import classic_rule
from tladapt.transfer import (REGIMES, load_model, run_feature_transfer, run_regimes, task_splits,
                              source_accuracy)

HERE = Path(__file__).resolve().parent
K = [1, 3, 10, 20, 1000]  # 1000: every labelled sample but one per class
SHORT = {"linear_top": "1 linear@top", "finetune_all": "2 finetune all", "linear_early": "3 linear@early",
         "from_source": "4 from source"}


def source_as_is(config, task, model_dir, seeds) -> tuple[list[float], list[float]]:
    """Accuracy (%) of the source model's own head on each seed's unlabelled target rest,
    and on its labelled target samples (the label-aware similarity `advise` prints)."""
    _, model = load_model(model_dir)
    rest_acc, labelled_acc = [], []
    for seed in seeds:
        splits = task_splits(config, task, seed)
        labelled, rest = splits.target_labelled, splits.target_rest
        rest_acc.append(source_accuracy(model, rest))
        labelled_acc.append(source_accuracy(model, labelled))
    return rest_acc, labelled_acc


def fmt(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def table(raw: list[dict]) -> str:
    """The markdown table of experiments/inductive.md from the records of results.json.

    The winner is the regime with the best mean (to 0.01 points: the trainer reports float32
    accuracies); a tie with the advised regime counts as held.
    """
    rows = []
    for rec in raw:
        accs, advice = rec["accs"], rec["advice"]
        means = {r: statistics.fmean(v) for r, v in accs.items()}
        advised = advice["regime"]
        best = max(means, key=lambda r: (round(means[r], 2), r == advised))
        gap = means[best] - means[advised]
        d = advice["distances"]
        rows.append([rec["task"], "all-1" if rec["k"] == 1000 else rec["k"], f"{advice['labels_per_class']:.1f}",
                     f"{d['backbone']['pad']:.2f} / {d[advice['early_layer']]['pad']:.2f}",
                     fmt(rec["source_acc_labelled"]), fmt(rec["source_as_is"]), *(fmt(accs[r]) for r in REGIMES),
                     fmt(rec["linear_top_source+target"]), SHORT[best], SHORT[advised],
                     "yes" if best == advised else f"no (-{gap:.1f})"])
    headers = ["task", "k", "labelled/class", "PAD top / early", "src acc on labelled", "source as is",
               *(SHORT[r] for r in REGIMES), "1' linear@top src+tgt", "winner", "advised", "advice held"]
    return tabulate(rows, headers=headers, tablefmt="github")


def main() -> int:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--runs-dir", default="runs/inductive")
    ap.add_argument("--table-only", action="store_true", help="re-tabulate experiments/inductive/results.json")
    args = ap.parse_args()
    if args.table_only:
        raw = json.loads((HERE / "results.json").read_text())
    else:
        raw = run(parse_seeds(args.seeds), args.steps, args.runs_dir)
        (HERE / "results.json").write_text(json.dumps(raw, indent=2))
    text = table(raw)
    md = HERE.parent / "inductive.md"
    old = md.read_text() if md.exists() else "<!-- RESULTS -->\n<!-- /RESULTS -->\n"
    head, _, rest = old.partition("<!-- RESULTS -->")
    _, _, tail = rest.partition("<!-- /RESULTS -->")
    md.write_text(f"{head}<!-- RESULTS -->\n{text}\n<!-- /RESULTS -->{tail}")
    print(text)
    return 0


def run(seeds: list[int], steps: int, runs_dir: str) -> list[dict]:
    """Pre-train once per task, then advise + the four regimes + references for every (task, k)."""
    base = HERE / "base.toml"
    pre = run_experiment(load_config(base, [f"experiment.runs_dir='{runs_dir}'"]))
    raw = []
    for task, model_dir in ((r["task"], r["run_dir"]) for r in pre):
        for k in K:
            config = load_config(base, [f"experiment.runs_dir='{runs_dir}'", f"data.tasks=['{task}']",
                                        f"data.target_labels_per_class={k}", f"experiment.seeds={seeds}"])
            advice = classic_rule(config, task, model_dir)
            accs = run_regimes(config, task, model_dir, advice["early_layer"], steps)
            as_is, on_labelled = source_as_is(config, task, model_dir, seeds)
            both = [r["final"]["oracle/target_acc"] for r in
                    run_feature_transfer(config, model_dir, "backbone", train_on="source+target",
                                         method=f"linear_top_src+tgt-k{k}")]
            raw.append({"task": task, "k": k, "advice": advice, "accs": accs, "source_as_is": as_is,
                        "source_acc_labelled": on_labelled, "linear_top_source+target": both,
                        "source_run": model_dir, "steps": steps, "seeds": seeds})
            print(table(raw[-1:]).splitlines()[-1], file=sys.stderr)
    return raw


if __name__ == "__main__":
    sys.exit(main())
