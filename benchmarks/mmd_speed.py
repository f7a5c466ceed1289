"""Multi-kernel MMD, forward + backward: tladapt.discrepancy.mmd vs pytorch-adapt's MMDLoss.

Settings matched on both sides: 7 Gaussian kernels (pytorch-adapt ``kernel_scales``
``2**-3 .. 2**3``; ours ``scales = 1 / (2 s)`` since our bandwidth is sigma^2 and theirs
divides ``d^2`` directly), median-based bandwidth, the quadratic U-statistic
(``mmd_type="quadratic"`` = our ``estimator="unbiased"``), 256-d float32 features,
source and target both requiring grad. The one difference left is the median: theirs
over the source block (with its zero diagonal), ours over the pooled off-diagonal pairs.

Usage::

    python benchmarks/mmd_speed.py [--device cpu|cuda] [--batch 32 64 ... 1024] [--dim 256] [--threads N]

Both implementations are timed in the same process, alternating in ``--rounds`` rounds
(``torch.utils.benchmark.Timer.blocked_autorange`` each, ``--min-run-time`` seconds), so
that the load of a shared machine hits both; the ratio pytorch-adapt / tladapt is taken
per round and reported as min / median / max, beside each side's median time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tladapt.discrepancy import mmd  # noqa: E402

KERNEL_SCALES = [2.0**k for k in range(-3, 4)]  # pytorch-adapt convention: exp(-d^2 s / b)
OUR_SCALES = [1.0 / (2.0 * s) for s in KERNEL_SCALES]  # ours: exp(-d^2 / (2 sigma2)), sigma2 = b / (2 s)
BATCHES = [32, 64, 128, 256, 512, 1024]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=BATCHES, help="per-domain batch sizes")
    p.add_argument("--dim", type=int, default=256, help="feature size")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    p.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pytorch_adapt.layers import MMDLoss
    except ImportError:
        MMDLoss = None
        print("pytorch-adapt not installed: timing tladapt only")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}; {len(KERNEL_SCALES)} kernels, d={args.dim}, float32, fwd+bwd, "
          f"{args.rounds} interleaved rounds")
    print()
    print("| batch per domain | pytorch-adapt (ms) | tladapt (ms) | speed-up pa / ours: min | median | max |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b in args.batch:
        g = torch.Generator().manual_seed(b)
        x = torch.randn(b, args.dim, generator=g).to(device).requires_grad_()
        y = (torch.randn(b, args.dim, generator=g) + 0.5).to(device).requires_grad_()

        def ours():
            mmd(x, y, bandwidth="median", scales=OUR_SCALES, estimator="unbiased").backward()

        fns = {"tladapt": ours}
        if MMDLoss is not None:
            pa = MMDLoss(kernel_scales=torch.tensor(KERNEL_SCALES), mmd_type="quadratic")

            def theirs():
                pa(x, y).backward()

            fns["pytorch-adapt"] = theirs
        times = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, f in fns.items():
                t = Timer("f()", globals={"f": f}).blocked_autorange(min_run_time=args.min_run_time)
                times[k].append(t.median * 1e3)
        ours_ms = statistics.median(times["tladapt"])
        if MMDLoss is None:
            print(f"| {b} | n/a | {ours_ms:.2f} | | | |")
            continue
        ratios = [a / o for a, o in zip(times["pytorch-adapt"], times["tladapt"])]
        print(f"| {b} | {statistics.median(times['pytorch-adapt']):.2f} | {ours_ms:.2f} | {min(ratios):.2f} | "
              f"**{statistics.median(ratios):.2f}** | {max(ratios):.2f} |", flush=True)


if __name__ == "__main__":
    main()
