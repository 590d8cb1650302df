"""``methods.marina`` (Byz-VR-MARINA-PP, Alg. 1): the round's draws in the strategy's order,
the client's reply and the server's update with its clipping, against the formulas."""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch

from flwr_byz.aggregators import Mean, Median
from flwr_byz.compressors import get_compressor
from flwr_byz.compressors.rows import compress_rows
from flwr_byz.methods.common import clip_rows, guarded
from flwr_byz.methods.marina import (
    MarinaPlan,
    MarinaState,
    attack_surface,
    client_step,
    f_full,
    local_size,
    p_effective,
    plan_round,
    server_step,
)

NODES = [5, 2, 9, 1, 7, 3]
KW = dict(lr=0.1, p=0.5, alpha=2.0, batch_size=4, clients_per_round=2, full_round_clients=None)


def _state(g: torch.Tensor | None = None) -> MarinaState:
    x = torch.arange(4.0)
    return MarinaState(x=x, x0=x.clone(), g=g)


def test_first_round_is_full_without_a_coin() -> None:
    rng, ref = random.Random(0), random.Random(0)
    plan, state = plan_round(rng, _state(), NODES, **KW)
    assert plan.full and plan.level is None and plan.compressor_seeds is None
    assert plan.nodes == tuple(ref.sample(NODES, len(NODES)))  # C_hat = every node
    assert plan.batch_seeds == tuple(ref.getrandbits(31) for _ in NODES)
    assert torch.equal(state.x, state.x_prev)  # g^0 = 0: x^1 = x^0


def test_difference_round_draws_coin_sample_then_seeds() -> None:
    g = torch.tensor([1.0, -1.0, 0.5, 0.0])
    seed = next(s for s in range(40) if random.Random(s).random() >= 0.5)  # a tails coin
    ref = random.Random(seed)
    assert ref.random() >= 0.5
    nodes = ref.sample(NODES, 2)
    batch = [ref.getrandbits(31) for _ in nodes]
    comp = [ref.getrandbits(31) for _ in nodes]
    plan, state = plan_round(random.Random(seed), _state(g), NODES, **KW)
    assert not plan.full and plan.nodes == tuple(nodes)
    assert plan.batch_seeds == tuple(batch) and plan.compressor_seeds == tuple(comp)
    x_new = _state().x - 0.1 * g
    assert torch.equal(state.x, x_new) and torch.equal(state.x_prev, _state().x)
    assert plan.level == 2.0 * float(torch.linalg.vector_norm(x_new - _state().x))


def test_epoch_rounds_are_deterministic() -> None:
    state = MarinaState(torch.zeros(2), torch.zeros(2), g=torch.zeros(2), local_size=12.0)
    kinds = []
    for since in range(4):
        rng = random.Random(0)
        plan, _ = plan_round(
            rng,
            MarinaState(**{**state.__dict__, "rounds_since_full": since}),
            NODES,
            **{**KW, "full_rounds": "epoch"},
        )
        kinds.append(plan.full)
        if plan.full:
            assert len(plan.nodes) == len(NODES)
    assert kinds == [False, False, True, True]  # ceil(12 / 4) = 3: a full round every 3


def test_p_effective_f_full_local_size() -> None:
    assert p_effective(0.3, 4, 100.0) == 0.3
    assert p_effective(None, 4, None) == 1.0 and p_effective(None, 4, 100.0) == 0.04
    assert p_effective(None, 4, 2.0) == 1.0
    assert f_full(1, 20, 4) == 5 and f_full(3, 4, 4) == 3 and f_full(2, 3, 1) == 2
    assert f_full(1, 20, 4, f_full=2) == 2
    assert local_size([3.0, 100.0, 5.0]) == 5.0 and local_size([]) is None


@pytest.mark.parametrize("spec", ["none", "randk:0.5", "natural"])
def test_client_step_is_the_gradient_or_the_compressed_difference(spec: str) -> None:
    gen = torch.Generator().manual_seed(0)
    new, old = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    assert client_step(new, None) is new
    comp = get_compressor(spec)
    out = client_step(new, old, compress=functools.partial(compress_rows, comp), seeds=[1, 2, 3])
    for i in range(3):
        want = comp.decompress(comp.compress(new[i] - old[i], i + 1), 8)
        assert torch.equal(out[i], want)
    assert torch.equal(client_step(new, old), new - old)


def test_server_step_full_and_difference_rounds() -> None:
    gen = torch.Generator().manual_seed(5)
    replies = torch.randn(5, 4, generator=gen)
    full = MarinaPlan((1, 2, 3, 4, 5), (0,) * 5, full=True)
    state, stats = server_step(_state(), full, replies, guarded(Median()), local_sizes=[8, 9, 30])
    assert torch.equal(state.g, Median()(replies)) and state.local_size == 9
    assert stats == {"clipped": 0, "skipped": 0}
    diff = MarinaPlan((1, 2), (0, 0), (0, 0), full=False, level=0.5)
    deltas = 3 * torch.randn(2, 4, generator=gen)
    after, stats = server_step(state, diff, deltas, guarded(Mean()))
    clipped, count = clip_rows(deltas, 0.5)
    assert torch.equal(after.g, state.g + Mean()(clipped)) and stats["clipped"] == count
    assert after.rounds_since_full == 1
    skipped, stats = server_step(after, diff, deltas[:0], guarded(Mean()))
    assert torch.equal(skipped.g, after.g) and stats["skipped"] == 1
    assert skipped.rounds_since_full == 2  # a difference round counts even when skipped


def test_attack_surface_shift_back() -> None:
    g = torch.tensor([0.5, 0.5, 0.5, 0.5])
    state = MarinaState(torch.arange(4.0) + 1, torch.arange(4.0), g=g)
    full = attack_surface(lambda: state, lambda: True, 0.25).shift_back_target(None)
    assert torch.equal(full, (1 / 0.25) * torch.ones(4))
    diff = attack_surface(lambda: state, lambda: False, 0.25).shift_back_target(None)
    assert torch.equal(diff, full - g)  # g^{k+1} = g^k + diff = the full target
    assert math.isclose(float(diff.sum()), 14.0)
