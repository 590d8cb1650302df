"""The ``flwr-byz`` console script: what exists before the simulation runner lands."""

from typer.testing import CliRunner

from flwr_byz.aggregators import AGGREGATORS, WRAPPERS
from flwr_byz.attacks import ATTACKS
from flwr_byz.simulations.cli import app


def test_aggregators_lists_every_spec_name() -> None:
    result = CliRunner().invoke(app, ["aggregators"])
    assert result.exit_code == 0
    for name in [*AGGREGATORS, *WRAPPERS]:
        assert name in result.output


def test_bench_help_documents_its_options() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    assert "--quick" in result.output and "--out" in result.output


def test_attacks_lists_every_name_with_its_kind() -> None:
    result = CliRunner().invoke(app, ["attacks"])
    assert result.exit_code == 0
    lines = dict(line.split() for line in result.output.strip().splitlines())
    assert set(lines) == set(ATTACKS)
    assert lines["alie"] == "omniscient" and lines["sign-flip"] == "per-node"
    assert lines["label-flip"] == "data"
