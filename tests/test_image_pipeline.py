"""Image domains in the paired pipeline: training views, strong views, host placement, no host sync."""

import pytest
import torch

from helpers import host_reads, make_trainer
from imagedata import make_folder
from tladapt.data import Domain
from tladapt.data.augment import Augmentation, AugmentSpec
from tladapt.data.pipeline import HostSampler, IndexStream, PairedPipeline, resolve_placement

pytest.importorskip("PIL")


@pytest.fixture
def image_config(tmp_path, fast_config):
    root = make_folder(tmp_path / "data", per_class=6, extras=False)

    def make(*overrides):
        return fast_config(f"data.dataset='image_folder:{root}'", "data.tasks=['art->photo']", "data.image_size=32",
                           "augment.input_size=28", "trainer.batch_size=8", "data.source_val_fraction=0",
                           f"data.cache_dir='{tmp_path / 'cache'}'", *overrides)

    return make


def test_image_folder_run_trains_on_augmented_views_without_host_syncs(image_config, monkeypatch):
    t = make_trainer(image_config("plugins.dann.hidden=[16]", "trainer.log_every=10", "augment.color_jitter=[0.4, 0.4, 0.4, 0.1]"),
                     task=("art", "photo"))
    assert t.source.x.dtype == torch.uint8 and t.source.input_shape == (3, 28, 28)
    t.start()
    assert host_reads(t, monkeypatch, 9) == []
    batch = t.pipeline.next()
    assert batch.x_s.shape == (8, 3, 28, 28) and batch.rows_t.shape == (8, 3, 32, 32)
    # the training view is augmented: not the evaluation view of the same rows
    assert not torch.equal(batch.x_s, t.source.transform(batch.rows_s))
    strong = t.pipeline.view(batch, "target", "strong")
    assert strong.shape == batch.x_t.shape and not torch.equal(strong, batch.x_t)


def test_same_seed_same_augmented_batches(image_config):
    a, b = (make_trainer(image_config(), task=("art", "photo")) for _ in range(2))
    c = make_trainer(image_config(), task=("art", "photo"), seed=1)
    for t in (a, b, c):
        t.start()
    xa, xb, xc = (t.pipeline.next() for t in (a, b, c))
    assert torch.equal(xa.x_s, xb.x_s) and torch.equal(xa.x_t, xb.x_t)
    assert not torch.equal(xa.x_s, xc.x_s)


def test_strong_view_needs_an_image_domain(fast_config):
    t = make_trainer(fast_config())
    t.start()
    with pytest.raises(ValueError, match="has no augmentation: a strong view needs an image domain"):
        t.pipeline.view(t.pipeline.next(), "target", "strong")
    with pytest.raises(ValueError, match="unknown role 'both'"):
        t.pipeline.view(t.pipeline.next(), "both")


def test_host_placement_gives_the_device_placement_batches(image_config):
    dev = make_trainer(image_config("data.placement='device'"), task=("art", "photo"))
    host = make_trainer(image_config("data.placement='host'"), task=("art", "photo"))
    assert dev.source.host is None and host.source.host == torch.device("cpu")
    dev.start()
    host.start()
    for _ in range(5):  # the host sampler runs one batch ahead; the batches are the same
        a, b = dev.pipeline.next(), host.pipeline.next()
        assert torch.equal(a.idx_s, b.idx_s) and torch.equal(a.x_s, b.x_s) and torch.equal(a.x_t, b.x_t)
        assert torch.equal(a.y_s, b.y_s)
    assert dev.evaluate() == host.evaluate()


def test_host_sampler_fetches_one_batch_ahead():
    x = torch.arange(20 * 3, dtype=torch.uint8).view(20, 3)
    stream = IndexStream(20, 4, torch.Generator().manual_seed(0))
    ref = IndexStream(20, 4, torch.Generator().manual_seed(0))
    sampler = HostSampler(Domain("d", x, None, ("a",)), stream, torch.device("cpu"))
    first = ref.next()
    assert sampler._ahead[0].equal(first)  # fetched at construction, before the first step
    for expected in [first] + [ref.next() for _ in range(6)]:
        idx, rows = sampler.next()
        assert torch.equal(idx, expected) and torch.equal(rows, x[expected])
    # an index view (a split) is sampled through its index: positions in the view, rows of the storage
    keep = torch.arange(19, -1, -1)[::2]  # 10 rows, reversed
    view_sampler = HostSampler(Domain("d", x, None, ("a",)).subset(keep), IndexStream(10, 4, torch.Generator().manual_seed(1)),
                               torch.device("cpu"))
    ref = IndexStream(10, 4, torch.Generator().manual_seed(1))
    for _ in range(4):
        idx, rows = view_sampler.next()
        expected = ref.next()
        assert torch.equal(idx, expected) and torch.equal(rows, x[keep[expected]])


def test_auto_placement_is_the_device_on_cpu_and_explicit_choices_win():
    d = Domain("d", torch.zeros(4, 2), None, ("a",))
    assert resolve_placement("auto", (d,), torch.device("cpu")) is False
    assert resolve_placement("host", (d,), torch.device("cpu")) is True
    assert resolve_placement("device", (d,), torch.device("cpu")) is False


def test_labelled_target_rows_get_the_training_view(image_config):
    t = make_trainer(image_config("data.target_labels_per_class=1"), task=("art", "photo"))
    t.start()
    batch = t.pipeline.next()
    assert batch.x_l.shape == (3, 3, 28, 28) and batch.y_l.shape == (3,)


def test_domain_views_of_a_feature_domain_are_its_transform():
    x = torch.arange(12.0).view(6, 2)
    d = Domain("f", x, torch.zeros(6, dtype=torch.long), ("a",), transform=lambda v: v * 2)
    assert torch.equal(d.view(x[:3], torch.Generator()), x[:3] * 2)
    img = Domain("i", torch.zeros(6, 3, 8, 8, dtype=torch.uint8), torch.zeros(6, dtype=torch.long), ("a",),
                 augment=Augmentation(AugmentSpec(size=8)))
    p = PairedPipeline(img, img.unlabelled(), batch_size=2, seed=0)
    assert p.next().x_s.shape == (2, 3, 8, 8)


@pytest.mark.slow
def test_digits_run_with_augmentation(fast_config, monkeypatch):
    t = make_trainer(fast_config("data.dataset='digits'", "data.tasks=['usps->mnist']", "augment.train='standard'", "augment.flip=false",
                                 "augment.scale=[0.7, 1.0]", "augment.input_size=24", "trainer.log_every=10"),
                     task=("usps", "mnist"))
    assert t.source.input_shape == (1, 24, 24)
    t.start()
    assert host_reads(t, monkeypatch, 9) == []
    batch = t.pipeline.next()
    assert batch.x_s.shape == (16, 1, 24, 24) and 0 <= batch.x_s.min() and batch.x_s.max() <= 1
