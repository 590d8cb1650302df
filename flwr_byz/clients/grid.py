"""ByzantineGrid: a server-side, omniscient adversary for simulation.

It wraps the Grid a ServerApp is given. Messages go out unchanged (a data attack marks the
Byzantine nodes' ConfigRecord instead), every node answers honestly, and once the round's
replies are in, the Byzantine nodes' replies are rewritten by the attack, which sees the
honest replies of the round (the omniscient threat model of ALIE, IPM, MinMax, Mimic). Any
strategy works unchanged behind it: ours, and Flower's FedAvg, Krum, MultiKrum, Bulyan,
FedMedian, FedTrimmedAvg.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING

import torch
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from ..attacks import Attack, LabelFlip, get_attack
from .injection import Target, apply_attack, mark_label_flip, target_of, write_back
from .wrapping import GridWrapper

__all__ = ["ByzantineGrid"]


class ByzantineGrid(GridWrapper):
    """Grid wrapper that replaces the Byzantine nodes' training replies by an attack's output.

    Parameters
    ----------
    grid : Grid
        The Grid handed to the ServerApp.
    attack : Attack | LabelFlip | str
        An attack of ``flwr_byz.attacks`` or a spec string (``"alie"``, ``"sign-flip:10"``,
        ``"gaussian:sigma=1"``, ``"label-flip"``, ...).
    num_byzantine : int | None
        Choose this many Byzantine nodes among the connected ones (seeded, at the first round).
    node_ids : Iterable[int] | None
        Or name them. Exactly one of ``num_byzantine`` / ``node_ids``.
    seed : int (default: 0)
        Seeds the choice of nodes and random attacks given as spec strings.
    message_types : Sequence[str] (default: ("train",))
        Replies to these message types are attacked; evaluation replies stay honest.

    Per-node attacks rewrite each Byzantine reply from its own content; omniscient attacks
    also read the round's valid honest replies (those with the same array layout and finite
    values; when there is none, the Byzantine nodes' own vectors stand in). Error replies of
    Byzantine nodes are left as they are. ``LabelFlip`` leaves replies alone and puts
    ``"byzantine-attack": "label-flip"`` in the Byzantine nodes' ConfigRecord: the ClientApp
    flips its labels when :func:`flwr_byz.clients.label_flip_requested` says so.
    """

    def __init__(
        self,
        grid: Grid,
        attack: Attack | LabelFlip | str,
        num_byzantine: int | None = None,
        node_ids: Iterable[int] | None = None,
        seed: int = 0,
        message_types: Sequence[str] = (MessageType.TRAIN,),
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
        self._offset: Callable[[int], torch.Tensor | None] | None = None
        self.attacked_replies = 0
        """Number of replies rewritten so far."""

    def bind(self, strategy: object) -> ByzantineGrid:
        """Attack ``strategy``'s aggregated vectors where they differ from the replies: a
        strategy with ``reply_offset(node_id)`` (Byz-EF21-SGDM) adds each compressed reply to
        a per-node vector; the attack then forges that sum. Also binds the attack (ShiftBack).
        Returns ``self``."""
        offset = getattr(strategy, "reply_offset", None)
        self._offset = offset if callable(offset) else None
        bind = getattr(self.attack, "bind", None)
        if callable(bind):
            bind(strategy)
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
        """True for attacks applied by the client to its data (LabelFlip)."""
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
                msg = mark_label_flip(msg)
            if self._attacked_type(msg):
                self._sent[int(msg.metadata.dst_node_id)] = msg.content
            out.append(msg)
        return out

    def _attacked_type(self, msg: Message) -> bool:
        """``"train"`` matches ``"train"`` and ``"train.<action>"``."""
        return msg.metadata.message_type.split(".")[0] in self.message_types

    def _targets(self, msg: Message) -> bool:
        return self._attacked_type(msg) and int(msg.metadata.dst_node_id) in self.byzantine_node_ids

    def _attack(self, replies: list[Message]) -> list[Message]:
        if self.is_data_attack or not replies:
            return replies
        byzantine = self.byzantine_node_ids
        cache: dict[int, torch.Tensor] = {}
        honest: list[Target] = []
        own: list[tuple[Message, Target]] = []
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if not self._attacked_type(reply) or node not in self._sent or reply.has_error():
                continue
            try:
                offset = self._offset(node) if self._offset is not None else None
                target = target_of(reply.content, self._sent[node], cache, offset)
            except Exception:  # an undecodable reply: the strategy's validation rejects it
                continue
            if target is None:
                continue
            if node in byzantine:
                own.append((reply, target))
            elif bool(torch.isfinite(target.vector).all()):
                honest.append(target)
        for records in {t.records for _, t in own}:
            group = [(r, t) for r, t in own if t.records == records]
            peers = [t.delta for t in honest if t.records == records]
            own_rows = torch.stack([t.delta for _, t in group])
            honest_rows = torch.stack(peers) if peers else own_rows[:0]
            try:
                forged = apply_attack(self.attack, honest_rows, own_rows)  # type: ignore[arg-type]
            except ValueError as exc:
                log(WARNING, "ByzantineGrid: attack %s failed, replies kept: %s", self.attack, exc)
                continue
            for (reply, target), row in zip(group, forged, strict=True):
                write_back(reply.content, target, row)
                self.attacked_replies += 1
        return replies
