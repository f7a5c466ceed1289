"""Trainer step vs a hand-written loop: same LeNet, same device-resident data, same DANN losses.

Both loops run in one process, alternating in rounds so that machine noise hits both;
the script prints per-step times (median over rounds) and their ratio. Goal: ratio <= 1.05.

    python benchmarks/step_overhead.py                  # CPU, USPS->MNIST (JDA files), batch 64+64
    python benchmarks/step_overhead.py --device cuda --steps 500

The hand-written loop is what a researcher would write without a framework: index draws and
gathers on the device, one forward over source+target, cross-entropy, GRL + discriminator +
BCE domain loss, backward, SGD step, the DANN learning-rate schedule. The trainer's step adds
pluggy hook calls, loss-term bookkeeping and on-device log accumulation.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from tladapt.config import load_config
from tladapt.data.datasets import load_domain
from tladapt.experiment import prepare
from tladapt.losses import domain_adversarial_loss, grad_reverse, grl_coefficient
from tladapt.manager import make_plugin_manager
from tladapt.runs import new_run_dir
from tladapt.trainer import Trainer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_trainer(args, run_root):
    config = load_config(None, [
        "data.dataset='mnist_usps_jda'", "data.tasks=['usps->mnist']", "model.backbone='lenet'",
        f"trainer.batch_size={args.batch}", f"trainer.steps={10 ** 9}", f"trainer.eval_every={10 ** 9}",
        "trainer.log_every=50", f"trainer.device='{args.device}'", "trainer.progress=false",
        "plugins.dann.hidden=[500, 500]",
    ], enable=["dann"])
    config, active = prepare(config)
    src, tgt = load_domain("mnist_usps_jda", "usps"), load_domain("mnist_usps_jda", "mnist")
    trainer = Trainer(config, src, tgt, make_plugin_manager(active), new_run_dir(run_root, "bench", "t", "m", 0), 0)
    trainer.start()
    return trainer


def hand_written(trainer):
    """The same model, data and training view as ``trainer``, trained by a plain loop (fresh
    optimizer); it honours ``trainer.precision`` (bf16 autocast) and ``trainer.channels_last``."""
    cfg = trainer.config.trainer
    backbone, head = trainer.backbone, trainer.head
    disc = trainer.modules["domain_discriminator"]
    opt = torch.optim.SGD([p for m in (backbone, head, disc) for p in m.parameters()],
                          lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 + 10 * s / cfg.steps) ** -0.75)
    src, tgt = trainer.source, trainer.target
    b, device = cfg.batch_size, trainer.device
    gen = torch.Generator(device=device).manual_seed(0)
    bf16 = cfg.precision == "bf16"
    step = 0

    def view(dom, i):  # the stored rows, augmented on the device for an image domain
        return dom.x[i] if dom.augment is None else dom.augment.weak(dom.x[i], gen)

    def one_step():
        nonlocal step
        i_s = torch.randint(len(src), (b,), generator=gen, device=device)
        i_t = torch.randint(len(tgt), (b,), generator=gen, device=device)
        x = torch.cat([view(src, i_s), view(tgt, i_t)])
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            f = backbone(x).float()
            cls = F.cross_entropy(head(f[:b]).float(), src.y[i_s])
            d = disc(grad_reverse(f, grl_coefficient(min(step / cfg.steps, 1.0))))
            dom, _ = domain_adversarial_loss(d[:b], d[b:])
            loss = cls + dom
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1

    return one_step


def timed(fn, steps, device):
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=100, help="steps per round and loop")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64, help="samples per domain")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as root:
        trainer = make_trainer(args, root)
        plain = hand_written(trainer)
        for fn in (trainer.advance, plain):  # warm-up: allocator, optimizer state, lazy init
            timed(fn, 10, device)
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(timed(trainer.advance, args.steps, device))
            theirs.append(timed(plain, args.steps, device))
        trainer.logger.close()
    ratios = [a / b for a, b in zip(ours, theirs)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; LeNet + DANN, USPS->MNIST 16x16, batch {args.batch}+{args.batch}")
    print(f"trainer step      {statistics.median(ours) * 1e3:8.3f} ms  (median of {args.rounds} rounds x {args.steps} steps)")
    print(f"hand-written step {statistics.median(theirs) * 1e3:8.3f} ms")
    print(f"ratio trainer/hand-written: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
