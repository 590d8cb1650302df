"""``prepare`` checks a config once per run: a config it returned comes back as it is, so the
engine and the round loop a prepared config goes through check nothing again; a raw config
handed to a public entry point (``run_experiment``, ``run_local``, ``train_on_grid``, the
ServerApp's run config) is prepared there, once. ``prepare_checks`` (conftest) lists the
configs ``prepare`` did its work for."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from flwr_byz.simulations import app
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiment
from flwr_byz.simulations.local import LocalGrid, run_local
from flwr_byz.simulations.result import Result
from flwr_byz.simulations.runner import is_prepared, prepare, train_on_grid

TINY = ExperimentConfig(
    method="robust-fedavg",
    aggregator="median",
    attack="sign-flip",
    byzantine=1,
    clients=4,
    rounds=1,
    dataset="digits",
    lr=0.1,
    batch_size=16,
    local_epochs=1,
    threads=1,
)


def test_a_prepared_config_comes_back_as_it_is(prepare_checks: list[Any]) -> None:
    cfg = prepare(TINY)
    assert cfg == TINY.resolved() and is_prepared(cfg)
    assert not is_prepared(TINY)  # the caller's config is neither changed nor marked
    assert prepare(cfg) is cfg and prepare(prepare(cfg)) is cfg
    assert prepare_checks == [TINY]


def test_a_changed_config_is_prepared_again(prepare_checks: list[Any]) -> None:
    cfg = prepare(TINY)
    copy = dataclasses.replace(cfg, rounds=2)
    assert not is_prepared(copy) and is_prepared(prepare(copy))
    cfg.aggregator = "nope"  # changed in place after it was prepared
    assert not is_prepared(cfg)
    with pytest.raises(ValueError, match="unknown aggregator 'nope'"):
        prepare(cfg)
    assert len(prepare_checks) == 3


@pytest.mark.parametrize("engine", ["local", "batched"])
def test_an_engine_prepares_a_raw_config_once(prepare_checks: list[Any], engine: str) -> None:
    result = run_experiment(TINY, engine=engine)
    assert len(prepare_checks) == 1
    assert result.config["model"] == "mlp"  # resolved ('auto': digits' default)
    run_experiment(prepare(TINY), engine=engine)  # prepared already: checked by ``prepare`` only
    assert len(prepare_checks) == 2


def test_run_local_and_train_on_grid_prepare_a_raw_config_once(
    prepare_checks: list[Any],
) -> None:
    (local,) = run_local([TINY])
    assert len(prepare_checks) == 1
    alone = train_on_grid(LocalGrid(TINY.clients), TINY)  # a user's own grid
    assert len(prepare_checks) == 2
    assert [r.accuracy for r in alone.rounds] == [r.accuracy for r in local.rounds]


def test_the_server_app_prepares_its_run_config_once(
    prepare_checks: list[Any], tmp_path: Path
) -> None:
    out = tmp_path / "app.json"
    run_config = dataclasses.replace(TINY, out=str(out)).to_run_config()
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    app.main(LocalGrid(TINY.clients), context)
    assert len(prepare_checks) == 1
    assert Result.load(out).config["clients"] == TINY.clients
