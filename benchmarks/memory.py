"""Peak memory of one run on a 1M-sample synthetic source: index-view splits vs copied splits.

A run splits its source into a training and a validation part (``data.source_val_fraction``)
and, with ``data.target_labels_per_class``, its target into labelled and unlabelled parts.
``Domain.subset`` makes index views of the loaded domain's storage, so each sample is held
once; before, each split was a copy, so a run held the loaded source and a copy of it.
Each mode runs in a fresh process (``--mode copies`` restores the old copying ``subset``)
and reports the growth of its peak resident set (``VmHWM``) over the synthetic data alone.

    python benchmarks/memory.py                      # both modes, 1M x 512 float32 source (2 GB)
    python benchmarks/memory.py --samples 200000     # smaller
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(mode: str, samples: int, dim: int, steps: int) -> None:
    import torch

    from tladapt.config import load_config
    from tladapt.data.domain import Domain
    from tladapt.experiment import prepare
    from tladapt.manager import make_plugin_manager
    from tladapt.runs import new_run_dir
    from tladapt.trainer import Trainer

    torch.set_num_threads(1)
    if mode == "copies":  # the subset of before: a copy of the rows
        def subset(self, index):
            y = None if self.y is None else self.y[index]
            return dataclasses.replace(self, storage=self.x[index], y=y, index=None)

        Domain.subset = subset
    g = torch.Generator().manual_seed(0)
    classes = tuple(str(k) for k in range(10))
    source = Domain("synthetic_source", torch.randn(samples, dim, generator=g), torch.arange(samples) % 10, classes)
    target = Domain("synthetic_target", torch.randn(samples // 50, dim, generator=g) + 0.1,
                    torch.arange(samples // 50) % 10, classes)
    data_mib = (source.storage.nbytes + source.y.nbytes + target.storage.nbytes + target.y.nbytes) / 2**20
    base = peak_rss_mib()
    config = load_config(None, [
        "data.dataset='memory:synthetic'", "data.tasks=['synthetic_source->synthetic_target']", "model.hidden=[64]",
        "data.source_val_fraction=0.1", "data.target_labels_per_class=5", f"trainer.steps={steps}",
        f"trainer.eval_every={steps}", "trainer.progress=false", "trainer.checkpoint=false", "trainer.device='cpu'",
    ])
    config, active = prepare(config)  # a 'module:function' dataset is not loaded by prepare
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(config, source, target, make_plugin_manager(active), new_run_dir(root, "m", "t", "m", 0), 0)
        after_init = peak_rss_mib()
        trainer.fit()
    print(f"{mode}\t{data_mib:.0f}\t{base:.0f}\t{after_init:.0f}\t{peak_rss_mib():.0f}\t{time.perf_counter() - t0:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mode", choices=["views", "copies"], help="one mode in this process (used by the driver)")
    args = parser.parse_args()
    if args.mode:
        child(args.mode, args.samples, args.dim, args.steps)
        return
    print(f"source {args.samples} x {args.dim} float32, target {args.samples // 50} x {args.dim}; "
          f"source_val_fraction 0.1, 5 labelled target samples per class, {args.steps} steps, one process per mode")
    print()
    print("| splits | data (MiB) | peak RSS after the data (MiB) | after the trainer is built | after the run | "
          "run peak - data peak (MiB) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in ("copies", "views"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, f"--samples={args.samples}",
                              f"--dim={args.dim}", f"--steps={args.steps}"], capture_output=True, text=True, check=True)
        name, data, base, init, peak, secs = out.stdout.strip().splitlines()[-1].split("\t")
        print(f"| {name} | {data} | {base} | {init} | {peak} | **{float(peak) - float(base):.0f}** | {secs} |", flush=True)


if __name__ == "__main__":
    main()
