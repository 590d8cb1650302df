"""ByzantineGrid on compressed replies: GradientClient nodes answer ``grad_diff`` with a
compressor payload; the grid decodes it (Q(Delta), d = the float values of the sent model)
before the attack and writes the forged vector back as ``compress(forged, compressor-seed)``,
in the same wire layout, so the strategy's validation accepts it."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from flwr_byz.attacks import ALIE, SignFlip, honest_stats
from flwr_byz.clients import ByzantineGrid
from flwr_byz.compressors import get_compressor
from flwr_byz.protocol.records import layout_of, record_payload
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import ByzVRMarinaPP, validate_replies

from .gradient_helpers import (
    context,
    make_client,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    point,
    train_message,
)

NODES = [31, 32, 33, 34, 35]
BYZ = (32, 34)
HONEST = [n for n in NODES if n not in BYZ]
D = 107  # float values of gradient_helpers.make_net (num_batches_tracked excluded)


DTYPES = [torch.float32, torch.float64]


def seed_of(node: int) -> int:
    return 1000 + 7 * node


def messages(spec: str, dtype: torch.dtype = torch.float32) -> list[Message]:
    """One grad_diff message per node (its own batch and compressor seeds)."""
    x, prev = point(1, dtype), point(2, dtype)
    return [
        train_message(
            x,
            prev,
            node=n,
            op="grad_diff",
            compressor=spec,
            **{"compressor-seed": seed_of(n), "batch-size": 8, "batch-seed": n, "server-round": 2},
        )
        for n in NODES
    ]


def honest_records(spec: str, dtype: torch.dtype = torch.float32) -> dict[int, ArrayRecord]:
    """What every node replies without an adversary (grad_diff is stateless)."""
    client = make_client(dtype)
    out = {}
    for msg in messages(spec, dtype):
        node = int(msg.metadata.dst_node_id)
        out[node] = client.handle(msg, context(node)).content["payload"]
    return out


def attacked_records(
    spec: str, attack: object, dtype: torch.dtype = torch.float32
) -> tuple[dict[int, ArrayRecord], ByzantineGrid]:
    grid = ByzantineGrid(
        LocalGrid(NODES, make_client(dtype).handle),
        attack,
        node_ids=BYZ,  # type: ignore[arg-type]
    )
    replies = list(grid.send_and_receive(messages(spec, dtype)))
    return {int(r.metadata.src_node_id): r.content["payload"] for r in replies}, grid


def decoded(spec: str, record: ArrayRecord) -> torch.Tensor:
    return get_compressor(spec).decompress(record_payload(record), D)


def assert_same_wire_layout(a: ArrayRecord, b: ArrayRecord) -> None:
    assert layout_of(a) == layout_of(b)
    pa, pb = record_payload(a), record_payload(b)
    assert {k: (v.dtype, v.shape) for k, v in pa.items()} == {
        k: (v.dtype, v.shape) for k, v in pb.items()
    }


def test_model_size() -> None:
    assert sum(v.numel() for v in point().values() if v.is_floating_point()) == D


def test_sign_flip_identity_negates_the_decoded_payload() -> None:
    honest = honest_records("none")
    attacked, grid = attacked_records("none", SignFlip())
    assert grid.attacked_replies == 2
    for node in BYZ:
        want = -decoded("none", honest[node])
        assert want.abs().max() > 1e-3  # a real gradient difference
        torch.testing.assert_close(decoded("none", attacked[node]), want)
        assert_same_wire_layout(attacked[node], honest[node])
    for node in HONEST:
        torch.testing.assert_close(decoded("none", attacked[node]), decoded("none", honest[node]))


def test_sign_flip_randk_recompresses_with_the_nodes_seed() -> None:
    spec = "randk:0.5"
    comp = get_compressor(spec)
    honest = honest_records(spec)
    attacked, _ = attacked_records(spec, SignFlip())
    for node in BYZ:
        q = decoded(spec, honest[node])  # Q(Delta): what the server (and the attack) sees
        want = comp.compress(-q, seed_of(node))
        got = record_payload(attacked[node])
        assert set(got) == {"values", "seed"}
        assert got["seed"].tolist() == [seed_of(node)]  # the strategy checks the seed it sent
        torch.testing.assert_close(got["values"], want["values"])
        assert_same_wire_layout(attacked[node], honest[node])
        # the support is unchanged and the sign is flipped there (Q scales by d/K once more)
        out = decoded(spec, attacked[node])
        support = q != 0
        assert torch.equal(out != 0, support)
        assert bool((torch.sign(out[support]) == -torch.sign(q[support])).all())
        k = record_payload(honest[node])["values"].numel()
        torch.testing.assert_close(out, -(D / k) * q)
    for node in HONEST:
        assert torch.equal(
            record_payload(attacked[node])["values"], record_payload(honest[node])["values"]
        )


@pytest.mark.parametrize("spec", ["none", "randk:0.5"])
def test_omniscient_attack_sees_the_decoded_honest_vectors(spec: str) -> None:
    honest = honest_records(spec)
    attacked, _ = attacked_records(spec, ALIE(z=1.5))
    rows = torch.stack([decoded(spec, honest[n]) for n in HONEST])
    mu, sigma = honest_stats(rows)
    forged = mu - 1.5 * sigma
    comp = get_compressor(spec)
    for node in BYZ:
        want = comp.decompress(comp.compress(forged, seed_of(node)), D)
        torch.testing.assert_close(decoded(spec, attacked[node]), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["none", "randk:0.5"])
def test_validation_accepts_the_attacked_payloads(spec: str) -> None:
    honest = honest_records(spec)
    grid = ByzantineGrid(LocalGrid(NODES, make_client().handle), SignFlip(), node_ids=BYZ)
    replies = list(grid.send_and_receive(messages(spec)))
    checked = validate_replies(
        replies,
        {"payload": layout_of(honest[NODES[0]])},
        expected_nodes=NODES,
        decode=lambda node, content: decoded(spec, content["payload"]),  # type: ignore[arg-type]
    )
    assert checked.rejected == [] and sorted(checked.node_ids) == NODES


@pytest.mark.parametrize("dtype", DTYPES)
def test_byz_vr_marina_pp_accepts_and_aggregates_the_attacked_round(dtype: torch.dtype) -> None:
    """Round 2 of ByzVRMarinaPP (a RandK difference round) behind the grid: every reply is
    accepted and g^2 = g^1 + Median of the decoded payloads (Byzantine ones included)."""
    spec = "randk:0.5"
    strategy = ByzVRMarinaPP(
        "median", compressor=spec, p=1e-9, alpha=None, clients_per_round=5, lr=0.1, batch_size=8
    )
    grid = ByzantineGrid(LocalGrid(NODES, make_client(dtype).handle), SignFlip(), node_ids=BYZ)
    arrays: ArrayRecord | None = ArrayRecord(point(4, dtype))
    for server_round in (1, 2):
        assert arrays is not None
        msgs = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
        g_before = None if strategy.g is None else strategy.g.clone()
        replies = list(grid.send_and_receive(msgs))
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        assert metrics is not None and metrics["accepted"] == 5 and metrics["rejected"] == 0
    assert metrics["full-round"] == 0 and grid.attacked_replies == 4  # 2 per round
    assert g_before is not None and strategy.g is not None
    rows = torch.stack([decoded(spec, r.content["payload"]) for r in replies])
    torch.testing.assert_close(strategy.g, g_before + rows.median(dim=0).values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ["none", "randk:0.5"])
def test_attacked_payload_keeps_the_wire_dtypes(spec: str, dtype: torch.dtype) -> None:
    honest = honest_records(spec, dtype)
    attacked, grid = attacked_records(spec, SignFlip(), dtype)
    assert grid.attacked_replies == 2
    for node in BYZ:
        assert_same_wire_layout(attacked[node], honest[node])
        torch.testing.assert_close(
            decoded(spec, attacked[node]),
            get_compressor(spec).decompress(
                get_compressor(spec).compress(-decoded(spec, honest[node]), seed_of(node)), D
            ),
        )
