"""One DANN step, six ways: tladapt's trainer against a hand loop, pytorch-adapt and the TLlib pattern.

Same LeNet backbone, head and DANN discriminator (500-500), same data (USPS->MNIST, JDA
files, 16x16), batch 64+64, same losses (cross-entropy + GRL + domain BCE), SGD with
momentum and weight decay, the DANN learning-rate schedule; one process, the loops
alternating in rounds so that machine noise hits all of them. Per-step time is the
median over rounds; each loop's ratio to the hand loop is taken per round (min / median /
max).

    python benchmarks/step_overhead.py --threads 1                # CPU
    python benchmarks/step_overhead.py --device cuda --steps 500  # adds the CUDA-graph rows

Loops:

* ``tladapt``: ``Trainer.advance()`` (hooks, loss terms, on-device log accumulation, log
  flush every 50 steps), data resident on the device.
* ``hand``: what a researcher writes without a framework: index draws and gathers on the
  device, one forward over source+target, the losses, backward, SGD step, schedule.
* ``pytorch-adapt``: ``pytorch_adapt.hooks.DANNHook`` (its own GRL, domain loss and
  optimizer steps) on the same device-resident batches.
* ``pytorch-adapt + DataLoader``: the same hook fed by two shuffling ``DataLoader`` s, as its
  examples do.
* ``TLlib pattern``: two ``DataLoader`` s behind forever-iterators, ``torch.cat`` of the
  batches, one forward, ``F.cross_entropy`` + a domain-adversarial loss, one optimizer
  (the loop of TLlib's ``examples/domain_adaptation/image_classification/dann.py``;
  TLlib itself is not installed, its loop is reproduced with the same model).
* CUDA only: ``tladapt cudagraph`` (``trainer.compile = "cudagraph"``) and ``hand, captured``
  (the hand loop's step captured by hand with ``torch.cuda.graph`` after warm-up).

DataLoaders use ``num_workers=0`` (one process, as the comparison requires) and pinned
memory on CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

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


def make_trainer(args, run_root, compile_mode="off"):
    config = load_config(None, [
        "data.dataset='mnist_usps_jda'", "data.tasks=['usps->mnist']", "model.backbone='lenet'",
        f"trainer.batch_size={args.batch}", f"trainer.steps={10 ** 9}", f"trainer.eval_every={10 ** 9}",
        "trainer.log_every=50", f"trainer.device='{args.device}'", "trainer.progress=false",
        "plugins.dann.hidden=[500, 500]", f"trainer.compile='{compile_mode}'", "trainer.checkpoint=false",
    ], enable=["dann"])
    config, active = prepare(config)
    src, tgt = load_domain("mnist_usps_jda", "usps"), load_domain("mnist_usps_jda", "mnist")
    trainer = Trainer(config, src, tgt, make_plugin_manager(active), new_run_dir(run_root, "bench", "t", "m", 0), 0)
    trainer.start()
    return trainer


def _sgd(cfg, modules, device=None):
    """SGD as the trainer's, with its schedule; with ``device``, fused with a device learning
    rate (what a captured step needs)."""
    params = [p for m in modules for p in m.parameters()]
    if device is None:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=torch.tensor(cfg.lr, device=device), momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, fused=True)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 + 10 * s / cfg.steps) ** -0.75)


def hand_written(trainer, captured=False):
    """The same model, data and training view as ``trainer``, trained by a plain loop (fresh
    optimizer); it honours ``trainer.precision`` (bf16 autocast) and ``trainer.channels_last``.

    Returns a namespace: ``step()`` (one eager step), and its parts ``draw()`` ->
    ``(x, y_s)`` and ``compute(x, y_s, lam)`` with the optimizer, schedule, step counter and
    index generator, for the hand-captured variant (``captured``: fused SGD with a device
    learning rate)."""
    cfg = trainer.config.trainer
    backbone, head = trainer.backbone, trainer.head
    disc = trainer.modules["domain_discriminator"]
    opt, sched = _sgd(cfg, (backbone, head, disc), trainer.device if captured else None)
    src, tgt = trainer.source, trainer.target
    xs, ys, xt = src.x, src.y, tgt.x
    b, device = cfg.batch_size, trainer.device
    gen = torch.Generator(device=device).manual_seed(0)
    bf16 = cfg.precision == "bf16"
    state = {"step": 0}

    def view(dom, x, i):  # the stored rows, as the trainer's view: augmented for an image domain
        return dom.transform(x[i]) if dom.augment is None else dom.augment.weak(x[i], gen)

    def draw():
        i_s = torch.randint(len(xs), (b,), generator=gen, device=device)
        i_t = torch.randint(len(xt), (b,), generator=gen, device=device)
        x = torch.cat([view(src, xs, i_s), view(tgt, xt, i_t)])
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, ys[i_s]

    def compute(x, y_s, lam=None):
        lam = grl_coefficient(min(state["step"] / cfg.steps, 1.0)) if lam is None else lam
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            f = backbone(x).float()
            cls = F.cross_entropy(head(f[:b]).float(), y_s)
            d = disc(grad_reverse(f, lam))
            dom, _ = domain_adversarial_loss(d[:b], d[b:])
            loss = cls + dom
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step():
        compute(*draw())
        sched.step()
        state["step"] += 1

    return SimpleNamespace(step=step, draw=draw, compute=compute, opt=opt, sched=sched, state=state, gen=gen)


def hand_captured(trainer):
    """The hand loop's whole step (draw included) captured by hand in a CUDA graph (CUDA only):
    the learning rate and the GRL coefficient are device tensors updated outside the graph."""
    cfg = trainer.config.trainer
    hand = hand_written(trainer, captured=True)
    device = trainer.device
    lam, progress = torch.zeros((), device=device), torch.zeros((), device=device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            hand.compute(*hand.draw(), lam=lam)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(hand.gen)
    hand.opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        lam.copy_(grl_coefficient(progress))
        hand.compute(*hand.draw(), lam=lam)

    def step():
        progress.fill_(hand.state["step"] / cfg.steps)
        graph.replay()
        hand.sched.step()
        hand.state["step"] += 1

    return step


def pytorch_adapt_hook(trainer, loaders: bool):
    """pytorch-adapt's DANNHook on the same modules (fresh optimizers), fed from the device or
    by two DataLoaders."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorch_adapt.hooks import DANNHook
    cfg = trainer.config.trainer
    models = {"G": trainer.backbone, "C": trainer.head, "D": trainer.modules["domain_discriminator"]}
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            for m in models.values()]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: (1 + 10 * s / cfg.steps) ** -0.75) for o in opts]
    hook = DANNHook(opts)
    b, device = cfg.batch_size, trainer.device
    zeros, ones = torch.zeros(b, device=device), torch.ones(b, device=device)
    draw = _loader_draw(trainer) if loaders else _device_draw(trainer)

    def step():
        x_s, y_s, x_t = draw()
        hook({**models, "src_imgs": x_s, "src_labels": y_s, "target_imgs": x_t, "src_domain": zeros,
              "target_domain": ones})
        for s in scheds:
            s.step()

    return step


def _device_draw(trainer):
    xs, ys, xt = trainer.source.x.float(), trainer.source.y, trainer.target.x.float()
    b, device = trainer.config.trainer.batch_size, trainer.device
    gen = torch.Generator(device=device).manual_seed(1)

    def draw():
        i_s = torch.randint(len(xs), (b,), generator=gen, device=device)
        i_t = torch.randint(len(xt), (b,), generator=gen, device=device)
        return xs[i_s], ys[i_s], xt[i_t]

    return draw


def _forever(loader):
    while True:
        yield from loader


def _loader_draw(trainer):
    """Two shuffling DataLoaders over host copies of the domains, batches moved to the device."""
    b, device = trainer.config.trainer.batch_size, trainer.device
    pin = device.type == "cuda"
    src = DataLoader(TensorDataset(trainer.source.x.float().cpu(), trainer.source.y.cpu()), batch_size=b,
                     shuffle=True, drop_last=True, pin_memory=pin)
    tgt = DataLoader(TensorDataset(trainer.target.x.float().cpu()), batch_size=b, shuffle=True, drop_last=True,
                     pin_memory=pin)
    src_it, tgt_it = _forever(src), _forever(tgt)

    def draw():
        x_s, y_s = next(src_it)
        (x_t,) = next(tgt_it)
        return x_s.to(device, non_blocking=True), y_s.to(device, non_blocking=True), x_t.to(device, non_blocking=True)

    return draw


def tllib_pattern(trainer):
    """TLlib's DANN loop: two DataLoaders, cat, one model forward, cls + domain loss, one optimizer."""
    cfg = trainer.config.trainer
    backbone, head, disc = trainer.backbone, trainer.head, trainer.modules["domain_discriminator"]
    opt, sched = _sgd(cfg, (backbone, head, disc))
    draw = _loader_draw(trainer)
    state = {"step": 0}

    def step():
        x_s, labels_s, x_t = draw()
        x = torch.cat((x_s, x_t), dim=0)
        f = backbone(x)
        y = head(f)
        y_s, _ = y.chunk(2, dim=0)
        f_s, f_t = f.chunk(2, dim=0)
        cls_loss = F.cross_entropy(y_s, labels_s)
        lam = grl_coefficient(state["step"] / cfg.steps)
        d = disc(grad_reverse(torch.cat([f_s, f_t]), lam))
        transfer_loss, _ = domain_adversarial_loss(d[: len(f_s)], d[len(f_s):])
        loss = cls_loss + transfer_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        state["step"] += 1

    return step


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
    parser.add_argument("--steps", type=int, default=40, help="steps per round and loop")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64, help="samples per domain")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as root:
        trainer = make_trainer(args, root)
        loops = {"tladapt": trainer.advance, "hand": hand_written(trainer).step}
        try:
            loops["pytorch-adapt"] = pytorch_adapt_hook(trainer, loaders=False)
            loops["pytorch-adapt + DataLoader"] = pytorch_adapt_hook(trainer, loaders=True)
        except ImportError:
            print("pytorch-adapt not installed: its rows are left out")
        loops["TLlib pattern"] = tllib_pattern(trainer)
        if device.type == "cuda":
            graphed = make_trainer(args, root, "cudagraph")
            loops["tladapt cudagraph"] = graphed.advance
            loops["hand, captured"] = hand_captured(trainer)
        for fn in loops.values():  # warm-up: allocator, optimizer state, lazy init, graph capture
            timed(fn, 10, device)
        times = {name: [] for name in loops}
        for _ in range(args.rounds):
            for name, fn in loops.items():
                times[name].append(timed(fn, args.steps, device))
        trainer.logger.close()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; LeNet + DANN, USPS->MNIST 16x16, batch {args.batch}+{args.batch}; "
          f"{args.rounds} rounds x {args.steps} steps")
    print()
    print("| loop | ms / step (median) | ratio to hand loop: min | median | max |")
    print("|---|---:|---:|---:|---:|")
    for loop, ts in times.items():
        ratios = [a / h for a, h in zip(ts, times["hand"])]
        print(f"| {loop} | {statistics.median(ts) * 1e3:.3f} | {min(ratios):.3f} | **{statistics.median(ratios):.3f}** "
              f"| {max(ratios):.3f} |")


if __name__ == "__main__":
    main()
