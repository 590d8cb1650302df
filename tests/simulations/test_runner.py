"""The runner's ServerApp body (``train_on_grid``) on an in-process federation, and once on
Flower's real simulation engine.

The in-process federation is the library's LocalGrid (a ``ShuffledGrid``), whose nodes answer
with the real ClientApp handlers of ``flwr_byz.simulations.app``, so everything but Ray is the
production path; node IDs are random like in a simulation, which is what the reproducibility
tests vary.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from flwr.common.serde import message_to_proto

from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiment, run_experiments
from flwr_byz.simulations.models import build_model
from flwr_byz.simulations.runner import (
    byzantine_partitions,
    prepare,
    train_on_grid,
)

from ..clients.nodes import ShuffledGrid

BASE = ExperimentConfig(
    method="robust-fedavg", aggregator="cwmed", dataset="digits", clients=8, rounds=3, lr=0.1
)
DIGITS_MLP_PARAMS = sum(p.numel() for p in build_model("mlp", (64,), 10).parameters())


def _run(cfg: ExperimentConfig, id_seed: int = 0) -> tuple[dict, ShuffledGrid]:
    grid = ShuffledGrid(cfg.clients, id_seed)
    return train_on_grid(grid, cfg).to_dict(), grid


def _numbers(result: dict) -> list[tuple]:
    return [(r["loss"], r["accuracy"], r["rejected"], r["bytes_up"], r["bytes_down"])
            for r in result["rounds"]]  # fmt: skip


def test_same_seed_same_numbers_whatever_the_node_ids() -> None:
    cfg = dataclasses.replace(BASE, attack="alie", byzantine=2, clients_per_round=5)
    first, _ = _run(cfg, id_seed=0)
    second, _ = _run(cfg, id_seed=99)  # other node IDs, listed in another order
    assert _numbers(first) == _numbers(second)
    assert first["config"]["byzantine_partitions"] == second["config"]["byzantine_partitions"]
    other, _ = _run(dataclasses.replace(cfg, seed=1), id_seed=0)
    assert _numbers(other) != _numbers(first)


def test_the_model_learns_and_the_result_follows_the_schema() -> None:
    result, _ = _run(dataclasses.replace(BASE, rounds=4))
    assert set(result) == {"config", "rounds", "final"}
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3, 4]
    keys = {"round", "loss", "accuracy", "rejected", "bytes_up", "bytes_down", "seconds",
            "train_loss", "gap", "metrics", "missing", "asr"}  # fmt: skip
    assert all(set(r) == keys for r in result["rounds"])
    assert [r["missing"] for r in result["rounds"]] == [0, 0, 0, 0]  # every node replied
    assert result["final"]["missing"] == 0
    accuracies = [r["accuracy"] for r in result["rounds"]]
    assert accuracies[-1] > 0.8 > accuracies[0] - 0.3  # digits, 8 IID clients
    assert result["final"]["accuracy"] == accuracies[-1]
    assert result["config"]["model"] == "mlp" and result["config"]["f"] == 0
    json.dumps(result, allow_nan=False)


def test_bytes_are_the_serialised_messages_and_scale_with_the_clients_sampled() -> None:
    cfg = dataclasses.replace(BASE, clients_per_round=3, rounds=2)
    result, grid = _run(cfg)
    train_sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    train_replies = [m for m in grid.replies if m.metadata.message_type == "train"]
    assert len(train_sent) == 3 * 2
    down = sum(len(message_to_proto(m).SerializeToString()) for m in train_sent)
    up = sum(len(message_to_proto(m).SerializeToString()) for m in train_replies)
    assert sum(r["bytes_down"] for r in result["rounds"]) == down
    assert sum(r["bytes_up"] for r in result["rounds"]) == up
    for r in result["rounds"]:  # float32 weights dominate: 4 bytes a parameter, per client
        assert 3 * 4 * DIGITS_MLP_PARAMS < r["bytes_down"] < 3 * (4 * DIGITS_MLP_PARAMS + 3000)
        assert 3 * 4 * DIGITS_MLP_PARAMS < r["bytes_up"] < 3 * (4 * DIGITS_MLP_PARAMS + 3000)


def test_byzantine_clients_are_the_seeded_partitions_and_their_replies_are_rejected() -> None:
    cfg = dataclasses.replace(BASE, attack="non-finite", byzantine=3, rounds=2)
    result, _ = _run(cfg, id_seed=5)
    expected = byzantine_partitions(prepare(cfg))
    assert result["config"]["byzantine_partitions"] == expected
    assert [r["rejected"] for r in result["rounds"]] == [3, 3]
    assert all(math.isfinite(r["accuracy"]) for r in result["rounds"])


def test_label_flip_reaches_only_the_byzantine_clients() -> None:
    cfg = dataclasses.replace(BASE, attack="label-flip", byzantine=2, rounds=1)
    _, grid = _run(cfg)
    marked = {
        grid.partition_of[m.metadata.dst_node_id]
        for m in grid.sent
        if m.metadata.message_type == "train"
        and m.content["config"].get("byzantine-attack") == "label-flip"
    }
    assert marked == set(byzantine_partitions(prepare(cfg)))


def test_fedavg_breaks_under_sign_flip_where_the_median_survives() -> None:
    attack = {"attack": "sign-flip:scale=10", "byzantine": 2, "rounds": 4}
    fedavg, _ = _run(dataclasses.replace(BASE, method="fedavg", **attack))
    median, _ = _run(dataclasses.replace(BASE, **attack))
    assert median["final"]["accuracy"] > 0.75
    assert not fedavg["final"]["accuracy"] > 0.3  # NaN (diverged) counts as broken


def test_on_round_sees_every_round_in_order() -> None:
    seen: list[int] = []
    train_on_grid(ShuffledGrid(4, 0), dataclasses.replace(BASE, clients=4, rounds=3),
                  on_round=lambda cfg, r: seen.append(r.round))  # fmt: skip
    assert seen == [1, 2, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"method": "byzsgd", "params": {"n_servers": 4}}, r"n_servers >= 3 f_servers \+ 2"),
        ({"aggregator": "nosuch"}, "nosuch"),
        ({"attack": "nosuch"}, "nosuch"),
        ({"dataset": "cifar"}, "cifar"),
        ({"model": "resnet"}, "resnet"),
        ({"partition": "dirichlet:-1"}, "alpha"),
        ({"byzantine": 9}, "byzantine=9"),
        ({"compressor": "topk:0.1"}, "compressor"),
        ({"method": "fedavg", "params": {"nosuch": 1}}, "nosuch"),
        ({"aggregator": "krum", "byzantine": 3}, "Krum"),
    ],
)
def test_bad_configs_fail_before_anything_starts(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_experiments([BASE, dataclasses.replace(BASE, **change)])


def test_missing_partition_answers_are_reported() -> None:
    cfg = dataclasses.replace(BASE, attack="sign-flip", byzantine=2, rounds=1)
    with pytest.raises(RuntimeError, match="no node reported Byzantine partition"):
        train_on_grid(ShuffledGrid(cfg.clients, 0), cfg, partitions={})


@pytest.mark.slow
@pytest.mark.serial  # a local SuperLink, flwr run and Ray
def test_real_simulation_is_reproducible_alone_or_batched(tmp_path, monkeypatch) -> None:
    """On Flower's simulation runtime (``flwr run``, Ray, random node IDs per run): the same
    config gives the same numbers when run alone and when run after another experiment with
    the same clients, which the engine runs in the same ``flwr run`` (one ``flwr-simulation``
    and one Ray for both, the ClientApp actors and their state shared)."""
    from flwr_byz.simulations.simulation import SimulationRuntime

    runs: list[dict] = []
    start_run = SimulationRuntime.start_run

    def counted(self, app, run_config, clients):  # type: ignore[no-untyped-def]
        runs.append(dict(run_config))
        return start_run(self, app, run_config, clients)

    monkeypatch.setattr(SimulationRuntime, "start_run", counted)
    cfg = dataclasses.replace(
        BASE,
        attack="alie",
        byzantine=2,
        clients_per_round=6,
        rounds=3,
        out=str(tmp_path / "a.json"),
    )
    other = dataclasses.replace(BASE, method="fedavg", rounds=2)
    batched = run_experiments([other, cfg])
    assert len(runs) == 1 and "runs-file" in runs[0]  # ONE flwr run for the group
    alone = run_experiment(dataclasses.replace(cfg, out=None))
    assert len(runs) == 2 and runs[1]["method"] == "robust-fedavg"  # a run of its own
    # identical training; the bytes differ by a few because message/run IDs are random
    metrics = [(r.loss, r.accuracy, r.rejected) for r in alone.rounds]
    assert metrics == [(r.loss, r.accuracy, r.rejected) for r in batched[1].rounds]
    for a, b in zip(alone.rounds, batched[1].rounds, strict=True):
        assert abs(a.bytes_up - b.bytes_up) <= 6 * 16 and abs(a.bytes_down - b.bytes_down) <= 96
    assert json.loads((tmp_path / "a.json").read_text())["rounds"] == batched[1].to_dict()["rounds"]
    assert batched[0].config["method"] == "fedavg" and len(batched[0].rounds) == 2
    assert torch.isfinite(torch.tensor([r.loss for r in alone.rounds])).all()


def test_finished_results_are_written_before_a_later_failure(tmp_path, monkeypatch) -> None:
    """The simulation engine runs configs with the same clients in one ``flwr run`` on one
    SuperLink, the ServerApp saving each result as soon as it is done; a failing config
    leaves the results written before it (here the runtime's run is this process's
    ServerApp body on a ShuffledGrid, config after config)."""
    from flwr_byz.simulations import simulation

    class Runtime:
        def __init__(self, ray_address=None, verbose=False, device="cpu"):  # type: ignore[no-untyped-def]
            pass

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            started.append(self)

        def run_group(self, configs, on_round=None):  # type: ignore[no-untyped-def]
            groups.append([cfg.seed for cfg in configs])
            results = []
            for cfg in configs:
                if cfg.seed == 1:
                    raise RuntimeError("boom")
                result = train_on_grid(ShuffledGrid(cfg.clients, 0), cfg, on_round)
                result.save(cfg.out)
                results.append(result)
            return results

    started: list = []
    groups: list = []
    monkeypatch.setattr(simulation, "SimulationRuntime", Runtime)
    first = dataclasses.replace(BASE, clients=4, rounds=1, out=str(tmp_path / "first.json"))
    second = dataclasses.replace(first, seed=1, out=str(tmp_path / "second.json"))
    with pytest.raises(RuntimeError, match="boom"):
        run_experiments([first, second])
    assert len(started) == 1  # one SuperLink for both, stopped on the error
    assert groups == [[0, 1]]  # one flwr run for both (the same clients)
    assert json.loads((tmp_path / "first.json").read_text())["config"]["seed"] == 0
    assert not (tmp_path / "second.json").exists()
