"""ByzantineGrid: the server-side omniscient adversary, over the in-process LocalGrid.

FedAvg-like instructions (no "op"): a Byzantine reply must be ``sent + attack(honest
updates, own updates)``; honest and evaluation replies stay as the clients sent them.
"""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg, Krum

from flwr_byz.attacks import ALIE, IPM, Gaussian, LabelFlip, Mimic, Scale, SignFlip
from flwr_byz.clients import ATTACK_KEY, ByzantineGrid, label_flip_requested
from flwr_byz.compressors import get_compressor
from flwr_byz.methods.surface import AttackSurface, OffsetSurface
from flwr_byz.protocol.records import payload_record, record_payload
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import RobustFedAvg

from .nodes import (
    LoggedGrid,
    honest_client,
    model,
    sent_arrays,
    shifted,
    train_reply,
    update_for,
    vector_of,
)

NODES = [101, 102, 103, 104, 105, 106, 107]
BYZ = (102, 105)
KEYS = ("w", "b", "k")


def instructions(
    content: RecordDict, nodes: list[int] = NODES, message_type: str = "train"
) -> list[Message]:
    """One message per node sharing ``content`` (as Flower's FedAvg builds them)."""
    return [Message(content, n, message_type) for n in nodes]


def fedavg_content(sent: ArrayRecord | None = None, **config: int | str) -> RecordDict:
    return RecordDict(
        {"arrays": model() if sent is None else sent, "config": ConfigRecord(dict(config))}
    )


def honest_reply_vector(sent: ArrayRecord, node: int) -> np.ndarray:
    return vector_of(shifted(sent, update_for(sent, node)), KEYS)


def by_node(replies: list[Message]) -> dict[int, Message]:
    return {int(r.metadata.src_node_id): r for r in replies}


def run(attack: object, nodes: list[int] = NODES, byz=BYZ, seed: int = 0, client=None):
    """Send one FedAvg-like train round through a ByzantineGrid; (sent, replies by node)."""
    content = fedavg_content(**{"server-round": 1})
    grid = ByzantineGrid(
        LocalGrid(nodes, client or honest_client()), attack, node_ids=byz, seed=seed
    )
    replies = list(grid.send_and_receive(instructions(content, nodes)))
    return content["arrays"], by_node(replies), grid


def updates(sent: ArrayRecord, nodes) -> torch.Tensor:
    """float32 updates (reply - sent) as the grid sees them, ``[len(nodes), d]``."""
    base = torch.from_numpy(vector_of(sent, KEYS)).float()
    return torch.stack(
        [torch.from_numpy(honest_reply_vector(sent, n)).float() - base for n in nodes]
    )


def assert_reply(reply: Message, sent: ArrayRecord, step: torch.Tensor) -> None:
    got = vector_of(reply.content["arrays"], KEYS)
    want = vector_of(sent, KEYS) + step.double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def assert_honest_untouched(replies: dict[int, Message], sent: ArrayRecord, byz=BYZ) -> None:
    for node, reply in replies.items():
        if node not in byz:
            assert np.array_equal(
                vector_of(reply.content["arrays"], KEYS), honest_reply_vector(sent, node)
            )


HONEST = [n for n in NODES if n not in BYZ]


# --- attacks on FedAvg-like replies ----------------------------------------------------------


@pytest.mark.parametrize("attack", [SignFlip(), SignFlip(scale=4.0), "sign-flip:4", Scale(s=3.0)])
def test_per_node_attacks_act_on_the_update(attack: object) -> None:
    sent, replies, grid = run(attack)
    factor = {"SignFlip": -1.0, "Scale": 3.0}[type(grid.attack).__name__]
    if isinstance(grid.attack, SignFlip):
        factor *= grid.attack.scale
    for node in BYZ:
        assert_reply(replies[node], sent, factor * updates(sent, [node])[0])
    assert_honest_untouched(replies, sent)
    assert grid.attacked_replies == 2


def test_alie() -> None:
    sent, replies, _ = run(ALIE())
    h = updates(sent, HONEST).double()
    n, b = len(NODES), len(BYZ)
    s = math.floor(n / 2 + 1) - b
    z = NormalDist().inv_cdf((n - s) / n)
    forged = h.mean(0) - z * h.std(0, correction=1)
    for node in BYZ:
        assert_reply(replies[node], sent, forged)
    assert_honest_untouched(replies, sent)


def test_ipm() -> None:
    sent, replies, _ = run(IPM(eps=0.5))
    forged = -0.5 * updates(sent, HONEST).double().mean(0)
    for node in BYZ:
        assert_reply(replies[node], sent, forged)
    assert_honest_untouched(replies, sent)


def test_mimic_copies_the_principal_honest_node() -> None:
    sent, replies, _ = run(Mimic())
    h = updates(sent, HONEST).double()
    centred = h - h.mean(0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    target = HONEST[int((centred @ direction).abs().argmax())]
    for node in BYZ:
        got = vector_of(replies[node].content["arrays"], KEYS)
        np.testing.assert_allclose(got, honest_reply_vector(sent, target), rtol=1e-6, atol=1e-6)
    assert_honest_untouched(replies, sent)


def test_gaussian_is_seeded_and_reproducible() -> None:
    sent, first, _ = run("gaussian:sigma=2", seed=5)
    _, again, _ = run("gaussian:sigma=2", seed=5)
    _, other, _ = run("gaussian:sigma=2", seed=6)
    own = updates(sent, list(BYZ))
    noise = Gaussian(sigma=2.0, seed=5)(own[:0], own)  # rows in reply order: BYZ order
    for i, node in enumerate(BYZ):
        assert_reply(first[node], sent, noise[i])
        assert np.array_equal(
            vector_of(first[node].content["arrays"]), vector_of(again[node].content["arrays"])
        )
        assert not np.allclose(
            vector_of(first[node].content["arrays"]), vector_of(other[node].content["arrays"])
        )
    # the two Byzantine nodes get different noise
    assert not np.allclose(noise[0], noise[1])
    assert_honest_untouched(first, sent)


def test_sent_content_is_not_modified() -> None:
    content = fedavg_content()
    before = vector_of(content["arrays"], KEYS)
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), SignFlip(10.0), node_ids=BYZ)
    grid.send_and_receive(instructions(content))
    assert np.array_equal(vector_of(content["arrays"], KEYS), before)


def test_push_and_pull_attack_like_send_and_receive() -> None:
    sent, expected, _ = run(SignFlip())
    content = fedavg_content(sent)
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), SignFlip(), node_ids=BYZ)
    ids = list(grid.push_messages(instructions(content)))
    replies = by_node(list(grid.pull_messages(ids)))
    for node in NODES:
        assert np.array_equal(
            vector_of(replies[node].content["arrays"]), vector_of(expected[node].content["arrays"])
        )


def test_train_actions_are_attacked() -> None:
    content = fedavg_content()
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), SignFlip(), node_ids=BYZ)
    replies = by_node(
        list(grid.send_and_receive(instructions(content, message_type="train.custom")))
    )
    sent = content["arrays"]
    assert_reply(replies[102], sent, -updates(sent, [102])[0])
    assert_honest_untouched(replies, sent)


def _evaluate_client(ins: Message, context: Context) -> Message:
    """Evaluate replies that also carry arrays (so an attack could touch them)."""
    node = int(ins.metadata.dst_node_id)
    sent = sent_arrays(ins)
    content = RecordDict(
        {
            "arrays": shifted(sent, update_for(sent, node)),
            "metrics": MetricRecord({"eval_loss": float(node), "num-examples": 3}),
        }
    )
    return Message(content, reply_to=ins)


def test_evaluate_replies_are_untouched() -> None:
    content = fedavg_content()
    sent = content["arrays"]
    grid = ByzantineGrid(LocalGrid(NODES, _evaluate_client), SignFlip(), node_ids=BYZ)
    replies = by_node(list(grid.send_and_receive(instructions(content, message_type="evaluate"))))
    assert_honest_untouched(replies, sent, byz=())
    assert replies[102].content["metrics"]["eval_loss"] == 102.0
    assert grid.attacked_replies == 0


def test_evaluate_replies_are_attacked_when_asked() -> None:
    content = fedavg_content()
    sent = content["arrays"]
    grid = ByzantineGrid(
        LocalGrid(NODES, _evaluate_client),
        SignFlip(),
        node_ids=BYZ,
        message_types=("train", "evaluate"),
    )
    replies = by_node(list(grid.send_and_receive(instructions(content, message_type="evaluate"))))
    assert_reply(replies[105], sent, -updates(sent, [105])[0])


# --- method strategies ("op"), integer arrays, errors, omniscient without honest nodes -----


def test_with_op_the_attack_acts_on_the_returned_vectors() -> None:
    sent = model()

    def client(ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        grad = ArrayRecord({k: Array(v) for k, v in update_for(sent, node).items()})
        model_back = shifted(sent, update_for(sent, node))
        return Message(RecordDict({"grad": grad, "arrays": model_back}), reply_to=ins)

    content = RecordDict({"arrays": sent, "config": ConfigRecord({"op": "grad", "lr": 0.1})})
    grid = ByzantineGrid(LocalGrid(NODES, client), SignFlip(), node_ids=BYZ)
    replies = by_node(list(grid.send_and_receive(instructions(content))))
    for node in BYZ:
        grad = np.concatenate([v.ravel() for v in update_for(sent, node).values()])
        np.testing.assert_array_equal(
            vector_of(replies[node].content["grad"], KEYS), -grad.astype(np.float64)
        )
        # the model-shaped record is negated as a whole: no "reply - sent" with an op
        np.testing.assert_allclose(
            vector_of(replies[node].content["arrays"], KEYS),
            -honest_reply_vector(sent, node),
            rtol=1e-7,
        )
    for node in HONEST:
        grad = np.concatenate([v.ravel() for v in update_for(sent, node).values()])
        np.testing.assert_array_equal(vector_of(replies[node].content["grad"], KEYS), grad)


def test_integer_arrays_are_untouched() -> None:
    sent = model(with_int=True)

    def client(ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        reply = shifted(sent_arrays(ins), {**update_for(sent, node), "count": np.array([node])})
        return train_reply(ins, reply)

    content = fedavg_content(sent)
    grid = ByzantineGrid(LocalGrid(NODES, client), SignFlip(10.0), node_ids=BYZ)
    replies = by_node(list(grid.send_and_receive(instructions(content))))
    for node in BYZ:
        arrays = replies[node].content["arrays"]
        assert list(arrays.keys()) == ["w", "b", "k", "count"]
        assert arrays["count"].numpy().dtype == np.int64
        assert arrays["count"].numpy().tolist() == [5 + node]
        assert_reply(replies[node], sent, -10.0 * updates(sent, [node])[0])


def test_byzantine_error_replies_are_left_alone() -> None:
    def client(ins: Message, context: Context) -> Message:
        if ins.metadata.dst_node_id == 102:
            return Message(Error(code=5, reason="crashed"), reply_to=ins)
        return honest_client()(ins, context)

    sent, replies, grid = run(SignFlip(), client=client)
    assert replies[102].has_error() and replies[102].error.code == 5
    assert_reply(replies[105], sent, -updates(sent, [105])[0])
    assert_honest_untouched(replies, sent)
    assert grid.attacked_replies == 1


@pytest.mark.parametrize(
    ("attack", "forged"),
    [
        (IPM(eps=0.5), lambda own: -0.5 * own.mean(0)),
        (ALIE(z=1.0), lambda own: own.mean(0) - own.std(0, correction=1)),
    ],
)
def test_omniscient_attack_without_honest_nodes_uses_own_vectors(attack, forged) -> None:
    sampled = [101, 103, 104]
    content = fedavg_content()
    sent = content["arrays"]
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), attack, node_ids=sampled)
    replies = by_node(list(grid.send_and_receive(instructions(content, sampled))))
    own = updates(sent, sampled).double()
    for node in sampled:
        assert_reply(replies[node], sent, forged(own))
    assert grid.attacked_replies == 3


def test_omniscient_attack_ignores_non_finite_honest_replies() -> None:
    def client(ins: Message, context: Context) -> Message:
        if ins.metadata.dst_node_id == 104:
            sent = sent_arrays(ins)
            return train_reply(ins, shifted(sent, {"w": np.full((3, 4), np.nan, np.float32)}))
        return honest_client()(ins, context)

    sent, replies, _ = run(IPM(eps=1.0), client=client)
    forged = -updates(sent, [n for n in HONEST if n != 104]).double().mean(0)
    for node in BYZ:
        assert_reply(replies[node], sent, forged)


# --- choosing the Byzantine nodes -------------------------------------------------------------


def test_num_byzantine_chooses_k_nodes_deterministically() -> None:
    chosen = []
    for seed in range(8):
        grid = ByzantineGrid(
            LocalGrid(NODES, honest_client()), SignFlip(), num_byzantine=3, seed=seed
        )
        ids = grid.byzantine_node_ids
        assert len(ids) == 3 and ids <= set(NODES)
        shuffled = list(NODES)
        random.Random(seed).shuffle(shuffled)
        again = ByzantineGrid(
            LocalGrid(shuffled, honest_client()), SignFlip(), num_byzantine=3, seed=seed
        )
        assert again.byzantine_node_ids == ids  # independent of the order of get_node_ids()
        chosen.append(ids)
    assert len(set(chosen)) > 1  # the seed matters


def test_num_byzantine_nodes_are_the_attacked_ones() -> None:
    content = fedavg_content()
    sent = content["arrays"]
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), SignFlip(), num_byzantine=2, seed=1)
    replies = by_node(list(grid.send_and_receive(instructions(content))))
    byz = grid.byzantine_node_ids
    for node in NODES:
        step = updates(sent, [node])[0]
        assert_reply(replies[node], sent, -step if node in byz else step)


@pytest.mark.parametrize("k", [0, 7])
def test_num_byzantine_bounds(k: int) -> None:
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), SignFlip(), num_byzantine=k)
    assert len(grid.byzantine_node_ids) == k


def test_explicit_node_ids() -> None:
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), SignFlip(), node_ids=[103, 107])
    assert grid.byzantine_node_ids == {103, 107}


def test_constructor_errors() -> None:
    fake = LocalGrid(NODES, honest_client())
    with pytest.raises(ValueError):
        ByzantineGrid(fake, SignFlip())
    with pytest.raises(ValueError):
        ByzantineGrid(fake, SignFlip(), num_byzantine=1, node_ids=[101])
    with pytest.raises(ValueError):
        ByzantineGrid(fake, SignFlip(), num_byzantine=-1)
    with pytest.raises(ValueError):
        ByzantineGrid(fake, "no-such-attack", num_byzantine=1)
    too_many = ByzantineGrid(fake, SignFlip(), num_byzantine=8)
    with pytest.raises(ValueError, match="8"):
        _ = too_many.byzantine_node_ids


def test_grid_api_is_delegated() -> None:
    fake = LocalGrid(NODES, honest_client())
    grid = ByzantineGrid(fake, SignFlip(), num_byzantine=1)
    assert list(grid.get_node_ids()) == NODES
    assert [n.node_id for n in grid.get_nodes()] == NODES
    grid.set_run("run-object")
    assert fake.run == "run-object" and grid.run == "run-object"
    msg = grid.create_message(RecordDict(), "train", 103, "g1")
    assert msg.metadata.dst_node_id == 103 and msg.metadata.group_id == "g1"


# --- LabelFlip ------------------------------------------------------------------------------


def _label_client(ins: Message, context: Context) -> Message:
    """Trains honestly; reports whether it was asked to flip its labels."""
    flip = label_flip_requested(ins, context)
    sent = sent_arrays(ins)
    return train_reply(
        ins,
        shifted(sent, update_for(sent, int(ins.metadata.dst_node_id))),
        10,
        {"flipped": int(flip)},
    )


@pytest.mark.parametrize("attack", ["label-flip", LabelFlip(num_classes=10)])
def test_label_flip_marks_only_byzantine_instructions(attack: object) -> None:
    content = fedavg_content(**{"server-round": 3, "lr": "0.1"})
    sent = content["arrays"]
    fake = LoggedGrid(NODES, _label_client)
    grid = ByzantineGrid(fake, attack, node_ids=BYZ)  # type: ignore[arg-type]
    replies = by_node(list(grid.send_and_receive(instructions(content))))
    assert ATTACK_KEY not in content["config"]  # the shared RecordDict is not mutated
    assert dict(content["config"]) == {"server-round": 3, "lr": "0.1"}
    ctx = Context(1, 0, {}, RecordDict(), {})
    for msg in fake.sent:
        node = int(msg.metadata.dst_node_id)
        config = msg.content["config"]
        if node in BYZ:
            assert config[ATTACK_KEY] == "label-flip"
            assert config["server-round"] == 3 and config["lr"] == "0.1"
            assert msg.content["arrays"] is sent
            assert msg.metadata.message_type == "train"
        else:
            assert ATTACK_KEY not in config
        assert label_flip_requested(msg, ctx) == (node in BYZ)
    # replies are not rewritten: each client trained honestly and said whether it flipped
    assert_honest_untouched(replies, sent, byz=())
    assert {n: r.content["metrics"]["flipped"] for n, r in replies.items()} == {
        n: int(n in BYZ) for n in NODES
    }
    assert grid.attacked_replies == 0


def test_label_flip_leaves_evaluate_instructions_alone() -> None:
    content = fedavg_content()
    fake = LoggedGrid(NODES, _evaluate_client)
    grid = ByzantineGrid(fake, "label-flip", node_ids=BYZ)
    grid.send_and_receive(instructions(content, message_type="evaluate"))
    assert all(ATTACK_KEY not in m.content["config"] for m in fake.sent)


# --- whole runs with Flower's strategies -----------------------------------------------------


def _start(strategy, attack: str = "sign-flip:10"):
    initial = model()
    fake = LocalGrid(NODES, honest_client())
    grid = ByzantineGrid(fake, attack, num_byzantine=2, seed=3)
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=2)
    byz = grid.byzantine_node_ids
    steps = torch.stack(
        [(-10.0 if n in byz else 1.0) * updates(initial, [n])[0] for n in NODES]
    ).double()
    return initial, result, grid, steps


def test_flower_fedavg_behind_byzantine_grid() -> None:
    initial, result, grid, steps = _start(FedAvg(min_available_nodes=7))
    expected = vector_of(initial, KEYS) + 2 * steps.mean(0).numpy()
    np.testing.assert_allclose(vector_of(result.arrays, KEYS), expected, rtol=1e-5, atol=1e-5)
    assert grid.attacked_replies == 4
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]


def test_flower_krum_behind_byzantine_grid() -> None:
    initial, result, grid, steps = _start(Krum(num_malicious_nodes=2, min_available_nodes=7))
    x = steps.numpy()
    n, f = len(NODES), 2
    scores = [
        np.sort(((x[i] - np.delete(x, i, axis=0)) ** 2).sum(1))[: n - f - 2].sum() for i in range(n)
    ]
    best = int(np.argmin(scores))
    assert NODES[best] not in grid.byzantine_node_ids
    expected = vector_of(initial, KEYS) + 2 * x[best]
    np.testing.assert_allclose(vector_of(result.arrays, KEYS), expected, rtol=1e-5, atol=1e-5)
    assert grid.attacked_replies == 4


def test_robust_fedavg_rejects_non_finite_byzantine_replies() -> None:
    strategy = RobustFedAvg("median", min_available_nodes=7)
    initial, result, grid, _ = _start(strategy, attack="non-finite")
    honest = [n for n in NODES if n not in grid.byzantine_node_ids]
    med = updates(initial, honest).double().median(0)  # 5 rows: the unique middle value
    expected = vector_of(initial, KEYS) + 2 * med.values.numpy()
    np.testing.assert_allclose(vector_of(result.arrays, KEYS), expected, rtol=1e-5, atol=1e-5)
    for metrics in result.train_metrics_clientapp.values():
        assert metrics["rejected-non-finite"] == 2 and metrics["accepted"] == 5


def _string_bytes_client(ins: Message, context: Context) -> Message:
    """Node 104 sends an array declared float32 whose bytes decode to strings."""
    if ins.metadata.dst_node_id != 104:
        return honest_client()(ins, context)
    sent = sent_arrays(ins)
    arrays = dict(shifted(sent, update_for(sent, 104)).items())
    junk = Array(np.array(["x"] * 12))
    arrays["w"] = Array(dtype="float32", shape=(3, 4), stype=junk.stype, data=junk.data)
    return train_reply(ins, ArrayRecord(arrays))


def test_an_undecodable_honest_reply_is_passed_on() -> None:
    """Bytes that do not decode to the declared shape: the grid leaves the reply for
    validation to reject and still attacks the Byzantine replies."""

    def client(ins: Message, context: Context) -> Message:
        if ins.metadata.dst_node_id != 104:
            return honest_client()(ins, context)
        sent = sent_arrays(ins)
        arrays = dict(shifted(sent, update_for(sent, 104)).items())
        w = arrays["w"]
        arrays["w"] = Array(dtype=w.dtype, shape=w.shape, stype=w.stype, data=b"junk")
        return train_reply(ins, ArrayRecord(arrays))

    sent, replies, grid = run(SignFlip(), client=client)
    assert replies[104].content["arrays"]["w"].data == b"junk"
    assert_reply(replies[102], sent, -updates(sent, [102])[0])
    assert grid.attacked_replies == 2


def test_a_non_numeric_honest_reply_does_not_crash_the_grid() -> None:
    sent, replies, grid = run(SignFlip(), client=_string_bytes_client)
    assert replies[104].content["arrays"]["w"].dtype == "float32"
    assert_reply(replies[102], sent, -updates(sent, [102])[0])
    assert grid.attacked_replies == 2


def test_attacked_replies_keep_zero_dim_arrays() -> None:
    def client(ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        sent = sent_arrays(ins)
        return train_reply(ins, shifted(sent, {"t": np.array(0.5 * node, np.float32)}))

    sent = ArrayRecord({"t": Array(np.array(1.0, np.float32))})
    grid = ByzantineGrid(LocalGrid(NODES, client), SignFlip(), node_ids=BYZ)
    replies = by_node(list(grid.send_and_receive(instructions(fedavg_content(sent)))))
    forged = replies[102].content["arrays"]["t"]
    assert float(forged.numpy().reshape(-1)[0]) == pytest.approx(1.0 - 51.0)
    assert forged.shape == ()


# --- the attack surface ------------------------------------------------------------------------


@pytest.mark.parametrize("attack", [ALIE(z=1.5), IPM(eps=0.5), SignFlip(scale=3.0)])
def test_robust_fedavgs_surface_forges_what_the_model_update_surface_forges(attack) -> None:
    """Bound, the grid goes through RobustFedAvg's own surface (update = reply - x^k, read from
    the strategy); unbound, through the model-update surface built from the messages sent:
    the replies are the same bit for bit (with an integer array in the model)."""
    out = []
    for bind in (True, False):
        strategy = RobustFedAvg("median", min_available_nodes=7)
        grid = ByzantineGrid(LocalGrid(NODES, honest_client()), attack, node_ids=BYZ)
        if bind:
            grid.bind(strategy)
            assert isinstance(grid.surface, OffsetSurface) and grid.surface.sign == -1.0
        else:
            assert grid.surface is None
        sent = model(with_int=True)
        random.seed(7)  # Flower's FedAvg samples with ``random``: the same order of replies
        messages = strategy.configure_train(1, sent, ConfigRecord({}), grid)
        replies = by_node(list(grid.send_and_receive(messages)))
        assert grid.attacked_replies == 2
        out.append({n: r.content["arrays"] for n, r in replies.items()})
    bound, unbound = out
    for node in NODES:
        for key in (*KEYS, "count"):
            assert np.array_equal(bound[node][key].numpy(), unbound[node][key].numpy())
    honest = updates(sent, HONEST)
    for node in BYZ:  # and it is the attack on the updates, added back to the model
        want = attack(honest, updates(sent, [node]))[0]
        assert_reply(replies[node], sent, want)


class _SurfaceStrategy:
    """A stand-in strategy whose surface cannot read node 102's reply (a vector of the wrong
    size) and aggregates every other reply as it is."""

    def attack_surface(self) -> AttackSurface:
        return OffsetSurface(
            offset=lambda node: torch.zeros(3) if node == 102 else None,
            target=lambda mult: torch.zeros(3),
        )


def test_a_reply_the_surface_cannot_read_is_left_alone(caplog) -> None:
    content = fedavg_content(**{"server-round": 1})
    sent = content["arrays"]
    grid = ByzantineGrid(
        LocalGrid(NODES, honest_client()), SignFlip(), node_ids=BYZ, strategy=_SurfaceStrategy()
    )
    with caplog.at_level("WARNING"):
        replies = by_node(list(grid.send_and_receive(instructions(content))))
    assert "reply of node 102 left out" in caplog.text
    assert grid.attacked_replies == 1
    np.testing.assert_array_equal(
        vector_of(replies[102].content["arrays"], KEYS), honest_reply_vector(sent, 102)
    )
    # the surface is the identity for node 105: the whole returned model is negated
    np.testing.assert_allclose(
        vector_of(replies[105].content["arrays"], KEYS), -honest_reply_vector(sent, 105), rtol=1e-7
    )
    assert_honest_untouched(replies, sent)


def test_groups_of_replies_are_attacked_in_a_fixed_order() -> None:
    """A dense and a compressed Byzantine reply (two layouts: two attack calls): a random
    attack draws for the dense group first, whatever the order of the replies and the
    process's string hashing (the draws of a seeded run do not change between processes)."""
    sent = model()
    d = 24
    compressor = get_compressor("none")

    def client(ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        v = torch.full((d,), float(node))
        if node in (101, 102, 104):  # 102 (Byzantine) answers first, compressed
            record = payload_record(compressor.compress(v, 0))
            return Message(RecordDict({"payload": record}), reply_to=ins)
        grad = ArrayRecord({"g": Array(v.numpy())})
        return Message(RecordDict({"grad": grad}), reply_to=ins)

    config = ConfigRecord({"op": "grad", "compressor": "none", "compressor-seed": 0})
    content = RecordDict({"arrays": sent, "config": config})
    grid = ByzantineGrid(LocalGrid(NODES, client), Gaussian(sigma=1.0, seed=5), node_ids=BYZ)
    replies = by_node(list(grid.send_and_receive(instructions(content))))
    assert grid.attacked_replies == 2
    reference = Gaussian(sigma=1.0, seed=5)  # the same draws, dense group first
    dense_draw = reference(torch.zeros(0, d), torch.zeros(1, d))[0]
    payload_draw = reference(torch.zeros(0, d), torch.zeros(1, d))[0]
    assert not torch.equal(dense_draw, payload_draw)
    got_dense = torch.from_numpy(replies[105].content["grad"]["g"].numpy())
    got_payload = compressor.decompress(record_payload(replies[102].content["payload"]), d)
    assert torch.equal(got_dense, dense_draw) and torch.equal(got_payload, payload_draw)
