"""ShiftBack: the attack itself on a stub attack surface, then bound to the real strategies'
surfaces, where a Byzantine majority must send the global model back to x^0 (through
ByzantineGrid and GradientClient nodes for the method strategies)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg, Krum

from flwr_byz.attacks import ShiftBack, SurfaceAttack, get_attack
from flwr_byz.clients import ByzantineGrid
from flwr_byz.methods.surface import AttackSurface
from flwr_byz.protocol.records import flatten, layout_of
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import ByzVRMarinaPP, RobustFedAvg, RobustMomentum
from tests.clients.gradient_helpers import (
    make_client,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    point,
)
from tests.clients.nodes import honest_client, model, sent_arrays, vector_of

KEYS = ("w", "b", "k")


class Source:
    """A stub attack surface: aggregates replies as they are, returns ``mult``-dependent
    targets and records the calls."""

    def __init__(self, vector: torch.Tensor) -> None:
        self.vector = vector
        self.calls: list[float | None] = []

    def aggregated(self, node: int, reply: torch.Tensor, *, compressed: bool = False):
        return reply

    def to_wire(self, node: int, forged: torch.Tensor, *, compressed: bool = False):
        return forged

    def shift_back_target(self, mult: float | None) -> torch.Tensor:
        self.calls.append(mult)
        return self.vector * (1.0 if mult is None else mult)


def rows(n: int, d: int = 6, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- the attack on its own --------------------------------------------------------------------


@pytest.mark.parametrize(("h", "b"), [(1, 2), (2, 3), (3, 7)])
@pytest.mark.parametrize("mult", [None, 0.25])
def test_byzantine_majority_sends_the_source_vector(h: int, b: int, mult: float | None) -> None:
    source = Source(torch.arange(6, dtype=torch.float64))
    attack = ShiftBack(mult=mult).bind(source)
    out = attack(rows(h), rows(b, seed=1))
    want = source.vector * (1.0 if mult is None else mult)
    assert out.shape == (b, 6) and out.dtype == torch.float32  # own's dtype
    torch.testing.assert_close(out, want.float().expand(b, -1))
    assert source.calls == [mult]


@pytest.mark.parametrize(("h", "b"), [(3, 3), (4, 1), (5, 2)])
def test_no_majority_sends_the_honest_mean(h: int, b: int) -> None:
    source = Source(torch.full((6,), 1e6))
    honest = rows(h, dtype=torch.float64)
    out = ShiftBack().bind(source)(honest, rows(b, seed=2, dtype=torch.float64))
    torch.testing.assert_close(out, honest.mean(dim=0).expand(b, -1))
    assert source.calls == []  # the strategy is not even asked


def test_rows_are_independent_copies() -> None:
    out = ShiftBack().bind(Source(torch.ones(6)))(rows(1), rows(3))
    out[0, 0] = 42.0
    assert out[1, 0] == 1.0


def test_unbound_needs_a_source_only_with_a_majority() -> None:
    attack = ShiftBack()
    honest = rows(3)
    torch.testing.assert_close(attack(honest, rows(2)), honest.mean(0).expand(2, -1))
    with pytest.raises(ValueError, match="bind"):
        attack(rows(1), rows(2))


class OnlyTarget:
    """Has ShiftBack's method but is no attack surface."""

    def shift_back_target(self, mult: float | None) -> torch.Tensor:
        return torch.zeros(6)


@pytest.mark.parametrize(
    ("bad", "missing"),
    [
        (object(), "aggregated(), to_wire(), shift_back_target()"),
        (3, "aggregated(), to_wire(), shift_back_target()"),
        ("strategy", "aggregated(), to_wire(), shift_back_target()"),
        (
            type("NoCall", (), {"aggregated": 1, "to_wire": 1, "shift_back_target": 1})(),
            "aggregated(), to_wire(), shift_back_target()",
        ),
        (OnlyTarget(), "aggregated(), to_wire()"),
        (RobustFedAvg("median"), "aggregated(), to_wire(), shift_back_target()"),
    ],
)
def test_bind_needs_an_attack_surface(bad: object, missing: str) -> None:
    attack = ShiftBack()
    with pytest.raises(TypeError, match=rf"ShiftBack\.bind.* has no {re.escape(missing)}$"):
        attack.bind(bad)  # type: ignore[arg-type]
    assert attack.surface is None  # nothing bound


def test_bind_returns_the_attack() -> None:
    attack = ShiftBack(mult=2.0)
    surface: AttackSurface = Source(torch.zeros(6))
    assert isinstance(attack, SurfaceAttack)
    assert attack.bind(surface) is attack and attack.surface is surface


def test_source_vector_of_the_wrong_size_is_refused() -> None:
    attack = ShiftBack().bind(Source(torch.zeros(5)))
    with pytest.raises(ValueError, match="d=6"):
        attack(rows(1), rows(2))


def test_no_honest_row_is_a_majority() -> None:
    """Only Byzantine nodes sampled (h = 0): a majority, not a missing input."""
    assert ShiftBack.omniscient is True
    source = Source(torch.arange(6, dtype=torch.float32))
    out = ShiftBack().bind(source)(rows(0), rows(2))
    torch.testing.assert_close(out, source.vector.expand(2, -1))
    with pytest.raises(ValueError, match="bind"):
        ShiftBack()(rows(0), rows(2))


@pytest.mark.parametrize(
    ("spec", "mult"),
    [
        ("shift-back", None),
        ("shiftback", None),
        ("SHIFT_BACK", None),
        ("shift-back:0.5", 0.5),
        ("shiftback:mult=2", 2),
    ],
)
def test_registry(spec: str, mult: float | None) -> None:
    attack = get_attack(spec)
    assert isinstance(attack, ShiftBack) and attack.mult == mult and attack.surface is None


# --- RobustFedAvg -------------------------------------------------------------------------

NODES = [11, 12, 13, 14, 15]
BYZ = (11, 13, 15)  # a majority


def fedavg_rounds(strategy: RobustFedAvg, initial: ArrayRecord, rounds: int) -> ArrayRecord:
    """Honest rounds 1..rounds on a LocalGrid; returns the model after the last one."""
    grid = LocalGrid(NODES, honest_client())
    arrays = initial
    for r in range(1, rounds + 1):
        replies = grid.send_and_receive(strategy.configure_train(r, arrays, ConfigRecord({}), grid))
        new, _ = strategy.aggregate_train(r, replies)
        assert new is not None
        arrays = new
    return arrays


def test_robust_fedavg_vector_is_minus_the_distance_to_x0() -> None:
    strategy = RobustFedAvg("median", min_available_nodes=5)
    with pytest.raises(ValueError, match="no model"):
        strategy.attack_surface().shift_back_target(None)
    x0 = model(with_int=True)
    grid = LocalGrid(NODES, honest_client())
    messages = strategy.configure_train(1, x0, ConfigRecord({}), grid)
    v1 = strategy.attack_surface().shift_back_target(None)
    assert v1.shape == (24,) and not v1.any()  # round 1: x^1 = x^0 (int array left out)
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert arrays is not None
    messages = strategy.configure_train(2, arrays, ConfigRecord({}), grid)
    arrays, _ = strategy.aggregate_train(2, grid.send_and_receive(messages))
    assert arrays is not None
    messages = list(strategy.configure_train(3, arrays, ConfigRecord({}), grid))
    sent = vector_of(sent_arrays(messages[0]), KEYS)
    v = strategy.attack_surface().shift_back_target(None).double().numpy()
    assert np.abs(sent - vector_of(x0, KEYS)).max() > 0.05  # the model did move
    np.testing.assert_allclose(sent + v, vector_of(x0, KEYS), atol=1e-6)
    np.testing.assert_allclose(
        strategy.attack_surface().shift_back_target(0.5).double().numpy(),
        0.5 * v,
        rtol=1e-6,
        atol=1e-7,
    )


def test_robust_fedavg_majority_returns_the_model_to_x0() -> None:
    x0 = model()
    strategy = RobustFedAvg("median", min_available_nodes=5)
    arrays = fedavg_rounds(strategy, x0, 2)  # two honest rounds move the model
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), ShiftBack(), node_ids=BYZ)
    assert grid.bind(strategy) is grid
    replies = grid.send_and_receive(strategy.configure_train(3, arrays, ConfigRecord({}), grid))
    new, metrics = strategy.aggregate_train(3, replies)
    assert grid.attacked_replies == 3
    assert new is not None and metrics is not None and metrics["accepted"] == 5
    np.testing.assert_allclose(vector_of(new, KEYS), vector_of(x0, KEYS), atol=1e-6)


def test_robust_fedavg_minority_looks_honest() -> None:
    x0 = model()
    strategy = RobustFedAvg("median", min_available_nodes=5)
    arrays = fedavg_rounds(strategy, x0, 1)
    grid = ByzantineGrid(
        LocalGrid(NODES, honest_client()), ShiftBack(), node_ids=(12, 14), strategy=strategy
    )
    messages = list(strategy.configure_train(2, arrays, ConfigRecord({}), grid))
    replies = {int(r.metadata.src_node_id): r for r in grid.send_and_receive(messages)}
    sent = vector_of(arrays, KEYS)
    honest = [vector_of(replies[n].content["arrays"], KEYS) - sent for n in (11, 13, 15)]
    for node in (12, 14):  # sent + the honest mean update
        np.testing.assert_allclose(
            vector_of(replies[node].content["arrays"], KEYS), sent + np.mean(honest, 0), atol=1e-6
        )


def test_robust_fedavg_all_byzantine_round_returns_to_x0() -> None:
    """Every sampled node Byzantine: the grid hands ShiftBack no honest row, which it reads
    as a majority (not as its own rows standing in for the honest ones)."""
    x0 = model()
    strategy = RobustFedAvg("mean", min_available_nodes=5)
    arrays = fedavg_rounds(strategy, x0, 1)
    attack = ShiftBack().bind(strategy.attack_surface())  # bound directly, the grid unbound
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), attack, node_ids=NODES)
    replies = grid.send_and_receive(strategy.configure_train(2, arrays, ConfigRecord({}), grid))
    new, _ = strategy.aggregate_train(2, replies)
    assert grid.attacked_replies == 5 and new is not None
    np.testing.assert_allclose(vector_of(new, KEYS), vector_of(x0, KEYS), atol=1e-6)


# --- the method strategies, with GradientClient nodes -------------------------------------


def floats(record: ArrayRecord) -> torch.Tensor:
    return flatten(record, layout_of(record).floating()).double()


def momentum_strategy(lr: float) -> RobustMomentum:
    return RobustMomentum("median", lr=lr, momentum=0.5, batch_size=8, clients_per_round=5)


def marina_strategy(lr: float) -> ByzVRMarinaPP:
    # p tiny: round 2 is a gradient-difference round; alpha=None: no clipping
    return ByzVRMarinaPP(
        "median", p=1e-9, alpha=None, clients_per_round=5, lr=lr, batch_size=8, seed=3
    )


def method_round(strategy, server_round: int, arrays: ArrayRecord, grid) -> ArrayRecord:
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
    new, metrics = strategy.aggregate_train(server_round, grid.send_and_receive(messages))
    assert new is not None and metrics is not None
    assert metrics["accepted"] == len(messages) and metrics["skipped"] == 0
    return new


def model_after_shift_back(strategy, mult: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round 1 honest, round 2 with a ShiftBack majority; (x^0, the model after the attack
    has been applied) over the floating arrays."""
    x0 = ArrayRecord(point(7))
    nodes = LocalGrid(NODES, make_client().handle)
    arrays = method_round(strategy, 1, x0, nodes)
    grid = ByzantineGrid(nodes, ShiftBack(mult=mult), node_ids=BYZ).bind(strategy)
    arrays = method_round(strategy, 2, arrays, grid)
    assert grid.attacked_replies == 3
    if isinstance(strategy, ByzVRMarinaPP):  # g^2 is applied when round 3 is configured
        assert strategy._round is not None and not strategy._round.full
        strategy.configure_train(3, arrays, ConfigRecord({}), nodes)
        assert strategy.x is not None
        return floats(x0), strategy.x.double()
    return floats(x0), floats(arrays)


@pytest.mark.parametrize("factory", [momentum_strategy, marina_strategy])
def test_method_strategy_majority_with_mult_one_lands_on_x0(factory) -> None:
    """``(mult / lr)(x^k - x^0)`` as a gradient with mult = 1: ``x^k - lr g = x^0``."""
    x0, x = model_after_shift_back(factory(0.5), mult=1.0)
    assert float((x - x0).abs().max()) < 1e-5


@pytest.mark.parametrize("factory", [momentum_strategy, marina_strategy])
def test_method_strategy_majority_with_default_mult_lands_on_x0(factory) -> None:
    x0, x = model_after_shift_back(factory(0.5), mult=None)
    assert float((x - x0).abs().max()) < 1e-5


def test_method_strategy_vector_formula() -> None:
    strategy = momentum_strategy(0.2)
    with pytest.raises(ValueError, match="no model"):
        strategy.attack_surface().shift_back_target(None)
    x0 = ArrayRecord(point(8))
    grid = LocalGrid(NODES, make_client().handle)
    arrays = method_round(strategy, 1, x0, grid)
    strategy.configure_train(2, arrays, ConfigRecord({}), grid)
    assert strategy.x is not None and strategy.x0 is not None
    diff = strategy.x - strategy.x0
    assert float(diff.abs().max()) > 1e-3
    torch.testing.assert_close(strategy.attack_surface().shift_back_target(0.3), (0.3 / 0.2) * diff)
    torch.testing.assert_close(
        strategy.attack_surface().shift_back_target(None), diff / 0.2
    )  # mult 1: x^0


def test_marina_vector_subtracts_g_in_a_difference_round() -> None:
    strategy = marina_strategy(0.25)
    grid = LocalGrid(NODES, make_client().handle)
    x0 = ArrayRecord(point(9))
    strategy.configure_train(1, x0, ConfigRecord({}), grid)
    assert not strategy.attack_surface().shift_back_target(1.0).any()  # full round 1: x^1 = x^0
    arrays = method_round(strategy, 1, x0, grid)
    messages = list(strategy.configure_train(2, arrays, ConfigRecord({}), grid))
    assert messages[0].content["config"]["op"] == "grad_diff"
    assert strategy.x is not None and strategy.x0 is not None and strategy.g is not None
    torch.testing.assert_close(floats(sent_arrays(messages[0])).float(), strategy.x)
    full = (1.0 / 0.25) * (strategy.x - strategy.x0)
    torch.testing.assert_close(strategy.attack_surface().shift_back_target(1.0), full - strategy.g)


# --- binding through ByzantineGrid ------------------------------------------------------------


@pytest.mark.parametrize("strategy", [FedAvg(), Krum()], ids=["fedavg", "krum"])
def test_grid_refuses_shift_back_against_a_strategy_without_a_surface(strategy) -> None:
    """Flower's strategies have no attack surface: ShiftBack (which needs x^0) is refused at
    bind and at construction, naming what is missing; other attacks are fine."""
    name = type(strategy).__name__
    want = rf"ShiftBack needs the attack surface .*: {name} has no attack_surface\(\)"
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), "shift-back", node_ids=BYZ)
    with pytest.raises(TypeError, match=want):
        grid.bind(strategy)
    assert grid.surface is None and grid.attack.surface is None  # type: ignore[union-attr]
    with pytest.raises(TypeError, match=want):
        ByzantineGrid(
            LocalGrid(NODES, honest_client()), ShiftBack(), node_ids=BYZ, strategy=strategy
        )
    other = ByzantineGrid(LocalGrid(NODES, honest_client()), "alie", node_ids=BYZ)
    assert other.bind(strategy) is other and other.surface is None


def test_grid_refuses_a_strategy_whose_surface_is_not_one() -> None:
    class Broken(RobustFedAvg):
        def attack_surface(self):  # type: ignore[override]
            return OnlyTarget()

    with pytest.raises(TypeError, match=r"Broken\.attack_surface\(\) .* has no aggregated\(\), "):
        ByzantineGrid(LocalGrid(NODES, honest_client()), "alie", node_ids=BYZ).bind(Broken("mean"))


def test_grid_binds_shift_back_to_the_strategys_surface() -> None:
    strategy = momentum_strategy(0.5)
    grid = ByzantineGrid(LocalGrid(NODES, honest_client()), "shift-back:0.5", node_ids=BYZ)
    grid.bind(strategy)
    attack = grid.attack
    assert isinstance(attack, ShiftBack) and attack.surface is grid.surface
    assert grid.surface is not None
    method_round(strategy, 1, ArrayRecord(point(8)), LocalGrid(NODES, make_client().handle))
    assert strategy.x is not None and strategy.x0 is not None  # the surface reads live state
    diff = strategy.x - strategy.x0
    assert float(diff.abs().max()) > 1e-3
    torch.testing.assert_close(attack.surface.shift_back_target(0.5), (0.5 / 0.5) * diff)
