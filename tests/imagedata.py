"""Small generated image folders (Pillow) shared by the image tests."""

from pathlib import Path

import numpy as np

CLASSES = ("cat", "dog", "owl")


def smooth_image(rng, w, h, mode="RGB"):
    """A smooth random picture (gradients plus a blob) of ``w x h``, as a PIL image."""
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    chans = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.2 * max(w, h)) ** 2))
        chans.append(127 + 60 * (a * xx / w + b * yy / h) + 60 * c * blob)
    arr = np.clip(np.stack(chans, 2) + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img.convert(mode) if mode != "RGB" else img


def make_folder(root: Path, domains=("art", "photo"), per_class=4, seed=0, extras=True) -> Path:
    """``root/<domain>/<class>/<i>.(jpg|png)`` with varied sizes; in the first domain one
    greyscale JPEG, one RGBA PNG and one non-image file (``notes.txt``)."""
    rng = np.random.default_rng(seed)
    for d, domain in enumerate(domains):
        for c, name in enumerate(CLASSES):
            folder = root / domain / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                mode, ext = "RGB", ("jpg" if i % 2 == 0 else "png")
                if extras and d == 0 and c == 0 and i == 0:
                    mode = "L"
                if extras and d == 0 and c == 1 and i == 1:
                    mode, ext = "RGBA", "png"
                img = smooth_image(rng, w, h, mode)
                img.save(folder / f"{i:02d}.{ext}", quality=90) if ext == "jpg" else img.save(folder / f"{i:02d}.{ext}")
    if extras:
        (root / domains[0] / CLASSES[0] / "notes.txt").write_text("not an image")
    return root
