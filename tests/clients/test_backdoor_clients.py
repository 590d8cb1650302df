"""Backdoor attacks on the client side: ByzantineGrid's marks (the full spec, DBA's parts) and
model replacement's boost, byzantine_mod from a node config, the ClientApp's train and
GradientClient on poisoned data, and (slow) FedAvg vs Median on digits through the local
engine."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from flwr_byz.attacks import BadNets, ModelReplacement, get_attack
from flwr_byz.clients import (
    ATTACK_KEY,
    ByzantineGrid,
    GradientClient,
    byzantine_mod,
    data_attack_of,
)
from flwr_byz.protocol.records import to_state_dict
from flwr_byz.simulations import app as client_side
from flwr_byz.simulations import runner
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.datasets import client_data, load_dataset
from flwr_byz.simulations.engines import run_experiment
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.simulations.models import build_model_for
from flwr_byz.simulations.training import derive_seed, gradient_masks, objective, train_epochs
from tests.quiet import quiet_run

from .nodes import honest_client, model, shifted, train_reply, update_for, vector_of

NODES = [101, 102, 103, 104, 105, 106, 107]
BYZ = (102, 105, 106)
KEYS = ("w", "b", "k")


def grid_round(attack: Any, seed: int = 0) -> tuple[ArrayRecord, dict[int, Message], list]:
    """One FedAvg-like train round through a ByzantineGrid over honest nodes."""
    seen: list[Message] = []
    inner = honest_client()

    def client(msg: Message, ctx: Context) -> Message:
        seen.append(msg)
        return inner(msg, ctx)

    content = RecordDict({"arrays": model(), "config": ConfigRecord({"server-round": 2})})
    grid = ByzantineGrid(LocalGrid(NODES, client), attack, node_ids=BYZ, seed=seed)
    replies = grid.send_and_receive([Message(content, n, "train") for n in NODES])
    return content["arrays"], {int(r.metadata.src_node_id): r for r in replies}, seen


def test_grid_marks_the_byzantine_messages_with_the_full_spec() -> None:
    sent, replies, seen = grid_round("badnets:target=2,fraction=0.25", seed=9)
    ctx = Context(1, 0, {}, RecordDict(), {})
    for msg in seen:
        node = int(msg.metadata.dst_node_id)
        attack = data_attack_of(msg, ctx)
        assert attack == (BadNets(target=2, fraction=0.25, seed=9) if node in BYZ else None)
        reply = vector_of(replies[node].content["arrays"], KEYS)  # trained honestly
        np.testing.assert_array_equal(reply, vector_of(shifted(sent, update_for(sent, node)), KEYS))


def test_grid_gives_each_dba_attacker_its_own_part() -> None:
    _, _, seen = grid_round("dba:parts=2")
    ctx = Context(1, 0, {}, RecordDict(), {})
    parts = {
        int(m.metadata.dst_node_id): data_attack_of(m, ctx).part  # type: ignore[union-attr]
        for m in seen
        if int(m.metadata.dst_node_id) in BYZ
    }
    assert parts == {102: 0, 105: 1, 106: 0}  # rank among the Byzantine nodes, mod parts
    _, _, pinned = grid_round("dba:parts=2,part=1")
    assert {data_attack_of(m, ctx).part for m in pinned if data_attack_of(m, ctx)} == {1}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "boost", "norm"),
    [
        ("model-replacement", 7 / 3, None),  # n / (eta k): 7 nodes, 3 attackers
        ("model-replacement:eta=0.5", 14 / 3, None),
        ("model-replacement:boost=5,norm=0.3", 5.0, 0.3),
        ("model-replacement:start=3", 1.0, None),  # round 2: not yet
    ],
)
def test_grid_boosts_model_replacement_updates(spec: str, boost: float, norm: float | None) -> None:
    sent, replies, seen = grid_round(spec)
    base = vector_of(sent, KEYS)
    for node, reply in replies.items():
        update = vector_of(shifted(sent, update_for(sent, node)), KEYS) - base
        if node in BYZ:
            update = update * boost
            if norm is not None:
                update = update * min(1.0, norm / float(np.linalg.norm(update)))
        got = vector_of(reply.content["arrays"], KEYS) - base
        np.testing.assert_allclose(got, update, rtol=1e-4, atol=1e-6)
    assert (
        sum(data_attack_of(m, Context(1, 0, {}, RecordDict(), {})) is not None for m in seen) == 3
    )


# --- byzantine_mod from a node config ---------------------------------------------------------


def node_context(**node_config: Any) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def instruction(**config: Any) -> Message:
    content = RecordDict({"arrays": model(), "config": ConfigRecord({"server-round": 3, **config})})
    return Message(content, 7, "train")


class Recorder:
    """``call_next``: remembers the message and the data attack it asks for; trains honestly."""

    def __init__(self) -> None:
        self.attack: object = None

    def __call__(self, msg: Message, ctx: Context) -> Message:
        self.attack = data_attack_of(msg, ctx)
        sent = msg.content["arrays"]
        return train_reply(msg, shifted(sent, update_for(sent, ctx.node_id)))


def test_mod_marks_a_backdoor_from_the_node_config() -> None:
    ctx = node_context(**{ATTACK_KEY: "badnets:target=0", "partition-id": 1})
    app = Recorder()
    msg = instruction()
    sent = vector_of(msg.content["arrays"], KEYS)
    reply = byzantine_mod(msg, ctx, app)
    assert isinstance(app.attack, BadNets) and type(app.attack) is BadNets
    assert app.attack.target == 0 and msg.content["config"][ATTACK_KEY].startswith("badnets:")
    assert get_attack(str(msg.content["config"][ATTACK_KEY])) == app.attack
    update = vector_of(reply.content["arrays"], KEYS) - sent
    honest = vector_of(shifted(model(), update_for(model(), 7)), KEYS) - sent
    np.testing.assert_allclose(update, honest, rtol=1e-5, atol=1e-7)  # the data are poisoned


@pytest.mark.parametrize(
    ("node_config", "boost"),
    [
        ({ATTACK_KEY: "model-replacement", "num-partitions": 5}, 5.0),
        ({ATTACK_KEY: "model-replacement:boost=2", "num-partitions": 5}, 2.0),
        ({ATTACK_KEY: "model-replacement", "byzantine-scale": 3.0}, 3.0),
    ],
)
def test_mod_boosts_model_replacement(node_config: dict[str, Any], boost: float) -> None:
    app = Recorder()
    msg = instruction()
    sent = vector_of(msg.content["arrays"], KEYS)
    reply = byzantine_mod(msg, node_context(**node_config), app)
    assert isinstance(app.attack, ModelReplacement)
    honest = vector_of(shifted(model(), update_for(model(), 7)), KEYS) - sent
    got = vector_of(reply.content["arrays"], KEYS) - sent
    np.testing.assert_allclose(got, boost * honest, rtol=1e-4, atol=1e-6)


def test_mod_model_replacement_errors() -> None:
    with pytest.raises(ValueError, match="boost= in byzantine-attack or num-partitions"):
        byzantine_mod(instruction(), node_context(**{ATTACK_KEY: "model-replacement"}), Recorder())
    ctx = node_context(**{ATTACK_KEY: "model-replacement", "num-partitions": 4})
    with pytest.raises(ValueError, match="op 'grad'"):
        byzantine_mod(instruction(op="grad"), ctx, Recorder())


# --- the ClientApp and GradientClient on poisoned data -----------------------------------------

CFG = ExperimentConfig(
    dataset="digits", model="logreg", clients=4, lr=0.1, batch_size=16, local_epochs=1, seed=3
).resolved()


def app_message(mark: str | None, **extra: Any) -> tuple[Message, Context]:
    dataset = load_dataset(CFG.dataset)
    torch.manual_seed(0)
    net = build_model_for(CFG.model, dataset)
    config = runner.train_config(CFG)
    config["server-round"] = 2
    for key, value in extra.items():
        config[key] = value
    if mark is not None:
        config[ATTACK_KEY] = mark
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "config": config})
    ctx = Context(1, 9, {"partition-id": 1, "num-partitions": 4}, RecordDict(), {})
    return Message(content, 9, "train"), ctx


def local_train(x: torch.Tensor, y: torch.Tensor, mask: Any = None) -> torch.nn.Module:
    dataset = load_dataset(CFG.dataset)
    torch.manual_seed(0)
    net = build_model_for(CFG.model, dataset)
    masks = None if mask is None else mask(net)
    train_epochs(
        net,
        x,
        y,
        epochs=CFG.local_epochs,
        batch_size=CFG.batch_size,
        lr=CFG.lr,
        momentum=CFG.momentum,
        weight_decay=CFG.weight_decay,
        seed=derive_seed(CFG.seed, 2, 1),
        grad_mask=masks,
    )
    return net


def reply_state(reply: Message) -> dict[str, torch.Tensor]:
    return to_state_dict(reply.content["arrays"])


@pytest.mark.parametrize("spec", ["badnets:target=4,seed=3", "dba:parts=2,part=1"])
def test_client_app_trains_on_poisoned_data(spec: str) -> None:
    msg, ctx = app_message(spec)
    reply = client_side.train(msg, ctx)
    x, y = client_data(CFG.dataset, CFG.partition, 1, 4, CFG.seed)
    attack = get_attack(spec)
    px, py = attack.poison(x, y, load_dataset(CFG.dataset).x_train, node=1, server_round=2)  # type: ignore[union-attr]
    assert int((py != y).sum()) > 0
    want = local_train(px, py).state_dict()
    clean = local_train(x, y).state_dict()
    got = reply_state(reply)
    for key in want:
        torch.testing.assert_close(got[key], want[key])
    assert any(not torch.equal(got[k], clean[k]) for k in clean)


def test_client_app_neurotoxin_stays_off_the_benign_top_coordinates() -> None:
    msg, ctx = app_message("neurotoxin:ratio=0.3")
    reply = client_side.train(msg, ctx)
    x, y = client_data(CFG.dataset, CFG.partition, 1, 4, CFG.seed)
    sent = to_state_dict(msg.content["arrays"])
    masks = {}

    def mask(net: torch.nn.Module) -> list[torch.Tensor]:
        out = gradient_masks(net, x, y, 0.3, CFG.weight_decay)
        masks.update({name: m for (name, _), m in zip(net.named_parameters(), out, strict=True)})
        return out

    attack = get_attack("neurotoxin:ratio=0.3")
    px, py = attack.poison(x, y, load_dataset(CFG.dataset).x_train, node=1, server_round=2)  # type: ignore[union-attr]
    want = local_train(px, py, mask).state_dict()
    got = reply_state(reply)
    for key, m in masks.items():
        torch.testing.assert_close(got[key], want[key])
        assert torch.equal(got[key][~m], sent[key][~m])  # the benign top 30% never moved


def test_gradient_client_poisons_badnets_and_refuses_model_replacement() -> None:
    def data_fn(context: Context, config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return client_data(CFG.dataset, CFG.partition, 1, 4, CFG.seed)

    reference = load_dataset(CFG.dataset).x_train
    client = GradientClient(
        model_fn=lambda cfg: build_model_for(CFG.model, load_dataset(CFG.dataset)),
        loss_fn=lambda net, x, y: objective(net, x, y),
        data_fn=data_fn,
        reference_fn=lambda cfg: reference,
    )
    msg, ctx = app_message("badnets:target=1", op="grad", **{"batch-size": 0})
    reply = client.handle(msg, ctx)
    got = vector_of(reply.content["grad"])
    x, y = data_fn(ctx, {})
    px, py = BadNets(target=1).poison(x, y, reference, node=1, server_round=2)
    net = build_model_for(CFG.model, load_dataset(CFG.dataset))
    net.load_state_dict(to_state_dict(msg.content["arrays"]))
    objective(net, px, py).backward()
    want = torch.cat([p.grad.view(-1) for p in net.parameters()]).numpy()  # type: ignore[union-attr]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    msg, ctx = app_message("model-replacement", op="grad")
    with pytest.raises(ValueError, match="FedAvg-like"):
        client.handle(msg, ctx)


def test_runner_refuses_neurotoxin_for_a_method_strategy() -> None:
    cfg = ExperimentConfig(
        dataset="digits", clients=4, method="robust-momentum", attack="neurotoxin", byzantine=1
    )
    with pytest.raises(ValueError, match="FedAvg-like local training"):
        runner.prepare(cfg)
    runner.prepare(dataclasses.replace(cfg, attack="dba:parts=2"))


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def quiet() -> Iterator[None]:
    with quiet_run():
        yield


@pytest.mark.slow
@pytest.mark.usefixtures("quiet")
def test_badnets_backdoors_fedavg_but_not_median() -> None:
    base = ExperimentConfig(
        dataset="digits", model="mlp", clients=10, rounds=8, seed=0, threads=1, method="fedavg"
    )
    clean = run_experiment(base, engine="local")
    attacked = dataclasses.replace(base, attack="badnets", byzantine=2)
    fedavg = run_experiment(attacked, engine="local")
    median = run_experiment(
        dataclasses.replace(attacked, method="robust-fedavg", aggregator="cwmed"), engine="local"
    )
    assert math.isnan(clean.rounds[-1].asr)
    assert fedavg.rounds[-1].asr >= 0.8  # the backdoor is in
    assert fedavg.rounds[-1].accuracy >= clean.rounds[-1].accuracy - 0.05  # and stealthy
    assert median.rounds[-1].asr <= 0.1
