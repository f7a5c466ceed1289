"""The benchmarks' configs stay valid as the config rules change (a benchmark is never a
timed test, but one that no longer starts measures nothing)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", range(len(load("thread_rule").CASES)))
def test_thread_rule_cases_prepare(case):
    bench = load("thread_rule")
    label, dataset, task, overrides = bench.CASES[case]
    config, active = bench.make_config(dataset, task, overrides)
    assert ("DANN" in label) == ("dann" in config.plugins)


@pytest.mark.parametrize("case", list(load("compile_speed").CASES))
@pytest.mark.parametrize("mode", ["off", "torch"])
def test_compile_speed_cases_prepare(case, mode):
    config, _ = load("compile_speed").make_config(case, "cpu", mode)
    assert config.trainer.compile == mode and "dann" in config.plugins
