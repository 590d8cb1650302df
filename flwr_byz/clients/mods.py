"""Client-side Byzantine behaviour: a Flower client mod configured per node.

``byzantine_mod`` corrupts the training replies of a node that is configured Byzantine and
does nothing on any other node. Where the configuration comes from, first match wins:

1. the node config (a real SuperNode:
   ``flower-supernode ... --node-config "byzantine-attack='sign-flip' byzantine-scale=10"``);
2. the run config (``flwr run`` / ``pyproject.toml``; the same for every node, so it names
   the Byzantine partitions: ``byzantine-partitions="0,3,7"`` or ``byzantine-num-nodes=4``
   for partitions 0..3, matched against the node's ``partition-id``);
3. defaults given to :func:`make_byzantine_mod` / :func:`byzantine_app` (same keys, e.g. for
   ``run_simulation``, whose virtual nodes share one node config).

Keys: ``byzantine-attack`` (an attack spec, e.g. ``"gaussian:sigma=2"``),
``byzantine-scale`` (the magnitude: SignFlip's ``scale``, Scale's ``s``, Gaussian's
``sigma``), ``byzantine-seed`` (default 0). Random attacks draw from a seed derived from
(``byzantine-seed``, node ID, server round): reproducible wherever the node runs.

Omniscient attacks (IPM, ALIE, MinMax, MinSum, Mimic) need the round's honest replies, which
a node does not see: the mod raises a ValueError naming ByzantineGrid, which Flower returns
to the server as an error reply (rejected there as ``error-reply``). LabelFlip is
a data attack: the mod puts ``byzantine-attack = "label-flip"`` in the message's ConfigRecord
and the ClientApp's data loading asks :func:`label_flip_requested`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from logging import ERROR
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore import log

from ..attacks import Attack, LabelFlip, get_attack
from ..strategies.records import flatten, record_payload
from .injection import (
    ATTACK_KEY,
    PAYLOAD_KEY,
    Target,
    apply_attack,
    mark_label_flip,
    target_of,
    write_back,
)
from .state import load_vector, store_vector

__all__ = [
    "byzantine_app",
    "byzantine_mod",
    "label_flip_requested",
    "make_byzantine_mod",
    "node_attack",
]

SCALE_KEY = "byzantine-scale"
SEED_KEY = "byzantine-seed"
PARTITIONS_KEY = "byzantine-partitions"
NUM_NODES_KEY = "byzantine-num-nodes"
_MAGNITUDE = ("scale", "s", "sigma")  # the field byzantine-scale sets: the first one present


def node_settings(context: Context, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``byzantine-*`` settings that apply to this node (empty: the node is honest)."""
    if context.node_config.get(ATTACK_KEY):
        return {k: v for k, v in context.node_config.items() if k.startswith("byzantine-")}
    partition = context.node_config.get("partition-id")
    for source in (context.run_config, defaults or {}):
        if source.get(ATTACK_KEY) and _selected(source, partition):
            return {k: v for k, v in source.items() if k.startswith("byzantine-")}
    return {}


def _selected(source: Mapping[str, Any], partition: Any) -> bool:
    if not isinstance(partition, int):
        return False
    if PARTITIONS_KEY in source:
        chosen = source[PARTITIONS_KEY]
        items = chosen.split(",") if isinstance(chosen, str) else chosen
        items = items if isinstance(items, Iterable) else [items]
        return partition in {int(p) for p in items if str(p).strip()}
    if NUM_NODES_KEY in source:
        return partition < int(source[NUM_NODES_KEY])
    return False


def node_attack(
    context: Context, server_round: int = 0, defaults: Mapping[str, Any] | None = None
) -> Attack | LabelFlip | None:
    """The attack this node is configured with (None when it is honest)."""
    settings = node_settings(context, defaults)
    spec = str(settings.get(ATTACK_KEY, "") or "").strip()
    if not spec or spec.lower() == "none":
        return None
    seed = _derived_seed(int(settings.get(SEED_KEY, 0)), context.node_id, server_round)
    attack = get_attack(spec, seed=seed)
    if settings.get(SCALE_KEY) is not None:
        names = {f.name for f in dataclasses.fields(attack) if f.init}  # type: ignore[arg-type]
        field = next((n for n in _MAGNITUDE if n in names), None)
        if field is None:
            raise ValueError(f"{SCALE_KEY} does not apply to attack {spec!r}")
        attack = dataclasses.replace(attack, **{field: float(settings[SCALE_KEY])})  # type: ignore[type-var]
    return attack


def label_flip_requested(msg: Message, context: Context) -> bool:
    """Whether this node should train on flipped labels: its node config or the message's
    ConfigRecord (set by ByzantineGrid or the mod) names ``label-flip``."""
    specs: list[object] = [context.node_config.get(ATTACK_KEY)]
    specs += [cfg.get(ATTACK_KEY) for cfg in msg.content.config_records.values()]
    return any(_is_label_flip(spec) for spec in specs)


def _is_label_flip(spec: object) -> bool:
    if not isinstance(spec, str) or not spec.strip():
        return False
    try:
        return isinstance(get_attack(spec), LabelFlip)
    except ValueError:
        return False


def make_byzantine_mod(
    attack: str | None = None,
    partitions: Iterable[int] | None = None,
    num_nodes: int | None = None,
    scale: float | None = None,
    seed: int = 0,
) -> Mod:
    """A :func:`byzantine_mod` with defaults (level 3 above): ``attack`` on the nodes whose
    ``partition-id`` is in ``partitions`` (or below ``num_nodes``)."""
    defaults: dict[str, Any] = {SEED_KEY: seed}
    if attack is not None:
        get_attack(attack)  # fail now on a bad spec, not inside every node
        defaults[ATTACK_KEY] = attack
    if partitions is not None:
        defaults[PARTITIONS_KEY] = [int(p) for p in partitions]
    if num_nodes is not None:
        defaults[NUM_NODES_KEY] = int(num_nodes)
    if scale is not None:
        defaults[SCALE_KEY] = float(scale)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        return _byzantine_step(msg, context, call_next, defaults)

    return mod


def byzantine_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod: corrupt this node's training replies as its configuration says."""
    return _byzantine_step(msg, context, call_next, None)


def _byzantine_step(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    defaults: Mapping[str, Any] | None,
) -> Message:
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, context)
    attack = node_attack(context, _server_round(msg), defaults)
    if attack is None:
        return call_next(msg, context)
    if isinstance(attack, LabelFlip):
        return call_next(mark_label_flip(msg, in_place=True), context)
    if attack.omniscient:
        log(ERROR, "byzantine_mod: %s is omniscient; use ByzantineGrid (simulation)", attack)
        raise ValueError(
            f"{type(attack).__name__} needs the honest replies of the round, which a node does "
            "not see: use ByzantineGrid in simulation, or a per-node attack here"
        )
    reply = call_next(msg, context)
    if reply.has_error() or not reply.has_content():
        return reply
    config = msg.content.config_records.get("config")
    offset = _ef21_server_copy(context, config, reply)
    target = target_of(reply.content, msg.content, offset=offset)
    if target is None:
        return reply
    own = target.delta.unsqueeze(0)
    write_back(reply.content, target, apply_attack(attack, own[:0], own)[0])
    if config is not None and "ef21-version" in config:
        _ef21_sync(context, config, reply, target, offset)
    return reply


def _ef21_sync(
    context: Context,
    config: ConfigRecord,
    reply: Message,
    target: Target,
    offset: torch.Tensor | None,
) -> None:
    """Keep this node's g_i equal to the server's copy, which now holds the forged vector:
    ``offset + C(forged - offset)`` for a compressed reply, the forged vector for a reset."""
    records = reply.content.array_records
    if target.codec is not None and offset is not None:
        sent = record_payload(records[PAYLOAD_KEY])
        c = target.codec[0].decompress(sent, offset.numel()).to(offset.dtype)
        store_vector(context, config, "ef21-g", offset + c)
    elif target.codec is None and "grad" in records:
        store_vector(context, config, "ef21-g", flatten(records["grad"]))


def _ef21_server_copy(
    context: Context, config: ConfigRecord | None, reply: Message
) -> torch.Tensor | None:
    """For an EF21 compressed reply (Byz-EF21-SGDM): the g_i the server adds it to, which is
    the client's g before this step (``GradientClient.error_feedback``); else None."""
    if config is None or "ef21-version" not in config:
        return None
    if PAYLOAD_KEY not in reply.content.array_records:
        return None  # a dense reset: the server takes the vector as it is
    return load_vector(context, config, "ef21-g-prev")


class _ByzantineApp(ClientApp):
    """A ClientApp that hands every message (any type, any action) to ``mod`` around ``app``."""

    def __init__(self, app: ClientApp, mod: Mod) -> None:
        super().__init__()
        self._inner, self._mod = app, mod

    def __call__(self, message: Message, context: Context) -> Message:
        return self._mod(message, context, self._inner)


def byzantine_app(
    app: ClientApp,
    attack: str | None = None,
    partitions: Iterable[int] | None = None,
    num_nodes: int | None = None,
    scale: float | None = None,
    seed: int = 0,
) -> ClientApp:
    """``app``, unchanged, behind the Byzantine mod (defaults as in :func:`make_byzantine_mod`);
    every message type and named action reaches ``app`` as before."""
    return _ByzantineApp(app, make_byzantine_mod(attack, partitions, num_nodes, scale, seed))


def _server_round(msg: Message) -> int:
    for cfg in msg.content.config_records.values():
        value = cfg.get("server-round")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def _derived_seed(seed: int, node_id: int, server_round: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{node_id}:{server_round}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
