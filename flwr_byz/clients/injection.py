"""Where an attack meets a Flower reply: pick the vector to attack, write the result back.

Shared by ByzantineGrid (server side, omniscient) and byzantine_mod (client side). The
attacked vector is the concatenation of the reply's floating-point arrays (integer arrays,
e.g. indices of a compressed payload or BatchNorm counters, are left alone). For replies to a
FedAvg-like message (no ``"op"`` in its ConfigRecord) holding the model that was sent, the
attack acts on the update ``reply - sent`` and the attacked update is added back (DESIGN.md);
for our method strategies (an ``"op"``) it acts on the returned vectors themselves. A reply
carrying a compressor's ``"payload"`` (op ``grad_diff``) is decoded first, so the attack sees
the dense vector Q(x) like the server does; the forged vector is sent in the wire format, as
``Q(v)`` with the node's compressor seed (an unbiased compression of the chosen ``v``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from ..attacks import Attack
from ..compressors import Compressor, get_compressor
from ..strategies.records import (
    Layout,
    flatten,
    layout_of,
    payload_record,
    record_payload,
    unflatten,
)

__all__ = [
    "ATTACK_KEY",
    "Target",
    "apply_attack",
    "mark_label_flip",
    "target_of",
    "write_back",
]

ATTACK_KEY = "byzantine-attack"
"""Node-config key (and ConfigRecord key) naming a node's attack, e.g. ``"sign-flip"``."""


@dataclass(frozen=True)
class Target:
    """The attackable part of one reply: its float arrays, flat, and the base they are
    measured from (the model sent, or zero). Replies with equal ``records`` (keys and
    layouts) stack into one ``[n, d]`` matrix."""

    records: tuple[tuple[str, Layout], ...]
    base: torch.Tensor
    vector: torch.Tensor
    codec: tuple[Compressor, int] | None = None  # a compressed payload: (compressor, seed)

    @property
    def delta(self) -> torch.Tensor:
        """What the attack sees: ``vector - base``."""
        return self.vector - self.base


def target_of(
    reply: RecordDict,
    sent: RecordDict | None,
    cache: dict[int, torch.Tensor] | None = None,
    offset: torch.Tensor | None = None,
) -> Target | None:
    """The attack target of ``reply`` (None if it holds no float array).

    ``sent`` is the content of the message the reply answers; ``cache`` memoises flattened
    sent records across replies (FedAvg sends one record object to every node). ``offset``:
    what the server adds a compressed reply to (Byz-EF21-SGDM's copy g_i); the attack then
    sees and forges ``offset + C(.)``, the vector that is aggregated, and the reply carries
    ``C(forged - offset)``.
    """
    codec = _codec(reply, sent)
    if codec is not None:
        assert sent is not None
        d = layout_of(sent.array_records["arrays"]).floating().numel
        payload = record_payload(reply.array_records[PAYLOAD_KEY])
        vector = codec[0].decompress(payload, d)
        dtype = str(vector.dtype).removeprefix("torch.")
        layout = Layout(keys=("decoded",), shapes=((d,),), dtypes=(dtype,))
        base = torch.zeros_like(vector)
        if offset is not None and offset.shape == vector.shape:
            base = -offset.to(vector.dtype)
        return Target(((PAYLOAD_KEY, layout),), base, vector, codec)
    records = tuple(
        (key, lay)
        for key, rec in reply.array_records.items()
        if (lay := layout_of(rec).floating()).numel
    )
    if not records:
        return None
    vector = torch.cat([flatten(reply.array_records[k], lay) for k, lay in records])
    base = torch.zeros_like(vector)
    if sent is not None and not any("op" in cfg for cfg in sent.config_records.values()):
        start = 0
        for key, lay in records:
            src = sent.array_records.get(key)
            if src is not None and layout_of(src).floating() == lay:
                cached = cache.get(id(src)) if cache is not None else None
                if cached is None:
                    cached = flatten(src, lay)
                    if cache is not None:
                        cache[id(src)] = cached
                base[start : start + lay.numel] = cached.to(base.dtype)
            start += lay.numel
    return Target(records=records, base=base, vector=vector)


def write_back(reply: RecordDict, target: Target, delta: torch.Tensor) -> None:
    """Replace the reply's float arrays by ``target.base + delta`` (other arrays untouched)."""
    values = target.base + delta.to(target.base.dtype)
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


PAYLOAD_KEY = "payload"


def _codec(reply: RecordDict, sent: RecordDict | None) -> tuple[Compressor, int] | None:
    """(compressor, seed) when ``reply`` answers an op with a compressed payload."""
    if sent is None or PAYLOAD_KEY not in reply.array_records or "arrays" not in sent.array_records:
        return None
    config = sent.config_records.get("config")
    if config is None or "compressor" not in config:
        return None
    return get_compressor(str(config["compressor"])), int(config.get("compressor-seed", 0))  # type: ignore[arg-type]


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


def mark_label_flip(msg: Message, in_place: bool = False) -> Message:
    """``msg`` with ``byzantine-attack = "label-flip"`` in its ConfigRecord.

    Server side (``in_place=False``) the content is copied into a new Message, since FedAvg
    shares one RecordDict between all nodes' messages; client side (``in_place=True``) the
    node's own copy is marked so the message keeps its ID and the reply still matches it.
    """
    content = msg.content if in_place else RecordDict(dict(msg.content.items()))
    configs = content.config_records
    key = next(iter(configs), "config")
    config = configs[key] if in_place and key in configs else None
    if config is None:
        config = ConfigRecord(dict(configs[key].items()) if key in configs else {})
        content[key] = config
    config[ATTACK_KEY] = "label-flip"
    if in_place:
        return msg
    return Message(
        content=content,
        dst_node_id=msg.metadata.dst_node_id,
        message_type=msg.metadata.message_type,
        ttl=msg.metadata.ttl,
        group_id=msg.metadata.group_id,
    )
