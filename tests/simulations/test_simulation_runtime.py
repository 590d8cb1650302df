"""The simulation engine's parts that need no SuperLink: the federation config it hands to
``flwr run``, the environment of the processes it starts, the progress file the ServerApp
writes and the engine reads back (the end-to-end runs are in ``test_runner``,
``test_interrupt``, ``test_scale`` and ``test_threads``)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from flwr_byz.simulations import app
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.flower_app import PROGRESS_ENV, RUNS_KEY
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


def test_the_server_app_runs_a_runs_file_in_turn_each_as_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group (the run config's ``RUNS_KEY``, the simulation engine's one ``flwr run``):
    each config in turn on the same nodes, which keep their Context (its state) across them
    as in one run; each result in its own ``out``, every round reported under that ``out``;
    the numbers of each are those of the config run alone (the momentum the clients keep in
    their state does not carry over from one config to the next)."""
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv(PROGRESS_ENV, str(progress))
    momentum = dataclasses.replace(TINY, method="robust-momentum", aggregator="cwmed")
    group = [
        dataclasses.replace(momentum, out=str(tmp_path / "a.json")),
        dataclasses.replace(TINY, method="fedavg", out=str(tmp_path / "b.json")),
        dataclasses.replace(momentum, out=str(tmp_path / "c.json")),
    ]
    runs_file = tmp_path / "runs.json"
    runs_file.write_text(json.dumps([cfg.to_run_config() for cfg in group]))

    def context(overrides: dict) -> Context:  # the app's defaults plus the overrides
        run_config = ExperimentConfig().to_run_config() | {RUNS_KEY: ""} | overrides
        return Context(
            run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
        )

    grid = LocalGrid(TINY.clients)
    app.main(grid, context({RUNS_KEY: str(runs_file)}))
    assert any(len(c.state) for c in grid.contexts.values())  # the nodes kept state
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [line["out"] for line in lines] == [cfg.out for cfg in group for _ in range(2)]
    alone = tmp_path / "alone.json"
    app.main(LocalGrid(TINY.clients), context(momentum.to_run_config() | {"out": str(alone)}))

    def numbers(path: str | Path) -> list[tuple[float, float, int]]:
        return [(r.loss, r.accuracy, r.rejected) for r in Result.load(path).rounds]

    assert numbers(tmp_path / "a.json") == numbers(tmp_path / "c.json") == numbers(alone)
    assert Result.load(tmp_path / "b.json").config["method"] == "fedavg"


def test_a_group_run_that_ends_early_names_the_configs_left_without_a_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_group`` waits for every ``out`` of its one ``flwr run``; a run that ends after
    the first result (here a stand-in process that reports a round, writes the first ``out``
    and exits 3) is an error naming the config without one, with the end of the log; the
    round reported still reached ``on_round``, and nothing else than the one run started."""
    first = dataclasses.replace(TINY, out=str(tmp_path / "first.json"))
    second = dataclasses.replace(TINY, seed=7, out=str(tmp_path / "second.json"))
    runtime = SimulationRuntime()
    started: list[dict] = []

    def start_run(app_dir: Path, run_config: dict, clients: int):  # type: ignore[no-untyped-def]
        started.append(run_config)
        listed = json.loads(Path(run_config[RUNS_KEY]).read_text())
        out = listed[0]["out"]
        line = json.dumps({"out": out, "round": dataclasses.asdict(RoundRecord(1, 0.5, 0.9))})
        script = (
            f"open({str(runtime.progress)!r}, 'a').write({line!r} + '\\n'); "
            f"open({out!r}, 'w').write('{{}}'); print('the ServerApp failed'); exit(3)"
        )
        return runtime.procs.start("stand-in", [sys.executable, "-c", script])

    monkeypatch.setattr(runtime, "start_run", start_run)
    seen: list[tuple[int, int]] = []
    try:
        with pytest.raises(RuntimeError) as err:
            runtime.run_group([first, second], lambda c, r: seen.append((c.seed, r.round)))
    finally:
        runtime.stop()
    message = str(err.value)
    assert "for 1 of the 2 configs" in message and str(tmp_path / "second.json") in message
    assert str(tmp_path / "first.json") not in message
    assert "exit code 3" in message and "the ServerApp failed" in message
    assert len(started) == 1 and seen == [(0, 1)]
