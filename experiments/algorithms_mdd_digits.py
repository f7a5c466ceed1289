"""MDD on USPS->MNIST (seed 0, 300 steps): which ingredient makes its config diverge.

    nice -n 10 .venv/bin/python experiments/algorithms_mdd_digits.py

Trains experiments/algorithms/digits_jda/mdd.toml as it is and with one change each (no
reversed gradient, margin 1, weight 0, lr 0.01, the authors'/TLlib's two-layer auxiliary
head) and prints, per variant, whether it diverged (TrainingDiverged) or its source
validation and (ORACLE, for the diagnosis only) target accuracy. Runs go to runs/diag_mdd.
The result is in experiments/algorithms.md ("MDD on digits").
"""
import tladapt
from tladapt.errors import TrainingDiverged
variants = {
    "default (lr 0.05, margin 4, max_lambda 0.1)": [],
    "no reversed gradient (max_lambda 0)": ["plugins.mdd.max_lambda=0.0"],
    "margin 1": ["plugins.mdd.margin=1.0"],
    "weight 0 (control)": ["plugins.mdd.weight=0.0"],
    "lr 0.01": ["trainer.lr=0.01"],
    "TLlib head (2 x 1024, dropout 0.5)": ["plugins.mdd.hidden=[1024, 1024]"],
}
for name, sets in variants.items():
    sets = sets + ['data.tasks=["usps->mnist"]', "experiment.seeds=[0]", "trainer.steps=300",
                   "trainer.eval_every=300", "trainer.progress=false"]
    try:
        (run,) = tladapt.run("experiments/algorithms/digits_jda/mdd.toml", set=sets, runs_dir="runs/diag_mdd",
                             progress=False, show_oracle=True)
        print(f"{name}: finished, source_val_acc {run.final['metrics/source_val_acc']:.1f}, "
              f"target {run.final['oracle/target_acc']:.1f}", flush=True)
    except TrainingDiverged as err:
        print(f"{name}: DIVERGED: {err}", flush=True)
