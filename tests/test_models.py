"""Backbones: shapes for every bundled input size, user factories, errors."""

import textwrap

import pytest
import torch

from tladapt.models import MLP, LeNet, build_backbone


@pytest.mark.parametrize("shape", [(1, 16, 16), (1, 28, 28), (1, 32, 32)])
def test_lenet_maps_bundled_image_sizes_to_500_features(shape):
    net = build_backbone("auto", shape, [256], 0.5)
    assert isinstance(net, LeNet) and net(torch.zeros(3, *shape)).shape == (3, 500)


def test_mlp_for_vectors():
    net = build_backbone("auto", (800,), [64, 32], 0.0)
    assert isinstance(net, MLP) and net.out_features == 32
    assert net(torch.zeros(5, 800)).shape == (5, 32)
    # Linear -> ReLU -> Dropout per hidden size
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Dropout"] * 2


def test_user_backbone_factory(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        import math, torch
        def tiny(input_shape, hidden, dropout):
            net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), 7))
            net.out_features = 7
            return net
        def broken(input_shape, hidden, dropout):
            return torch.nn.ReLU()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build_backbone("my_nets:tiny", (1, 4, 4), [], 0.0)(torch.zeros(2, 1, 4, 4)).shape == (2, 7)
    with pytest.raises(ValueError, match="must return an nn.Module with an int attribute out_features"):
        build_backbone("my_nets:broken", (3,), [], 0.0)
    with pytest.raises(ValueError, match="could not be imported"):
        build_backbone("my_nets:missing", (3,), [], 0.0)


def test_bad_backbone_names_and_sizes():
    with pytest.raises(ValueError, match="unknown model.backbone 'resnet': expected 'auto', 'mlp', 'lenet'"):
        build_backbone("resnet", (3,), [8], 0.0)
    with pytest.raises(ValueError, match="model.hidden must be a non-empty list"):
        build_backbone("mlp", (3,), [], 0.0)
    with pytest.raises(ValueError, match="lenet expects inputs of shape"):
        build_backbone("lenet", (800,), [8], 0.0)
