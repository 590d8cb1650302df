"""``--device`` in every engine (``flwr_byz.simulations.devices``): the check before anything
runs, the device string on its way to the ClientApp (train message, node config) and to the
strategies' robust rule, the simulation runtime's GPU share, what a result records. The CUDA
runs at the end skip without a GPU: they compare 2 rounds on ``cuda`` with the same rounds on
the CPU."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from flwr_byz.protocol.keys import CONFIG_KEY, DEVICE_KEY
from flwr_byz.simulations import app as client_side
from flwr_byz.simulations import devices, runner, simulation
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.devices import client_gpus, resolve_device, visible_gpus
from flwr_byz.simulations.engines import run_experiment
from flwr_byz.simulations.local import ensure_task_identity, run_local
from flwr_byz.simulations.metering import message_bytes
from flwr_byz.simulations.simulation import SimulationRuntime, federation_config
from flwr_byz.strategies import method as method_module
from flwr_byz.strategies import robust_fedavg as fedavg_module
from flwr_byz.strategies.method import aggregate_on

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

NO_CUDA = "--device cuda: no CUDA device is available (torch.cuda.is_available() is False)"

FEDAVG = ExperimentConfig(
    method="robust-fedavg", aggregator="cwmed", dataset="digits", clients=4, rounds=2,
    lr=0.1, batch_size=16, local_epochs=1, seed=3, byzantine=1, attack="sign-flip",
)  # fmt: skip
MOMENTUM = dataclasses.replace(
    FEDAVG, method="robust-momentum", aggregator="cc", local_epochs=None, momentum=0.9
)


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    with runner._flower_logging(False, logging.ERROR):
        yield


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- the check, before anything runs ---------------------------------------------------------


@pytest.mark.usefixtures("no_cuda")
def test_a_cuda_device_without_cuda_is_one_line() -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(NO_CUDA)}$"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"^--device cuda:1: no CUDA device is available"):
        resolve_device("cuda:1")
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "cuda:x", ""):
        with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda\\[:N\\]'"):
            resolve_device(bad)


def test_a_gpu_index_past_the_last_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"^--device cuda:2: only 2 CUDA device\(s\) here"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("engine", ["local", "simulation", "batched"])
def test_every_engine_refuses_a_missing_gpu_before_it_starts(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    monkeypatch.setattr(runner, "train_on_grid", lambda *a, **k: started.append("run"))
    with pytest.raises(ValueError, match=f"^{re.escape(NO_CUDA)}$"):
        run_experiment(dataclasses.replace(FEDAVG, device="cuda"), engine=engine)
    assert started == []


# --- the ClientApp: the message's device, the node config's first ----------------------------


def _train_message(device: str | None) -> Message:
    ensure_task_identity()
    config = ConfigRecord({} if device is None else {DEVICE_KEY: device})
    return Message(RecordDict({CONFIG_KEY: config}), dst_node_id=1, message_type="train")


def _context(**node: Any) -> Context:
    node_config = {"partition-id": 0, "num-partitions": 2, **node}
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.usefixtures("no_cuda")
def test_the_node_config_device_wins_over_the_message() -> None:
    config = {DEVICE_KEY: "cuda"}
    assert client_side._device(config, _context(device="cpu")) == torch.device("cpu")
    assert client_side._device({}, _context()) == torch.device("cpu")  # an older server
    with pytest.raises(ValueError, match=r"^--device cuda:7: no CUDA device"):
        client_side._device({DEVICE_KEY: "cpu"}, _context(device="cuda:7"))
    # the train handler checks it first: a node without the GPU gives an error reply
    with pytest.raises(ValueError, match=f"^{re.escape(NO_CUDA)}$"):
        client_side.train(_train_message("cuda"), _context())


def test_the_device_is_not_metered() -> None:
    assert message_bytes(_train_message("cuda:1")) == message_bytes(_train_message(None))


def test_a_gpu_run_names_its_device_in_every_train_message() -> None:
    gpu = runner.train_config(dataclasses.replace(FEDAVG, device="cuda:1").resolved())
    assert gpu[DEVICE_KEY] == "cuda:1"
    assert DEVICE_KEY not in runner.train_config(FEDAVG.resolved())  # the nodes' default


# --- the round loop: the device string reaches the nodes and the robust rule ------------------


def _record_local_run(
    cfg: ExperimentConfig, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[Any], list[Any]]:
    """``run_local(cfg)``, with the device of every train message and of every
    ``aggregate_on`` call of the strategies."""
    sent: list[Any] = []
    aggregated: list[Any] = []
    real_train = client_side.train

    def train(msg: Message, context: Context) -> Message:
        sent.append(msg.content.config_records[CONFIG_KEY].get(DEVICE_KEY))
        return real_train(msg, context)

    def recorded(device: Any, rule: Any, x: torch.Tensor, *extra: torch.Tensor) -> Any:
        aggregated.append(device)
        return aggregate_on(device, rule, x, *extra)

    monkeypatch.setattr(client_side, "train", train)
    monkeypatch.setattr(method_module, "aggregate_on", recorded)
    monkeypatch.setattr(fedavg_module, "aggregate_on", recorded)
    (result,) = run_local([cfg])
    return result, sent, aggregated


@pytest.mark.parametrize("cfg", [FEDAVG, MOMENTUM], ids=["robust-fedavg", "robust-momentum"])
def test_cpu_reaches_every_node_and_the_rule_runs_where_the_replies_are(
    cfg: ExperimentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, sent, aggregated = _record_local_run(cfg, monkeypatch)
    assert len(sent) >= cfg.rounds and set(sent) == {None}  # the CPU: the messages as before
    assert aggregated == [None] * cfg.rounds  # None: no copy, on the CPU as before
    assert result.config["device"] == "cpu" and result.config["device_name"] == "cpu"


def test_aggregate_on_moves_the_stack_and_brings_the_aggregate_back() -> None:
    seen: list[torch.device] = []

    def rule(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        seen.extend([x.device, w.device])
        return torch.zeros(x.shape[1])  # (a meta tensor cannot be copied back)

    x, w = torch.randn(3, 5), torch.ones(3)
    out = aggregate_on(torch.device("meta"), rule, x, w)
    assert seen == [torch.device("meta")] * 2 and out.device == x.device
    assert aggregate_on(None, lambda t: t.sum(0), x).equal(x.sum(0))


def test_the_strategy_device_is_set_after_a_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint's strategy state carries no device of its own into the run: the runner
    sets it after the restore (here: the CPU's None over a saved ``cuda``)."""
    built: list[Any] = []
    real = runner.build_strategy

    def build(cfg: ExperimentConfig) -> Any:
        strategy = real(cfg)
        strategy.device = torch.device("cuda")  # as a restored CUDA run's state would
        built.append(strategy)
        return strategy

    monkeypatch.setattr(runner, "build_strategy", build)
    run_local([dataclasses.replace(MOMENTUM, rounds=1)])
    assert built[-1].device is None  # the run's strategy (the first: prepare's check)


# --- the simulation runtime: Flower's client resources -----------------------------------------


def test_the_federation_config_shares_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulation, "available_cores", lambda: 8)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cpu = federation_config(20)
    assert cpu["client-resources-num-gpus"] == 0.0 and "init-args-num-gpus" not in cpu
    every = federation_config(20, device="cuda")  # 8 actors side by side on 2 GPUs
    assert every["client-resources-num-gpus"] == 0.25 and every["init-args-num-gpus"] == 2
    one = federation_config(20, device="cuda:1")  # the one GPU the runtime sees
    assert one["client-resources-num-gpus"] == 0.125 and one["init-args-num-gpus"] == 1
    few = federation_config(4, device="cuda:0")  # 4 clients: 4 actors
    assert few["client-resources-num-gpus"] == 0.25
    cluster = federation_config(20, ray_address="127.0.0.1:6379", device="cuda")
    assert cluster["client-resources-num-gpus"] == 0.25 and "init-args-num-gpus" not in cluster
    assert client_gpus("cuda", 1, 4) == 1.0  # never more than a whole GPU per actor


def test_cuda_n_is_the_only_gpu_the_runtime_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus("cpu") is None and visible_gpus("cuda") is None
    assert visible_gpus("cuda:1") == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus("cuda:1") == "5"  # the second GPU this process sees
    runtime = SimulationRuntime(device="cuda:1")
    plain = SimulationRuntime()
    try:
        assert runtime.procs.env["CUDA_VISIBLE_DEVICES"] == "5"
        assert plain.procs.env["CUDA_VISIBLE_DEVICES"] == "3,5"  # as inherited
    finally:
        runtime.stop()
        plain.stop()


def test_the_run_config_carries_the_device() -> None:
    run_config = ExperimentConfig(device="cuda:1").to_run_config()
    assert run_config["device"] == "cuda:1"
    assert ExperimentConfig.from_run_config(run_config, clients=3).device == "cuda:1"


def test_device_name() -> None:
    assert devices.device_name("cpu") == "cpu"


# --- on a GPU: the same rounds as on the CPU, within rounding ----------------------------------


def _close(cuda: Any, cpu: Any, tol: float) -> None:
    assert len(cuda.rounds) == len(cpu.rounds)
    for a, b in zip(cuda.rounds, cpu.rounds, strict=True):
        assert abs(a.loss - b.loss) <= tol * max(1.0, abs(b.loss)), (a, b)
        assert abs(a.accuracy - b.accuracy) <= 0.02, (a, b)
        assert (a.bytes_up, a.bytes_down) == (b.bytes_up, b.bytes_down)


@needs_cuda
@pytest.mark.parametrize("cfg", [FEDAVG, MOMENTUM], ids=["robust-fedavg", "robust-momentum"])
def test_local_engine_on_cuda_matches_the_cpu(
    cfg: ExperimentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = run_local([cfg])[0]
    cuda, sent, aggregated = _record_local_run(dataclasses.replace(cfg, device="cuda"), monkeypatch)
    assert sent and set(sent) == {"cuda"}
    assert [d.type for d in aggregated] == ["cuda"] * cfg.rounds  # the rule ran there
    assert cuda.config["device_name"] == torch.cuda.get_device_name(0)
    _close(cuda, cpu, 1e-3)


@needs_cuda
def test_batched_engine_on_cuda_matches_the_cpu() -> None:
    cfg = dataclasses.replace(FEDAVG, method="fedavg", aggregator=None)
    cpu = run_experiment(cfg, engine="batched")
    cuda = run_experiment(dataclasses.replace(cfg, device="cuda"), engine="batched")
    assert cuda.config["device"] == "cuda"
    assert cuda.config["device_name"] == torch.cuda.get_device_name(0)
    _close(cuda, cpu, 1e-3)


@needs_cuda
@pytest.mark.slow
def test_simulation_engine_on_cuda_matches_the_local_engine() -> None:
    cfg = dataclasses.replace(FEDAVG, device="cuda:0")
    local = run_local([cfg])[0]
    simulated = run_experiment(cfg, engine="simulation")
    assert simulated.config["device"] == "cuda:0"
    assert simulated.config["device_name"] == torch.cuda.get_device_name(0)
    _close(simulated, local, 1e-3)
