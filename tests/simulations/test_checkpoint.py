"""Checkpoints and resumed runs, lost nodes (``missing``, the round timeout) and Byzantine
injection on the nodes.

``Checkpoint``: the save/load round trip, the atomic write, the file holding tensors and JSON
only (read with ``weights_only=True``: a crafted pickle is refused in one line and runs nothing;
a version-1 file is refused), and the ``check`` of the resuming experiment. ``train_on_grid``
(``engine="local"``): a run stopped after round k and resumed from its checkpoint gives the
numbers and the model of an uninterrupted run for every method, client state included (the
nodes' files beside the checkpoint; also after a kill that left a later round's client files),
with server- and node-side attacks; a finished run continues to more rounds; a checkpoint of
another experiment is refused; ``resume`` without a file starts afresh. A grid that loses one
node's replies yields ``missing == 1`` each round, and the round timeout reaches
``send_and_receive``. With ``injection="nodes"`` the server attacks no reply.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message

from flwr_byz.clients import byzantine_mod
from flwr_byz.protocol.keys import ATTACK_KEY
from flwr_byz.simulations import app as client_side
from flwr_byz.simulations.checkpoint import (
    CHECKPOINT_VERSION,
    RESUMABLE_OPTIONS,
    Checkpoint,
    client_state_dir,
    remove,
)
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiment
from flwr_byz.simulations.local import LocalGrid, client_app
from flwr_byz.simulations.metering import discover_partitions
from flwr_byz.simulations.result import Result, RoundRecord
from flwr_byz.simulations.runner import (
    byzantine_partitions,
    prepare,
    train_on_grid,
)

from ..clients.gradient_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

#: The settings these tests were written with, explicit (each method's own defaults differ).
BASE = ExperimentConfig(
    dataset="digits", clients=5, rounds=4, aggregator="median", lr=0.05, batch_size=32,
    local_epochs=2, momentum=0.9, compressor="none",
)  # fmt: skip


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
    with pytest.raises(
        TypeError, match=r"cannot save checkpoint\['strategy'\]: a builtins.function"
    ):
        _checkpoint(3, strategy=lambda: 0).save(path)  # neither a tensor nor JSON
    assert path.read_bytes() == before
    assert Checkpoint.load(path).round == 2
    assert _temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]


def test_a_failing_first_save_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    with pytest.raises(TypeError, match="cannot save"):
        _checkpoint(strategy={"rng": __import__("random").Random(0)}).save(path)
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_tensors_and_json_only(tmp_path: Path) -> None:
    path = _checkpoint().save(tmp_path / "run.ckpt")
    payload = torch.load(path, weights_only=True)  # nothing but tensors and JSON values
    assert payload["version"] == CHECKPOINT_VERSION == 2
    assert set(payload) == {"version", "config", "round", "arrays", "strategy", "records",
                            "attack", "attacked_replies", "torch_rng"}  # fmt: skip

    def plain(value: Any) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (bool, int, float, str, torch.Tensor)

    assert plain(payload)
    assert payload["records"][0]["loss"] == 2.0 and payload["round"] == 3


class _Marker:
    """A crafted pickle: unpickling it creates the file ``path`` (as a shell command would)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    payload = {"version": CHECKPOINT_VERSION, "strategy": _Marker(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match="is not a flwr-byz checkpoint") as info:
        Checkpoint.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Marker(marker)))  # the marker works: unpickling runs it
    assert marker.exists()


def test_resuming_from_a_crafted_checkpoint_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "run.ckpt"
    torch.save({"version": CHECKPOINT_VERSION, "strategy": _Marker(marker)}, path)
    cfg = dataclasses.replace(BASE, rounds=2, checkpoint=str(path), resume=True)
    with pytest.raises(ValueError, match=f"{path} is not a flwr-byz checkpoint"):
        run_experiment(cfg, engine="local")
    assert not marker.exists()


def test_a_version_1_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    """Version 1 pickled the strategy object: refused, with what to do, unpickling nothing."""
    from flwr_byz.strategies import RobustFedAvg

    path = tmp_path / "old.ckpt"
    torch.save({"version": 1, "round": 2, "strategy": RobustFedAvg()}, path)
    with pytest.raises(ValueError) as info:
        Checkpoint.load(path)
    message = str(info.value)
    assert message.startswith(f"{path} is an older flwr-byz checkpoint (version 1")
    assert "without --resume" in message and "\n" not in message


def test_remove_deletes_the_checkpoint_and_the_client_state(tmp_path: Path) -> None:
    path = _checkpoint().save(tmp_path / "run.ckpt")
    (client_state_dir(path) / "0").mkdir(parents=True)
    (client_state_dir(path) / "0" / "round-3.pt").write_bytes(b"x")
    assert client_state_dir(path) == (tmp_path / "run.ckpt.clients").resolve()
    remove(path)
    assert list(tmp_path.iterdir()) == []
    remove(path)  # nothing left: no error


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Checkpoint.load(tmp_path / "absent.ckpt")


def test_load_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"this is not a checkpoint\n")
    with pytest.raises(ValueError, match="not a readable flwr-byz checkpoint") as info:
        Checkpoint.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"arrays": {"w": 1}}, "the model is not a list"),
        ({"records": [{"round": 1}]}, "missing .* 'loss'"),
        ({"strategy": [1]}, "the strategy state is not a dict"),
        ({"torch_rng": 3}, "RNG"),
    ],
)
def test_load_refuses_a_malformed_file(tmp_path: Path, change: dict, named: str) -> None:
    path = _checkpoint().save(tmp_path / "run.ckpt")
    payload = torch.load(path, weights_only=True) | change
    torch.save(payload, path)
    with pytest.raises(ValueError, match=f"{path} is a malformed flwr-byz checkpoint: .*{named}"):
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


SLOW = pytest.mark.slow

#: Every method, with stateful aggregators (CC, bucketing), attacks (Gaussian's generator,
#: ShiftBack's surface), partial participation (the sampling generator; nodes resuming from an
#: older round's state) and client state (momenta, EF21's g_i, mu2-SGD, the ByzSGD worker).
EVERY_METHOD = {
    "robust-momentum": pytest.param(
        {"method": "robust-momentum", "aggregator": "cc", "clients_per_round": 3}
    ),
    "byz-ef21-sgdm": pytest.param(
        {
            "method": "byz-ef21-sgdm",
            "compressor": "randk:0.1",
            "clients_per_round": 4,
            "byzantine": 1,
            "attack": "gaussian",
        }
    ),
    "mu2sgd": pytest.param({"method": "mu2sgd", "clients_per_round": 4}),
    "byzsgd-filter": pytest.param(
        {
            "method": "byzsgd",
            "aggregator": "mda",
            "params": {"worker_rule": "filter", "gather_period": 3, "server_attack": "random"},
        }
    ),
    "fedavg": pytest.param({"method": "fedavg"}, marks=SLOW),  # Flower's own: no state
    "robust-fedavg-cc-sign-flip": pytest.param(
        {"method": "robust-fedavg", "aggregator": "cc", "byzantine": 1, "attack": "sign-flip"}
    ),
    "robust-fedavg-alie": pytest.param(
        {"method": "robust-fedavg", "byzantine": 1, "attack": "alie"}
    ),
    "robust-fedavg-shift-back": pytest.param(
        {"method": "robust-fedavg", "byzantine": 1, "attack": "shift-back"}
    ),
    "robust-fedavg-bucketing-gaussian": pytest.param(
        {
            "method": "robust-fedavg",
            "aggregator": "bucketing:2+cwmed",
            "byzantine": 1,
            "attack": "gaussian",
            "clients_per_round": 4,
        }
    ),
    "flower-krum": pytest.param(
        {"method": "flower-krum", "clients": 6, "byzantine": 1, "attack": "sign-flip"}
    ),
    "fltrust-sign-flip": pytest.param(  # the root training: seeded per round, no state
        {"method": "fltrust", "byzantine": 1, "attack": "sign-flip", "params": {"root_size": 40}}
    ),
    "robust-momentum-ipm": pytest.param(
        {"method": "robust-momentum", "byzantine": 1, "attack": "ipm"}
    ),
    "byz-vr-marina-pp": pytest.param(
        {
            "method": "byz-vr-marina-pp",
            "compressor": "randk:0.1",
            "clients_per_round": 3,
            "byzantine": 1,
            "attack": "alie",
        }
    ),
    "byz-ef21": pytest.param(
        {"method": "byz-ef21", "compressor": "topk:0.1", "byzantine": 1, "attack": "shift-back"}
    ),
    "br-csgd": pytest.param({"method": "br-csgd", "compressor": "topk:0.1"}),
    "mu2sgd-min-max": pytest.param({"method": "mu2sgd", "byzantine": 1, "attack": "min-max"}),
    "byzsgd-mda": pytest.param({"method": "byzsgd", "aggregator": "mda"}),
}


@pytest.mark.parametrize("changes", list(EVERY_METHOD.values()), ids=list(EVERY_METHOD))
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


CLIENT_STATE = {
    "robust-momentum": EVERY_METHOD["robust-momentum"].values[0],
    "byz-ef21-sgdm": EVERY_METHOD["byz-ef21-sgdm"].values[0],
}


@pytest.mark.parametrize("changes", list(CLIENT_STATE.values()), ids=list(CLIENT_STATE))
def test_without_the_client_state_a_resumed_run_differs(tmp_path: Path, changes: dict) -> None:
    """The nodes' files matter: the same resume without them restarts the clients' momenta
    (and EF21's copies: resets), and the numbers change."""
    cfg = dataclasses.replace(BASE, **changes)
    path = tmp_path / "run.ckpt"
    whole = run_experiment(dataclasses.replace(cfg, checkpoint=str(path)), engine="local")
    with pytest.raises(Interrupted):
        run_experiment(
            dataclasses.replace(cfg, checkpoint=str(path)), on_round=_stop_after(2), engine="local"
        )
    folder = client_state_dir(path)
    assert {p.name for p in folder.iterdir()} <= {str(p) for p in range(cfg.clients)}
    files = {p.name: sorted(f.name for f in (folder / p.name).iterdir()) for p in folder.iterdir()}
    assert all(names and set(names) <= {"round-1.pt", "round-2.pt"} for names in files.values())
    shutil.rmtree(folder)
    resumed = run_experiment(
        dataclasses.replace(cfg, checkpoint=str(path), resume=True), engine="local"
    )
    assert _numbers(resumed)[:2] == _numbers(whole)[:2]
    assert _numbers(resumed)[2:] != _numbers(whole)[2:]


def test_a_kill_after_the_clients_saved_a_later_round_resumes_identically(
    tmp_path: Path,
) -> None:
    """Killed during round 3 after the nodes saved their round-3 state, before the round-3
    checkpoint: the resumed run takes each node's latest state of a round <= 2."""
    cfg = dataclasses.replace(BASE, **CLIENT_STATE["byz-ef21-sgdm"])
    whole = run_experiment(
        dataclasses.replace(cfg, checkpoint=str(tmp_path / "whole.ckpt")), engine="local"
    )
    path = tmp_path / "run.ckpt"
    kept = tmp_path / "round-2.ckpt"

    def on_round(c: ExperimentConfig, record: RoundRecord) -> None:
        if record.round == 2:
            shutil.copy(path, kept)
        if record.round == 3:
            raise Interrupted(3)

    with pytest.raises(Interrupted):
        run_experiment(dataclasses.replace(cfg, checkpoint=str(path)), on_round, engine="local")
    shutil.copy(kept, path)  # the checkpoint as the kill left it: round 2
    rounds = {int(f.stem.split("-")[1]) for f in client_state_dir(path).glob("*/round-*.pt")}
    assert 3 in rounds  # the later round's client files are there
    resumed = run_experiment(
        dataclasses.replace(cfg, checkpoint=str(path), resume=True), engine="local"
    )
    assert _numbers(resumed) == _numbers(whole)


def test_checkpointing_changes_no_number(tmp_path: Path) -> None:
    """The client-state folder and the resumed round travel in the train config, but the
    metered bytes leave them out: a checkpointed run has the numbers of one without."""
    cfg = dataclasses.replace(BASE, rounds=2, **CLIENT_STATE["robust-momentum"])
    plain = run_experiment(cfg, engine="local")
    saved = run_experiment(
        dataclasses.replace(cfg, checkpoint=str(tmp_path / "a-long-name" / "run.ckpt")),
        engine="local",
    )
    assert _numbers(plain) == _numbers(saved)


class ByzantineNodesGrid(LocalGrid):
    """A LocalGrid whose train messages go through ``byzantine_mod`` (as the app's
    ClientApp), with partition ``byzantine`` configured to run ``attack`` itself (as a
    SuperNode started with a ``byzantine-attack`` node config)."""

    def __init__(self, num_nodes: int, byzantine: int, attack: str) -> None:
        super().__init__(num_nodes, self._node)
        self.contexts[byzantine + 1].node_config[ATTACK_KEY] = attack

    @staticmethod
    def _node(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type != "train":
            return client_app(msg, context)
        return byzantine_mod(msg, context, client_side.train)


def test_node_injection_with_client_state_resumes_identically(tmp_path: Path) -> None:
    """Byz-EF21-SGDM with a node that forges its own replies (its g_i is the forged copy,
    saved by the mod): resumed = uninterrupted, and the attack changes the numbers."""
    cfg = dataclasses.replace(BASE, method="byz-ef21-sgdm", compressor="topk:0.1",
                              byzantine=1, attack="sign-flip", injection="nodes")  # fmt: skip
    byz = byzantine_partitions(prepare(cfg))[0]

    def run(path: Path, **changes: Any) -> Result:
        grid = ByzantineNodesGrid(cfg.clients, byz, "sign-flip:scale=3")
        return _train_on(grid, dataclasses.replace(cfg, checkpoint=str(path), **changes))

    whole = run(tmp_path / "whole.ckpt")
    with pytest.raises(Interrupted):
        grid = ByzantineNodesGrid(cfg.clients, byz, "sign-flip:scale=3")
        c = prepare(dataclasses.replace(cfg, checkpoint=str(tmp_path / "run.ckpt")))
        preload = {"dataset": c.dataset, "partition": c.partition, "seed": c.seed}
        train_on_grid(grid, c, _stop_after(2), discover_partitions(grid, preload))
    resumed = run(tmp_path / "run.ckpt", resume=True)
    assert _numbers(resumed) == _numbers(whole)
    honest = _train_on(LocalGrid(cfg.clients), cfg)
    assert _numbers(honest) != _numbers(whole)


@pytest.mark.slow
@pytest.mark.serial  # a local SuperLink, flwr run and Ray
def test_a_resumed_run_on_the_simulation_engine_continues_the_client_state(
    tmp_path: Path,
) -> None:
    """On Flower's engine (Ray): a run of 2 rounds, then resumed to 4 in a new simulation
    (fresh node contexts: the momenta come from the files), gives the local engine's numbers of
    an uninterrupted run (bytes aside: Flower's message IDs are random)."""
    cfg = dataclasses.replace(BASE, **CLIENT_STATE["robust-momentum"])
    whole = run_experiment(cfg, engine="local")
    path = tmp_path / "run.ckpt"
    run_experiment(dataclasses.replace(cfg, rounds=2, checkpoint=str(path)))
    resumed = run_experiment(dataclasses.replace(cfg, checkpoint=str(path), resume=True))
    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4]
    metrics = [(r.loss, r.accuracy, r.rejected, r.metrics) for r in resumed.rounds]
    assert metrics == [(r.loss, r.accuracy, r.rejected, r.metrics) for r in whole.rounds]
    assert {p.name for p in client_state_dir(path).iterdir()} <= {str(p) for p in range(5)}


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
