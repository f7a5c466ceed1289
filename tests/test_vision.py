"""torchvision backbones: penultimate features, local weights only, bottleneck, lr multipliers,
bf16 autocast and channels-last on the CPU, and a core that runs without torchvision."""

import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import make_trainer
from imagedata import make_folder
from tladapt.config import ConfigError
from tladapt.discrepancy import coral, mmd
from tladapt.models import Bottleneck, WithBottleneck, build_backbone

tv = pytest.importorskip("torchvision")


def seeded(name, seed=0, **kw):
    torch.manual_seed(seed)
    return tv.models.get_model(name, weights=None, **kw)


def test_resnet18_backbone_is_torchvision_resnet18_without_its_classifier():
    torch.manual_seed(0)
    ours = build_backbone("torchvision:resnet18", (3, 32, 32), [], 0.0)
    ref = seeded("resnet18")
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    ours.eval(), ref.eval()
    assert ours.out_features == 512 and torch.equal(ours(x), ref(x))


@pytest.mark.parametrize("name, dim", [("mobilenet_v3_small", 1024), ("squeezenet1_1", 512),
                                       ("shufflenet_v2_x0_5", 1024), ("regnet_x_400mf", 400), ("googlenet", 1024)])
def test_penultimate_features_of_other_families(name, dim):
    net = build_backbone(f"torchvision:{name}", (3, 64, 64), [], 0.0).eval()
    assert net.out_features == dim and net(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_weights_load_from_a_local_file_in_the_usual_wrappings(tmp_path):
    ref = seeded("resnet18", seed=7)
    plain, wrapped = tmp_path / "r18.pth", tmp_path / "ckpt.pt"
    torch.save(ref.state_dict(), plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, wrapped)
    for file in (plain, wrapped):
        net = build_backbone("torchvision:resnet18", (3, 32, 32), [], 0.0, weights=str(file))
        assert torch.equal(net.conv1.weight, ref.conv1.weight) and torch.equal(net.layer4[1].bn2.running_var,
                                                                             ref.layer4[1].bn2.running_var)


def test_missing_or_unfitting_weights_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"no such file\. Put the state dict of a resnet18 there .*never downloads"):
        build_backbone("torchvision:resnet18", (3, 32, 32), [], 0.0, weights=str(tmp_path / "nope.pth"))
    torch.save(seeded("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ConfigError, match=r"does not fit torchvision:resnet18: missing keys \[\].*unexpected keys \['layer1.2"):
        build_backbone("torchvision:resnet18", (3, 32, 32), [], 0.0, weights=str(tmp_path / "r34.pth"))
    with pytest.raises(ConfigError, match="not a torchvision classification model"):
        build_backbone("torchvision:fasterrcnn_resnet50_fpn", (3, 32, 32), [], 0.0)
    with pytest.raises(ConfigError, match="model.weights needs a torchvision backbone"):
        build_backbone("lenet", (1, 28, 28), [], 0.0, weights="x.pth")


def test_torchvision_weight_names_come_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    with pytest.raises(ConfigError, match=rf"Put resnet18-f37072fd.pth into {cache} .*never downloads"):
        build_backbone("torchvision:resnet18", (3, 32, 32), [], 0.0, weights="IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="neither a file nor a weights name of resnet18"):
        build_backbone("torchvision:resnet18", (3, 32, 32), [], 0.0, weights="IMAGENET22K")
    cache.mkdir(parents=True)
    ref = seeded("resnet18", seed=3)
    torch.save(ref.state_dict(), cache / "resnet18-f37072fd.pth")
    net = build_backbone("torchvision:resnet18", (3, 32, 32), [], 0.0, weights="DEFAULT")
    assert torch.equal(net.conv1.weight, ref.conv1.weight)


def test_bottleneck_is_linear_batchnorm_relu():
    net = build_backbone("torchvision:resnet18", (3, 32, 32), [], 0.0, bottleneck=256)
    assert isinstance(net, WithBottleneck) and net.out_features == 256
    assert [type(m) for m in net.bottleneck] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU]
    assert net.bottleneck[0].in_features == 512 and isinstance(net.bottleneck, Bottleneck)
    assert (net.train()(torch.randn(4, 3, 32, 32)) >= 0).all()


@pytest.fixture
def image_config(tmp_path, fast_config):
    root = make_folder(tmp_path / "data", per_class=4, extras=False)

    def make(*overrides):
        return fast_config(f"data.dataset='image_folder:{root}'", "data.tasks=['art->photo']", "data.image_size=36",
                           "augment.input_size=32", "trainer.batch_size=4", "data.source_val_fraction=0",
                           f"data.cache_dir='{tmp_path / 'cache'}'", "model.backbone='torchvision:resnet18'",
                           "plugins.dann.hidden=[16]", *overrides)

    return make


def test_pretrained_backbone_trains_at_a_tenth_of_the_lr_bottleneck_and_heads_at_one(image_config, tmp_path):
    torch.save(seeded("resnet18").state_dict(), tmp_path / "r18.pth")
    t = make_trainer(image_config(f"model.weights='{tmp_path / 'r18.pth'}'", "model.bottleneck=64",
                                  "trainer.lr=0.01"), task=("art", "photo"))
    lrs = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
    assert lrs == pytest.approx({"backbone.net": 0.001, "backbone": 0.01, "head": 0.01, "domain_discriminator": 0.01})
    t2 = make_trainer(image_config(f"model.weights='{tmp_path / 'r18.pth'}'", "trainer.lr_mult={backbone = 0.5}"),
                      task=("art", "photo"))
    assert {g["name"]: g["lr"] for g in t2.optimizer.param_groups}["backbone"] == pytest.approx(0.005)


def test_missing_weights_stop_the_experiment_before_any_run(image_config, tmp_path):
    from tladapt.experiment import run_experiment

    config = image_config(f"model.weights='{tmp_path / 'absent.pth'}'")
    with pytest.raises(ConfigError, match="absent.pth'?: no such file"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()


def test_bf16_step_on_cpu_autocasts_the_network_and_keeps_losses_in_float32(image_config):
    t = make_trainer(image_config("trainer.precision='bf16'", "plugins.mmd.weight=1.0", "plugins.coral.weight=1.0"),
                     task=("art", "photo"))
    t.start()
    batch = t.pipeline.next()
    seen = {}
    hook = t.backbone.layer1.register_forward_hook(lambda m, i, o: seen.__setitem__("dtype", o.dtype))
    with t.autocast():
        out = t.forward(batch)
        terms = t.losses(batch, out)
    hook.remove()
    assert seen["dtype"] == torch.bfloat16  # the convolutions ran in bfloat16
    assert out.features_s.dtype == torch.float32 and out.logits_t.dtype == torch.float32
    # the same features in float32 outside autocast give the same CORAL and MMD values
    assert terms["coral"].value.dtype == torch.float32
    assert torch.equal(terms["coral"].value, coral(out.features_s, out.features_t))
    assert torch.equal(terms["mmd"].value.detach(), mmd(out.features_s, out.features_t).detach())
    total = t.train_step(batch)
    assert torch.isfinite(total) and total.dtype == torch.float32
    assert t.backbone.conv1.weight.dtype == t.backbone.conv1.weight.grad.dtype == torch.float32  # fp32 master weights


def test_channels_last_and_separate_batchnorm_run(image_config):
    t = make_trainer(image_config("trainer.channels_last=true", "model.batchnorm='separate'"), task=("art", "photo"))
    assert t.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    t.start()
    batch = t.pipeline.next()
    t.modules.eval()  # running statistics: separate and joint forwards agree only in eval mode
    sep = t.forward(batch)
    t.config.model.batchnorm = "joint"
    joint = t.forward(batch)
    torch.testing.assert_close(sep.features_s, joint.features_s, atol=1e-5, rtol=1e-5)
    t.modules.train()
    t.config.model.batchnorm = "separate"
    sep_train = t.forward(batch).features_s
    t.config.model.batchnorm = "joint"
    assert not torch.allclose(sep_train, t.forward(batch).features_s)  # training BN: per-domain vs mixed stats


@pytest.mark.slow
def test_resnet18_dann_runs_end_to_end_with_tensorboard_curves(image_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tladapt.experiment import run_experiment

    results = run_experiment(image_config("trainer.steps=4", "trainer.eval_every=2", "trainer.log_every=2",
                                          "model.bottleneck=32", "plugins.dann.weight=1.0"))
    run_dir = results[0]["run_dir"]
    acc = EventAccumulator(run_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/source", "loss/domain", "oracle/target_acc", "train/lambda"} <= tags
    assert [e.step for e in acc.Scalars("oracle/target_acc")] == [2, 4]
    assert 0 <= results[0]["final"]["oracle/target_acc"] <= 100


@pytest.mark.slow
def test_the_core_imports_and_runs_without_torchvision(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torchvision" or name.startswith("torchvision."):
                    raise ImportError("torchvision blocked for this test")
        sys.meta_path.insert(0, Block())
        import tladapt, tladapt.trainer, tladapt.experiment, tladapt.data.images, tladapt.models
        from tladapt.config import load_config
        from tladapt.experiment import run_experiment
        from tladapt.errors import ConfigError
        cfg = load_config(None, ["data.tasks=['webcam->dslr']", "trainer.steps=3", "trainer.eval_every=3",
                                 "trainer.progress=false", "experiment.runs_dir='{tmp_path / 'runs'}'"])
        print(run_experiment(cfg)[0]["final"]["oracle/target_acc"] >= 0)
        try:
            run_experiment(load_config(None, ["model.backbone='torchvision:resnet18'", "data.dataset='digits'",
                                              "data.tasks=['usps->mnist']"]))
        except ConfigError as err:
            print("ERR", err)
        assert "torchvision" not in sys.modules
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "True"
    assert lines[1].startswith("ERR model.backbone 'torchvision:...' needs torchvision: pip install 'tladapt[vision]'")


EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "examples" / "office31_dann_resnet50.toml"


@pytest.fixture
def office31(tmp_path, monkeypatch):
    """An Office-31 style folder (root/<domain>/images/<class>/) and a TORCH_HOME holding a
    (stand-in) ResNet-50 file where torchvision's cache keeps IMAGENET1K_V1."""
    root = tmp_path / "office31"
    # 12 images per class: enough for the example's batch of 32 beside a stratified 10% source split
    make_folder(tmp_path / "flat", domains=("amazon", "dslr", "webcam"), per_class=12, extras=False)
    for d in ("amazon", "dslr", "webcam"):
        (root / d).mkdir(parents=True)
        (tmp_path / "flat" / d).rename(root / d / "images")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth").write_bytes(b"")
    return root


def test_the_office31_example_config_validates(office31, tmp_path):
    from tladapt.config import load_config
    from tladapt.experiment import prepare

    config, _ = prepare(load_config(EXAMPLE, [f"data.dataset='image_folder:{office31}'",
                                              f"data.cache_dir='{tmp_path / 'cache'}'"]))
    assert config.model.backbone == "torchvision:resnet50" and config.model.bottleneck == 256
    assert len(list((tmp_path / "cache").rglob("*-stretch256-*.npy"))) == 3  # every domain decoded up front
    with pytest.raises(ConfigError, match="resnet50-0676ba61.pth into"):
        (tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth").unlink()
        prepare(load_config(EXAMPLE, [f"data.dataset='image_folder:{office31}'", f"data.cache_dir='{tmp_path / 'cache'}'"]))


@pytest.mark.slow
def test_the_office31_example_runs_at_toy_size(office31, tmp_path):
    from tladapt.config import load_config
    from tladapt.experiment import run_experiment

    torch.save(seeded("resnet18").state_dict(), tmp_path / "r18.pth")
    config = load_config(EXAMPLE, [
        f"data.dataset='image_folder:{office31}'", f"data.cache_dir='{tmp_path / 'cache'}'",
        f"experiment.runs_dir='{tmp_path / 'runs'}'", "data.tasks=['amazon->webcam']", "data.image_size=36",
        "augment.input_size=32", "data.source_val_fraction=0", "model.backbone='torchvision:resnet18'",
        f"model.weights='{tmp_path / 'r18.pth'}'", "trainer.batch_size=4", "trainer.steps=2", "trainer.eval_every=2",
        "trainer.progress=false"])
    (result,) = run_experiment(config)
    assert result["steps"] == 2 and 0 <= result["final"]["oracle/target_acc"] <= 100
