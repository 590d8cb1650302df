"""Backdoor attacks (BadNets, DBA, model replacement) on the batched engine, for the FedAvg
family (``fedavg``, ``robust-fedavg``): the two halves the local engine splits between its
ClientApp and ``ByzantineGrid``, on the stacked data and the stacked updates.

- The data (``simulations.app``'s ``train``): each Byzantine node trains, every round it is
  sampled, on ``attack.poison(x, y, x_train, node=partition, server_round=round)`` of its
  partition, the attack rebuilt from the mark ``ByzantineGrid`` puts in its train message
  (``data_attack_mark``: the spec, seed included; DBA's i-th Byzantine node by node ID gets
  local trigger ``i mod parts`` unless the spec fixes ``part``). :meth:`Backdoor.poisoned`
  writes those poisoned copies over the Byzantine partitions' rows of the stacked data for
  the round's local epochs and puts the clean rows back after them.
- The update (``ByzantineGrid._attack``): model replacement, from its ``start`` round on,
  boosts each Byzantine update ``model - model sent`` by ``for_round(n, attackers=k)`` for the
  ``n`` train messages and ``k`` Byzantine replies of the round (:meth:`Backdoor.boost`).

Neurotoxin (it masks the local SGD steps) is refused by ``setup.batched_attack``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ...attacks import DBA, BadNets, ModelReplacement, get_attack
from ...clients.injection import data_attack_mark
from .attack import attack_rows
from .data import StackedData

__all__ = ["Backdoor"]


class Backdoor:
    """A backdoor attack of the Byzantine partitions ``byzantine`` (module doc); ``reference``:
    the data set's ``x_train`` (the trigger's value, as the ClientApp reads it)."""

    def __init__(self, attack: BadNets, byzantine: Sequence[int], reference: torch.Tensor) -> None:
        self.attack = attack
        self.reference = reference
        nodes = sorted(p + 1 for p in byzantine)  # node IDs 1..n, as on the local engine
        self.marks: dict[int, str] = {}
        """Byzantine partition -> the mark of its train messages (``ByzantineGrid._mark``)."""
        self.clients: dict[int, BadNets] = {}
        """Byzantine partition -> the attack its ClientApp rebuilds from the mark."""
        for p in byzantine:
            node_attack = attack
            if isinstance(attack, DBA) and attack.part is None:
                rank = nodes.index(p + 1)
                node_attack = dataclasses.replace(attack, part=rank % attack.parts)
            mark = data_attack_mark(node_attack)
            self.marks[p] = mark
            rebuilt = get_attack(mark)  # as ``clients.data_attack_of`` reads the mark
            assert isinstance(rebuilt, BadNets)
            self.clients[p] = rebuilt

    def mark(self, node: int) -> str | bool:
        """The mark of node ``node``'s train messages (False: an honest node)."""
        return self.marks.get(node - 1, False)

    @contextmanager
    def poisoned(
        self, data: StackedData, partitions: Sequence[int], server_round: int
    ) -> Iterator[None]:
        """Within the block, the rows of the Byzantine ones of ``partitions`` in ``data`` are
        their ClientApp's poisoned copy for ``server_round``; the clean rows come back after."""
        saved: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        try:
            for p in partitions:
                client = self.clients.get(p)
                start, size = data.offsets[p], data.sizes[p]
                if client is None or size == 0 or not client.active(server_round):
                    continue  # before ``start`` the poisoned copy is the clean one
                rows = slice(start, start + size)
                x, y = data.x[rows], data.y[rows]
                xp, yp = client.poison(
                    x, y, self.reference, node=p, server_round=server_round
                )  # new tensors
                saved.append((start, size, x.clone(), y.clone()))
                data.x[rows] = xp
                data.y[rows] = yp
            yield
        finally:
            for start, size, x, y in reversed(saved):
                data.x[start : start + size] = x
                data.y[start : start + size] = y

    def boost(
        self,
        updates: torch.Tensor,
        byzantine: torch.Tensor,
        sent: int,
        server_round: int,
        vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The updates ``[m, d]`` (``model - model sent``) with the rows of ``byzantine``
        ``[m]`` boosted by model replacement (``for_round(sent, attackers=k)``, ``k`` the
        Byzantine rows) when it attacks in ``server_round``; else ``updates`` as they are.
        ``vectors``: the reply models (their finiteness picks the honest rows, as
        :func:`~.attack.attack_rows`)."""
        attack = self.attack
        if not isinstance(attack, ModelReplacement) or not attack.active(server_round):
            return updates
        count = int(byzantine.sum())
        if count == 0:
            return updates
        rows, _ = attack_rows(
            attack.for_round(sent, attackers=count), updates, byzantine, vectors=vectors
        )
        return rows
