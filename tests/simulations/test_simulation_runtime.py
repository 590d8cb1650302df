"""The simulation engine's parts that need no SuperLink: the federation config it hands to
``flwr run``, the environment of the processes it starts, the progress file the ServerApp
writes and the engine reads back (the end-to-end runs are in ``test_runner``,
``test_interrupt``, ``test_scale`` and ``test_threads``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from flwr_byz.simulations import app
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.flower_app import PROGRESS_ENV
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.simulations.result import Result, RoundRecord
from flwr_byz.simulations.simulation import (
    CLIENT_THREADS,
    SimulationRuntime,
    _tail,
    federation_config,
)
from flwr_byz.simulations.threads import THREAD_ENV, available_cores

TINY = ExperimentConfig(dataset="digits", clients=4, rounds=2, lr=0.1)


def test_the_federation_config_starts_ray_here_or_leaves_a_cluster_its_cpus() -> None:
    own = federation_config(10)
    assert own["num-supernodes"] == 10 and own["client-resources-num-cpus"] == 1
    assert own["init-args-num-cpus"] == available_cores()
    assert own["init-args-log-to-driver"] is False  # quiet unless verbose
    # Ray refuses num_cpus when it connects to a running cluster
    cluster = federation_config(10, ray_address="127.0.0.1:6379", verbose=True)
    assert "init-args-num-cpus" not in cluster
    assert cluster["verbose"] is True and "init-args-log-to-driver" not in cluster


def test_the_runtime_environment_and_work_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "elsewhere:1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    own = SimulationRuntime()
    cluster = SimulationRuntime(ray_address="127.0.0.1:6379")
    try:
        env = own.procs.env
        assert "RAY_ADDRESS" not in env  # each run starts its own Ray
        assert cluster.procs.env["RAY_ADDRESS"] == "127.0.0.1:6379"
        assert all(env[k] == str(CLIENT_THREADS) for k in THREAD_ENV)  # the ClientApp actors
        assert env[PROGRESS_ENV] == str(own.progress)
        assert own.progress.parent == own.workdir
        assert (own.app / "pyproject.toml").is_file()  # the Flower App it runs
    finally:
        own.stop()
        cluster.stop()
    assert not own.workdir.exists() and not cluster.workdir.exists()


def test_tail_returns_complete_lines_once(tmp_path: Path) -> None:
    path = tmp_path / "lines"
    with _tail(path) as read:
        assert read() == []  # not there yet
        path.write_text("one\ntw")
        assert read() == ["one\n"]
        with path.open("a") as fh:
            fh.write("o\nthree\n")
        assert read() == ["two\n", "three\n"]
        assert read() == []


def test_the_server_app_reports_every_round_to_the_progress_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the engine tails for the progress bar: one line per round, in order, each the
    round as the result file has it, tagged with the run's ``out``."""
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv(PROGRESS_ENV, str(progress))
    out = tmp_path / "result.json"
    run_config = dataclasses.replace(TINY, out=str(out)).to_run_config()
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    app.main(LocalGrid(TINY.clients), context)
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [line["out"] for line in lines] == [str(out)] * TINY.rounds
    reported = [RoundRecord(**line["round"]) for line in lines]

    def as_json(rounds: list[RoundRecord]) -> list[str]:  # NaN (no gap here) equals itself
        return [json.dumps(dataclasses.asdict(r)) for r in rounds]

    assert as_json(reported) == as_json(Result.load(out).rounds)
