"""Where an attack meets a Flower reply: decode the reply's vector, write a forged one back.

Shared by ByzantineGrid (server side, omniscient) and byzantine_mod (client side), which both
go through the method's attack surface (``flwr_byz.methods.surface``): the attack forges
``surface.aggregated(node, vector)`` and the reply carries ``surface.to_wire(node, forged)``.
A reply's vector is the concatenation of its floating-point arrays (integer arrays, e.g.
indices of a compressed payload or BatchNorm counters, are left alone). A reply carrying a
compressor's ``"payload"`` is decoded first, so the attack sees the dense vector Q(x) like the
server does; the forged wire vector is sent in the wire format, as ``Q(v)`` with the node's
compressor seed (an unbiased compression of the chosen ``v``).

A strategy without a surface of its own (Flower's FedAvg, Krum, ...) gets
:func:`model_update_surface`: for a reply to a message that holds a model and no ``"op"``,
the update ``reply - model sent`` (:func:`model_sent`) is aggregated; else the reply itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from ..attacks import Attack, LabelFlip, attack_spec
from ..compressors import Compressor, get_compressor
from ..methods.surface import OffsetSurface
from ..protocol.keys import (
    ATTACK_KEY,
    COMPRESSOR_KEY,
    COMPRESSOR_SEED_KEY,
    CONFIG_KEY,
    LABEL_FLIP,
    OP_KEY,
    PAYLOAD_KEY,
    POINT_KEY,
    SERVER_ROUND_KEY,
)
from ..protocol.records import (
    Layout,
    flatten,
    layout_of,
    payload_record,
    record_payload,
    unflatten,
)

__all__ = [
    "Target",
    "apply_attack",
    "data_attack_mark",
    "mark_data_attack",
    "mark_label_flip",
    "model_sent",
    "model_update_surface",
    "no_shift_back",
    "server_round_of",
    "target_of",
    "write_back",
]


@dataclass(frozen=True)
class Target:
    """The attackable part of one reply: its float arrays, flat (a compressed payload:
    decoded), and the compressor that made the payload. Replies with equal ``records`` (keys
    and layouts) stack into one ``[n, d]`` matrix."""

    records: tuple[tuple[str, Layout], ...]
    vector: torch.Tensor
    codec: tuple[Compressor, int] | None = None  # a compressed payload: (compressor, seed)

    @property
    def compressed(self) -> bool:
        """The reply is a compressor's payload (the surfaces' ``compressed``)."""
        return self.codec is not None


def target_of(reply: RecordDict, sent: RecordDict | None) -> Target | None:
    """The attack target of ``reply`` (None if it holds no float array); ``sent`` is the
    content of the message the reply answers (it names the compressor of a payload)."""
    codec = _codec(reply, sent)
    if codec is not None:
        assert sent is not None
        d = layout_of(sent.array_records[POINT_KEY]).floating().numel
        payload = record_payload(reply.array_records[PAYLOAD_KEY])
        vector = codec[0].decompress(payload, d)
        dtype = str(vector.dtype).removeprefix("torch.")
        layout = Layout(keys=("decoded",), shapes=((d,),), dtypes=(dtype,))
        return Target(((PAYLOAD_KEY, layout),), vector, codec)
    records = tuple(
        (key, lay)
        for key, rec in reply.array_records.items()
        if (lay := layout_of(rec).floating()).numel
    )
    if not records:
        return None
    vector = torch.cat([flatten(reply.array_records[k], lay) for k, lay in records])
    return Target(records=records, vector=vector)


def model_sent(
    target: Target, sent: RecordDict | None, cache: dict[int, torch.Tensor] | None = None
) -> torch.Tensor | None:
    """The model ``sent`` carried, over ``target``'s coordinates, when the reply answers a
    FedAvg-like message (no ``"op"``) with a model (not a payload); else None. A record of the
    reply that the message does not hold with the same layout counts as zero. ``cache``
    memoises flattened sent records across replies (FedAvg sends one record to every node)."""
    if target.compressed or sent is None:
        return None
    if any(OP_KEY in cfg for cfg in sent.config_records.values()):
        return None
    base = torch.zeros_like(target.vector)
    start = 0
    for key, lay in target.records:
        src = sent.array_records.get(key)
        if src is not None and layout_of(src).floating() == lay:
            cached = cache.get(id(src)) if cache is not None else None
            if cached is None:
                cached = flatten(src, lay)
                if cache is not None:
                    cache[id(src)] = cached
            base[start : start + lay.numel] = cached.to(base.dtype)
        start += lay.numel
    return base


def server_round_of(msg: Message) -> int:
    """The ``server-round`` of ``msg``'s ConfigRecords (0 when none has one)."""
    for cfg in msg.content.config_records.values():
        value = cfg.get(SERVER_ROUND_KEY)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def no_shift_back(mult: float | None) -> torch.Tensor:
    """The ShiftBack target of a surface that does not know x^0: an error."""
    raise ValueError(
        "this attack surface has no x^0 (a Flower strategy without attack_surface(), or a "
        "node's own view): ShiftBack needs the strategy's attack_surface()"
    )


def model_update_surface(models: Callable[[int], torch.Tensor | None]) -> OffsetSurface:
    """The attack surface of a strategy that has none of its own (Flower's FedAvg, Krum, ...):
    the update ``reply - models(node)`` is aggregated, ``x^k + u`` goes on the wire for a
    forged update ``u``; ``models(node)`` None: the reply itself (:func:`model_sent`). It has
    no x^0 (:func:`no_shift_back`)."""
    return OffsetSurface(offset=models, target=no_shift_back, sign=-1.0)


def write_back(reply: RecordDict, target: Target, wire: torch.Tensor) -> None:
    """Replace the reply's float arrays by the vector ``wire`` (``surface.to_wire``; other
    arrays untouched); a compressed reply gets the payload ``Q(wire)`` with its seed."""
    values = wire.to(target.vector.dtype)
    if target.codec is not None:
        compressor, seed = target.codec
        reply[PAYLOAD_KEY] = payload_record(compressor.compress(values, seed))
        return
    start = 0
    for key, lay in target.records:
        new = unflatten(values[start : start + lay.numel], lay)
        old = reply.array_records[key]
        arrays: dict[str, Array] = {k: new[k] if k in new else old[k] for k in old}
        reply[key] = ArrayRecord(arrays)
        start += lay.numel


def _codec(reply: RecordDict, sent: RecordDict | None) -> tuple[Compressor, int] | None:
    """(compressor, seed) when ``reply`` answers an op with a compressed payload."""
    if sent is None or PAYLOAD_KEY not in reply.array_records:
        return None
    if POINT_KEY not in sent.array_records:
        return None
    config = sent.config_records.get(CONFIG_KEY)
    if config is None or COMPRESSOR_KEY not in config:
        return None
    compressor = get_compressor(str(config[COMPRESSOR_KEY]))
    return compressor, int(config.get(COMPRESSOR_SEED_KEY, 0))  # type: ignore[arg-type]


def apply_attack(attack: Attack, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """``attack(honest, own)``; an omniscient attack with no honest vector sees ``own``
    (except attacks that count the honest vectors themselves, ShiftBack)."""
    substitute = getattr(attack, "omniscient", False) and not getattr(
        attack, "counts_honest", False
    )
    if substitute and honest.shape[0] == 0:
        honest = own
    out = attack(honest.to(own.dtype), own)
    if out.shape != own.shape:
        raise ValueError(f"{attack!r} returned shape {tuple(out.shape)}, expected {own.shape}")
    return out


def data_attack_mark(attack: object) -> str:
    """What a data attack's mark says: ``"label-flip"`` for LabelFlip (the ClientApp knows
    its classes), else the attack's full spec (``attacks.attack_spec``, seed included)."""
    return LABEL_FLIP if isinstance(attack, LabelFlip) else attack_spec(attack)


def mark_label_flip(msg: Message, in_place: bool = False) -> Message:
    """``msg`` with ``byzantine-attack = "label-flip"`` in its ConfigRecord
    (:func:`mark_data_attack`)."""
    return mark_data_attack(msg, LABEL_FLIP, in_place)


def mark_data_attack(msg: Message, spec: str, in_place: bool = False) -> Message:
    """``msg`` with ``byzantine-attack = spec`` in its ConfigRecord: the data attack the
    ClientApp applies to its training data (``flwr_byz.clients.data_attack_of``; ``spec``
    from ``attacks.attack_spec``, so the node rebuilds the same attack, seed included).

    Server side (``in_place=False``) the content is copied into a new Message, since FedAvg
    shares one RecordDict between all nodes' messages; client side (``in_place=True``) the
    node's own copy is marked so the message keeps its ID and the reply still matches it.
    """
    content = msg.content if in_place else RecordDict(dict(msg.content.items()))
    configs = content.config_records
    key = next(iter(configs), CONFIG_KEY)
    config = configs[key] if in_place and key in configs else None
    if config is None:
        config = ConfigRecord(dict(configs[key].items()) if key in configs else {})
        content[key] = config
    config[ATTACK_KEY] = spec
    if in_place:
        return msg
    return Message(
        content=content,
        dst_node_id=msg.metadata.dst_node_id,
        message_type=msg.metadata.message_type,
        ttl=msg.metadata.ttl,
        group_id=msg.metadata.group_id,
    )
