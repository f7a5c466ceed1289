"""The pytorch_adapt bridge: every offered layer's term equals calling the layer directly on the same
outputs; where tladapt has its own version, the two agree or differ as documented; without
pytorch-adapt a config naming the bridge fails before any run, saying how to install it."""

import sys
import tomllib
from pathlib import Path

import pytest
import torch

from tladapt.config import ConfigError
from tladapt.errors import PluginError
from tladapt.experiment import prepare, run_experiment
from tladapt.losses import entropy
from tladapt.prediction_losses import marginal_entropy
from tladapt_plugins.pytorch_adapt import INSTALL

from helpers import make_trainer, step_terms

ROOT = Path(__file__).resolve().parents[1]
pa_layers = pytest.importorskip("pytorch_adapt.layers", reason="the pytorch-adapt extra is not installed")


@pytest.fixture
def bridge(fast_config, tmp_path):
    """A config whose bridge terms are the given TOML tables (plus extra overrides)."""

    def make(terms: str, *overrides):
        path = tmp_path / "bridge.toml"
        path.write_text(terms)
        return fast_config(*overrides, path=path)

    return make


def _outputs(out):
    return {"features_s": out.features_s, "features_t": out.features_t, "logits_s": out.logits_s,
            "logits_t": out.logits_t, "softmax_s": out.logits_s.softmax(1), "softmax_t": out.logits_t.softmax(1)}


# layer (config name), its class, kwargs as TOML and as Python, inputs
OFFERED = [
    ("MCCLoss", "MCCLoss", "{ T = 2.5 }", {"T": 2.5}, ["logits_t"]),
    ("BNMLoss", "BNMLoss", "{}", {}, ["logits_t"]),
    ("AFNLoss", "AdaptiveFeatureNorm", "{ step_size = 1.0 }", {"step_size": 1.0}, ["features_t"]),
    ("BSPLoss", "BatchSpectralLoss", "{ k = 1 }", {"k": 1}, ["features_s"]),
    ("EntropyLoss", "EntropyLoss", "{}", {}, ["logits_t"]),
    ("DiversityLoss", "DiversityLoss", "{}", {}, ["logits_t"]),
    ("SlicedWasserstein", "SlicedWasserstein", "{ m = 128 }", {"m": 128}, ["softmax_s", "softmax_t"]),
    ("MMDLoss", "MMDLoss", "{ kernel_scales = { tensor = [0.5, 1.0, 2.0] }, mmd_type = 'quadratic' }",
     {"kernel_scales": torch.tensor([0.5, 1.0, 2.0]), "mmd_type": "quadratic"}, ["features_s", "features_t"]),
    ("MMDLoss", "MMDLoss", "{ mmd_type = 'linear' }", {"mmd_type": "linear"},
     [["features_s", "softmax_s"], ["features_t", "softmax_t"]]),
    ("CORALLoss", "CORALLoss", "{}", {}, ["features_s", "features_t"]),
]


@pytest.mark.parametrize("layer, cls, kwargs_toml, kwargs, inputs", OFFERED,
                         ids=[f"{o[0]}-{i}" for i, o in enumerate(OFFERED)])
def test_each_bridged_term_equals_calling_the_layer_directly(bridge, layer, cls, kwargs_toml, kwargs, inputs):
    terms = (f"[plugins.pytorch_adapt.terms.t]\nlayer = '{layer}'\nkwargs = {kwargs_toml}\n"
             f"inputs = {inputs!r}\nweight = 0.3\n").replace('"', "'")
    t = make_trainer(bridge(terms))
    t.start()
    batch = t.pipeline.next()
    t.modules.eval()
    out = t.forward(batch)
    state = torch.get_rng_state()  # SlicedWasserstein draws its projections from the global generator
    terms = t.losses(batch, out)
    torch.set_rng_state(state)
    have = _outputs(out)
    args = [[have[k] for k in a] if isinstance(a, list) else have[a] for a in inputs]
    expected = getattr(pa_layers, cls)(**kwargs)(*args)
    assert terms["t"].weight == 0.3 and terms["t"].value.shape == ()
    assert terms["t"].value.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)


def test_several_terms_in_one_table_and_the_source_free_flag(bridge):
    t = make_trainer(bridge("[plugins.pytorch_adapt.terms.mcc]\nlayer = 'MCCLoss'\ninputs = ['logits_t']\n"
                            "[plugins.pytorch_adapt.terms.ent]\nlayer = 'EntropyLoss'\ninputs = ['logits_t']\n"
                            "weight = 0.1\n"))
    plugin = t.pm.get_plugin("pytorch_adapt")
    assert plugin.source_free  # target outputs only
    _, _, terms = step_terms(t)
    assert {"source", "mcc", "ent"} == set(terms) and terms["ent"].weight == 0.1


def test_the_bridge_runs_source_free_only_on_target_outputs(bridge, fast_config, tmp_path):
    [source] = run_experiment(fast_config())
    free = ("data.source_free=true", f"model.init_from='{source['run_dir']}'")
    ok = bridge("[plugins.pytorch_adapt.terms.bnm]\nlayer = 'BNMLoss'\ninputs = ['logits_t']\n", *free)
    [result] = run_experiment(ok)
    assert 0 <= result["final"]["oracle/target_acc"] <= 100
    bad = bridge("[plugins.pytorch_adapt.terms.coral]\nlayer = 'CORALLoss'\ninputs = ['features_s', 'features_t']\n",
                 *free)
    with pytest.raises(ConfigError, match=r"plugin\(s\) pytorch_adapt need source data"):
        prepare(bad)


# ------------------------------------------------------------------ against tladapt's own versions
def _bridged_and_own(bridge, terms, *own):
    t = make_trainer(bridge(terms, *own))
    return step_terms(t)


def test_bridged_mcc_bnm_and_coral_equal_tladapts_plugins(bridge):
    terms = ("[plugins.pytorch_adapt.terms.pa_mcc]\nlayer = 'MCCLoss'\nkwargs = { T = 2.5 }\ninputs = ['logits_t']\n"
             "[plugins.pytorch_adapt.terms.pa_bnm]\nlayer = 'BNMLoss'\ninputs = ['logits_t']\n"
             "[plugins.pytorch_adapt.terms.pa_coral]\nlayer = 'CORALLoss'\ninputs = ['features_s', 'features_t']\n")
    _, _, got = _bridged_and_own(bridge, terms, "plugins.mcc.temperature=2.5", "plugins.bnm={}",
                                 "plugins.coral.mode='deep'")
    assert got["pa_mcc"].value.item() == pytest.approx(got["mcc"].value.item(), rel=1e-5)
    assert got["pa_bnm"].value.item() == pytest.approx(got["bnm"].value.item(), rel=1e-6)
    assert got["pa_coral"].value.item() == pytest.approx(got["coral"].value.item(), rel=1e-5)


def test_bridged_entropy_and_diversity_equal_tladapts(bridge):
    terms = ("[plugins.pytorch_adapt.terms.ent]\nlayer = 'EntropyLoss'\ninputs = ['logits_t']\n"
             "[plugins.pytorch_adapt.terms.div]\nlayer = 'DiversityLoss'\ninputs = ['logits_t']\n")
    _, out, got = _bridged_and_own(bridge, terms)
    assert got["ent"].value.item() == pytest.approx(entropy(out.logits_t).item(), rel=1e-5)
    assert got["div"].value.item() == pytest.approx(-marginal_entropy(out.logits_t).item(), rel=1e-5)


def test_bridged_mmd_equals_tladapts_with_the_same_kernel_and_differs_by_the_documented_bandwidth(bridge):
    """Same fixed kernel: pytorch-adapt's exp(-d^2 s / b) is tladapt's sigma^2 = b / (2 s), and its
    "quadratic" estimate is tladapt's unbiased one. Default bandwidths differ: pytorch-adapt takes
    the median of the source block (with its zero diagonal), tladapt the median of the pooled
    off-diagonal pairs (tests/test_discrepancy.py shows the same on raw tensors)."""
    terms = ("[plugins.pytorch_adapt.terms.pa_fixed]\nlayer = 'MMDLoss'\n"
             "kwargs = { kernel_scales = 1.0, bandwidth = 3.0, mmd_type = 'quadratic' }\n"
             "inputs = ['features_s', 'features_t']\n"
             "[plugins.pytorch_adapt.terms.pa_median]\nlayer = 'MMDLoss'\nkwargs = { mmd_type = 'quadratic' }\n"
             "inputs = ['features_s', 'features_t']\n")
    _, _, got = _bridged_and_own(bridge, terms, "plugins.mmd.bandwidth=1.5", "plugins.mmd.estimator='unbiased'")
    assert got["pa_fixed"].value.item() == pytest.approx(got["mmd"].value.item(), rel=1e-5)
    _, _, median = _bridged_and_own(bridge, terms, "plugins.mmd.bandwidth='median'", "plugins.mmd.scales=[0.5]",
                                    "plugins.mmd.estimator='unbiased'")
    assert abs(median["pa_median"].value.item() - median["mmd"].value.item()) > 1e-4


# ------------------------------------------------------------------ errors, checked before any run
@pytest.mark.parametrize("terms, message", [
    ("", "plugins.pytorch_adapt has no terms"),
    ("[plugins.pytorch_adapt.terms.x]\nlayer = 'MCCLos'\ninputs = ['logits_t']\n",
     r"plugins.pytorch_adapt.terms.x.layer = 'MCCLos' is not a layer of pytorch_adapt.layers \(did you mean MCCLoss"),
    ("[plugins.pytorch_adapt.terms.x]\nlayer = 'MCCLoss'\nkwargs = { temperature = 2 }\ninputs = ['logits_t']\n",
     r"plugins.pytorch_adapt.terms.x.kwargs: pytorch_adapt.layers.MCCLoss\(temperature\) failed"),
    ("[plugins.pytorch_adapt.terms.x]\nlayer = 'MCCLoss'\ninputs = ['logit_t']\n",
     "plugins.pytorch_adapt.terms.x.inputs: unknown output"),
    ("[plugins.pytorch_adapt.terms.x]\nlayer = 'MCCLoss'\n", "plugins.pytorch_adapt.terms.x.inputs is empty"),
    ("[plugins.pytorch_adapt.terms.x]\nlayer = 'MCCLoss'\ninputs = ['logits_t']\nweight = -1.0\n",
     r"plugins.pytorch_adapt.terms.x.weight must be >= 0"),
    ("[plugins.pytorch_adapt.terms.x]\nlayr = 'MCCLoss'\n", "unknown key plugins.pytorch_adapt.terms.x.layr"),
])
def test_bad_bridge_configs_fail_before_any_run_naming_the_key(bridge, tmp_path, terms, message):
    runs = tmp_path / "runs"
    config = bridge(terms or "[plugins.pytorch_adapt]\n")
    with pytest.raises(ConfigError, match=message):
        run_experiment(config)
    assert not runs.exists()


def test_a_layer_that_returns_no_single_number_is_named(bridge):
    t = make_trainer(bridge("[plugins.pytorch_adapt.terms.each]\nlayer = 'EntropyLoss'\n"
                            "kwargs = { return_mean = false }\ninputs = ['logits_t']\n"))
    t.start()
    batch = t.pipeline.next()
    with pytest.raises(PluginError, match=r"terms.each: EntropyLoss returned \(16,\), expected one number"):
        t.losses(batch, t.forward(batch))


def test_a_layer_with_buffers_is_a_registered_module_and_a_non_scalar_output_is_refused(bridge):
    t = make_trainer(bridge("[plugins.pytorch_adapt.terms.rdp]\nlayer = 'RandomizedDotProduct'\n"
                            "kwargs = { in_dims = [32, 10], out_dim = 8 }\ninputs = ['features_t', 'softmax_t']\n"))
    assert "pytorch_adapt_rdp.rand_mat0" in t.modules.state_dict()  # checkpointed, on the device
    t.start()
    batch = t.pipeline.next()
    with pytest.raises(PluginError, match=r"terms.rdp: RandomizedDotProduct returned \(16, 8\), expected one number"):
        t.losses(batch, t.forward(batch))


def test_without_pytorch_adapt_a_config_naming_the_bridge_says_how_to_install_it(bridge, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "pytorch_adapt" or m.startswith("pytorch_adapt.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pytorch_adapt", None)  # import pytorch_adapt -> ImportError
    runs = tmp_path / "runs"
    config = bridge("[plugins.pytorch_adapt.terms.mcc]\nlayer = 'MCCLoss'\ninputs = ['logits_t']\n")
    with pytest.raises(ConfigError) as err:
        run_experiment(config)
    assert "pip install 'tladapt[pytorch-adapt]'" in str(err.value) and str(err.value).startswith(INSTALL)
    assert not runs.exists()
    from tladapt.cli import main  # `tladapt plugins` still lists every plugin without it
    assert main(["plugins"]) == 0


def test_the_pytorch_adapt_extra_and_the_reference_extra_pin_the_same_versions():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["pytorch-adapt"] and set(extras["pytorch-adapt"]) <= set(extras["reference"])


def test_the_bridge_composes_with_dann_and_self_training(bridge):
    [result] = run_experiment(bridge("[plugins.pytorch_adapt.terms.afn]\nlayer = 'AFNLoss'\n"
                                     "inputs = ['features_t']\nweight = 0.05\n",
                                     "plugins.dann.hidden=[16]", "plugins.self_training.threshold=0.5"))
    assert result["method"] == "dann+pytorch_adapt+self_training"
    assert 0 <= result["final"]["oracle/target_acc"] <= 100
