"""Start-up: the light commands do not import torch; ``--version``; small output formats."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tladapt.cli.output import significant

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys
from tladapt.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
heavy = sorted(m for m in ("torch", "tensorboard", "sklearn", "scipy", "tladapt.trainer") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
sys.exit(status)
"""


def heavy_imports(*argv):
    """Run ``tladapt ARGV`` in a fresh interpreter; return (its stdout, heavy modules it imported)."""
    out = subprocess.run([sys.executable, "-c", CHECK, *argv], capture_output=True, text=True, check=True).stdout
    head, _, heavy = out.rpartition("HEAVY:")
    return head, heavy.strip()


def test_import_tladapt_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, tladapt; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["datasets"]])
def test_light_commands_do_not_import_torch(argv):
    out, heavy = heavy_imports(*argv)
    assert out and heavy == ""


def test_table_does_not_import_torch(fast_config, tmp_path):
    from tladapt.experiment import run_experiment

    run_experiment(fast_config("trainer.steps=2", "trainer.eval_every=2", "trainer.checkpoint=false"))
    out, heavy = heavy_imports("table", str(tmp_path / "runs"))
    assert "webcam->dslr" in out and heavy == ""


def test_version_is_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "tladapt.cli", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(f"tladapt {version} (Python {sys.version.split()[0]}, torch ")


def test_distances_keep_their_significant_digits():
    assert [significant(v) for v in (0.000412345, 1.23456, 0.0, 1.5e-7, 2.0)] == \
        ["0.000412", "1.23", "0", "1.5e-07", "2"]


def test_every_package_of_tladapt_is_in_the_wheel():
    """pyproject lists the packages explicitly: an unlisted sub-package (one with an __init__.py)
    works in an editable install and is missing from a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "tladapt").rglob("__init__.py")}
    assert found - listed == set()
