"""Image folders and lists: class order, decode-once cache, torchvision exactness, errors."""

import os
import time

import numpy as np
import pytest
import torch

from imagedata import CLASSES, make_folder, smooth_image
from tladapt.config import AugmentSection, ConfigError, load_config
from tladapt.data import images as images_mod
from tladapt.data.augment import attach
from tladapt.data.datasets import load_domain
from tladapt.data.images import ImageDataset, ImageOptions, cached_pixels, load_image_domain, prepare_images

tv = pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402
from torchvision.datasets.folder import pil_loader  # noqa: E402


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data")


def opts(tmp_path, size=32, resize="center_crop"):
    return ImageOptions(size, resize, str(tmp_path / "cache"))


def test_index_has_imagefolder_order_and_skips_non_images_with_a_count(folder):
    ds = ImageDataset.parse(f"image_folder:{folder}")
    assert ds.domains() == ("art", "photo")
    with pytest.warns(UserWarning, match=r"skipped 1 non-image file\(s\) .*notes.txt"):
        index = ds.index("art")
    ref = ImageFolder(str(folder / "art"))
    assert index.classes == CLASSES == tuple(ref.classes)
    assert [str(f) for f in index.files] == [p for p, _ in ref.samples]
    assert index.labels.tolist() == [c for _, c in ref.samples] and index.skipped == 1


@pytest.mark.parametrize("resize, reference", [("center_crop", lambda s: T.Compose([T.Resize(s), T.CenterCrop(s)])),
                                               ("stretch", lambda s: T.Resize((s, s)))])
def test_cached_pixels_are_torchvision_loader_and_resize_exactly(folder, tmp_path, resize, reference):
    index = ImageDataset.parse(f"image_folder:{folder}").index("photo")
    x = cached_pixels(index, opts(tmp_path, 32, resize), progress=False)
    assert x.shape == (len(index.files), 3, 32, 32) and x.dtype == torch.uint8
    for row, file in zip(x, index.files):
        ref = np.asarray(reference(32)(pil_loader(str(file))))
        assert np.array_equal(row.numpy().transpose(1, 2, 0), ref), file


def test_greyscale_is_replicated_and_alpha_dropped(folder, tmp_path):
    with pytest.warns(UserWarning):
        index = ImageDataset.parse(f"image_folder:{folder}").index("art")
    x = cached_pixels(index, opts(tmp_path), progress=False)
    grey = [i for i, f in enumerate(index.files) if Image.open(f).mode == "L"]
    rgba = [i for i, f in enumerate(index.files) if Image.open(f).mode == "RGBA"]
    assert len(grey) == 1 and len(rgba) == 1
    g = x[grey[0]]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    ref = np.asarray(T.Compose([T.Resize(32), T.CenterCrop(32)])(Image.open(index.files[rgba[0]]).convert("RGB")))
    assert np.array_equal(x[rgba[0]].numpy().transpose(1, 2, 0), ref)


def test_eval_view_equals_torchvision_reference_transforms(folder, tmp_path):
    domain = load_image_domain(ImageDataset.parse(f"image_folder:{folder}"), "photo", opts(tmp_path, 32))
    domain = attach(domain, AugmentSection(input_size=28))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = T.Compose([T.Resize(32), T.CenterCrop(28), T.ToTensor(), T.Normalize(mean, std)])
    x = domain.inputs()
    assert x.shape == (len(domain), 3, 28, 28) and domain.input_shape == (3, 28, 28)
    index = ImageDataset.parse(f"image_folder:{folder}").index("photo")
    for row, file in zip(x, index.files):
        assert torch.equal(row, ref(pil_loader(str(file)))), file


def test_cache_is_built_once_loaded_after_and_rebuilt_when_a_file_changes(folder, tmp_path, monkeypatch):
    calls = []
    decode = images_mod.decode_image
    monkeypatch.setattr(images_mod, "decode_image", lambda *a: calls.append(a[0]) or decode(*a))
    ds = ImageDataset.parse(f"image_folder:{folder}")
    o = opts(tmp_path)
    first = cached_pixels(ds.index("photo"), o, progress=False)
    assert len(calls) == len(first) == 12
    again = cached_pixels(ds.index("photo"), o, progress=False)
    assert len(calls) == 12 and torch.equal(first, again)  # loaded, not decoded
    cache = list((tmp_path / "cache").rglob("photo-*.npy"))
    assert len(cache) == 1 and not list((tmp_path / "cache").rglob("*.tmp"))
    changed = folder / "photo" / "dog" / "00.jpg"
    smooth_image(np.random.default_rng(9), 50, 30).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    rebuilt = cached_pixels(ds.index("photo"), o, progress=False)
    assert len(calls) == 24
    assert not torch.equal(rebuilt, first) and torch.equal(rebuilt[:4], first[:4])  # cat rows unchanged
    assert [p.name for p in (tmp_path / "cache").rglob("photo-*.npy")] != [cache[0].name]
    assert len(list((tmp_path / "cache").rglob("photo-*.npy"))) == 1  # the stale cache is removed
    other_size = cached_pixels(ds.index("photo"), opts(tmp_path, 24), progress=False)
    assert other_size.shape[-1] == 24 and len(calls) == 36


def test_default_cache_lives_beside_the_data(folder):
    load_domain(f"image_folder:{folder}", "photo", images=ImageOptions(16))
    assert len(list((folder / ".tladapt-cache").glob("photo-center_crop16-*.npy"))) == 1
    assert ImageDataset.parse(f"image_folder:{folder}").domains() == ("art", "photo")  # hidden: not a domain


def test_office31_images_level_and_image_list_form_give_the_same_domain(tmp_path):
    root = tmp_path / "office"
    make_folder(root / "tmp", domains=("amazon",), extras=False)
    (root / "amazon").mkdir()
    (root / "tmp" / "amazon").rename(root / "amazon" / "images")
    folder_dom = load_domain(f"image_folder:{root}", "amazon", images=ImageOptions(16))
    lines = [f"amazon/images/{c}/{f.name} {k}" for k, c in enumerate(CLASSES)
             for f in sorted((root / "amazon" / "images" / c).iterdir())]
    (root / "image_list").mkdir()
    (root / "image_list" / "amazon.txt").write_text("\n".join(lines) + "\n")
    list_dom = load_domain(f"image_list:{root}", "amazon", images=ImageOptions(16))
    assert folder_dom.classes == list_dom.classes == CLASSES  # names from the images' parent folders
    assert torch.equal(folder_dom.x, list_dom.x) and torch.equal(folder_dom.y, list_dom.y)
    (root / "image_list" / "classes.txt").write_text("a\nb\nc\n")
    assert ImageDataset.parse(f"image_list:{root}").index("amazon").classes == ("a", "b", "c")


def test_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(ValueError, match=r"folder .*nowhere does not exist"):
        ImageDataset.parse(f"image_folder:{tmp_path / 'nowhere'}")
    root = make_folder(tmp_path / "d", extras=False)
    ds = ImageDataset.parse(f"image_folder:{root}")
    with pytest.raises(ValueError, match=r"unknown domain 'sketch' .*expected one of art, photo"):
        ds.index("sketch")
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"image folder .*empty has no class sub-folders"):
        ds.index("empty")
    for f in (root / "photo" / "owl").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"class folder .*photo/owl holds no image"):
        ds.index("photo")


def test_corrupt_images_are_listed_and_nothing_is_cached(tmp_path):
    root = make_folder(tmp_path / "d", extras=False)
    (root / "art" / "dog" / "zz.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    index = ImageDataset.parse(f"image_folder:{root}").index("art")
    with pytest.raises(ValueError, match=r"1 unreadable image\(s\); fix or remove them: .*art/dog/zz.jpg"):
        cached_pixels(index, opts(tmp_path), progress=False)
    assert not list((tmp_path / "cache").rglob("*.npy")) and not list((tmp_path / "cache").rglob("*.tmp"))


def test_list_errors_name_the_file_and_line(tmp_path):
    root = make_folder(tmp_path / "d", extras=False)
    lists = root / "image_list"
    lists.mkdir()
    (lists / "a.txt").write_text("art/cat/00.jpg 0\nart/cat/01.png\n")
    ds = ImageDataset.parse(f"image_list:{root}")
    with pytest.raises(ValueError, match=r"a.txt:2: expected 'relative/path label'"):
        ds.index("a")
    (lists / "a.txt").write_text("art/cat/00.jpg 0\nart/cat/missing.png 1\n")
    with pytest.raises(ValueError, match=r"listed image .*missing.png does not exist"):
        ds.index("a")
    (lists / "a.txt").write_text("art/cat/00.jpg 0\nimage_list/a.txt 1\n")
    with pytest.raises(ValueError, match=r"'image_list/a.txt' is not an image file"):
        ds.index("a")
    (lists / "a.txt").write_text("")
    with pytest.raises(ValueError, match=r"image list .*a.txt is empty"):
        ds.index("a")
    with pytest.raises(ValueError, match=r"expected the image lists in .*image_list"):
        ImageDataset.parse(f"image_list:{root / 'art'}")


def test_prepare_names_class_mismatches_and_bad_images_before_any_run(tmp_path):
    from tladapt.experiment import run_experiment

    root = make_folder(tmp_path / "d", extras=False)
    runs = tmp_path / "runs"
    base = [f"data.dataset='image_folder:{root}'", "data.tasks=['art->photo']", f"experiment.runs_dir='{runs}'",
            "data.image_size=16", f"data.cache_dir='{tmp_path / 'cache'}'"]
    (root / "photo" / "cat").rename(root / "photo" / "lion")
    with pytest.raises(ConfigError, match=r"classes differ \(missing in 'photo': cat; missing in 'art': lion\)"):
        run_experiment(load_config(None, base))
    (root / "photo" / "lion").rename(root / "photo" / "cat")
    (root / "photo" / "cat" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"unreadable image.*photo/cat/bad.png"):
        run_experiment(load_config(None, base))
    with pytest.raises(ConfigError, match=r"augment.input_size = 20 exceeds the stored image side 16"):
        prepare_images(load_config(None, base).data, AugmentSection(input_size=20))
    assert not runs.exists()
