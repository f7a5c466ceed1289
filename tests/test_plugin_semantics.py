"""Loading a plugin is not enabling it, and an override never changes which method a config is
(issue 14's two scenarios, through the real ``tladapt`` command)."""

import json
from pathlib import Path

import pytest

from tladapt.cli import main
from tladapt.config import ConfigError, load_configs

ROOT = Path(__file__).resolve().parents[1]
ENTROPY_MIN = str(ROOT / "docs/examples/entropy_min.py")
BASE = """[experiment]
name = "e"
seeds = [0]
[data]
tasks = ["webcam->dslr"]
[model]
hidden = [16]
[trainer]
steps = 6
batch_size = 16
eval_every = 6
log_every = 3
progress = false
checkpoint = false
"""


@pytest.fixture
def configs(tmp_path):
    """source_only.toml (no plugins) and three variants that extend it."""
    (tmp_path / "source_only.toml").write_text(BASE)
    for name, table in (("dann", "[plugins.dann]\nhidden = [8]\n"), ("entropy_min", "[plugins.entropy_min]\n"),
                        ("named", '[experiment]\nmethod = "baseline"\n')):
        (tmp_path / f"{name}.toml").write_text(f'extends = "source_only.toml"\n{table}')
    return lambda *names: [str(tmp_path / f"{n}.toml") for n in names]


def runs(root):
    """method -> the config.json of its one run below root."""
    found = {}
    for path in Path(root).rglob("config.json"):
        config = json.loads(path.read_text())
        found[config["experiment"]["method"]] = config
    return found


def test_p_loads_a_plugin_and_only_the_config_that_enables_it_uses_it(tmp_path, configs, capsys):
    # tladapt run base.toml mcc.toml -p mcc.py: the baseline stays a baseline
    out = tmp_path / "runs"
    assert main(["run", *configs("source_only", "entropy_min"), "-p", ENTROPY_MIN, "--runs-dir", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| source_only |" in table and "| entropy_min |" in table
    found = runs(out)
    assert set(found) == {"source_only", "entropy_min"}
    assert found["source_only"]["plugins"] == {}
    assert found["entropy_min"]["plugins"] == {"entropy_min": {"weight": 0.1}}


def test_set_on_a_plugin_applies_only_where_the_plugin_is_enabled(tmp_path, configs):
    # --set plugins.dann.weight=0.3 over source_only.toml dann.toml: source_only stays source-only
    out = tmp_path / "runs"
    assert main(["run", *configs("source_only", "dann"), "--set", "plugins.dann.weight=0.3",
                 "--runs-dir", str(out)]) == 0
    found = runs(out)
    assert set(found) == {"source_only", "dann"}
    assert found["source_only"]["plugins"] == {}
    assert found["dann"]["plugins"]["dann"]["weight"] == 0.3 and found["dann"]["plugins"]["dann"]["hidden"] == [8]


def test_set_on_a_plugin_no_config_enables_is_an_error_naming_the_configs(tmp_path, configs, capsys):
    out = tmp_path / "runs"
    assert main(["run", *configs("source_only", "named"), "--set", "plugins.dann.weight=0.3",
                 "--runs-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--set plugins.dann.weight: no config enables plugin 'dann' (source_only.toml, named.toml)" in err
    assert "--enable dann" in err
    assert not out.exists()


def test_set_never_enables_disables_or_replaces_a_plugin_table(configs):
    for key in ("plugins.dann={weight = 0.3}", "plugins={}"):
        with pytest.raises(ConfigError, match="never enables, disables or replaces a plugin"):
            load_configs(configs("dann"), [key])


def test_enable_adds_a_plugin_to_every_config_and_to_named_methods(tmp_path, configs):
    out = tmp_path / "runs"
    assert main(["run", *configs("source_only", "named", "dann"), "-p", ENTROPY_MIN, "--enable", "entropy_min",
                 "--set", "plugins.entropy_min.weight=0.5", "--runs-dir", str(out)]) == 0
    found = runs(out)
    # the method names say what ran: a named method gets '+entropy_min' appended
    assert set(found) == {"entropy_min", "baseline+entropy_min", "dann+entropy_min"}
    assert all(c["plugins"]["entropy_min"] == {"weight": 0.5} for c in found.values())
    assert found["dann+entropy_min"]["plugins"]["dann"]["hidden"] == [8]


def test_a_loaded_plugin_no_config_enables_is_an_error(tmp_path, configs, capsys):
    out = tmp_path / "runs"
    assert main(["run", *configs("source_only"), "-p", ENTROPY_MIN, "--runs-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "plugin 'entropy_min' (-p " in err and "is loaded but no config enables it" in err
    assert "--enable entropy_min" in err
    assert not out.exists()


def test_enable_of_an_unknown_plugin_is_an_error(tmp_path, configs, capsys):
    assert main(["run", *configs("source_only"), "--enable", "entropy_mni", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--enable entropy_mni: no such plugin; available plugins are " in err and ", dann, " in err
    assert not list(tmp_path.rglob("config.json"))


def test_p_class_without_hooks_is_refused(tmp_path, configs, capsys):
    plugin = tmp_path / "two.py"
    plugin.write_text("import tladapt\n\nclass Helper:\n    def tladapt_losses(self, trainer):\n        return {}\n\n"
                      "class Real:\n    @tladapt.hookimpl\n    def tladapt_setup(self, trainer):\n        pass\n")
    out = tmp_path / "runs"
    assert main(["run", *configs("source_only"), "-p", f"{plugin}:Helper", "--enable", "two",
                 "--runs-dir", str(out)]) == 2
    assert f"-p {plugin}:Helper: Helper is not a plugin: a plugin is a class with @tladapt.hookimpl methods" \
        in capsys.readouterr().err
    assert not out.exists()
    assert main(["plugins", "-p", f"{plugin}:Real"]) == 0
    assert "hooks: tladapt_setup" in capsys.readouterr().out


def test_a_plugin_that_only_measures_takes_part_once_loaded_and_names_no_method(tmp_path, configs):
    plugin = tmp_path / "confidence.py"
    plugin.write_text('''import tladapt
from tladapt.validators import Validator

class Confidence(Validator):
    name, direction = "confidence", "max"
    def __call__(self, out):
        return float(out.target_probs.max(1).values.mean())

class Validators:
    @tladapt.hookimpl
    def tladapt_validators(self):
        return [Confidence()]
''')
    out = tmp_path / "runs"
    assert main(["run", *configs("source_only", "dann"), "-p", str(plugin), "--runs-dir", str(out)]) == 0
    found = runs(out)
    assert set(found) == {"source_only", "dann"} and found["source_only"]["plugins"] == {}
    for results in out.rglob("results.json"):
        assert "validator/confidence" in json.loads(results.read_text())["final"]
