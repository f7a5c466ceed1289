"""Index views: a run's splits hold each sample once, in the loaded domain's storage."""

import torch

from tladapt.data.datasets import load_domain
from tladapt.data.domain import Domain

from helpers import make_trainer


def test_subset_is_an_index_view_with_the_same_samples():
    x = torch.arange(40.0).view(10, 4)
    dom = Domain("d", x, torch.arange(10) % 3, ("a", "b", "c"), transform=lambda v: v * 2)
    view = dom.subset(torch.tensor([7, 2, 9, 0]))
    assert view.storage is x and len(view) == 4  # nothing copied
    assert torch.equal(view.x, x[[7, 2, 9, 0]]) and torch.equal(view.y, torch.tensor([1, 2, 0, 0]))
    # a view of a view composes the indices
    inner = view.subset(torch.tensor([3, 1]))
    assert inner.storage is x and torch.equal(inner.x, x[[0, 2]]) and torch.equal(inner.y, torch.tensor([0, 2]))
    assert torch.equal(inner.rows(torch.tensor([1, 1, 0])), x[[2, 2, 0]])
    assert torch.equal(inner.inputs(), x[[0, 2]] * 2) and torch.equal(inner.inputs(torch.tensor([1])), x[[2]] * 2)
    assert torch.equal(view.map(lambda v: v.sum(1), chunk=3), (x[[7, 2, 9, 0]] * 2).sum(1))
    assert view.input_shape == (4,)


def test_a_runs_splits_share_the_loaded_storage(fast_config):
    webcam, dslr = load_domain("office_caltech10_surf", "webcam"), load_domain("office_caltech10_surf", "dslr")
    t = make_trainer(fast_config("data.target_labels_per_class=2", "trainer.device='cpu'"))
    ptr = lambda d: d.storage.untyped_storage().data_ptr()  # noqa: E731
    assert ptr(t.source) == ptr(t.source_val)  # one storage for the training and validation splits
    assert ptr(t.target) == ptr(t.target_labelled)
    assert len(t.source) + len(t.source_val) == len(webcam) and len(t.target) + len(t.target_labelled) == len(dslr)
    assert t.source.storage.shape == webcam.storage.shape and t.target.storage.shape == dslr.storage.shape
    # the views hold exactly the loaded samples, each once across the splits
    rows = torch.cat([t.source.index, t.source_val.index]).sort().values
    assert torch.equal(rows, torch.arange(len(webcam)))
    assert torch.equal(t.source.x, webcam.x[t.source.index]) and torch.equal(t.target.x, dslr.x[t.target.index])
    batch = t.pipeline.next()
    assert torch.equal(batch.x_s, webcam.x[t.source.index[batch.idx_s]])
