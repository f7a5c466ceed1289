"""Image pipeline and DANN step: tladapt against torchvision DataLoaders and a hand-written loop.

One process, the same generated JPEG images for everyone, measurements interleaved in
rounds so that machine noise hits all sides; ratios are per round (min / median / max).

1. ``decode``: one image decoded + resized once (the cache build): Pillow (what
   tladapt uses, bit-exact to torchvision's loader), ``torchvision.io.decode_jpeg``
   and ``simplejpeg`` (when installed), each followed by the same resize.
2. ``pipeline``: training images per second of tladapt's gather + device augmentation
   (random resized crop, flip, normalise on the stored uint8 cache) against
   ``torchvision.datasets.ImageFolder`` + ``DataLoader(num_workers=0)`` and
   ``num_workers=2`` with the classic ``transforms`` pipeline, and with the equivalent
   ``transforms.v2`` pipeline (same crop scale/ratio, flip, normalisation).
3. ``step``: a DANN training step (ResNet-18 / ResNet-50, random init, bottleneck 256,
   discriminator 1024-1024) of ``Trainer.advance()`` against a hand-written loop on the
   same device-resident data and the same augmentation, fp32 and bf16 autocast (the loop of
   ``benchmarks/step_overhead.py``).

    python benchmarks/image_pipeline.py                          # CPU, small sizes
    python benchmarks/image_pipeline.py --device cuda --images 512 --batch 32 --size 224 --steps 20

On CUDA everything runs unchanged (data on the GPU, timings synchronised).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from step_overhead import hand_written, sync, timed  # the same hand-written DANN loop (benchmarks/ on sys.path)


def make_images(root: Path, n: int, side: int, classes: int = 4) -> None:
    """``n`` smooth random JPEGs of about ``side x side`` per domain (source, target)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for domain in ("source", "target"):
        for i in range(n):
            folder = root / domain / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = side + int(rng.integers(-side // 5, side // 5)), side
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.stack([127 + 100 * np.sin(xx / rng.uniform(5, 40) + c) * np.cos(yy / rng.uniform(5, 40))
                            for c in range(3)], 2) + rng.normal(0, 8, (h, w, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)


def ratios(ours: list[float], theirs: list[float]) -> str:
    r = [b / a for a, b in zip(ours, theirs)]  # theirs time / our time = our speed-up
    return f"{statistics.median(r):.2f} (min {min(r):.2f}, max {max(r):.2f})"


# ----------------------------------------------------------------------------- decode

def bench_decode(files, size, rounds):
    from PIL import Image

    from tladapt.data.images import decode_image

    def resize(arr):  # the same Pillow resize for every decoder
        img = Image.fromarray(arr)
        w, h = img.size
        s = min(w, h)
        return np.asarray(img.resize((round(w * size / s), round(h * size / s)), Image.BILINEAR))

    decoders = {"pillow (tladapt)": lambda f: decode_image(f, size)}
    try:
        import torchvision.io as tio

        decoders["torchvision.io.decode_jpeg"] = lambda f: resize(tio.decode_jpeg(tio.read_file(str(f))).permute(1, 2, 0).numpy())
    except ImportError:
        pass
    try:
        import simplejpeg

        decoders["simplejpeg"] = lambda f: resize(simplejpeg.decode_jpeg(Path(f).read_bytes()))
    except ImportError:
        pass
    times = {k: [] for k in decoders}
    for _ in range(rounds):
        for name, fn in decoders.items():
            t0 = time.perf_counter()
            for f in files:
                fn(f)
            times[name].append((time.perf_counter() - t0) / len(files))
    base = times["pillow (tladapt)"]
    print("\n| decoder (+ the same Pillow resize) | ms / image (median) | speed-up vs Pillow |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t) * 1e3:.2f} | {ratios(t, base)} |")


# ----------------------------------------------------------------------------- pipeline

def bench_pipeline(root, args, device):
    from torch.utils.data import DataLoader
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from tladapt.config import AugmentSection
    from tladapt.data.augment import attach
    from tladapt.data.datasets import load_domain
    from tladapt.data.images import ImageOptions
    from tladapt.data.pipeline import PairedPipeline

    opts = ImageOptions(args.stored, "center_crop", str(root / "cache"))
    aug = AugmentSection(input_size=args.size)
    src, tgt = (attach(load_domain(f"image_folder:{root}", d, images=opts), aug).to(device) for d in ("source", "target"))
    pipe = PairedPipeline(src, tgt.unlabelled(), args.batch, seed=0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    classic = T.Compose([T.RandomResizedCrop(args.size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    modern = v2.Compose([v2.RandomResizedCrop(args.size, antialias=True), v2.RandomHorizontalFlip(), v2.ToImage(),
                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def loader(transform, workers):
        ds = ImageFolder(str(root / "source"), transform=transform)
        dl = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        state = {"it": iter(dl)}

        def next_batch():
            try:
                x, _ = next(state["it"])
            except StopIteration:
                state["it"] = iter(dl)
                x, _ = next(state["it"])
            return x.to(device, non_blocking=True)

        return next_batch

    def ours():
        return pipe.next().x_s  # gathers and augments the target batch too: counted as 2 b images

    sides = {"tladapt gather + device augmentation": (ours, 2 * args.batch),
             "ImageFolder + DataLoader(num_workers=0) + transforms": (loader(classic, 0), args.batch),
             f"ImageFolder + DataLoader(num_workers={args.workers}) + transforms": (loader(classic, args.workers), args.batch),
             "ImageFolder + DataLoader(num_workers=0) + transforms.v2": (loader(modern, 0), args.batch)}
    rates = {k: [] for k in sides}
    for fn, _ in sides.values():  # warm-up (workers start, caches fill)
        fn()
    for _ in range(args.rounds):
        for name, (fn, per_call) in sides.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.pipeline_batches):
                fn()
            sync(device)
            rates[name].append(per_call * args.pipeline_batches / (time.perf_counter() - t0))
    base = rates["tladapt gather + device augmentation"]
    print(f"\n| pipeline ({args.size}x{args.size} crops from {args.stored}px, batch {args.batch}) | images / s (median) "
          f"| tladapt speed-up |\n|---|---:|---:|")
    for name, r in rates.items():
        sp = [a / b for a, b in zip(base, r)]
        print(f"| {name} | {statistics.median(r):.0f} | {statistics.median(sp):.2f} (min {min(sp):.2f}, max {max(sp):.2f}) |")


# ----------------------------------------------------------------------------- step

def make_trainer(root, args, device, arch, precision, run_root):
    from tladapt.config import load_config
    from tladapt.data.images import ImageOptions
    from tladapt.data.tasks import load_task
    from tladapt.experiment import prepare
    from tladapt.manager import make_plugin_manager
    from tladapt.runs import new_run_dir
    from tladapt.trainer import Trainer

    config = load_config(None, [
        f"data.dataset='image_folder:{root}'", "data.tasks=['source->target']", f"data.image_size={args.stored}",
        f"data.cache_dir='{root / 'cache'}'", "data.source_val_fraction=0", f"augment.input_size={args.size}",
        f"model.backbone='torchvision:{arch}'", "model.bottleneck=256", f"trainer.batch_size={args.batch}",
        f"trainer.steps={10 ** 9}", f"trainer.eval_every={10 ** 9}", "trainer.log_every=50",
        f"trainer.device='{device.type}'", "trainer.progress=false", f"trainer.precision='{precision}'",
        f"trainer.channels_last={'true' if device.type == 'cuda' else 'false'}", "plugins.dann.weight=1.0",
    ], enable=["dann"])
    config, active = prepare(config)
    src, tgt = load_task(config.data, "source->target")
    trainer = Trainer(config, src, tgt, make_plugin_manager(active), new_run_dir(run_root, "bench", "t", arch, 0), 0)
    trainer.start()
    return trainer


def bench_step(root, args, device):
    print(f"\n| DANN step ({args.size}x{args.size}, batch {args.batch}+{args.batch}) | tladapt ms | hand-written ms "
          f"| hand-written / tladapt |\n|---|---:|---:|---:|")
    for arch in args.archs:
        for precision in args.precisions:
            with tempfile.TemporaryDirectory() as run_root:
                trainer = make_trainer(root, args, device, arch, precision, run_root)
                plain = hand_written(trainer)
                for fn in (trainer.advance, plain):
                    timed(fn, 1, device)  # warm-up
                ours, theirs = [], []
                for _ in range(args.step_rounds):
                    ours.append(timed(trainer.advance, args.steps, device))
                    theirs.append(timed(plain, args.steps, device))
                trainer.logger.close()
            print(f"| {arch} {precision} | {statistics.median(ours) * 1e3:.1f} | "
                  f"{statistics.median(theirs) * 1e3:.1f} | {ratios(ours, theirs)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=96, help="JPEGs per domain")
    parser.add_argument("--side", type=int, default=300, help="JPEG side in pixels (about)")
    parser.add_argument("--stored", type=int, default=128, help="data.image_size of the cache")
    parser.add_argument("--size", type=int, default=112, help="model input side (crop)")
    parser.add_argument("--batch", type=int, default=8, help="samples per domain")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the second loader")
    parser.add_argument("--pipeline-batches", type=int, default=24, help="batches per round and side (more than "
                        "the DataLoader's prefetch queue, so that workers are measured in steady state)")
    parser.add_argument("--steps", type=int, default=2, help="DANN steps per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--step-rounds", type=int, default=3)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--parts", nargs="+", default=["decode", "pipeline", "step"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.images} JPEGs of ~{args.side}px per domain")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_images(root, args.images, args.side)
        if "decode" in args.parts:
            bench_decode(sorted((root / "source").rglob("*.jpg"))[:32], args.stored, args.rounds)
        if "pipeline" in args.parts:
            bench_pipeline(root, args, device)
        if "step" in args.parts:
            bench_step(root, args, device)


if __name__ == "__main__":
    main()
