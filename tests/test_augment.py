"""Device augmentation: torchvision's sampling and ops reproduced batched, determinism, statistics."""

import math

import pytest
import torch

from tladapt.config import AugmentSection
from tladapt.data.augment import (
    STRONG_OPS, Augmentation, AugmentSpec, CropParams, EvalTransform, _autocontrast, _equalize, adjust_brightness,
    adjust_contrast, adjust_hue, adjust_saturation, adjust_sharpness, hsv_to_rgb, random_resized_boxes,
    resolve_spec, rgb_to_hsv,
)
from tladapt.data.augment import ImageFormat

tv = pytest.importorskip("torchvision")
from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402


def images(b=6, c=3, h=40, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_crop_boxes_follow_torchvision_random_resized_crop_statistics():
    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 4000
    top, left, h, w = random_resized_boxes(n, 64, 48, scale, ratio, gen(1))
    assert ((top >= 0) & (left >= 0) & (top + h <= 64) & (left + w <= 48)).all()
    area = h * w / (64 * 48)
    # integer rounding of the sides moves the area a little around the drawn value
    assert area.min() >= scale[0] * 0.8 and area.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= ratio[0] * 0.85 and aspect.max() <= ratio[1] / 0.85
    torch.manual_seed(0)
    ref = torch.tensor([v2.RandomResizedCrop.get_params(torch.zeros(1, 64, 48), scale, ratio)
                        if hasattr(v2.RandomResizedCrop, "get_params") else
                        tv.transforms.RandomResizedCrop.get_params(torch.zeros(1, 64, 48), list(scale), list(ratio))
                        for _ in range(n)], dtype=torch.float32)
    ref_area = ref[:, 2] * ref[:, 3] / (64 * 48)
    assert abs(area.mean() - ref_area.mean()) < 0.02  # same sampler, same distribution
    assert abs(area.std() - ref_area.std()) < 0.02
    assert abs((ref[:, 0] / (64 - ref[:, 2] + 1)).mean() - (top / (64 - h + 1)).mean()) < 0.03


def test_crop_falls_back_to_torchvision_centre_crop_when_no_candidate_fits():
    # a scale no candidate can satisfy with such an extreme ratio range -> centre crop clamped to the ratio
    top, left, h, w = random_resized_boxes(5, 10, 100, (1.0, 1.0), (1.0, 1.0), gen())
    assert torch.equal(h, torch.full((5,), 10.0)) and torch.equal(w, torch.full((5,), 10.0))
    assert torch.equal(left, torch.full((5,), 45.0)) and torch.equal(top, torch.zeros(5))


def test_flips_about_half_and_scales_in_range_over_a_large_batch():
    aug = Augmentation(AugmentSpec(size=24, scale=(0.3, 0.6)))
    p = aug.params(torch.zeros(4000, 3, 32, 32, dtype=torch.uint8), gen(3))
    assert abs(p.flip.float().mean().item() - 0.5) < 0.03
    area = p.height * p.width / 32 ** 2
    assert area.min() >= 0.3 * 0.85 and area.max() <= 0.6 * 1.15
    assert area.mean().item() == pytest.approx(0.45, abs=0.02)


def test_crop_equals_torchvision_resized_crop_and_flip_its_mirror():
    x = images(4, h=30, w=40)
    aug = Augmentation(AugmentSpec(size=24, mean=None, std=None))
    p = CropParams(top=torch.tensor([0.0, 3, 5, 10]), left=torch.tensor([0.0, 7, 2, 20]),
                   height=torch.tensor([30.0, 12, 20, 9]), width=torch.tensor([40.0, 15, 20, 11]),
                   flip=torch.tensor([False, True, False, True]))
    out = aug.crop(x, p)
    for i in range(4):
        ref = TF.resized_crop(x[i].float() / 255, int(p.top[i]), int(p.left[i]), int(p.height[i]), int(p.width[i]),
                              [24, 24], antialias=False)
        if p.flip[i]:
            ref = TF.horizontal_flip(ref)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)  # float rounding of the grid


def test_same_generator_seed_same_views_other_seed_other_views():
    x = images(8)
    aug = Augmentation(AugmentSpec(size=32, color_jitter=(0.4, 0.4, 0.4, 0.1)))
    for view in (aug.weak, aug.strong):
        a, b, c = view(x, gen(5)), view(x, gen(5)), view(x, gen(6))
        assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_views_are_normalised_with_the_given_statistics():
    x = torch.full((3, 3, 16, 16), 255, dtype=torch.uint8)
    spec = AugmentSpec(size=8, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    out = Augmentation(spec).weak(x, gen())
    torch.testing.assert_close(out[:, 0], torch.ones(3, 8, 8))
    torch.testing.assert_close(out[:, 1], torch.full((3, 8, 8), 3.0))
    torch.testing.assert_close(out[:, 2], torch.ones(3, 8, 8))


def test_eval_view_is_centre_crop_to_tensor_normalize():
    x = images(2, h=36, w=36)
    spec = AugmentSpec(size=30)
    T = tv.transforms
    ref = T.Compose([T.CenterCrop(30), T.ConvertImageDtype(torch.float32), T.Normalize(spec.mean, spec.std)])
    ref_v2 = v2.Compose([v2.CenterCrop(30), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])
    out = EvalTransform(spec)(x)
    for i in range(2):
        assert torch.equal(out[i], ref(x[i]))  # bit for bit: x / 255, then (x - mean) / std
        torch.testing.assert_close(out[i], ref_v2(x[i]), atol=1e-6, rtol=0)  # v2 multiplies by 1/255


def test_train_none_uses_the_eval_view():
    x = images(3)
    spec = AugmentSpec(size=32, train="none")
    assert torch.equal(Augmentation(spec).weak(x, gen()), EvalTransform(spec)(x))


@pytest.mark.parametrize("ours, theirs", [
    (adjust_brightness, TF.adjust_brightness), (adjust_contrast, TF.adjust_contrast),
    (adjust_saturation, TF.adjust_saturation), (adjust_sharpness, TF.adjust_sharpness),
])
def test_colour_ops_equal_torchvision_per_sample(ours, theirs):
    x = images(3).float() / 255
    factors = torch.tensor([0.3, 1.0, 1.7])
    out = ours(x, factors)
    for i in range(3):
        torch.testing.assert_close(out[i], theirs(x[i], float(factors[i])), atol=1e-5, rtol=0)


def test_hue_shift_and_hsv_round_trip_equal_torchvision():
    x = images(3).float() / 255
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    shifts = torch.tensor([-0.3, 0.0, 0.45])
    out = adjust_hue(x, shifts)
    for i in range(3):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], float(shifts[i])), atol=1e-5, rtol=0)


def test_strong_ops_equal_torchvision_on_uint8_levels():
    x8 = images(3)
    x = x8.float() / 255
    for i in range(3):
        assert torch.equal((_equalize(x)[i] * 255).round().to(torch.uint8), TF.equalize(x8[i]))
        torch.testing.assert_close(_autocontrast(x)[i], TF.autocontrast(x[i]), atol=1e-6, rtol=0)
    flat = torch.full((1, 3, 8, 8), 0.4)  # a constant image is left alone by both
    assert torch.equal(_autocontrast(flat), flat) and torch.equal(_equalize(flat), (flat * 255).round() / 255)


def test_strong_view_has_static_shape_differs_from_weak_and_covers_the_op_pool():
    x = images(64, h=32, w=32)
    aug = Augmentation(AugmentSpec(size=28, strong_ops=2, cutout=0.5, mean=None, std=None))
    strong, weak = aug.strong(x, gen(1)), aug.weak(x, gen(1))
    assert strong.shape == weak.shape == (64, 3, 28, 28) and torch.isfinite(strong).all()
    assert strong.min() >= 0 and strong.max() <= 1
    assert not torch.equal(strong, weak)
    # Cutout: every strong view holds a grey square of side 14 (clipped at the border)
    grey = (strong == 0.5).all(1).flatten(1).sum(1)
    assert (grey >= 7 * 7).all()
    assert len(STRONG_OPS) == 14


def test_resolve_spec_defaults_and_errors():
    photo = resolve_spec(ImageFormat(), 256, 3, AugmentSection())
    assert photo.size == 224 and photo.train == "standard" and photo.mean == (0.485, 0.456, 0.406)
    digits = resolve_spec(ImageFormat(1.0, None, None, False, 1.0), 28, 1, AugmentSection())
    assert digits.size == 28 and digits.train == "none" and digits.mean is None
    with pytest.raises(ValueError, match="augment.input_size = 300 exceeds the stored image side 256"):
        resolve_spec(ImageFormat(), 256, 3, AugmentSection(input_size=300))
    with pytest.raises(ValueError, match="augment.mean has 2 values: expected 1 or 3"):
        resolve_spec(ImageFormat(), 256, 3, AugmentSection(mean=[0.5, 0.5], std=[0.5, 0.5]))
    assert math.isclose(resolve_spec(ImageFormat(), 256, 3, AugmentSection(input_size=64)).size, 64)
