"""Node sampling and seed draws of a round, from a seeded ``random.Random``: the choices the
method strategies make (``MethodStrategy.sample`` / ``draw_seed``) without Flower, so the
strategies and the batched engine draw exactly the same nodes and seeds."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

__all__ = ["RoundPlan", "draw_seeds", "plan_round", "sample_nodes"]


def sample_nodes(rng: random.Random, nodes: Sequence[int], k: int | None) -> list[int]:
    """``k`` of ``nodes`` (all of them if fewer), ``rng.sample(nodes, min(k, len(nodes)))``
    in the order drawn; ``k=None``: every node, in ID order, with no draw from ``rng``.

    ``nodes`` is the connected nodes in the grid's order (``grid.get_node_ids()``): the draw
    depends on that order."""
    if k is None:
        return sorted(nodes)
    return rng.sample(list(nodes), min(k, len(nodes)))


def draw_seeds(rng: random.Random, count: int) -> list[int]:
    """``count`` fresh 31-bit seeds, ``rng.getrandbits(31)`` each, in order (one per sampled
    node: minibatch seeds, compressor seeds)."""
    return [rng.getrandbits(31) for _ in range(count)]


@dataclass(frozen=True)
class RoundPlan:
    """A round's draws: the sampled nodes (in draw order) and, per node in that order, its
    minibatch seed and (compressing methods) its compressor seed."""

    nodes: tuple[int, ...]
    batch_seeds: tuple[int, ...]
    compressor_seeds: tuple[int, ...] | None = None

    @cached_property
    def _index(self) -> dict[int, int]:
        return {node: i for i, node in enumerate(self.nodes)}

    def batch_seed(self, node: int) -> int:
        """The minibatch seed of ``node``."""
        return self.batch_seeds[self._index[node]]

    def compressor_seed(self, node: int) -> int:
        """The compressor seed of ``node`` (``KeyError`` when the round sends none)."""
        if self.compressor_seeds is None:
            raise KeyError(f"no compressor seeds this round (node {node})")
        return self.compressor_seeds[self._index[node]]

    def compressor_seed_map(self) -> dict[int, int]:
        """``{node: compressor seed}`` (empty when the round sends none)."""
        if self.compressor_seeds is None:
            return {}
        return dict(zip(self.nodes, self.compressor_seeds, strict=True))


def plan_round(
    rng: random.Random, nodes: Sequence[int], k: int | None, compressor_seeds: bool = False
) -> RoundPlan:
    """The draws of a one-step method's round, in the strategies' order: the sample
    (:func:`sample_nodes`), one minibatch seed per sampled node, then (``compressor_seeds``)
    one compressor seed per sampled node."""
    chosen = sample_nodes(rng, nodes, k)
    batch = draw_seeds(rng, len(chosen))
    comp = tuple(draw_seeds(rng, len(chosen))) if compressor_seeds else None
    return RoundPlan(tuple(chosen), tuple(batch), comp)
