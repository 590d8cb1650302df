"""Checkpoints and resumed runs, lost nodes (``missing``, the round timeout) and Byzantine
injection on the nodes.

``Checkpoint``: the save/load round trip, the atomic write, the errors for files that are not
a checkpoint and the ``check`` of the resuming experiment. ``train_on_grid`` (``engine="local"``):
a run stopped after round k and resumed from its checkpoint gives the numbers and the model of an
uninterrupted run for every method that keeps no client state; a finished run continues to more
rounds; a checkpoint of another experiment is refused; ``resume`` without a file starts afresh.
A grid that loses one node's replies yields ``missing == 1`` each round, and the round timeout
reaches ``send_and_receive``. With ``injection="nodes"`` the server attacks no reply.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, Message

from flwr_byz.simulations.checkpoint import (
    CHECKPOINT_VERSION,
    RESUMABLE_OPTIONS,
    Checkpoint,
)
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiment
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.simulations.metering import discover_partitions
from flwr_byz.simulations.result import Result, RoundRecord
from flwr_byz.simulations.runner import (
    byzantine_partitions,
    prepare,
    train_on_grid,
)

from ..clients.gradient_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

BASE = ExperimentConfig(dataset="digits", clients=5, rounds=4)


# --- helpers -------------------------------------------------------------------------------


class Interrupted(Exception):
    """Raised by ``on_round`` to stop a run after a given round (as a killed ServerApp)."""


def _stop_after(k: int) -> Any:
    def on_round(cfg: ExperimentConfig, record: RoundRecord) -> None:
        if record.round == k:
            raise Interrupted(k)

    return on_round


def _nan_is_nan(value: Any) -> Any:
    """``value`` with NaN floats replaced by a marker, so that ``==`` compares NaN as equal
    (a NaN loaded from a checkpoint is another object than the run's own NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {k: _nan_is_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_nan_is_nan(v) for v in value)
    return value


def _numbers(result: Result) -> list[tuple]:
    """Every number of every round but the wall-clock seconds (NaN equal to NaN)."""
    return _nan_is_nan([
        (r.round, r.loss, r.accuracy, r.rejected, r.bytes_up, r.bytes_down, r.train_loss,
         r.gap, r.metrics, r.missing)
        for r in result.rounds
    ])  # fmt: skip


def _final_numbers(result: Result) -> dict[str, Any]:
    return _nan_is_nan({k: v for k, v in result.final.items() if k != "seconds_per_round"})


def _state(path: Path) -> dict[str, torch.Tensor]:
    return Checkpoint.load(path).arrays.to_torch_state_dict()


def _same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run_interrupted(cfg: ExperimentConfig, path: Path, stop: int) -> Result:
    """Run ``cfg`` with a checkpoint at ``path``, stop it after round ``stop``, resume it."""
    cfg = dataclasses.replace(cfg, checkpoint=str(path))
    with pytest.raises(Interrupted):
        run_experiment(cfg, on_round=_stop_after(stop), engine="local")
    saved = Checkpoint.load(path)
    assert saved.round == stop
    assert [r.round for r in saved.records] == list(range(1, stop + 1))
    ran: list[int] = []
    result = run_experiment(
        dataclasses.replace(cfg, resume=True),
        on_round=lambda c, r: ran.append(r.round),
        engine="local",
    )
    assert ran == list(range(stop + 1, cfg.rounds + 1))  # it continued; it did not restart
    assert [r.seconds for r in result.rounds[:stop]] == [r.seconds for r in saved.records]
    return result


def _arrays(seed: int = 0) -> ArrayRecord:
    gen = torch.Generator().manual_seed(seed)
    return ArrayRecord({"w": torch.randn(3, 4, generator=gen), "b": torch.zeros(4)})


def _checkpoint(round_: int = 3, **changes: Any) -> Checkpoint:
    records = [
        RoundRecord(r, 2.0 / r, 0.1 * r, rejected=r % 2, bytes_up=10 * r, bytes_down=20 * r,
                    seconds=0.5, train_loss=1.0 / r, gap=0.0, metrics={"m": float(r)},
                    missing=r // 2)
        for r in range(1, round_ + 1)
    ]  # fmt: skip
    values: dict[str, Any] = {
        "config": prepare(BASE).to_dict(),
        "round": round_,
        "arrays": _arrays(),
        "strategy": {"state": [1, 2, 3], "tensor": torch.arange(5.0)},
        "records": records,
        "attack": None,
        "attacked_replies": 7,
        "torch_rng": torch.get_rng_state(),
    }
    values.update(changes)
    return Checkpoint(**values)


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- Checkpoint: the file ------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    ckpt = _checkpoint()
    path = tmp_path / "deep" / "dir" / "run.ckpt"  # parents created
    assert ckpt.save(path) == path and path.is_file()
    back = Checkpoint.load(path)
    assert back.config == ckpt.config and back.round == 3
    assert _nan_is_nan([vars(r) for r in back.records]) == _nan_is_nan(
        [vars(r) for r in ckpt.records]
    )
    assert back.attack is None and back.attacked_replies == 7
    assert _same_model(back.arrays.to_torch_state_dict(), ckpt.arrays.to_torch_state_dict())
    assert back.strategy["state"] == [1, 2, 3]
    assert torch.equal(back.strategy["tensor"], torch.arange(5.0))
    assert back.torch_rng is not None and ckpt.torch_rng is not None
    assert torch.equal(back.torch_rng, ckpt.torch_rng)
    assert Checkpoint.load(str(path)).round == 3  # a str path works too


def test_save_overwrites_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    _checkpoint(2).save(path)
    _checkpoint(3).save(path)
    assert Checkpoint.load(path).round == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]


def test_a_failing_save_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    _checkpoint(2).save(path)
    before = path.read_bytes()
    with pytest.raises(Exception, match=r"(?i)pickle|lambda|local"):
        _checkpoint(3, strategy=lambda: 0).save(path)  # a lambda cannot be pickled
    assert path.read_bytes() == before
    assert Checkpoint.load(path).round == 2
    assert _temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]


def test_a_failing_first_save_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    with pytest.raises(Exception):  # noqa: B017 (whatever the pickler raises)
        _checkpoint(strategy=lambda: 0).save(path)
    assert list(tmp_path.iterdir()) == []


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Checkpoint.load(tmp_path / "absent.ckpt")


def test_load_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"this is not a checkpoint\n")
    with pytest.raises(ValueError, match="not a readable flwr-byz checkpoint"):
        Checkpoint.load(path)


@pytest.mark.parametrize(
    "payload",
    [
        {"version": CHECKPOINT_VERSION + 1, "round": 1},
        {"version": 0},
        {"round": 1},
        [1, 2, 3],
        "checkpoint",
    ],
    ids=["newer", "older", "no-version", "list", "str"],
)
def test_load_refuses_another_version_or_layout(tmp_path: Path, payload: Any) -> None:
    path = tmp_path / "other.ckpt"
    torch.save(payload, path)
    with pytest.raises(
        ValueError, match=f"not a flwr-byz checkpoint of version {CHECKPOINT_VERSION}"
    ):
        Checkpoint.load(path)


def test_resumable_options() -> None:
    assert RESUMABLE_OPTIONS == {
        "rounds", "out", "checkpoint", "resume", "round_timeout", "ray_address", "device",
        "threads",
    }  # fmt: skip
    assert RESUMABLE_OPTIONS < set(ExperimentConfig().to_dict())


# --- Checkpoint.check ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"rounds": 3},  # = the checkpoint's round: nothing left to do, but the same run
        {"rounds": 50},
        {"out": "results/x.json"},
        {"checkpoint": "elsewhere.ckpt", "resume": True},
        {"round_timeout": 5.0},
        {"ray_address": "auto"},
    ],
)
def test_check_accepts_the_same_experiment(changes: dict[str, Any]) -> None:
    config = prepare(dataclasses.replace(BASE, **changes)).to_dict()
    _checkpoint(3).check(config)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"aggregator": "cc"}, "aggregator: 'median' -> 'cc'"),
        ({"seed": 1}, "seed: 0 -> 1"),
        ({"lr": 0.1}, "lr: 0.05 -> 0.1"),
        ({"clients": 6}, "clients: 5 -> 6"),
        ({"injection": "nodes"}, "injection: 'server' -> 'nodes'"),
        ({"byzantine": 1, "attack": "sign-flip"}, "attack: 'none' -> 'sign-flip'"),
    ],
)
def test_check_refuses_another_experiment(changes: dict[str, Any], named: str) -> None:
    config = prepare(dataclasses.replace(BASE, **changes)).to_dict()
    with pytest.raises(ValueError, match="the checkpoint is of another experiment") as info:
        _checkpoint(3).check(config)
    assert named in str(info.value)


def test_check_refuses_an_unknown_or_missing_option() -> None:
    config = prepare(BASE).to_dict()
    with pytest.raises(ValueError, match=r"another experiment \(extra: None -> 1\)"):
        _checkpoint(3).check({**config, "extra": 1})
    del config["partition"]
    with pytest.raises(ValueError, match=r"another experiment \(partition: 'iid' -> None\)"):
        _checkpoint(3).check(config)


def test_check_refuses_fewer_rounds_than_done() -> None:
    config = prepare(dataclasses.replace(BASE, rounds=2)).to_dict()
    with pytest.raises(ValueError, match="the checkpoint is at round 3, past rounds=2"):
        _checkpoint(3).check(config)


# --- resumed runs --------------------------------------------------------------------------


DETERMINISTIC = {
    "fedavg": {"method": "fedavg"},
    "robust-fedavg-cc-sign-flip": {
        "method": "robust-fedavg",
        "aggregator": "cc",
        "byzantine": 1,
        "attack": "sign-flip",
    },
    "robust-fedavg-alie": {"method": "robust-fedavg", "byzantine": 1, "attack": "alie"},
    "robust-fedavg-shift-back": {
        "method": "robust-fedavg",
        "byzantine": 1,
        "attack": "shift-back",
    },
    "flower-krum": {"method": "flower-krum", "clients": 6, "byzantine": 1, "attack": "sign-flip"},
    "byz-vr-marina-pp": {"method": "byz-vr-marina-pp", "compressor": "randk:0.1"},
    "br-csgd": {"method": "br-csgd", "compressor": "topk:0.1"},
    "byzsgd-mda": {"method": "byzsgd", "aggregator": "mda"},
}


@pytest.mark.parametrize("changes", list(DETERMINISTIC.values()), ids=list(DETERMINISTIC))
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path: Path, changes: dict) -> None:
    cfg = dataclasses.replace(BASE, **changes)
    whole = run_experiment(
        dataclasses.replace(cfg, checkpoint=str(tmp_path / "whole.ckpt")), engine="local"
    )
    resumed = _run_interrupted(cfg, tmp_path / "resumed.ckpt", stop=2)
    assert [r.round for r in resumed.rounds] == list(range(1, cfg.rounds + 1))
    assert _numbers(resumed) == _numbers(whole)
    assert _final_numbers(resumed) == _final_numbers(whole)
    assert resumed.config == {**whole.config, "checkpoint": resumed.config["checkpoint"],
                              "resume": True}  # fmt: skip
    assert _same_model(_state(tmp_path / "resumed.ckpt"), _state(tmp_path / "whole.ckpt"))
    assert Checkpoint.load(tmp_path / "resumed.ckpt").round == cfg.rounds
    if cfg.byzantine:
        assert resumed.config["byzantine_partitions"] == whole.config["byzantine_partitions"]
        assert resumed.config["byzantine_partitions"]
    assert all(math.isfinite(r.loss) for r in whole.rounds)


def test_the_documented_example_resumes_identically(tmp_path: Path) -> None:
    cfg = ExperimentConfig(dataset="digits", clients=6, rounds=5, byzantine=1,
                           attack="sign-flip", method="robust-fedavg", aggregator="cc")  # fmt: skip
    whole = run_experiment(cfg, engine="local")
    resumed = _run_interrupted(cfg, tmp_path / "run.ckpt", stop=3)
    assert [(r.loss, r.accuracy) for r in resumed.rounds] == [
        (r.loss, r.accuracy) for r in whole.rounds
    ]
    assert len(resumed.rounds) == 5
    assert whole.rounds[-1].accuracy > whole.rounds[0].accuracy


def test_a_finished_run_continues_to_more_rounds(tmp_path: Path) -> None:
    cfg = dataclasses.replace(BASE, method="robust-fedavg", aggregator="cc", byzantine=1,
                              attack="sign-flip")  # fmt: skip
    whole = run_experiment(
        dataclasses.replace(cfg, rounds=5, checkpoint=str(tmp_path / "whole.ckpt")),
        engine="local",
    )
    path = tmp_path / "run.ckpt"
    short = run_experiment(dataclasses.replace(cfg, rounds=3, checkpoint=str(path)), engine="local")
    assert Checkpoint.load(path).round == 3
    assert _numbers(short) == _numbers(whole)[:3]
    ran: list[int] = []
    longer = run_experiment(
        dataclasses.replace(cfg, rounds=5, checkpoint=str(path), resume=True),
        on_round=lambda c, r: ran.append(r.round),
        engine="local",
    )
    assert ran == [4, 5]
    assert [r.round for r in longer.rounds] == [1, 2, 3, 4, 5]
    assert _numbers(longer) == _numbers(whole)
    assert longer.config["rounds"] == 5
    assert _same_model(_state(path), _state(tmp_path / "whole.ckpt"))


def test_resuming_a_finished_run_with_the_same_rounds_does_nothing(tmp_path: Path) -> None:
    cfg = dataclasses.replace(BASE, rounds=2, checkpoint=str(tmp_path / "run.ckpt"))
    first = run_experiment(cfg, engine="local")
    seen: list[int] = []
    again = run_experiment(
        dataclasses.replace(cfg, resume=True),
        on_round=lambda c, r: seen.append(r.round),
        engine="local",
    )
    assert seen == []  # no round ran
    assert _numbers(again) == _numbers(first)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"aggregator": "cwmed"}, "aggregator"),
        ({"seed": 3}, "seed"),
        ({"rounds": 1}, "past rounds=1"),
    ],
)
def test_resuming_another_experiment_is_refused(
    tmp_path: Path, changes: dict[str, Any], named: str
) -> None:
    path = tmp_path / "run.ckpt"
    cfg = dataclasses.replace(BASE, rounds=2, checkpoint=str(path))
    run_experiment(cfg, engine="local")
    before = path.read_bytes()
    other = dataclasses.replace(cfg, resume=True, **changes)
    with pytest.raises(ValueError, match=named):
        run_experiment(other, engine="local")
    assert path.read_bytes() == before  # the checkpoint is left alone


def test_resume_without_a_checkpoint_file_starts_at_round_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sub" / "run.ckpt"
    cfg = dataclasses.replace(BASE, rounds=3)
    ran: list[int] = []
    with caplog.at_level(logging.WARNING, logger="flwr"):
        resumed = run_experiment(
            dataclasses.replace(cfg, checkpoint=str(path), resume=True),
            on_round=lambda c, r: ran.append(r.round),
            engine="local",
        )
    assert "no checkpoint at" in caplog.text and "starting at round 1" in caplog.text
    assert ran == [1, 2, 3]
    assert [r.round for r in resumed.rounds] == [1, 2, 3]
    assert _numbers(resumed) == _numbers(run_experiment(cfg, engine="local"))
    assert Checkpoint.load(path).round == 3  # and it writes one as it goes


def test_a_client_state_method_resumes_and_finishes(tmp_path: Path) -> None:
    """Robust momentum's worker momenta start afresh after a resume (not bit-identical by
    design), but the run finishes every round with finite numbers."""
    cfg = dataclasses.replace(BASE, method="robust-momentum")
    resumed = _run_interrupted(cfg, tmp_path / "run.ckpt", stop=2)
    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4]
    assert all(math.isfinite(r.loss) and math.isfinite(r.accuracy) for r in resumed.rounds)
    assert math.isfinite(resumed.final["accuracy"])
    assert Checkpoint.load(tmp_path / "run.ckpt").round == 4


# --- lost nodes and the round timeout ------------------------------------------------------


class LossyGrid(LocalGrid):
    """A LocalGrid where node ``lost`` never answers a train message (lost mid-round); it
    records the ``timeout`` of every train ``send_and_receive``."""

    def __init__(self, num_nodes: int, lost: int | None) -> None:
        super().__init__(num_nodes)
        self.lost = lost
        self.timeouts: list[float | None] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if messages and all(m.metadata.message_type == "train" for m in messages):
            self.timeouts.append(timeout)
            messages = [m for m in messages if int(m.metadata.dst_node_id) != self.lost]
        return super().send_and_receive(messages, timeout=timeout)


def _train_on(grid: LocalGrid, cfg: ExperimentConfig) -> Result:
    cfg = prepare(cfg)
    preload = {"dataset": cfg.dataset, "partition": cfg.partition, "seed": cfg.seed}
    return train_on_grid(grid, cfg, partitions=discover_partitions(grid, preload))


ALIE = {"method": "robust-fedavg", "aggregator": "median", "byzantine": 1, "attack": "alie"}


@pytest.mark.parametrize(
    ("changes", "byzantine_lost"),
    [
        ({"method": "fedavg"}, False),
        ({"method": "robust-fedavg", "aggregator": "median"}, False),
        (ALIE, False),  # an honest node is lost; the server-side attack goes on
        (ALIE, True),  # the Byzantine node is lost
    ],
    ids=["fedavg", "robust-fedavg-median", "alie-honest-lost", "alie-byzantine-lost"],
)
def test_a_lost_node_is_counted_missing_every_round(
    changes: dict[str, Any], byzantine_lost: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = dataclasses.replace(BASE, rounds=3, **changes)
    byz = byzantine_partitions(prepare(cfg))
    honest = [p for p in range(cfg.clients) if p not in byz]
    lost = (byz[0] if byzantine_lost else honest[1]) + 1  # LocalGrid: node ID = partition + 1
    grid = LossyGrid(cfg.clients, lost=lost)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result = _train_on(grid, cfg)
    assert [r.missing for r in result.rounds] == [1, 1, 1]
    assert result.final["missing"] == 3
    assert f"round 1: 1 of 5 sampled nodes did not reply in time: {lost}" in caplog.text
    assert f"round 3: 1 of 5 sampled nodes did not reply in time: {lost}" in caplog.text
    accuracies = [r.accuracy for r in result.rounds]
    assert all(math.isfinite(a) for a in accuracies)
    assert accuracies[-1] > accuracies[0] and accuracies[-1] > 0.5
    # 4 replies a round (bytes_up) for 5 train messages (bytes_down)
    complete = _train_on(LossyGrid(cfg.clients, lost=None), cfg)
    assert [r.missing for r in complete.rounds] == [0, 0, 0]
    assert complete.final["missing"] == 0
    assert result.rounds[0].bytes_up < complete.rounds[0].bytes_up


@pytest.mark.parametrize(("round_timeout", "expected"), [(7.5, 7.5), (None, 3600.0)])
def test_the_round_timeout_reaches_send_and_receive(
    round_timeout: float | None, expected: float
) -> None:
    cfg = dataclasses.replace(BASE, rounds=2, round_timeout=round_timeout)
    grid = LossyGrid(cfg.clients, lost=None)
    _train_on(grid, cfg)
    assert grid.timeouts == [expected, expected]


def test_the_round_timeout_passes_through_the_byzantine_grid() -> None:
    cfg = dataclasses.replace(BASE, rounds=1, round_timeout=2.0, byzantine=1, attack="alie")
    grid = LossyGrid(cfg.clients, lost=None)
    _train_on(grid, cfg)
    assert grid.timeouts == [2.0]


# --- injection on the nodes ----------------------------------------------------------------


def test_injection_on_the_nodes_attacks_no_reply_on_the_server() -> None:
    cfg = dataclasses.replace(BASE, rounds=2, byzantine=1, attack="sign-flip:scale=10",
                              method="fedavg")  # fmt: skip
    nodes = run_experiment(dataclasses.replace(cfg, injection="nodes"), engine="local")
    server = run_experiment(cfg, engine="local")
    clean = run_experiment(dataclasses.replace(cfg, attack="none"), engine="local")
    assert _numbers(nodes) == _numbers(clean)  # the local nodes are honest
    assert _numbers(server) != _numbers(clean)  # the server-side attack is applied
    assert nodes.config["injection"] == "nodes"
    assert nodes.config["byzantine_partitions"] == server.config["byzantine_partitions"]
    assert len(nodes.config["byzantine_partitions"]) == 1
    assert clean.config["byzantine_partitions"] == []  # no attack: nobody is Byzantine


def test_checkpoint_file_is_written_after_each_round(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    rounds_seen: list[int] = []

    def on_round(cfg: ExperimentConfig, record: RoundRecord) -> None:
        saved = Checkpoint.load(path)  # written before on_round is called
        rounds_seen.append(saved.round)
        assert saved.round == record.round and saved.records[-1].loss == record.loss
        assert _temp_files(tmp_path) == []

    run_experiment(
        dataclasses.replace(BASE, rounds=3, checkpoint=str(path)), on_round, engine="local"
    )
    assert rounds_seen == [1, 2, 3]
    assert os.listdir(tmp_path) == ["run.ckpt"]
