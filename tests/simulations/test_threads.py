"""Torch thread counts: resolution of ``threads``, the count a run has (and records), one
thread per parallel job of ``reproduce``'s pool, one per ClientApp actor of the simulation."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from flwr_byz.reproduce.pool import job_pool, run_all
from flwr_byz.simulations import threads as threads_module
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import ENGINES, run_experiment
from flwr_byz.simulations.result import Result
from flwr_byz.simulations.runner import _flower_logging
from flwr_byz.simulations.simulation import CLIENT_THREADS, SimulationRuntime
from flwr_byz.simulations.threads import (
    THREAD_ENV,
    available_cores,
    env_threads,
    resolve_threads,
    torch_threads,
)

TINY = ExperimentConfig(
    method="fedavg", clients=3, rounds=2, dataset="digits", model="logreg", local_epochs=1
)


# --- resolution ----------------------------------------------------------------------------
def test_resolve_threads_explicit_env_then_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 2, 5})
    assert available_cores() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert resolve_threads(2) == 2
    assert resolve_threads(None) == 4 and resolve_threads(0) == 4
    for unusable in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert resolve_threads(None) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert resolve_threads(None) == 3


def test_config_threads_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert ExperimentConfig().threads is None
    assert ExperimentConfig().resolved().threads == 3
    assert ExperimentConfig(threads=0).resolved().threads == 3
    assert ExperimentConfig(threads=2).resolved().threads == 2
    assert ExperimentConfig().to_run_config()["threads"] == 0
    assert ExperimentConfig.from_run_config({"threads": 0}, clients=5).threads is None
    assert ExperimentConfig.from_run_config({"threads": 2}, clients=5).threads == 2
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            ExperimentConfig(threads=bad).validate()  # type: ignore[arg-type]


def test_torch_threads_and_env_threads_restore() -> None:
    before = torch.get_num_threads()
    with torch_threads(2) as n:
        assert n == 2 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    saved = {k: os.environ.get(k) for k in THREAD_ENV}
    with env_threads(1):
        assert all(os.environ[k] == "1" for k in THREAD_ENV)
    assert {k: os.environ.get(k) for k in THREAD_ENV} == saved


# --- a run ---------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "simulation"])
@pytest.mark.parametrize("threads", [2, None])
def test_run_experiment_sets_and_records_threads(threads: int | None, engine: str) -> None:
    """The run has its threads (2 explicit; unset: $OMP_NUM_THREADS, 1 in the suite), says so
    in the result config, and leaves the caller's count alone (the in-process engines)."""
    seen: list[int] = []
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with _flower_logging(False, logging.ERROR):
            result = run_experiment(
                dataclasses.replace(TINY, threads=threads),
                on_round=lambda cfg, rec: seen.append(torch.get_num_threads()),
                engine=engine,
            )
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    expected = threads or int(os.environ["OMP_NUM_THREADS"])
    assert seen == [expected, expected]
    assert result.config["threads"] == expected
    assert "client_threads" not in result.config  # the clients run in this process


# --- parallel jobs -------------------------------------------------------------------------
def _probe(_: int) -> tuple[int, int, dict[str, str | None]]:
    return (
        torch.get_num_threads(),
        torch.get_num_interop_threads(),
        {k: os.environ.get(k) for k in THREAD_ENV},
    )


@pytest.mark.slow
def test_pool_workers_run_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what a forked worker would inherit
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with job_pool(2) as pool:
            seen = list(pool.map(_probe, range(4)))
    finally:
        torch.set_num_threads(before)
    for intra, interop, env in seen:
        assert intra == 1
        assert interop >= 1  # 1 unless the parent had started inter-op work before forking
        assert env == {k: "1" for k in THREAD_ENV}


@pytest.mark.slow
def test_run_all_jobs_record_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two parallel jobs: each run had one torch thread (measured inside the run), an
    explicit ``threads`` is kept."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    configs = [
        dataclasses.replace(TINY, seed=0, out=str(tmp_path / "a.json")),
        dataclasses.replace(TINY, seed=1, out=str(tmp_path / "b.json")),
        dataclasses.replace(TINY, seed=2, threads=2, out=str(tmp_path / "c.json")),
    ]
    run_all(configs, jobs=2, progress=lambda i, n, out: None)
    recorded = [Result.load(str(c.out)).config["threads"] for c in configs]
    assert recorded == [1, 1, 2]


# --- Ray's ClientApp actors ----------------------------------------------------------------
PROBE_APP = """
import json, os, time

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.query()
def probe(msg: Message, context: Context) -> Message:
    record = MetricRecord({"threads": torch.get_num_threads(), "pid": os.getpid()})
    return Message(RecordDict({"probe": record}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    while len(list(grid.get_node_ids())) < 2:
        time.sleep(0.05)
    messages = [
        Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="query")
        for n in grid.get_node_ids()
    ]
    seen = [dict(r.content["probe"]) for r in grid.send_and_receive(messages)]
    with open(str(context.run_config["out"]), "w") as fh:
        json.dump({"seen": seen, "server": os.getpid()}, fh)
"""

PROBE_MANIFEST = """
[project]
name = "threads-probe"
version = "1.0.0"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "flwr-byz-tests"

[tool.flwr.app.components]
serverapp = "threads_probe:server"
clientapp = "threads_probe:client"

[tool.flwr.app.config]
out = ""
"""


@pytest.mark.slow
def test_simulation_actors_run_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulation engine's runtime (its SuperLink's thread environment and federation
    config) gives each ClientApp actor ``CLIENT_THREADS`` torch threads, even when this
    process has OMP_NUM_THREADS=2 (Flower's processes and Ray's workers inherit it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(PROBE_MANIFEST)
    (app / "threads_probe.py").write_text(PROBE_APP)
    out = tmp_path / "seen.json"
    with SimulationRuntime() as runtime:
        run = runtime.start_run(app, {"out": str(out)}, clients=2)
        run.popen.wait(timeout=600)
        log = run.tail(40)
    assert out.exists(), log
    data = json.loads(out.read_text())
    seen = data["seen"]
    assert len(seen) == 2, data
    assert all(s["threads"] == CLIENT_THREADS for s in seen), seen
    assert all(s["pid"] not in (os.getpid(), data["server"]) for s in seen)  # Ray's workers
    assert os.environ["OMP_NUM_THREADS"] == "2"  # this process's is left as it was
