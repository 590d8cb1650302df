"""``methods.sampling``: the round's draws equal the strategies' (``MethodStrategy.sample`` and
``draw_seed``) draw for draw, and ``RoundPlan``'s lookups."""

from __future__ import annotations

import random

import pytest

from flwr_byz.methods.sampling import RoundPlan, draw_seeds, plan_round, sample_nodes

NODES = [17, 3, 42, 8, 25, 11, 60]


@pytest.mark.parametrize("k", [1, 3, 7, 20])
def test_sample_nodes_is_rng_sample_in_grid_order(k: int) -> None:
    rng, ref = random.Random(5), random.Random(5)
    assert sample_nodes(rng, NODES, k) == ref.sample(NODES, min(k, len(NODES)))
    assert rng.getstate() == ref.getstate()  # the same draws, nothing more


def test_sample_nodes_none_is_every_node_sorted_without_a_draw() -> None:
    rng = random.Random(1)
    before = rng.getstate()
    assert sample_nodes(rng, NODES, None) == sorted(NODES)
    assert rng.getstate() == before


def test_draw_seeds_are_31_bit_draws_in_order() -> None:
    ref = random.Random(9)
    assert draw_seeds(random.Random(9), 5) == [ref.getrandbits(31) for _ in range(5)]


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("k", [None, 4])
def test_plan_round_draws_in_the_strategies_order(k: int | None, compressed: bool) -> None:
    """Sample, then one batch seed per node, then (compressing methods) one compressor seed
    per node: the order of the old ``configure_train`` code."""
    ref = random.Random(3)
    nodes = sorted(NODES) if k is None else ref.sample(NODES, k)
    batch = [ref.getrandbits(31) for _ in nodes]
    comp = [ref.getrandbits(31) for _ in nodes] if compressed else None
    plan = plan_round(random.Random(3), NODES, k, compressor_seeds=compressed)
    assert plan.nodes == tuple(nodes)
    assert plan.batch_seeds == tuple(batch)
    assert plan.compressor_seeds == (None if comp is None else tuple(comp))
    for i, node in enumerate(nodes):
        assert plan.batch_seed(node) == batch[i]
        if comp is not None:
            assert plan.compressor_seed(node) == comp[i]
    assert plan.compressor_seed_map() == (
        {} if comp is None else dict(zip(nodes, comp, strict=True))
    )


def test_round_plan_without_compressor_seeds_refuses_the_lookup() -> None:
    plan = RoundPlan((1, 2), (10, 20))
    with pytest.raises(KeyError):
        plan.compressor_seed(1)
    with pytest.raises(KeyError):
        plan.batch_seed(3)
