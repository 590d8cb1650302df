"""The benchmarks are part of the installed package: each suite runs as ``python -m
flwr_byz.bench.<suite>`` from any directory, the scripts in benchmarks/ only call it, and no
module of ``flwr_byz.bench`` locates files from its own path (it never reads the checkout)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import flwr_byz.bench

PACKAGE = Path(flwr_byz.bench.__file__).parent
SUITES = ("aggregators", "engines", "oversize", "presets")


def test_no_module_locates_files_from_its_own_path() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        assert "__file__" not in names, f"{path} reads __file__"


def test_a_suite_runs_as_a_module_outside_the_checkout(tmp_path: Path) -> None:
    """What ``flwr-byz bench`` and the reproduction's performance section run."""
    done = subprocess.run(
        [sys.executable, "-m", "flwr_byz.bench.aggregators", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "--out" in done.stdout
    assert not any(tmp_path.iterdir())  # --help writes nothing


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_has_a_main(suite: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"flwr_byz.bench.{suite}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out


@pytest.mark.parametrize("suite", SUITES)
def test_scripts_in_benchmarks_only_call_the_suite(suite: str) -> None:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / f"{suite}.py"
    tree = ast.parse(script.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [
        (f"flwr_byz.bench.{suite}", ["main"])
    ]
    assert len(script.read_text().splitlines()) < 15
