"""The device-resident paired pipeline: epochs, cycling, static shapes, errors."""

import pytest
import torch

from tladapt.data import Domain
from tladapt.data.pipeline import IndexStream, PairedPipeline


def stream(n, b, seed=0, replacement=False):
    return IndexStream(n, b, torch.Generator().manual_seed(seed), replacement)


def test_each_epoch_is_a_permutation_without_repeats():
    s = stream(10, 3)
    epochs = [torch.cat([s.next() for _ in range(3)]) for _ in range(4)]  # 3 batches of 3 per epoch
    for e in epochs:
        assert e.unique().numel() == 9  # no index twice in an epoch; one left out
        assert e.min() >= 0 and e.max() < 10
    assert len({tuple(e.tolist()) for e in epochs}) == 4  # a fresh permutation each epoch


def test_a_tiny_domain_cycles_forever_with_static_shapes():
    s = stream(5, 5)
    batches = [s.next() for _ in range(50)]
    assert all(b.shape == (5,) and sorted(b.tolist()) == [0, 1, 2, 3, 4] for b in batches)


def test_replacement_allows_batches_larger_than_the_domain():
    b = stream(3, 8, replacement=True).next()
    assert b.shape == (8,) and b.max() < 3


def test_batch_larger_than_domain_without_replacement_is_an_error():
    with pytest.raises(ValueError, match=r"batch_size=8 exceeds the domain's 3 samples"):
        stream(3, 8)
    with pytest.raises(ValueError, match="empty domain"):
        stream(0, 1)


def test_same_seed_same_stream_different_seed_different_stream():
    a, b, c = stream(100, 10, 1), stream(100, 10, 1), stream(100, 10, 2)
    xs = [a.next() for _ in range(5)]
    assert all(torch.equal(x, b.next()) for x in xs)
    assert not all(torch.equal(x, c.next()) for x in xs)


def test_batches_gather_the_indexed_rows_and_hide_target_labels():
    x = torch.arange(40, dtype=torch.uint8).view(20, 2)
    src = Domain("s", x, torch.arange(20) % 4, ("a", "b", "c", "d"), transform=lambda v: v.float() / 2)
    tgt = Domain("t", x + 100, torch.zeros(20, dtype=torch.long), ("a", "b", "c", "d"))
    p = PairedPipeline(src, tgt.unlabelled(), batch_size=6, seed=0)
    batch = p.next()
    assert torch.equal(batch.x_s, x[batch.idx_s].float() / 2)
    assert torch.equal(batch.y_s, batch.idx_s % 4)
    assert torch.equal(batch.x_t, (x + 100)[batch.idx_t].float())
    assert not hasattr(batch, "y_t")
    assert batch.x_s.dtype == torch.float32 and batch.x_s.shape == (6, 2)


def test_pipeline_errors_name_the_domain():
    d = Domain("tiny", torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), ("a",))
    big = Domain("big", torch.zeros(30, 2), torch.zeros(30, dtype=torch.long), ("a",))
    with pytest.raises(ValueError, match="target domain 'tiny'"):
        PairedPipeline(big, d, batch_size=5, seed=0)


def test_epochs_are_the_generators_permutations_cut_into_batches():
    # the reference: torch.randperm(n) per epoch from the same generator, cut into n // b batches
    s, gen = stream(11, 3, 5), torch.Generator().manual_seed(5)
    for _ in range(4):
        perm = torch.randperm(11, generator=gen)
        for k in range(3):
            assert torch.equal(s.next(), perm[3 * k:3 * k + 3])


def test_prepare_is_host_bookkeeping_and_draw_device_work():
    # as a captured step uses them: the host calls prepare() before each replay of draw()
    a, b = stream(10, 4, 3), stream(10, 4, 3)
    for _ in range(7):
        a.prepare()
        assert torch.equal(a.draw(), b.next())
    # the epoch's buffer and the device position are the same tensors for the whole run
    perm, pos = a._perm.data_ptr(), a._pos.data_ptr()
    for _ in range(5):
        a.next()
    assert a._perm.data_ptr() == perm and a._pos.data_ptr() == pos
