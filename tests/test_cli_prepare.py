"""``flwr-byz run`` prepares its config once (``runner.prepare``): the CLI prepares it, and the
engine and the round loop take it as it is, on every engine. ``prepare_checks`` (conftest)
lists the configs ``prepare`` did its work for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flwr_byz.cli import app
from flwr_byz.simulations.result import Result

TINY = (
    "--method", "robust-fedavg", "--aggregator", "median", "--attack", "sign-flip",
    "--byzantine", "1", "--clients", "4", "--rounds", "1", "--dataset", "digits",
    "--threads", "1",
)  # fmt: skip


@pytest.mark.parametrize(
    "engine", ["local", "batched", pytest.param("simulation", marks=pytest.mark.slow)]
)
def test_flwr_byz_run_prepares_its_config_once(
    prepare_checks: list[Any], tmp_path: Path, engine: str
) -> None:
    out = tmp_path / "r.json"
    args = ["run", *TINY, "--engine", engine, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(prepare_checks) == 1, prepare_checks
    assert len(Result.load(out).rounds) == 1
