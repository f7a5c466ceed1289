"""Batched image augmentation on the training device, as tensor ops seeded by the run.

A training batch of stored images (``uint8`` pixels, or floats in [0, 1] for the
bundled digits) is augmented in one pass for the whole batch, on the device where
it lives, with random draws from a ``torch.Generator`` that the pipeline owns and
seeds from the run's seed. Nothing reads a value back to the host, nothing loops
over samples in Python, and every output has the same static shape, so a step
stays free of host syncs.

* :class:`EvalTransform`: the evaluation view, ``ToTensor`` (``/ 255``), centre
  crop and normalisation, bit for bit what ``torchvision`` gives on the stored
  image (``tests/test_augment.py``).
* :class:`Augmentation`: the training views. ``weak`` (the standard DA policy of
  TLlib / the DANN and CDAN code): random resized crop to the input size with
  torchvision's sampling (scale and log-uniform ratio, 10 tries, centre
  fallback), horizontal flip with probability 1/2 and optional colour jitter,
  then normalisation. ``strong``: the weak geometry plus RandAugment-style ops as
  FixMatch uses them (Sohn et al., NeurIPS 2020, Table 12) and Cutout.

The crop, the flip and the strong policy's rotations, shears and translations
are one affine resampling (``affine_grid`` + ``grid_sample``, bilinear, output
pixel centres mapped exactly as ``F.interpolate(align_corners=False)`` maps them
on the cropped box, so a crop equals torchvision's ``resized_crop`` without
antialiasing). Differences from torchvision's per-image PIL pipeline, all
documented at their functions: no antialiasing when a crop is shrunk, colour
jitter in a fixed order (brightness, contrast, saturation, hue) instead of a
random one, and a strong op drawn twice for one sample applied once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageFormat", "AugmentSpec", "EvalTransform", "Augmentation",
           "CropParams", "random_resized_boxes", "rgb_to_hsv", "hsv_to_rgb", "adjust_brightness", "adjust_contrast",
           "adjust_saturation", "adjust_hue", "adjust_sharpness", "STRONG_OPS", "resolve_spec", "attach"]

#: ImageNet channel statistics used by every torchvision pretrained classification model.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_GREY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L") and torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class ImageFormat:
    """How an image domain's stored pixels read, and its defaults.

    Attributes:
        max_value: the stored value of full intensity: 255 for ``uint8`` pixels,
            1 for floats in [0, 1]. Pixels are divided by it (``ToTensor``).
        mean, std: default per-channel normalisation after that division (length
            1 or the channel count); ``None`` for no normalisation.
        augment: whether ``augment.train = "auto"`` means the standard training policy
            (True for photographs; False for the bundled digits, which keep their exact inputs).
        crop_fraction: ``augment.input_size = 0`` means this fraction of the stored side
            (7/8: 224 from 256, as TLlib and the ImageNet recipes; 1 for digits).
    """

    max_value: float = 255.0
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    augment: bool = True
    crop_fraction: float = 0.875

    def input_size(self, stored: int) -> int:
        """The default model input side for stored images of side ``stored``."""
        return int(stored * self.crop_fraction)


@dataclass(frozen=True)
class AugmentSpec:
    """Resolved parameters of a domain's views (built from ``[augment]`` by :func:`tladapt.data.images.attach`).

    Attributes:
        size: output side ``s``: views are ``(b, c, s, s)`` float32.
        max_value: see :class:`ImageFormat`.
        mean, std: normalisation, ``None`` for none.
        train: ``"none"`` (training uses the evaluation view) or ``"standard"``.
        scale: ``(lo, hi)`` fractions of the stored area a random crop covers.
        ratio: ``(lo, hi)`` aspect ratios (width / height) of a random crop.
        flip: horizontal flip with probability 1/2.
        color_jitter: ``(brightness, contrast, saturation, hue)`` strengths as in
            ``torchvision.transforms.ColorJitter``: factors uniform in
            ``[max(0, 1 - v), 1 + v]``, hue shift uniform in ``[-v, v]``; 0 is off.
        strong_ops: RandAugment ops drawn per sample for the strong view (each then
            applied with probability 1/2, as FixMatch's RandAugmentMC).
        cutout: side of the strong view's Cutout square as a fraction of ``size``.
    """

    size: int
    max_value: float = 255.0
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    train: str = "standard"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    strong_ops: int = 2
    cutout: float = 0.5


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x - mean) / std`` per channel, as ``torchvision.transforms.Normalize``."""
    if mean is None:
        return x
    c = x.shape[1]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).expand(c).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).expand(c).view(1, c, 1, 1)
    return x.sub(m).div(s)


def _to_unit(x: torch.Tensor, max_value: float) -> torch.Tensor:
    """Stored pixels to float32 in [0, 1]: ``x.float().div(max_value)`` (``ToTensor`` for uint8)."""
    return x.float() if max_value == 1.0 else x.float().div(max_value)


class EvalTransform:
    """The evaluation view: centre crop to ``spec.size``, ``/ max_value``, normalise.

    On images cached as the shorter side resized to ``S`` and centre-cropped to
    ``S x S`` this is exactly ``Resize(S) -> CenterCrop(size) -> ToTensor ->
    Normalize`` of torchvision on the original image (the crop offset is
    ``round((S - size) / 2)`` as torchvision's ``center_crop``).

    Call: ``(b, c, H, W)`` stored pixels (any device) -> ``(b, c, size, size)`` float32.

    Raises:
        ValueError: (on call) when the stored images are smaller than ``size``.
    """

    def __init__(self, spec: AugmentSpec):
        self.spec = spec

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec.size
        h, w = x.shape[-2:]
        if h < s or w < s:
            raise ValueError(f"images of {h}x{w} are smaller than the input size {s}: lower augment.input_size")
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        x = x[..., top:top + s, left:left + s]
        return _normalise(_to_unit(x, self.spec.max_value), self.spec.mean, self.spec.std)


@dataclass(frozen=True)
class CropParams:
    """One batch's random geometry, all ``(b,)`` device tensors.

    Attributes:
        top, left, height, width: the crop box in stored pixels (integers as float32).
        flip: bool, horizontal flip.
    """

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor


def random_resized_boxes(b: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                         generator: torch.Generator, tries: int = 10) -> tuple[torch.Tensor, ...]:
    """torchvision's ``RandomResizedCrop.get_params`` for ``b`` images at once, on the generator's device.

    Per image, ``tries`` candidates: area ``U(scale) * H * W``, aspect ratio
    ``exp(U(log ratio))``, integer sides ``round(sqrt(area * r))`` and
    ``round(sqrt(area / r))``; the first candidate that fits is kept, with an
    offset uniform over the integer positions; when none fits, the centre crop of
    the whole image clamped to the ratio range. Static shapes, no host sync.

    Returns:
        ``(top, left, h, w)``, each ``(b,)`` float32 holding integers.
    """
    dev = generator.device
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, tries, generator=generator, device=dev))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, tries, generator=generator, device=dev))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first fitting candidate (0 when none fits)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    in_ratio = width / height  # fallback: torchvision's centre crop within the ratio range
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    any_ok = ok.any(1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = torch.rand(b, 2, generator=generator, device=dev)
    top = torch.where(any_ok, torch.floor(u[:, 0] * (height - h + 1)), torch.full_like(h, (height - fh) // 2))
    left = torch.where(any_ok, torch.floor(u[:, 1] * (width - w + 1)), torch.full_like(w, (width - fw) // 2))
    return top, left, h, w


def _box_theta(p: CropParams, height: int, width: int) -> torch.Tensor:
    """``(b, 2, 3)`` affine for ``affine_grid(align_corners=False)`` that resamples each box
    (flipped where ``p.flip``) to the full output: output pixel ``u`` reads input
    ``left + (u + 0.5) * w / out - 0.5``, as ``F.interpolate`` on the crop does."""
    sx = p.width / width
    sx = torch.where(p.flip, -sx, sx)
    sy = p.height / height
    tx = (2 * p.left + p.width) / width - 1
    ty = (2 * p.top + p.height) / height - 1
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(b, 3, h, w)`` RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn), as torchvision's."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`, ``(b, 3, h, w)`` in [0, 1]."""
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    mask = i.unsqueeze(1) == torch.arange(6, device=i.device).view(1, -1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), 1)
    a2 = torch.stack((t, v, v, q, p, p), 1)
    a3 = torch.stack((p, p, t, v, v, q), 1)
    a4 = torch.stack((a1, a2, a3), 1)  # (b, 3, 6, h, w)
    return (a4 * mask.unsqueeze(1)).sum(2)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma ``(b, 1, h, w)`` of RGB (the image itself when greyscale)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_GREY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other`` clamped to [0, 1], factor ``(b,)`` (PIL ImageEnhance)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0.0, 1.0)


def _uniform(b: int, lo, hi, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(b, generator=generator, device=generator.device)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x * factor`` clamped to [0, 1]; ``x`` ``(b, c, h, w)`` in [0, 1], ``factor`` ``(b,)``
    (torchvision ``adjust_brightness`` per sample)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each image's mean luma (torchvision ``adjust_contrast`` per sample)."""
    return _blend(x, _grey(x).mean((1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the luma image (torchvision ``adjust_saturation`` per sample); greyscale unchanged."""
    return x if x.shape[1] == 1 else _blend(x, _grey(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` (``(b,)``, fractions of a turn in [-0.5, 0.5]) through HSV
    (torchvision ``adjust_hue`` per sample); greyscale unchanged."""
    if x.shape[1] == 1:
        return x
    h, s, v = rgb_to_hsv(x).unbind(1)
    return hsv_to_rgb(torch.stack(((h + shift.view(-1, 1, 1)) % 1.0, s, v), 1))


def _color_jitter(x: torch.Tensor, strengths, generator: torch.Generator) -> torch.Tensor:
    """torchvision ``ColorJitter`` with per-sample factors, in the fixed order brightness,
    contrast, saturation, hue (torchvision draws a random order per image)."""
    b = x.shape[0]
    bright, contrast, sat, hue = strengths
    if bright > 0:
        x = adjust_brightness(x, _uniform(b, max(0.0, 1 - bright), 1 + bright, generator))
    if contrast > 0:
        x = adjust_contrast(x, _uniform(b, max(0.0, 1 - contrast), 1 + contrast, generator))
    if sat > 0:
        x = adjust_saturation(x, _uniform(b, max(0.0, 1 - sat), 1 + sat, generator))
    if hue > 0:
        x = adjust_hue(x, _uniform(b, -hue, hue, generator))
    return x


# ------------------------------------------------------------------ the strong (RandAugment) policy

#: The strong view's op pool: FixMatch's RandAugment ops (Sohn et al. 2020, Table 12).
STRONG_OPS = ("identity", "autocontrast", "equalize", "brightness", "color", "contrast", "sharpness",
              "posterize", "solarize", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel, stretch [min, max] to [0, 1] (PIL/torchvision autocontrast)."""
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1.0 / (hi - lo).clamp_min(1e-12))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) * scale).clamp(0.0, 1.0)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel on the 256 uint8 levels, as
    ``torchvision.transforms.functional.equalize`` (PIL's algorithm), batched."""
    b, c, h, w = x.shape
    q = (x * 255).round().clamp(0, 255).to(torch.int64).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.float32, device=x.device).scatter_add_(
        1, q, torch.ones_like(q, dtype=torch.float32))
    last = 255 - (hist > 0).flip(1).to(torch.uint8).argmax(1, keepdim=True)  # last non-empty level
    step = torch.floor((hist.sum(1, keepdim=True) - hist.gather(1, last)) / 255)
    safe = torch.where(step == 0, torch.ones_like(step), step)
    lut = torch.floor((hist.cumsum(1) + torch.floor(step / 2)) / safe)
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = lut.gather(1, q)
    out = torch.where(step == 0, q.to(out.dtype), out)
    return out.view(b, c, h, w) / 255


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter ``[[1,1,1],[1,5,1],[1,1,1]] / 13`` (border pixels
    unfiltered), as torchvision ``adjust_sharpness``, per sample ``factor`` ``(b,)``."""
    c = x.shape[1]
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5
    k = (k / 13).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, k, groups=c)
    return _blend(x, smooth, factor)


def _geometry(selected: torch.Tensor, magnitude: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """``(b, 2, 3)`` affine of the selected rotate/shear/translate ops in normalised output
    coordinates (about the centre): rotation ±30°, shear ±0.3, translation ±30 % of the side."""
    col = {name: i for i, name in enumerate(STRONG_OPS)}
    amount = magnitude * sign

    def get(name):
        return torch.where(selected[:, col[name]], amount[:, col[name]], torch.zeros_like(amount[:, 0]))

    angle = get("rotate") * math.radians(30)
    shx, shy = get("shear_x") * 0.3, get("shear_y") * 0.3
    tx, ty = get("translate_x") * 0.3 * 2, get("translate_y") * 0.3 * 2  # normalised coordinates span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # input = R @ Sh @ q + t, with Sh = [[1, shx], [shy, 1]] and R the rotation
    a11 = cos - sin * shy
    a12 = cos * shx - sin
    a21 = sin + cos * shy
    a22 = sin * shx + cos
    return torch.stack([torch.stack([a11, a12, tx], 1), torch.stack([a21, a22, ty], 1)], 1)


def _compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Affine ``outer ∘ inner`` of ``(b, 2, 3)`` maps (apply ``inner`` first)."""
    lin = outer[:, :, :2] @ inner[:, :, :2]
    shift = (outer[:, :, :2] @ inner[:, :, 2:]).squeeze(2) + outer[:, :, 2]
    return torch.cat([lin, shift.unsqueeze(2)], 2)


class Augmentation:
    """A domain's training views: ``weak`` (crop, flip, jitter) and ``strong`` (plus RandAugment, Cutout).

    Both map ``(b, c, H, W)`` stored pixels on the device to ``(b, c, spec.size,
    spec.size)`` float32 normalised inputs, drawing every random number from
    ``generator`` (a ``torch.Generator`` on the pixels' device). The same
    generator state gives the same views.

    Args:
        spec: the resolved parameters (:class:`AugmentSpec`).
    """

    def __init__(self, spec: AugmentSpec):
        self.spec = spec
        self.eval = EvalTransform(spec)

    def params(self, x: torch.Tensor, generator: torch.Generator) -> CropParams:
        """Draw one batch's crop boxes and flips (``CropParams``, ``(b,)`` tensors)."""
        b, (h, w) = x.shape[0], x.shape[-2:]
        top, left, hh, ww = random_resized_boxes(b, h, w, self.spec.scale, self.spec.ratio, generator)
        if self.spec.flip:
            flip = torch.rand(b, generator=generator, device=generator.device) < 0.5
        else:
            flip = torch.zeros(b, dtype=torch.bool, device=generator.device)
        return CropParams(top, left, hh, ww, flip)

    def _resample(self, x: torch.Tensor, theta: torch.Tensor, fill: float | None = None,
                  box: CropParams | None = None) -> torch.Tensor:
        """Bilinear resampling through ``theta``; with ``box``, source coordinates are clamped
        to the box's pixel centres (as ``F.interpolate`` clamps at the crop's edges), else
        pixels outside the image read ``fill``."""
        s = self.spec.size
        # affine_grid(theta, align_corners=False) by broadcasting (a batched matmul with K = 3 is slower)
        q = (torch.arange(s, device=x.device, dtype=x.dtype) * 2 + 1) / s - 1  # output pixel centres
        qx, qy = q.view(1, 1, s), q.view(1, s, 1)
        t = theta.to(x.dtype).unsqueeze(-1).unsqueeze(-1)  # (b, 2, 3, 1, 1)
        gx = t[:, 0, 0] * qx + t[:, 0, 1] * qy + t[:, 0, 2]
        gy = t[:, 1, 0] * qx + t[:, 1, 1] * qy + t[:, 1, 2]
        if box is not None:
            h, w = x.shape[-2:]
            view = (-1, 1, 1)
            gx = torch.clamp(gx, ((2 * box.left + 1) / w - 1).view(view), ((2 * (box.left + box.width) - 1) / w - 1).view(view))
            gy = torch.clamp(gy, ((2 * box.top + 1) / h - 1).view(view), ((2 * (box.top + box.height) - 1) / h - 1).view(view))
            return F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                                 align_corners=False)
        grid = torch.stack([gx, gy], -1)
        return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill

    def crop(self, x: torch.Tensor, p: CropParams) -> torch.Tensor:
        """The boxes of ``p`` resampled to ``size x size`` (flipped where ``p.flip``), pixels in [0, 1]:
        torchvision's ``resized_crop`` (bilinear, without antialiasing) of each box."""
        h, w = x.shape[-2:]
        return self._resample(_to_unit(x, self.spec.max_value), _box_theta(p, h, w), box=p)

    def weak(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training view: random resized crop, flip, colour jitter, normalisation
        (the evaluation view when ``spec.train == "none"``)."""
        if self.spec.train == "none":
            return self.eval(x)
        out = self.crop(x, self.params(x, generator))
        if any(self.spec.color_jitter):
            out = _color_jitter(out, self.spec.color_jitter, generator)
        return _normalise(out, self.spec.mean, self.spec.std)

    def strong(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """FixMatch's strong view: a weak crop and flip, then per sample ``strong_ops`` ops
        drawn from :data:`STRONG_OPS` (with replacement, each applied with probability 1/2,
        magnitude uniform in its range), then Cutout of side ``cutout * size`` filled with
        grey 0.5, then normalisation.

        Ranges (Sohn et al. 2020, Table 12): brightness, colour, contrast, sharpness factors
        in [0.05, 0.95]; posterize to 4..8 bits; solarize threshold in [0, 1]; rotate ±30°;
        shear ±0.3; translate ±30 %. Geometric ops are folded into the crop's resampling
        (about the centre, grey fill) and so act before the colour ops, which run in the
        order of :data:`STRONG_OPS`.
        """
        gen, dev = generator, generator.device
        b, (h, w) = x.shape[0], x.shape[-2:]
        n_ops = len(STRONG_OPS)
        drawn = torch.randint(n_ops, (b, self.spec.strong_ops), generator=gen, device=dev)
        applied = torch.rand(b, self.spec.strong_ops, generator=gen, device=dev) < 0.5
        one_hot = F.one_hot(drawn, n_ops).bool() & applied.unsqueeze(2)
        selected = one_hot.any(1)  # (b, n_ops)
        magnitude = torch.rand(b, n_ops, generator=gen, device=dev)
        sign = torch.where(torch.rand(b, n_ops, generator=gen, device=dev) < 0.5, -1.0, 1.0)
        p = self.params(x, gen)
        theta = _compose(_box_theta(p, h, w), _geometry(selected, magnitude, sign))
        out = self._resample(_to_unit(x, self.spec.max_value), theta, fill=0.5)
        col = {name: i for i, name in enumerate(STRONG_OPS)}

        def on(name):
            return selected[:, col[name]].view(-1, 1, 1, 1)

        def factor(name):  # identity factor 1 where the op is not selected
            f = 0.05 + 0.9 * magnitude[:, col[name]]
            return torch.where(selected[:, col[name]], f, torch.ones_like(f))

        out = torch.where(on("autocontrast"), _autocontrast(out), out)
        out = torch.where(on("equalize"), _equalize(out), out)
        out = adjust_brightness(out, factor("brightness"))
        out = adjust_saturation(out, factor("color"))
        out = adjust_contrast(out, factor("contrast"))
        out = adjust_sharpness(out, factor("sharpness"))
        bits = 4 + torch.floor(magnitude[:, col["posterize"]] * 5).clamp(max=4)  # 4..8, uniform
        levels = (2 ** (8 - bits)).view(-1, 1, 1, 1)
        out = torch.where(on("posterize"), torch.floor((out * 255).round() / levels) * levels / 255, out)
        threshold = torch.where(selected[:, col["solarize"]], magnitude[:, col["solarize"]],
                                torch.full_like(magnitude[:, 0], 2.0)).view(-1, 1, 1, 1)
        out = torch.where(out >= threshold, 1.0 - out, out)
        out = self._cutout(out, gen)
        return _normalise(out, self.spec.mean, self.spec.std)

    def _cutout(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Grey (0.5) square of side ``cutout * size`` centred uniformly in each image (DeVries & Taylor 2017)."""
        if self.spec.cutout == 0:
            return x
        b, s = x.shape[0], self.spec.size
        half = self.spec.cutout * s / 2
        centre = torch.rand(b, 2, generator=generator, device=generator.device) * s
        pos = torch.arange(s, device=x.device, dtype=x.dtype) + 0.5
        in_y = (pos.view(1, -1) - centre[:, :1]).abs() < half
        in_x = (pos.view(1, -1) - centre[:, 1:]).abs() < half
        mask = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1)
        return torch.where(mask, torch.full_like(x, 0.5), x)


def resolve_spec(fmt: ImageFormat, stored: int, channels: int, section) -> AugmentSpec:
    """The :class:`AugmentSpec` of an image domain under the run's ``[augment]`` section.

    Args:
        fmt: the domain's :class:`ImageFormat`.
        stored: the stored side (``x.shape[-1]``).
        channels: the stored channel count.
        section: the config's :class:`tladapt.config.AugmentSection`.

    Raises:
        ValueError: naming the key, for an input size larger than the stored images or
            a mean/std whose length is neither 1 nor the channel count.
    """
    size = section.input_size or fmt.input_size(stored)
    if size > stored:
        raise ValueError(f"augment.input_size = {size} exceeds the stored image side {stored} "
                         f"(data.image_size for image folders)")
    mean = tuple(section.mean) if section.mean else fmt.mean
    std = tuple(section.std) if section.std else fmt.std
    for key, value in (("mean", mean), ("std", std)):
        if value is not None and len(value) not in (1, channels):
            raise ValueError(f"augment.{key} has {len(value)} values: expected 1 or {channels} (the channels)")
    if (mean is None) != (std is None):
        mean = mean or (0.0,)
        std = std or (1.0,)
    train = section.train if section.train != "auto" else ("standard" if fmt.augment else "none")
    return AugmentSpec(size=size, max_value=fmt.max_value, mean=mean, std=std, train=train,
                       scale=tuple(section.scale), ratio=tuple(section.ratio), flip=section.flip,
                       color_jitter=tuple(section.color_jitter), strong_ops=section.strong_ops, cutout=section.cutout)


def attach(domain, section):
    """``domain`` with the evaluation view and training augmentation of ``[augment]``;
    a domain without an ``image`` format (features) is returned unchanged.

    Raises:
        ValueError: as :func:`resolve_spec`.
    """
    from dataclasses import replace

    if domain.image is None:
        return domain
    spec = resolve_spec(domain.image, domain.storage.shape[-1], domain.storage.shape[1], section)
    return replace(domain, transform=EvalTransform(spec), augment=Augmentation(spec))
