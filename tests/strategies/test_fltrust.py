"""FLTrust: the strategy's round against the paper's equations, its root training contract and
errors, and the ``fltrust`` method of the runner (root set, determinism, robustness)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flwr_byz.clients import ByzantineGrid
from flwr_byz.simulations import ExperimentConfig, run_experiment
from flwr_byz.simulations.datasets import load_dataset
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.simulations.methods import build_strategy
from flwr_byz.simulations.models import build_model_for
from flwr_byz.simulations.report import run_label
from flwr_byz.simulations.root import root_indices, root_steps, root_trainer
from flwr_byz.strategies import FLTrust, RobustFedAvg
from tests.clients.nodes import (
    capture_flwr_log,
    model,
    sent_arrays,
    shifted,
    train_reply,
    update_for,
    vector_of,
    warnings_of,
)

from .harness import Run, simulate
from .standard_app.task import Net, _digits
from .standard_app.task import train as standard_train

NODES = [21, 22, 23, 24, 25, 26, 27]
FLIPPED = (23, 26)  # send -5 x the reference direction plus their own noise
KEYS = ("w", "b", "k")


def reference_delta(sent: ArrayRecord) -> dict[str, np.ndarray]:
    """The server's update on its root data (the same direction every honest node leans to)."""
    return update_for(sent, 99, scale=0.2)


def client(ins: Message, context: Context | None = None) -> Message:
    node = int(ins.metadata.dst_node_id)
    sent = sent_arrays(ins)
    ref, own = reference_delta(sent), update_for(sent, node)
    lean = -5.0 if node in FLIPPED else 0.5 + 0.1 * (node - 21)
    delta = {k: (lean * ref[k] + own[k]).astype(own[k].dtype) for k in own}
    return train_reply(ins, shifted(sent, delta))


class RootFn:
    """A root_train_fn that records its calls and returns sent + reference_delta."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ArrayRecord, dict]] = []

    def __call__(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> ArrayRecord:
        self.calls.append((server_round, arrays, dict(config)))
        return shifted(arrays, reference_delta(arrays))


def bf_fltrust(x: np.ndarray, g0: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Cao et al. 2021, Eq. 2-4, one client at a time (float64)."""
    n0 = np.linalg.norm(g0)
    scores = [max(0.0, float(row @ g0) / (np.linalg.norm(row) * n0)) for row in x]
    total = sum(scores)
    out = sum(s * (n0 / np.linalg.norm(row)) * row for s, row in zip(scores, x, strict=True))
    return out / total, scores


def one_round(
    strategy: FLTrust, sent: ArrayRecord, nodes: Sequence[int] = NODES, reply=client
) -> tuple[list[Message], ArrayRecord | None, MetricRecord | None]:
    grid = LocalGrid(nodes, reply)
    messages = strategy.configure_train(1, sent, ConfigRecord({"lr": 0.1}), grid)
    replies = list(grid.send_and_receive(messages))
    arrays, metrics = strategy.aggregate_train(1, replies)
    return replies, arrays, metrics


def test_round_is_sent_plus_fltrust_of_the_updates() -> None:
    root = RootFn()
    strategy = FLTrust(root, min_available_nodes=len(NODES))
    sent = model("float64")
    replies, arrays, metrics = one_round(strategy, sent)
    base = vector_of(sent, KEYS)
    x = np.stack([vector_of(r.content["arrays"], KEYS) - base for r in replies])
    g0 = vector_of(shifted(sent, reference_delta(sent)), KEYS) - base
    want, scores = bf_fltrust(x, g0)
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(vector_of(arrays, KEYS), base + want, rtol=1e-12, atol=1e-14)
    # the flipped nodes have no trust; the others do
    ids = [int(r.metadata.src_node_id) for r in replies]
    assert [s == 0 for s in scores] == [n in FLIPPED for n in ids]
    assert metrics["trust-zero"] == 2 and metrics["accepted"] == len(NODES)
    assert metrics["trust-mean"] == pytest.approx(np.mean(scores), rel=1e-9)
    assert metrics["trust-max"] == pytest.approx(max(scores), rel=1e-9)
    assert metrics["trust-min"] == 0 and metrics["skipped"] == 0
    assert metrics["reference-norm"] == pytest.approx(np.linalg.norm(g0), rel=1e-6)
    # root_train_fn got the model sent and the round's train config (server-round added)
    ((rnd, got, config),) = root.calls
    assert rnd == 1 and config == {"lr": 0.1, "server-round": 1}
    np.testing.assert_array_equal(vector_of(got, KEYS), base)


def test_integer_arrays_take_the_servers_update() -> None:
    def root(server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> ArrayRecord:
        out = shifted(arrays, reference_delta(arrays))
        return ArrayRecord({**{k: out[k] for k in KEYS}, "count": Array(np.array([9]))})

    sent = model("float32", with_int=True)  # count = [5]

    def reply(ins: Message, context: Context) -> Message:
        back = client(ins, context).content["arrays"]
        arrays = {**{k: back[k] for k in KEYS}, "count": Array(np.array([1000]))}
        return train_reply(ins, ArrayRecord(arrays))

    _, arrays, _ = one_round(FLTrust(root, min_available_nodes=7), sent, reply=reply)
    assert arrays is not None
    assert arrays["count"].numpy().tolist() == [9] and arrays["count"].dtype == "int64"


def test_no_trusted_update_keeps_the_model() -> None:
    def reply(ins: Message, context: Context) -> Message:
        sent = sent_arrays(ins)
        return train_reply(ins, shifted(sent, {k: -v for k, v in reference_delta(sent).items()}))

    sent = model("float64")
    _, arrays, metrics = one_round(FLTrust(RootFn(), min_available_nodes=7), sent, reply=reply)
    assert arrays is not None and metrics is not None
    np.testing.assert_array_equal(vector_of(arrays, KEYS), vector_of(sent, KEYS))
    assert metrics["trust-zero"] == len(NODES) and metrics["skipped"] == 0


def test_invalid_replies_are_rejected_and_marked_ones_reported(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_flwr_log(caplog, monkeypatch)

    def reply(ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        msg = client(ins, context)
        if node == 22:  # NaN: rejected before the rule
            arrays = msg.content["arrays"]
            w = arrays["w"].numpy().copy()
            w[0, 0] = math.nan
            return train_reply(ins, ArrayRecord({**arrays, "w": Array(w)}))
        if node in FLIPPED:  # byzantine_mod's mark
            return train_reply(ins, msg.content["arrays"], metrics={"byzantine-replies": 1})
        return msg

    _, arrays, metrics = one_round(FLTrust(RootFn(), min_available_nodes=7), model(), reply=reply)
    assert arrays is not None and metrics is not None
    assert metrics["accepted"] == 6 and metrics["rejected-non-finite"] == 1
    assert metrics["trust-byzantine"] == 0.0 and metrics["trust-zero"] == 2
    assert any("rejected the reply of node 22" in w for w in warnings_of(caplog))


def test_updates_that_overflow_skip_the_round(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finite replies whose update overflows float32 (reply - sent = inf): the round keeps
    the model, as RobustFedAvg does, instead of stopping the run."""
    capture_flwr_log(caplog, monkeypatch)
    sent = shifted(model(), {"b": np.full(4, -3e38, dtype=np.float32)})

    def reply(ins: Message, context: Context) -> Message:
        arrays = sent_arrays(ins)
        big = Array(np.full(4, 3e38, dtype=np.float32))  # finite; minus -3e38: inf
        return train_reply(ins, ArrayRecord({**arrays, "b": big}))

    _, arrays, metrics = one_round(FLTrust(RootFn(), min_available_nodes=7), sent, reply=reply)
    assert arrays is None and metrics is not None
    assert metrics["skipped"] == 1 and metrics["accepted"] == len(NODES)
    assert any("keeping the previous global model" in w for w in warnings_of(caplog))


@pytest.mark.parametrize(
    ("root", "error", "match"),
    [
        (lambda r, a, c: {"w": 1}, TypeError, "must return an ArrayRecord"),
        (
            lambda r, a, c: ArrayRecord({k: a[k] for k in ("w", "b")}),
            ValueError,
            r"unlike the one sent: arrays \['k'\]",
        ),
        (
            lambda r, a, c: shifted(a, {"b": np.full(4, np.inf, dtype=np.float32)}),
            ValueError,
            "NaN/Inf",
        ),
    ],
)
def test_a_bad_root_model_raises(root, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        one_round(FLTrust(root, min_available_nodes=7), model())


def test_constructor_errors_and_flower_kwargs() -> None:
    with pytest.raises(ValueError, match=r"FLTrust takes no \['aggregator', 'f'\]"):
        FLTrust(RootFn(), aggregator="median", f=1)
    with pytest.raises(TypeError, match="root_train_fn must be a callable"):
        FLTrust(None)  # type: ignore[arg-type]
    strategy = FLTrust(RootFn(), fraction_train=0.5, min_train_nodes=3, arrayrecord_key="m")
    assert isinstance(strategy, RobustFedAvg)
    assert (strategy.fraction_train, strategy.min_train_nodes) == (0.5, 3)
    assert strategy.arrayrecord_key == "m"


def test_start_runs_rounds() -> None:
    """Flower's own ``start``: three rounds, the root training called once per round."""
    root = RootFn()
    result = FLTrust(root, min_available_nodes=7, fraction_evaluate=0.0).start(
        grid=LocalGrid(NODES, client), initial_arrays=model(), num_rounds=3
    )
    assert [c[0] for c in root.calls] == [1, 2, 3]
    assert all(m["trust-zero"] == 2 for m in result.train_metrics_clientapp.values())


# --- the fltrust method of the runner ---------------------------------------------------------

TINY = ExperimentConfig(
    method="fltrust", dataset="digits", clients=10, rounds=6, threads=1, lr=0.05
)


def test_root_training_takes_a_mean_clients_steps_and_runs_are_labelled() -> None:
    assert root_steps(1437, 20, 2, 32) == 2 * 3  # 72 examples: 3 batches, 2 epochs
    assert root_steps(1437, 6, 1, 32) == 8  # 240 examples
    assert run_label({"method": "fltrust", "aggregator": "median"}) == "FLTrust"


def test_root_set_is_seeded_distinct_and_checked() -> None:
    a, b = root_indices(1000, 100, 1), root_indices(1000, 100, 2)
    assert len(set(a.tolist())) == 100 and torch.equal(a, root_indices(1000, 100, 1))
    assert not torch.equal(a, b)
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match=r"root_size must be an int in \[1, 1000\]"):
            root_indices(1000, bad, 0)  # type: ignore[arg-type]


def test_method_builds_with_root_size_and_trains_deterministically() -> None:
    cfg = dataclasses.replace(TINY, params={"root_size": 30}).resolved()
    assert isinstance(build_strategy(cfg), FLTrust)  # root_size is the runner's, not FedAvg's
    train = root_trainer(cfg, 30)
    torch.manual_seed(0)
    arrays = ArrayRecord(build_model_for(cfg.model, load_dataset(cfg.dataset)).state_dict())
    state = torch.get_rng_state()
    one, two = train(3, arrays, ConfigRecord({})), train(3, arrays, ConfigRecord({}))
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched
    assert np.array_equal(vector_of(one), vector_of(two))
    assert not np.array_equal(vector_of(one), vector_of(arrays))
    other = root_trainer(dataclasses.replace(cfg, seed=1), 30)(3, arrays, ConfigRecord({}))
    assert not np.array_equal(vector_of(one), vector_of(other))  # another root set
    with pytest.raises(ValueError, match="root_size must be an int"):
        build_strategy(dataclasses.replace(TINY, params={"root_size": 10**6}).resolved())
    for method in ("fltrust", "robust-fedavg"):  # a misspelt parameter: one line, not FedAvg's
        cfg = dataclasses.replace(TINY, method=method, params={"rootsize": 5}).resolved()
        with pytest.raises(
            ValueError, match=r"has no parameter\(s\) \['rootsize'\].*fraction_train"
        ):
            build_strategy(cfg)


@pytest.mark.slow
def test_fltrust_method_holds_where_fedavg_breaks() -> None:
    """The runner's fltrust (local engine, digits, 10 clients of which 2 Byzantine): under
    scale and sign-flip its accuracy stays near its clean run, while FedAvg's drops under
    scale; the attackers' sign-flipped updates get no trust."""
    acc = {}
    runs = [("fltrust", "none"), ("fltrust", "scale:s=10"), ("fltrust", "sign-flip:scale=10")]
    for method, attack in [*runs, ("fedavg", "scale:s=10")]:
        cfg = dataclasses.replace(
            TINY, method=method, attack=attack, byzantine=0 if attack == "none" else 2, rounds=8
        )
        result = run_experiment(cfg, engine="local")
        acc[method, attack] = result.accuracy
        if attack.startswith("sign-flip"):
            assert all(r.metrics["trust-zero"] >= 2 for r in result.rounds)
    clean = acc["fltrust", "none"]
    assert clean > 0.85
    assert acc["fltrust", "scale:s=10"] > clean - 0.05
    assert acc["fltrust", "sign-flip:scale=10"] > clean - 0.05
    assert acc["fedavg", "scale:s=10"] < clean - 0.2


def standard_root(server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> ArrayRecord:
    """What a Flower user writes for FLTrust: the app's own ``train`` on 100 root examples,
    with the round's learning rate."""
    x, y, _, _ = _digits()
    idx = np.random.default_rng(7).choice(len(y), size=100, replace=False)
    data = torch.utils.data.TensorDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
    gen = torch.Generator().manual_seed(server_round)
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, generator=gen)
    net = Net()
    net.load_state_dict(arrays.to_torch_state_dict())
    standard_train(net, loader, 1, float(config["lr"]), torch.device("cpu"))
    return ArrayRecord(net.state_dict())


@pytest.mark.slow
def test_drop_in_with_the_standard_client_app() -> None:
    """FLTrust runs the unchanged ``flwr new`` PyTorch ClientApp (10 nodes, 2 of them
    Byzantine through ByzantineGrid): near its clean accuracy under scale and sign-flip,
    which breaks FedAvg."""

    def fltrust() -> FLTrust:
        return FLTrust(standard_root, fraction_evaluate=0.0)

    def attacked(attack: str) -> Callable[[Grid], Grid]:
        return lambda grid: ByzantineGrid(grid, attack, num_byzantine=2, seed=1)

    runs = [
        Run("clean", fltrust),
        Run("scale", fltrust, attacked("scale:s=10")),
        Run("sign-flip", fltrust, attacked("sign-flip:scale=10")),
        Run("FedAvg", lambda: FedAvg(fraction_evaluate=0.0), attacked("sign-flip:scale=10")),
    ]
    out = simulate(runs, num_supernodes=10, num_rounds=10)
    clean = out["clean"]["accuracy"]
    assert out["FedAvg"]["accuracy"] < clean - 0.2, out["FedAvg"]["accuracy"]  # it bites
    assert clean > 0.85
    for name in ("scale", "sign-flip"):
        assert out[name]["accuracy"] > clean - 0.05, (name, out[name]["accuracy"], clean)
    assert all(m["trust-zero"] >= 2 for m in out["sign-flip"]["metrics"].values())
