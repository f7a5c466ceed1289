"""What checkpoints cost: seconds per checkpoint, and the slowdown of a run with the default cadence.

Two measurements, side by side in one process (the machine is shared and noisy, so both
are repeated and reported as min / median / max):

1. seconds per checkpoint: ``tladapt.checkpoint.save(path, capture(trainer))`` of a trained
   trainer, for the bundled default model (MLP 800-256 on Office+Caltech10 SURF), DANN
   with its 1024-1024 discriminator, and LeNet on MNIST/USPS with the EMA self-training
   teacher, with the checkpoint's size on disk;
2. the slowdown ratio of a whole run with ``trainer.checkpoint_every = "auto"`` (a
   checkpoint every tenth of the run, the default) over the same run with
   ``checkpoint_every = 0`` (one checkpoint at the end), runs alternating pairwise; and,
   less exposed to the noise of a shared machine, the share of each run's wall time that
   its own ``results.json`` provenance records under ``checkpoint``.

Usage::

    python benchmarks/checkpoint_cost.py [--repeats 7] [--steps 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tladapt import checkpoint
from tladapt.config import load_config
from tladapt.experiment import prepare, run_experiment
from tladapt.data.tasks import load_task
from tladapt.manager import make_plugin_manager
from tladapt.trainer import Trainer

MODELS = {
    "mlp 800-256 (default config)": ([], []),
    "mlp + DANN 1024-1024 discriminator": (["plugins.dann.hidden=[1024, 1024]"], ["dann"]),
    "lenet, digits, EMA teacher": (["data.dataset='mnist_usps_jda'", "data.tasks=['usps->mnist']",
                                    "plugins.self_training.teacher='ema'"], ["self_training"]),
}
BASE = ["data.tasks=['webcam->dslr']", "trainer.progress=false", "trainer.threads=1", "trainer.eval_every=100000"]


def spread(values: list[float]) -> str:
    return f"{min(values):.4g} / {statistics.median(values):.4g} / {max(values):.4g}"


def checkpoint_seconds(overrides: list[str], enable: list[str], repeats: int, root: Path) -> tuple[list[float], int]:
    config = load_config(None, [*BASE, "trainer.steps=20", f"experiment.runs_dir='{root}'", *overrides],
                         enable=enable)
    config, active = prepare(config)
    task = config.data.tasks[0]
    source, target = load_task(config.data, task)
    trainer = Trainer(config, source, target, make_plugin_manager(active), root / "ckpt", 0,
                      source_name=task.split("->")[0])
    trainer.start()
    for _ in range(20):
        trainer.advance()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        checkpoint.save(root / "ckpt" / "checkpoint.pt", checkpoint.capture(trainer))
        times.append(time.perf_counter() - start)
    trainer.logger.close()
    return times, (root / "ckpt" / "checkpoint.pt").stat().st_size


def run_seconds(every: str, steps: int, root: Path) -> tuple[float, float]:
    """A whole run's wall seconds, and the share of it spent writing checkpoints (its provenance)."""
    config = load_config(None, [*BASE, f"trainer.steps={steps}", f"trainer.checkpoint_every={every}",
                                f"experiment.runs_dir='{root}'"])
    start = time.perf_counter()
    [result] = run_experiment(config)
    wall = result["provenance"]["wall_seconds"]
    return time.perf_counter() - start, wall["checkpoint"] / wall["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("| model | seconds per checkpoint (min / median / max) | size (MB) |\n|---|---|---|")
        for name, (overrides, enable) in MODELS.items():
            times, size = checkpoint_seconds(overrides, enable, args.repeats, root / name.split()[0])
            print(f"| {name} | {spread(times)} | {size / 1e6:.2f} |")
        run_seconds("0", 50, root / "warm")  # imports, caches
        ratios, auto, end, share_auto, share_end = [], [], [], [], []
        for k in range(args.repeats):
            a, b = ("'auto'", "0") if k % 2 == 0 else ("0", "'auto'")  # alternate the order in each pair
            ra, rb = run_seconds(a, args.steps, root / f"a{k}"), run_seconds(b, args.steps, root / f"b{k}")
            (t_auto, s_auto), (t_end, s_end) = (ra, rb) if a == "'auto'" else (rb, ra)
            auto.append(t_auto)
            end.append(t_end)
            share_auto.append(100 * s_auto)
            share_end.append(100 * s_end)
            ratios.append(t_auto / t_end)
        print(f"\nrun of {args.steps} steps (default experiment's model, one seed, webcam->dslr):")
        print(f"  checkpoint_every='auto' (10 checkpoints + the final one): {spread(auto)} s")
        print(f"  checkpoint_every=0 (the final one only):                  {spread(end)} s")
        print(f"  slowdown ratio auto / 0, per pair:                         {spread(ratios)}")
        print(f"  share of the run's wall time in checkpoints (results.json provenance), auto: {spread(share_auto)} %")
        print(f"  share of the run's wall time in checkpoints (results.json provenance), 0:    {spread(share_end)} %")


if __name__ == "__main__":
    main()
