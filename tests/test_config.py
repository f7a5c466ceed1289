"""Config files, overrides and their early, named errors."""

from pathlib import Path

import pytest

from tladapt.config import ConfigError, load_config, parse_seeds, parse_value


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_override_types():
    c = load_config(None, ["trainer.lr=0.1", "model.hidden=[64, 32]", "plugins.dann.weight=0.3",
                           "data.tasks=['amazon->dslr']", "trainer.device=cpu"], enable=["dann"])
    assert c.trainer.lr == 0.1 and c.model.hidden == [64, 32]
    assert c.plugins == {"dann": {"weight": 0.3}}
    assert c.data.tasks == ["amazon->dslr"] and c.trainer.device == "cpu"  # bare word -> string


def test_int_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["trainer.lr=1"]).trainer.lr == 1.0
    with pytest.raises(ConfigError, match=r"trainer\.steps: Input should be a valid integer \(got 1\.5\)"):
        load_config(None, ["trainer.steps=1.5"])


@pytest.mark.parametrize("override, message", [
    ("trainer.optimizer='sdg'", r"trainer\.optimizer: Input should be 'sgd' or 'adam'"),
    ("trainer.lr='fast'", r"trainer\.lr: Input should be a valid number"),
    ("trainer.stepz=3", r"unknown key trainer\.stepz: valid keys are steps, batch_size"),
    ("trainers.steps=3", r"unknown config section \[trainers\]: valid sections are experiment, data"),
    ("data.tasks=['amazon-webcam']", r"'amazon-webcam': expected 'source->target'"),
    ("trainer.steps=0", r"trainer\.steps must be > 0, got 0"),
    ("data.source_val_fraction=1.0", r"data\.source_val_fraction must be >= 0, < 1, got 1\.0"),
    ("trainer.lr=nan", r"trainer\.lr must be a finite number, got nan"),
    ("trainer.momentum=inf", r"trainer\.momentum must be a finite number, got inf"),
    ("model.dropout=1.5", r"model\.dropout must be >= 0, < 1, got 1\.5"),
    ("trainer.weight_decay=-1", r"trainer\.weight_decay must be >= 0, got -1"),
    ("model.hidden=[64, 0]", r"model\.hidden\[1\] must be > 0, got 0"),
    ("trainer.lr_mult={backbone = -0.5}", r"trainer\.lr_mult\['backbone'\] must be >= 0, got -0\.5"),
    ("trainer.device='tpu'", r"trainer\.device: Input should be 'auto', 'cpu' or 'cuda'"),
    ("model.hidden=[1, 'a']", r"model\.hidden\[1\]: Input should be a valid integer"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_set_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="--set expects dotted.key=value"):
        load_config(None, ["trainer.lr"])


def test_extends_merges_tables_and_detects_cycles(tmp_path):
    write(tmp_path, "base.toml", "[trainer]\nlr = 0.5\nsteps = 7\n[plugins.dann]\nweight = 2.0\n")
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[trainer]\nsteps = 9\n')
    c = load_config(child)
    assert (c.trainer.lr, c.trainer.steps, c.plugins) == (0.5, 9, {"dann": {"weight": 2.0}})
    write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="extends cycle"):
        load_config(tmp_path / "a.toml")


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "bad.toml", "[trainer\n"))


def test_seeds():
    assert parse_seeds("0-2") == [0, 1, 2]
    assert parse_seeds("0,4,7") == [0, 4, 7]
    assert parse_seeds("3") == [3]
    assert load_config(None, seeds="1-2").experiment.seeds == [1, 2]
    for bad in ("2-0", "a", "1-", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_malformed_toml_values_are_errors_not_strings():
    with pytest.raises(ConfigError, match=r"--set value '\[64,' is not valid TOML"):
        load_config(None, ["model.hidden=[64,"])


def test_extends_of_a_missing_file_names_the_extending_file(tmp_path):
    child = write(tmp_path, "child.toml", 'extends = "nope.toml"\n')
    with pytest.raises(ConfigError, match=r"child.toml: extends = 'nope.toml', but .*nope.toml does not exist"):
        load_config(child)


def test_parse_value():
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("true") is True
    assert parse_value("amazon->webcam") == "amazon->webcam"


TOMLS = sorted((Path(__file__).resolve().parents[1] / "experiments").rglob("*.toml"))
# tladapt sweep --space files: *_space.toml, or any file in a spaces/ folder
SPACES = [p for p in TOMLS if p.name.endswith("_space.toml") or p.parent.name == "spaces"]
EXPERIMENTS = [p for p in TOMLS if p not in SPACES]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_experiment_config_validates(path, monkeypatch):
    import tladapt.experiment as experiment
    import tladapt.preflight as preflight

    # model.init_from names runs made by an earlier config of the experiment: here only its
    # fields are checked (a clean checkout has no runs), not that the checkpoint fits
    fields = dict(source="s", target="t", task="s_to_t", seed=0)
    monkeypatch.setattr(experiment, "find_checkpoint", lambda spec, task, seed: spec.format(**fields))
    monkeypatch.setattr(preflight, "_check_init_from", lambda *args: None)
    config = load_config(path)
    if config.plugins.get("finetune", {}).get("init", "source") == "source" and "finetune" in config.plugins \
            and not config.model.init_from:  # completed by --init-from SOURCE_RUN on the command line
        with pytest.raises(ConfigError, match="plugins.finetune.init = 'source' needs model.init_from"):
            experiment.prepare(config)
        return
    if not config.data.source_labels and not config.plugins:  # a base that its variants add the objective to
        with pytest.raises(ConfigError, match="nothing to train: data.source_labels = false"):
            experiment.prepare(config)
        return
    config, _ = experiment.prepare(config)
    assert config.experiment.method


@pytest.mark.parametrize("path", SPACES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_search_space_validates(path):
    from tladapt.sweep import load_space

    assert load_space(path).params


def test_bundled_default_configs_validate():
    from importlib import resources

    from tladapt.experiment import prepare

    from tladapt.cli.run import DEFAULT_CONFIGS

    assert len(DEFAULT_CONFIGS) == 4
    for name in DEFAULT_CONFIGS:
        config, active = prepare(load_config(resources.files("tladapt") / "configs" / name))
        enabled = [info.name for info, _ in active if not info.measures_only]
        assert enabled == (["dann"] if name.endswith("_dann.toml") else []), name


def test_sections_built_directly_are_validated_like_files():
    from tladapt.config import ModelSection, TrainerSection

    with pytest.raises(ConfigError, match=r"trainer\.steps must be > 0, got 0"):
        TrainerSection(steps=0)
    with pytest.raises(ConfigError, match=r"model\.dropout must be >= 0, < 1, got 1\.5"):
        ModelSection(dropout=1.5)
    assert TrainerSection(lr=1).lr == 1.0 and isinstance(TrainerSection(lr=1).lr, float)


def test_option_bounds_check_plugin_defaults_too():
    from dataclasses import dataclass

    from tladapt.options import option, validate_dataclass

    @dataclass
    class Options:
        weight: float = option(-1.0, "a default outside its own bounds is reported", ge=0)

    with pytest.raises(ConfigError, match=r"plugins\.x\.weight must be >= 0, got -1\.0"):
        validate_dataclass(Options, {}, "plugins.x")
