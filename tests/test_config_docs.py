"""The config reference is generated from the dataclasses and kept current."""

import tomllib
from pathlib import Path

from tladapt.cli import main
from tladapt.cli.config import defaults_toml, reference_markdown
from tladapt.config import Config, SECTIONS
from tladapt.options import field_help

ROOT = Path(__file__).resolve().parents[1]


def test_docs_config_md_is_the_generated_page():
    assert (ROOT / "docs" / "config.md").read_text() == reference_markdown(), \
        "docs/config.md is stale: run `tladapt config --markdown > docs/config.md`"


def test_every_core_key_is_documented_with_its_default():
    page = reference_markdown()
    defaults = Config().to_dict()
    for section, cls in SECTIONS.items():
        for key, value in defaults[section].items():
            assert f"| `{key}` |" in page and f"`{value!r}`" in page, (section, key)
    for key in ("threads", "progress", "checkpoint", "replacement", "source_weight", "momentum", "weight_decay"):
        assert f"| `{key}` |" in page


def test_defaults_are_a_valid_config_equal_to_the_built_in_defaults(capsys):
    assert main(["config", "--defaults"]) == 0
    text = capsys.readouterr().out
    assert text == defaults_toml()
    assert tomllib.loads(text) == {k: v for k, v in Config().to_dict().items() if k != "plugins"}
    import dataclasses

    for f in dataclasses.fields(SECTIONS["trainer"]):
        assert f"# {field_help(f)}" in text  # every key with its help


def test_config_prints_a_config_as_it_would_run(capsys):
    path = ROOT / "tladapt" / "configs" / "default.toml"
    assert main(["config", str(path), "--enable", "dann", "--set", "plugins.dann.weight=0.5"]) == 0
    out = capsys.readouterr().out
    assert "method 'dann'" in out
    resolved = tomllib.loads(out)
    assert resolved["plugins"]["dann"]["weight"] == 0.5 and resolved["plugins"]["dann"]["gamma"] == 10.0
