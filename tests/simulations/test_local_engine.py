"""The ``local`` engine (``flwr_byz.simulations.local``): in-process nodes answered by the real
ClientApp handlers give the same rounds as the runner on any other grid (here a
``ShuffledGrid``: random node IDs, listed and answering in a shuffled order), write the result
file, turn handler exceptions into error replies, and are reachable from ``run_experiments`` and
the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from typer.testing import CliRunner

from flwr_byz.cli import app as cli_app
from flwr_byz.protocol.records import layout_of
from flwr_byz.simulations import app as client_side
from flwr_byz.simulations import engines as engine_module
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import ENGINES, run_experiment, run_experiments
from flwr_byz.simulations.local import CLIENT_EXCEPTION, LocalGrid, run_local
from flwr_byz.simulations.metering import discover_partitions
from flwr_byz.simulations.result import RoundRecord
from flwr_byz.simulations.runner import train_on_grid
from flwr_byz.strategies.validation import validate_replies
from tests.quiet import quiet_run

from ..clients.nodes import ShuffledGrid

BASE = ExperimentConfig(
    dataset="mnist1d", clients=5, rounds=3, lr=0.5, batch_size=4, local_epochs=1, seed=1
)
CONFIGS = {
    # local SGD: 800 samples per client in batches of 200, 4 steps per round
    "robust-fedavg": dataclasses.replace(
        BASE, method="robust-fedavg", aggregator="cwmed", batch_size=200
    ),
    "byz-ef21-sgdm-topk": dataclasses.replace(
        BASE,
        method="byz-ef21-sgdm",
        compressor="topk:0.1",
        aggregator="cwtm",
        byzantine=1,
        attack="sign-flip",
    ),
}


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    with quiet_run():
        yield


def rounds_of(result: Any) -> list[tuple[float, float, int]]:
    return [(r["accuracy"], r["loss"], r["rejected"]) for r in result.to_dict()["rounds"]]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_local_engine_matches_train_on_grid(name: str, tmp_path: Path) -> None:
    cfg = dataclasses.replace(CONFIGS[name], out=str(tmp_path / "run.json"))
    seen: list[tuple[str, int]] = []

    def on_round(c: ExperimentConfig, record: RoundRecord) -> None:
        seen.append((c.method, record.round))

    (local,) = run_experiments([cfg], on_round=on_round, engine="local")
    reference = train_on_grid(ShuffledGrid(cfg.clients, 7), dataclasses.replace(cfg, out=None))
    got, want = rounds_of(local), rounds_of(reference)
    assert len(got) == cfg.rounds
    assert got == want  # exactly the same numbers
    assert all(math.isfinite(loss) for _, loss, _ in got)
    assert len({loss for _, loss, _ in got}) > 1  # the model moves
    assert seen == [(cfg.method, r) for r in range(1, cfg.rounds + 1)]
    saved = json.loads(Path(cfg.out).read_text())  # type: ignore[arg-type]
    assert saved["config"]["method"] == cfg.method
    assert [(r["accuracy"], r["loss"]) for r in saved["rounds"]] == [(a, b) for a, b, _ in got]


def test_run_experiment_local_and_several_configs(tmp_path: Path) -> None:
    a = dataclasses.replace(CONFIGS["robust-fedavg"], rounds=2, out=str(tmp_path / "a.json"))
    b = dataclasses.replace(a, seed=2, out=str(tmp_path / "b.json"))
    results = run_experiments([a, b], engine="local")
    assert [r.to_dict()["config"]["seed"] for r in results] == [1, 2]
    assert rounds_of(results[0]) != rounds_of(results[1])  # the seed matters
    assert (tmp_path / "a.json").exists() and (tmp_path / "b.json").exists()
    single = run_experiment(dataclasses.replace(a, out=None), engine="local")
    assert rounds_of(single) == rounds_of(results[0])  # and the same seed repeats


def test_run_local_without_out_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = dataclasses.replace(CONFIGS["robust-fedavg"], rounds=1)
    (result,) = run_local([cfg])
    assert len(result.to_dict()["rounds"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_unknown_engine_raises() -> None:
    assert ENGINES == ("simulation", "local", "batched")
    with pytest.raises(
        ValueError, match=r"unknown engine 'ray'; known: simulation, local, batched"
    ):
        run_experiments([BASE], engine="ray")
    with pytest.raises(ValueError, match="unknown engine"):
        run_experiment(BASE, engine="Local")


# --- LocalGrid ------------------------------------------------------------------------------


def message(grid: LocalGrid, node: int, kind: str, **config: Any) -> Message:
    content = RecordDict({"config": ConfigRecord(dict(config))})
    return grid.create_message(content, kind, node, "g")


def test_local_grid_nodes_and_partitions() -> None:
    grid = LocalGrid(4)
    assert list(grid.get_node_ids()) == [1, 2, 3, 4]
    assert discover_partitions(grid) == {1: 0, 2: 1, 3: 2, 4: 3}
    assert {n: c.node_config["num-partitions"] for n, c in grid.contexts.items()} == dict.fromkeys(
        [1, 2, 3, 4], 4
    )
    assert len({id(c.state) for c in grid.contexts.values()}) == 4  # own state per node


def test_handler_exceptions_become_error_replies() -> None:
    grid = LocalGrid(3)
    msgs = [
        message(grid, 1, "query", op="bogus"),  # the query handler raises
        message(grid, 2, "train", op="nope", dataset="mnist1d"),  # no arrays, unknown op
        message(grid, 9, "query", op="partition-id"),  # no such node
    ]
    replies = list(grid.send_and_receive(msgs))
    assert len(replies) == 3 and all(r.has_error() for r in replies)
    assert all(r.error.code == CLIENT_EXCEPTION for r in replies)
    assert "ValueError" in replies[0].error.reason and "bogus" in replies[0].error.reason
    assert "ValueError" in replies[1].error.reason
    assert "no such node" in replies[2].error.reason
    assert [r.metadata.reply_to_message_id for r in replies] == [
        m.metadata.message_id for m in msgs
    ]
    assert [int(r.metadata.src_node_id) for r in replies[:2]] == [1, 2]
    # a validating strategy counts them as rejected (error-reply), it does not crash
    good = list(grid.send_and_receive([message(grid, 3, "query", op="partition-id")]))
    assert not good[0].has_error()
    layout = layout_of(ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))}))
    checked = validate_replies(replies[:2], {"arrays": layout}, expected_nodes=[1, 2])
    assert checked.node_ids == [] and [r.reason for r in checked.rejected] == ["error-reply"] * 2
    assert checked.metrics() == {"accepted": 0, "rejected": 2, "rejected-error-reply": 2}


def test_local_grid_with_node_ids_and_a_handler() -> None:
    """Given IDs, the Grid lists them in that order (partition = position); a handler may
    answer once, several times or not at all, each node with its own persistent Context."""
    seen: list[tuple[int, int]] = []

    def handler(msg: Message, context: Any) -> Message | list[Message] | None:
        seen.append((int(context.node_id), int(context.node_config["partition-id"])))
        context.state["calls"] = ConfigRecord({"n": len(seen)})
        node = int(msg.metadata.dst_node_id)
        reply = Message(RecordDict({"config": ConfigRecord({"node": node})}), reply_to=msg)
        return {30: reply, 10: [reply, reply], 20: None}[node]

    grid = LocalGrid([30, 10, 20], handler)
    assert list(grid.get_node_ids()) == [30, 10, 20]
    replies = list(grid.send_and_receive([message(grid, n, "query") for n in (10, 20, 30)]))
    assert [int(r.metadata.src_node_id) for r in replies] == [10, 10, 30]
    assert seen == [(10, 1), (20, 2), (30, 0)]
    assert grid.contexts[30].state["calls"]["n"] == 3  # type: ignore[index]
    assert grid.contexts[10].node_config == {"partition-id": 1, "num-partitions": 3}


def test_pull_returns_each_reply_once() -> None:
    grid = LocalGrid(2)
    ids = list(grid.push_messages([message(grid, 1, "query", op="partition-id")]))
    assert len(list(grid.pull_messages(ids))) == 1
    assert list(grid.pull_messages(ids)) == []


def test_a_crashing_node_is_rejected_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose train handler raises in round 2 gives an error reply: the round counts
    one rejection and the run goes on (a SuperNode returns the exception the same way)."""
    real = client_side.train
    calls: list[int] = []

    def flaky(msg: Message, context: Any) -> Message:
        if int(context.node_id) == 2:
            calls.append(2)
            if len(calls) == 2:  # its second train message: round 2
                raise RuntimeError("node 2 crashed")
        return real(msg, context)

    monkeypatch.setattr(client_side, "train", flaky)
    for name in CONFIGS:
        calls.clear()
        rejected = [r for _, _, r in rounds_of(run_local([CONFIGS[name]])[0])]
        assert rejected == [0, 1, 0], name
        assert len(calls) == 3


# --- CLI ------------------------------------------------------------------------------------

ENV = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def invoke(*args: object):
    return CliRunner(env=ENV).invoke(cli_app, [str(a) for a in args])


def test_cli_run_local_engine_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "ef21.json"
    result = invoke(
        "run", "--engine", "local", "--method", "byz-ef21-sgdm", "--compressor", "topk:0.1",
        "--dataset", "mnist1d", "--clients", 4, "--rounds", 2, "--batch-size", 4,
        "--byzantine", 1, "--attack", "sign-flip", "--aggregator", "cwtm", "--lr", 0.5,
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "result written to" in result.output
    data = json.loads(out.read_text())
    assert data["config"]["method"] == "byz-ef21-sgdm"
    assert data["config"]["compressor"] == "topk:0.1"
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert all(r["rejected"] == 0 for r in data["rounds"])
    # the same config through the API gives the same numbers
    cfg = ExperimentConfig(
        method="byz-ef21-sgdm", compressor="topk:0.1", dataset="mnist1d", clients=4, rounds=2,
        batch_size=4, byzantine=1, attack="sign-flip", aggregator="cwtm", lr=0.5,
    )  # fmt: skip
    (api,) = run_experiments([cfg], engine="local")
    assert [(r["accuracy"], r["loss"]) for r in data["rounds"]] == [
        (a, b) for a, b, _ in rounds_of(api)
    ]


def test_cli_run_rejects_an_unknown_engine(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    result = invoke(
        "run", "--engine", "bogus", "--method", "byz-ef21-sgdm", "--compressor", "topk:0.1",
        "--dataset", "mnist1d", "--clients", 4, "--rounds", 1, "--out", out,
    )  # fmt: skip
    assert result.exit_code != 0
    assert "unknown engine 'bogus'" in " ".join(result.output.split())
    assert not out.exists()


def test_cli_grid_passes_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engines: list[str] = []

    def spy(configs: Any, on_round: Any = None, verbose: bool = False, engine: str = "?"):
        engines.append(engine)
        raise ValueError("stop here")  # _execute turns it into exit code 2

    monkeypatch.setattr(engine_module, "run_experiments", spy)
    result = invoke(
        "grid", "--engine", "local", "--method", "robust-fedavg", "--aggregator", "cwmed",
        "--attack", "none", "--byzantine", 0, "--dataset", "mnist1d", "--clients", 4,
        "--rounds", 1, "--out-dir", tmp_path,
    )  # fmt: skip
    assert engines, result.output
    assert engines == ["local"]
