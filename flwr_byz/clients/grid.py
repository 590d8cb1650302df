"""ByzantineGrid: a server-side, omniscient adversary for simulation.

It wraps the Grid a ServerApp is given. Messages go out unchanged (a data attack marks the
Byzantine nodes' ConfigRecord instead), every node answers honestly, and once the round's
replies are in, the Byzantine nodes' replies are rewritten by the attack, which sees the
honest replies of the round (the omniscient threat model of ALIE, IPM, MinMax, Mimic). Any
strategy works unchanged behind it: ours, and Flower's FedAvg, Krum, MultiKrum, Bulyan,
FedMedian, FedTrimmedAvg.

The attack forges what the strategy aggregates, through the method's attack surface
(``flwr_byz.methods.surface``; ``bind(strategy)`` takes ``strategy.attack_surface()``): the
honest and Byzantine rows are ``surface.aggregated(node, reply vector)``, and a forged row goes
back as ``surface.to_wire(node, forged)`` (compressed again when the reply was a payload).
Unbound, or bound to a strategy without a surface (Flower's), the surface is the model update
``reply - model sent`` (``injection.model_update_surface``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from logging import INFO, WARNING
from typing import Protocol, runtime_checkable

import torch
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from ..attacks import (
    DBA,
    Attack,
    BadNets,
    LabelFlip,
    ModelReplacement,
    SurfaceAttack,
    get_attack,
)
from ..methods.surface import AttackSurface, as_surface
from .injection import (
    Target,
    apply_attack,
    data_attack_mark,
    mark_data_attack,
    model_sent,
    model_update_surface,
    server_round_of,
    target_of,
    write_back,
)
from .wrapping import GridWrapper

__all__ = ["ByzantineGrid", "SurfaceStrategy", "surface_of"]


@runtime_checkable
class SurfaceStrategy(Protocol):
    """A strategy with an attack surface (every strategy of flwr-byz)."""

    def attack_surface(self) -> AttackSurface: ...


def surface_of(strategy: object) -> AttackSurface | None:
    """``strategy.attack_surface()``, checked (``TypeError`` naming the methods it lacks);
    None for a strategy without one (Flower's FedAvg, Krum, ...)."""
    if not isinstance(strategy, SurfaceStrategy):
        return None
    return as_surface(strategy.attack_surface(), f"{type(strategy).__name__}.attack_surface()")


class ByzantineGrid(GridWrapper):
    """Grid wrapper that replaces the Byzantine nodes' training replies by an attack's output.

    Parameters
    ----------
    grid : Grid
        The Grid handed to the ServerApp.
    attack : Attack | LabelFlip | BadNets | str
        An attack of ``flwr_byz.attacks`` or a spec string (``"alie"``, ``"sign-flip:10"``,
        ``"gaussian:sigma=1"``, ``"label-flip"``, ``"badnets:target=0"``, ...).
    num_byzantine : int | None
        Choose this many Byzantine nodes among the connected ones (seeded, at the first round).
    node_ids : Iterable[int] | None
        Or name them. Exactly one of ``num_byzantine`` / ``node_ids``.
    seed : int (default: 0)
        Seeds the choice of nodes and random attacks given as spec strings.
    message_types : Sequence[str] (default: ("train",))
        Replies to these message types are attacked; evaluation replies stay honest.
    strategy : object | None
        The strategy behind the grid: ``bind(strategy)`` now (it can also be called later).

    Per-node attacks rewrite each Byzantine reply from its own content; omniscient attacks
    also read the round's valid honest replies (those with the same array layout and finite
    values; when there is none, the Byzantine nodes' own vectors stand in). Error replies of
    Byzantine nodes are left as they are. A data attack (``LabelFlip``, the backdoors
    ``BadNets``, ``DBA``, ``ModelReplacement``, ``Neurotoxin``) puts ``"byzantine-attack":
    <its full spec>`` (``attacks.attack_spec``, seed included) in the Byzantine nodes'
    ConfigRecord: the ClientApp corrupts its training data as
    :func:`flwr_byz.clients.data_attack_of` says. Data attacks leave the replies alone,
    except ``ModelReplacement``, which then boosts the Byzantine updates (its ``boost``, else
    ``n / (eta k)`` for the ``n`` train messages and ``k`` Byzantine replies of the round) as
    a per-node attack. DBA's i-th Byzantine node (by node ID) poisons with local trigger
    ``i mod parts``.
    """

    def __init__(
        self,
        grid: Grid,
        attack: Attack | LabelFlip | BadNets | str,
        num_byzantine: int | None = None,
        node_ids: Iterable[int] | None = None,
        seed: int = 0,
        message_types: Sequence[str] = (MessageType.TRAIN,),
        strategy: object | None = None,
    ) -> None:
        if (num_byzantine is None) == (node_ids is None):
            raise ValueError("ByzantineGrid needs exactly one of num_byzantine or node_ids")
        if num_byzantine is not None and (isinstance(num_byzantine, bool) or num_byzantine < 0):
            raise ValueError(f"num_byzantine must be a non-negative int, got {num_byzantine!r}")
        super().__init__(grid)
        self.attack = get_attack(attack, seed=seed) if isinstance(attack, str) else attack
        self.num_byzantine = num_byzantine
        self.seed = seed
        self.message_types = tuple(message_types)
        self._byzantine: frozenset[int] | None = (
            None if node_ids is None else frozenset(int(n) for n in node_ids)
        )
        self._sent: dict[int, RecordDict] = {}
        self.surface: AttackSurface | None = None
        """The bound strategy's attack surface (None: the model-update surface)."""
        self.attacked_replies = 0
        """Number of replies rewritten so far."""
        self._round_clients: int | None = None  # train messages of the last push
        self._round = 0  # their server round
        if strategy is not None:
            self.bind(strategy)

    def bind(self, strategy: object) -> ByzantineGrid:
        """Attack what ``strategy`` aggregates: its ``attack_surface()`` (e.g. Byz-EF21-SGDM's
        copies ``g_i + c_i``); a strategy without one (Flower's) keeps the model-update
        surface. A :class:`~flwr_byz.attacks.SurfaceAttack` (ShiftBack) is bound to the
        surface; against a strategy without one it is a ``TypeError`` naming
        ``attack_surface``. Returns ``self``."""
        surface = surface_of(strategy)
        if isinstance(self.attack, SurfaceAttack):
            if surface is None:
                raise TypeError(
                    f"{type(self.attack).__name__} needs the attack surface of the strategy it "
                    f"attacks: {type(strategy).__name__} has no attack_surface()"
                )
            self.attack.bind(surface)
        self.surface = surface
        return self

    # --- which nodes are Byzantine --------------------------------------------------------
    @property
    def byzantine_node_ids(self) -> frozenset[int]:
        """The Byzantine nodes (chosen at first use when given as a count)."""
        if self._byzantine is None:
            nodes = sorted(int(n) for n in self.grid.get_node_ids())
            k = int(self.num_byzantine or 0)
            if k > len(nodes):
                raise ValueError(f"num_byzantine={k} but only {len(nodes)} nodes are connected")
            self._byzantine = frozenset(random.Random(self.seed).sample(nodes, k))
            log(INFO, "ByzantineGrid: %d Byzantine nodes, attack %s", k, self.attack)
        return self._byzantine

    @property
    def is_data_attack(self) -> bool:
        """True for attacks applied by the client to its data (LabelFlip, the backdoors)."""
        return bool(getattr(self.attack, "data_attack", False))

    # --- Grid API: delegated (GridWrapper), with the attack in between -----------------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push (data attacks: mark the Byzantine nodes' messages first)."""
        return self.grid.push_messages(self._outgoing(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull; the Byzantine replies among those pulled together are attacked together."""
        return self._attack(list(self.grid.pull_messages(message_ids)))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, wait for the replies, attack the Byzantine ones (seeing all honest ones)."""
        replies = self.grid.send_and_receive(self._outgoing(messages), timeout=timeout)
        return self._attack(list(replies))

    # --- the adversary --------------------------------------------------------------------
    def _outgoing(self, messages: Iterable[Message]) -> list[Message]:
        out = []
        for msg in messages:
            if self.is_data_attack and self._targets(msg):
                msg = mark_data_attack(msg, self._mark(int(msg.metadata.dst_node_id)))
            if self._attacked_type(msg):
                self._sent[int(msg.metadata.dst_node_id)] = msg.content
            out.append(msg)
        attacked = [msg for msg in out if self._attacked_type(msg)]
        if attacked:
            self._round_clients = len(attacked)
            self._round = server_round_of(attacked[0])
        return out

    def _mark(self, node: int) -> str:
        """The data attack's mark for Byzantine node ``node``: DBA's i-th Byzantine node (by
        node ID) gets local trigger ``i mod parts`` unless the spec fixes ``part``."""
        attack = self.attack
        if isinstance(attack, DBA) and attack.part is None:
            rank = sorted(self.byzantine_node_ids).index(node)
            attack = dataclasses.replace(attack, part=rank % attack.parts)
        return data_attack_mark(attack)

    def _attacked_type(self, msg: Message) -> bool:
        """``"train"`` matches ``"train"`` and ``"train.<action>"``."""
        return msg.metadata.message_type.split(".")[0] in self.message_types

    def _targets(self, msg: Message) -> bool:
        return self._attacked_type(msg) and int(msg.metadata.dst_node_id) in self.byzantine_node_ids

    def _attack(self, replies: list[Message]) -> list[Message]:
        forges = isinstance(self.attack, ModelReplacement) and self.attack.active(self._round)
        if (self.is_data_attack and not forges) or not replies:
            return replies
        byzantine = self.byzantine_node_ids
        cache: dict[int, torch.Tensor] = {}
        models: dict[int, torch.Tensor | None] = {}
        surface = self.surface if self.surface is not None else model_update_surface(models.get)
        honest: list[tuple[Target, torch.Tensor]] = []
        own: list[tuple[Message, int, Target, torch.Tensor]] = []
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if not self._attacked_type(reply) or node not in self._sent or reply.has_error():
                continue
            try:
                target = target_of(reply.content, self._sent[node])
            except Exception:  # an undecodable reply: the strategy's validation rejects it
                continue
            if target is None:
                continue
            if self.surface is None:
                models[node] = model_sent(target, self._sent[node], cache)
            try:
                row = surface.aggregated(node, target.vector, compressed=target.compressed)
            except (RuntimeError, ValueError) as exc:  # e.g. a vector of the wrong size
                log(WARNING, "ByzantineGrid: reply of node %d left out: %s", node, exc)
                continue
            if node in byzantine:
                own.append((reply, node, target, row))
            elif bool(torch.isfinite(target.vector).all()):
                honest.append((target, row))
        attack = self.attack
        if isinstance(attack, ModelReplacement):  # n of this round, k = its Byzantine replies
            attack = attack.for_round(self._round_clients, attackers=len(own))
        # one attack call per reply layout (e.g. EF21's dense resets, then its payloads), in a
        # fixed order: a random attack's draws do not depend on the process's string hashing
        for records in sorted({t.records for _, _, t, _ in own}, key=repr):
            group = [item for item in own if item[2].records == records]
            peers = [row for t, row in honest if t.records == records]
            own_rows = torch.stack([row for *_, row in group])
            honest_rows = torch.stack(peers) if peers else own_rows[:0]
            try:
                forged = apply_attack(attack, honest_rows, own_rows)  # type: ignore[arg-type]
            except ValueError as exc:
                log(WARNING, "ByzantineGrid: attack %s failed, replies kept: %s", attack, exc)
                continue
            for (reply, node, target, _), row in zip(group, forged, strict=True):
                vector = row.to(target.vector.dtype)
                wire = surface.to_wire(node, vector, compressed=target.compressed)
                write_back(reply.content, target, wire)
                self.attacked_replies += 1
        return replies
