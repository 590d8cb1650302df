"""One version number: ``flwr_byz.__version__`` is what pyproject.toml declares (literally:
Flower reads that file as the Flower App's manifest), what the installed package's metadata
says, what ``flwr-byz --version`` prints and CHANGELOG.md's newest heading. The wheel built
from the tree carries it too (tests/test_wheel.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from typer.testing import CliRunner

import flwr_byz
from flwr_byz.cli import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def changelog_version() -> str:
    """The version of CHANGELOG.md's first ``## [x.y.z]`` heading."""
    match = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert match, "CHANGELOG.md has no '## [x.y.z]' heading"
    return match.group(1)


def installed_version() -> str:
    """The flwr-byz metadata in this environment's site-packages (not a stale
    ``flwr_byz.egg-info`` a build leaves in the source tree, which sits on ``sys.path`` too
    when the tests run from it)."""
    site = sysconfig.get_paths()["purelib"]
    (dist,) = metadata.distributions(name="flwr-byz", path=[site])
    return dist.version


def test_version_is_a_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", flwr_byz.__version__)


def test_pyproject_declares_the_version() -> None:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["version"] == flwr_byz.__version__
    assert "version" not in project.get("dynamic", [])  # Flower's `flwr run .` needs it literal


def test_installed_metadata_is_the_version() -> None:
    assert installed_version() == flwr_byz.__version__


def test_changelog_heads_with_the_version() -> None:
    assert changelog_version() == flwr_byz.__version__


def test_cli_prints_the_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"flwr-byz {flwr_byz.__version__}"


def test_python_m_flwr_byz_prints_the_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flwr_byz", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"flwr-byz {flwr_byz.__version__}"
