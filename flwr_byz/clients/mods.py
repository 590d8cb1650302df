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

Omniscient attacks (IPM, ALIE, MinMax, MinSum, Mimic, ShiftBack) need the round's honest
replies, which a node does not see: the mod raises a ValueError naming ByzantineGrid, which
Flower returns to the server as an error reply (rejected there as ``error-reply``). LabelFlip is
a data attack: the mod puts ``byzantine-attack = "label-flip"`` in the message's ConfigRecord
and the ClientApp's data loading asks :func:`label_flip_requested`.

Like ByzantineGrid, the mod forges the vector the server aggregates and sends it back through
an attack surface (``flwr_byz.methods.surface``: ``aggregated`` / ``to_wire``), but a node has
no strategy: its surface is what it can know from its own message, reply and state
(:func:`node_surface`): the update ``reply - model sent`` for a FedAvg-like message, ``g_prev
+ c`` for a Byz-EF21-SGDM compressed reply (its g before the step is the server's copy g_i; the
node then keeps its g equal to the forged copy), the reply itself otherwise (the other methods
aggregate replies as they arrive). It knows no x^0 (``shift_back_target`` raises).
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
from ..methods.surface import AttackSurface, OffsetSurface
from ..protocol.keys import (
    ATTACK_KEY,
    ATTACK_NUM_NODES_KEY,
    ATTACK_PARTITIONS_KEY,
    ATTACK_SCALE_KEY,
    ATTACK_SEED_KEY,
    BYZANTINE_PREFIX,
    CONFIG_KEY,
    EF21_VERSION_KEY,
    PARTITION_ID_KEY,
    PAYLOAD_KEY,
    SERVER_ROUND_KEY,
    VECTOR_KEY,
)
from ..protocol.records import flatten, record_payload
from .injection import (
    Target,
    apply_attack,
    mark_label_flip,
    model_sent,
    model_update_surface,
    no_shift_back,
    target_of,
    write_back,
)
from .state import EF21_G, EF21_G_PREV, load_vector, save_run_state, store_vector

__all__ = [
    "byzantine_app",
    "byzantine_mod",
    "label_flip_requested",
    "make_byzantine_mod",
    "node_attack",
    "node_surface",
]

_MAGNITUDE = ("scale", "s", "sigma")  # the field byzantine-scale sets: the first one present


def node_settings(context: Context, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``byzantine-*`` settings that apply to this node (empty: the node is honest)."""
    if context.node_config.get(ATTACK_KEY):
        return {k: v for k, v in context.node_config.items() if k.startswith(BYZANTINE_PREFIX)}
    partition = context.node_config.get(PARTITION_ID_KEY)
    for source in (context.run_config, defaults or {}):
        if source.get(ATTACK_KEY) and _selected(source, partition):
            return {k: v for k, v in source.items() if k.startswith(BYZANTINE_PREFIX)}
    return {}


def _selected(source: Mapping[str, Any], partition: Any) -> bool:
    if not isinstance(partition, int):
        return False
    if ATTACK_PARTITIONS_KEY in source:
        chosen = source[ATTACK_PARTITIONS_KEY]
        items = chosen.split(",") if isinstance(chosen, str) else chosen
        items = items if isinstance(items, Iterable) else [items]
        return partition in {int(p) for p in items if str(p).strip()}
    if ATTACK_NUM_NODES_KEY in source:
        return partition < int(source[ATTACK_NUM_NODES_KEY])
    return False


def node_attack(
    context: Context, server_round: int = 0, defaults: Mapping[str, Any] | None = None
) -> Attack | LabelFlip | None:
    """The attack this node is configured with (None when it is honest)."""
    settings = node_settings(context, defaults)
    spec = str(settings.get(ATTACK_KEY, "") or "").strip()
    if not spec or spec.lower() == "none":
        return None
    seed = _derived_seed(int(settings.get(ATTACK_SEED_KEY, 0)), context.node_id, server_round)
    attack = get_attack(spec, seed=seed)
    if settings.get(ATTACK_SCALE_KEY) is not None:
        names = {f.name for f in dataclasses.fields(attack) if f.init}  # type: ignore[arg-type]
        field = next((n for n in _MAGNITUDE if n in names), None)
        if field is None:
            raise ValueError(f"{ATTACK_SCALE_KEY} does not apply to attack {spec!r}")
        attack = dataclasses.replace(attack, **{field: float(settings[ATTACK_SCALE_KEY])})  # type: ignore[type-var]
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
    defaults: dict[str, Any] = {ATTACK_SEED_KEY: seed}
    if attack is not None:
        get_attack(attack)  # fail now on a bad spec, not inside every node
        defaults[ATTACK_KEY] = attack
    if partitions is not None:
        defaults[ATTACK_PARTITIONS_KEY] = [int(p) for p in partitions]
    if num_nodes is not None:
        defaults[ATTACK_NUM_NODES_KEY] = int(num_nodes)
    if scale is not None:
        defaults[ATTACK_SCALE_KEY] = float(scale)

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
    config = msg.content.config_records.get(CONFIG_KEY)
    target = target_of(reply.content, msg.content)
    if target is None:
        return reply
    copy = _ef21_server_copy(context, config, reply)
    surface = node_surface(msg, target, copy)
    node = int(context.node_id)
    own = surface.aggregated(node, target.vector, compressed=target.compressed).unsqueeze(0)
    forged = apply_attack(attack, own[:0], own)[0].to(target.vector.dtype)
    write_back(reply.content, target, surface.to_wire(node, forged, compressed=target.compressed))
    if config is not None and EF21_VERSION_KEY in config:
        _ef21_sync(context, config, reply, target, copy)
        save_run_state(context, config)  # the forged copy, over the honest step's file
    return reply


def node_surface(msg: Message, target: Target, copy: torch.Tensor | None) -> AttackSurface:
    """A node's view of the attack surface for its reply ``target`` to ``msg`` (module doc):
    ``copy`` (the server's g_i for a Byz-EF21-SGDM compressed reply) is added to a
    compressed reply; else a FedAvg-like reply is a model update ``reply - model sent``; else
    the reply is aggregated as it is."""
    if copy is not None:
        return OffsetSurface(offset=lambda node: copy, target=no_shift_back, compressed_only=True)
    model = model_sent(target, msg.content)
    return model_update_surface(lambda node: model)


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
        store_vector(context, config, EF21_G, offset + c)
    elif target.codec is None and VECTOR_KEY in records:
        store_vector(context, config, EF21_G, flatten(records[VECTOR_KEY]))


def _ef21_server_copy(
    context: Context, config: ConfigRecord | None, reply: Message
) -> torch.Tensor | None:
    """For an EF21 compressed reply (Byz-EF21-SGDM): the g_i the server adds it to, which is
    the client's g before this step (``GradientClient.error_feedback``); else None."""
    if config is None or EF21_VERSION_KEY not in config:
        return None
    if PAYLOAD_KEY not in reply.content.array_records:
        return None  # a dense reset: the server takes the vector as it is
    return load_vector(context, config, EF21_G_PREV)


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
        value = cfg.get(SERVER_ROUND_KEY)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def _derived_seed(seed: int, node_id: int, server_round: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{node_id}:{server_round}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
