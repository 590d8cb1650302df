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

Keys: ``byzantine-attack`` (an attack spec, e.g. ``"gaussian:sigma=2"``; ``"none"`` or empty:
honest), ``byzantine-scale`` (the magnitude: SignFlip's ``scale``, Scale's ``s``, Gaussian's
``sigma``), ``byzantine-seed`` (default 0). Random attacks draw from a seed derived from
(``byzantine-seed``, node ID, server round): reproducible wherever the node runs. Flower
refuses a ``--run-config`` key that the app's ``pyproject.toml`` does not declare in
``[tool.flwr.app.config]`` ("Invalid run configuration"): the README's section "Byzantine
nodes in your own Flower app" shows the block to declare. A configuration that would do
nothing or cannot be meant raises a ValueError naming the key (:func:`node_settings`).

Each Byzantine node logs one INFO line at its first message of a run (``context.state``
remembers it): ``byzantine_mod: node <id> (partition-id <p>) is Byzantine: attack <spec>
(from the <source>)``. When the run config declares ``byzantine-attack`` (or the mod has
defaults), every node adds ``byzantine-replies`` (1 Byzantine, 0 honest) to its train reply's
MetricRecord, so that all replies keep the same metric keys; our strategies report the
round's count, Flower's need ``train_metrics_aggr_fn=flwr_byz.protocol.sum_byzantine_replies``
(their weighted average would turn it into the Byzantine share of the examples).

Omniscient attacks (IPM, ALIE, MinMax, MinSum, Mimic, ShiftBack) need the round's honest
replies, which a node does not see: the mod raises a ValueError naming ByzantineGrid, which
Flower returns to the server as an error reply (rejected there as ``error-reply``). LabelFlip and
the backdoors (``badnets``, ``dba``, ``model-replacement``, ``neurotoxin``) are data attacks: the
mod puts ``byzantine-attack = <the attack's full spec>`` in the message's ConfigRecord and the
ClientApp's data loading asks :func:`data_attack_of` (``label_flip_requested`` for LabelFlip).
Model replacement also forges the reply: the node's update times the boost (``boost=`` of the
spec or ``byzantine-scale``, else ``num-partitions`` of the node config: a node does not know
how many nodes the round sampled), clipped to ``norm=``.

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
from logging import ERROR, INFO
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore import log

from ..attacks import Attack, BadNets, LabelFlip, ModelReplacement, get_attack
from ..methods.surface import AttackSurface, OffsetSurface
from ..protocol.keys import (
    ATTACK_KEY,
    ATTACK_NUM_NODES_KEY,
    ATTACK_PARTITIONS_KEY,
    ATTACK_SCALE_KEY,
    ATTACK_SEED_KEY,
    BYZANTINE_PREFIX,
    BYZANTINE_REPLIES_KEY,
    CONFIG_KEY,
    EF21_VERSION_KEY,
    NUM_PARTITIONS_KEY,
    OP_KEY,
    PARTITION_ID_KEY,
    PAYLOAD_KEY,
    VECTOR_KEY,
)
from ..protocol.records import flatten, record_payload
from .injection import (
    Target,
    apply_attack,
    data_attack_mark,
    mark_data_attack,
    model_sent,
    model_update_surface,
    no_shift_back,
    server_round_of,
    target_of,
    write_back,
)
from .state import EF21_G, EF21_G_PREV, load_vector, save_run_state, store_vector

__all__ = [
    "byzantine_app",
    "byzantine_mod",
    "data_attack_of",
    "label_flip_requested",
    "make_byzantine_mod",
    "node_attack",
    "node_surface",
]

_MAGNITUDE = ("scale", "s", "sigma", "boost")  # byzantine-scale sets the first one present


_NODE_KEYS = (ATTACK_KEY, ATTACK_SCALE_KEY, ATTACK_SEED_KEY)  # a node config's own settings
_RUN_KEYS = (*_NODE_KEYS, ATTACK_PARTITIONS_KEY, ATTACK_NUM_NODES_KEY)  # + the selection
_ANNOUNCED = "byzantine-mod"  # context.state: this node has logged its Byzantine line


def node_settings(context: Context, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``byzantine-*`` settings that apply to this node (empty: the node is honest).

    Raises a ValueError naming the key and the fix when a configuration would do nothing or
    cannot be meant: an unknown ``byzantine-*`` key, an attack with no node selected (or nodes
    selected with no attack), both selections at once, partitions outside
    ``0..num-partitions-1``, a selection on a node without ``partition-id``."""
    return _resolve(context, defaults)[0]


def _resolve(context: Context, defaults: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    """(settings, where they come from) for this node; see :func:`node_settings`."""
    node_config = context.node_config
    _check_keys(node_config, _NODE_KEYS, "node config")
    own = {k: v for k, v in node_config.items() if k.startswith(BYZANTINE_PREFIX)}
    partition = node_config.get(PARTITION_ID_KEY)
    num_partitions = node_config.get(NUM_PARTITIONS_KEY)
    chosen: tuple[dict[str, Any], str] | None = None
    if own and not _spec(own):
        if ATTACK_KEY not in own:
            raise ValueError(
                f"node config: {', '.join(sorted(own))} without {ATTACK_KEY}: add "
                f"{ATTACK_KEY}='sign-flip' (or another attack) to --node-config"
            )
        chosen = ({}, "node config")  # byzantine-attack='none': this node is honest
    elif own:
        chosen = (own, "node config")
    for source, where in ((context.run_config, "run config"), (defaults or {}, "mod defaults")):
        selected = _selection(source, where, num_partitions)
        if chosen is None and selected:
            if not isinstance(partition, int) or isinstance(partition, bool):
                raise ValueError(
                    f"{where} selects Byzantine partitions, but this node has no integer "
                    f"{PARTITION_ID_KEY} in its node config (give it one: --node-config "
                    f'"{PARTITION_ID_KEY}=0 {NUM_PARTITIONS_KEY}=N"), or configure the node '
                    f"itself with {ATTACK_KEY} in its node config"
                )
            if partition in selected:
                settings = {k: v for k, v in source.items() if k in _NODE_KEYS}
                chosen = (settings, _describe(source, where))
            else:
                chosen = ({}, where)
    return chosen or ({}, "")


def _check_keys(source: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(k for k in source if k.startswith(BYZANTINE_PREFIX) and k not in known)
    if unknown:
        hint = ""
        if where == "node config" and set(unknown) <= set(_RUN_KEYS):
            hint = f"; they select nodes in the run config, a node config sets {ATTACK_KEY}"
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)} (accepted: {', '.join(known)}){hint}"
        )


def _spec(source: Mapping[str, Any]) -> str:
    """The attack spec of ``source`` ("" when none: absent, empty or ``none``)."""
    spec = str(source.get(ATTACK_KEY, "") or "").strip()
    return "" if spec.lower() == "none" else spec


def _selection(source: Mapping[str, Any], where: str, num_partitions: Any) -> set[int]:
    """The Byzantine partitions ``source`` (run config or mod defaults) selects, checked."""
    _check_keys(source, _RUN_KEYS, where)
    chosen = _partition_set(source.get(ATTACK_PARTITIONS_KEY), where)
    try:
        count = int(source.get(ATTACK_NUM_NODES_KEY, 0) or 0)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: {ATTACK_NUM_NODES_KEY}={source[ATTACK_NUM_NODES_KEY]!r} is not an integer"
        ) from None
    spec = _spec(source)
    if count < 0:
        raise ValueError(f"{where}: {ATTACK_NUM_NODES_KEY}={count} is negative")
    if chosen and count:
        raise ValueError(
            f"{where}: give {ATTACK_PARTITIONS_KEY} or {ATTACK_NUM_NODES_KEY}, not both "
            f"({ATTACK_PARTITIONS_KEY}={source[ATTACK_PARTITIONS_KEY]!r}, "
            f"{ATTACK_NUM_NODES_KEY}={count})"
        )
    if spec and not (chosen or count):
        raise ValueError(
            f"{where}: {ATTACK_KEY}={spec!r} but no node is selected: set "
            f"{ATTACK_NUM_NODES_KEY}=k (partitions 0..k-1 attack) or "
            f"{ATTACK_PARTITIONS_KEY}='0,3' (and declare the key in the app's "
            "[tool.flwr.app.config] to pass it with --run-config)"
        )
    if (chosen or count) and not spec:
        raise ValueError(
            f"{where}: Byzantine nodes are selected ({_describe(source, where)}) but "
            f"{ATTACK_KEY} is empty: set {ATTACK_KEY}='sign-flip' (or another attack)"
        )
    if not spec:
        return set()
    chosen = chosen or set(range(count))
    if isinstance(num_partitions, int) and not isinstance(num_partitions, bool):
        outside = sorted(p for p in chosen if not 0 <= p < num_partitions)
        if outside:
            raise ValueError(
                f"{where}: Byzantine partition(s) {outside} outside 0..{num_partitions - 1} "
                f"({NUM_PARTITIONS_KEY}={num_partitions}; {_describe(source, where)})"
            )
    return chosen


def _partition_set(value: Any, where: str) -> set[int]:
    if value is None:
        return set()
    items = value.split(",") if isinstance(value, str) else value
    items = items if isinstance(items, Iterable) else [items]
    try:
        return {int(p) for p in items if str(p).strip()}
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: {ATTACK_PARTITIONS_KEY}={value!r} is not a list of partition IDs "
            "(e.g. '0,3,7')"
        ) from None


def _describe(source: Mapping[str, Any], where: str) -> str:
    chosen = source.get(ATTACK_PARTITIONS_KEY)
    if chosen not in (None, "", []):
        if not isinstance(chosen, str):
            chosen = ",".join(str(p) for p in chosen)
        return f"{where}: {ATTACK_PARTITIONS_KEY}={chosen!r}"
    return f"{where}: {ATTACK_NUM_NODES_KEY}={source.get(ATTACK_NUM_NODES_KEY)}"


def _announce(context: Context, settings: Mapping[str, Any], where: str) -> None:
    """Log, once per node and run (``context.state`` remembers), that this node attacks."""
    if not settings or _ANNOUNCED in context.state:
        return
    context.state[_ANNOUNCED] = ConfigRecord({"announced": True})
    shown = {k: settings[k] for k in (ATTACK_SCALE_KEY, ATTACK_SEED_KEY) if k in settings}
    if not shown.get(ATTACK_SEED_KEY):
        shown.pop(ATTACK_SEED_KEY, None)  # the default seed 0 says nothing
    extra = "".join(f", {key}={value}" for key, value in shown.items())
    log(
        INFO,
        "byzantine_mod: node %d (%s %s) is Byzantine: attack %s%s (from the %s)",
        context.node_id,
        PARTITION_ID_KEY,
        context.node_config.get(PARTITION_ID_KEY, "-"),
        _spec(settings),
        extra,
        where,
    )


def _reports(context: Context, defaults: Mapping[str, Any] | None) -> bool:
    """Whether this node adds ``byzantine-replies`` to its train replies: when the run is
    set up for Byzantine nodes (``byzantine-attack`` declared in the run config, or given to
    the mod): then every node of the app reports, honest ones 0, so that the replies keep
    the same metric keys (Flower's own strategies skip a round otherwise)."""
    return ATTACK_KEY in context.run_config or bool(defaults and defaults.get(ATTACK_KEY))


def _report(reply: Message, byzantine: bool) -> None:
    """Put ``byzantine-replies`` (0/1) in the reply's MetricRecord (when it has exactly one)."""
    if reply.has_error() or not reply.has_content():
        return
    records = list(reply.content.metric_records.values())
    if len(records) == 1:
        records[0][BYZANTINE_REPLIES_KEY] = int(byzantine)


DataAttack = LabelFlip | BadNets
"""An attack the ClientApp applies to its training data (``data_attack = True``)."""


def node_attack(
    context: Context, server_round: int = 0, defaults: Mapping[str, Any] | None = None
) -> Attack | DataAttack | None:
    """The attack this node is configured with (None when it is honest)."""
    return _attack_of(node_settings(context, defaults), context.node_id, server_round)


def _attack_of(
    settings: Mapping[str, Any], node_id: int, server_round: int
) -> Attack | DataAttack | None:
    spec = _spec(settings)
    if not spec:
        return None
    seed = _derived_seed(int(settings.get(ATTACK_SEED_KEY, 0)), node_id, server_round)
    attack = get_attack(spec, seed=seed)
    if settings.get(ATTACK_SCALE_KEY) is not None:
        names = {f.name for f in dataclasses.fields(attack) if f.init}  # type: ignore[arg-type]
        field = next((n for n in _MAGNITUDE if n in names), None)
        if field is None:
            raise ValueError(f"{ATTACK_SCALE_KEY} does not apply to attack {spec!r}")
        attack = dataclasses.replace(attack, **{field: float(settings[ATTACK_SCALE_KEY])})  # type: ignore[type-var]
    return attack


def label_flip_requested(msg: Message, context: Context) -> bool:
    """Whether this node should train on flipped labels (:func:`data_attack_of` is a
    LabelFlip)."""
    return isinstance(data_attack_of(msg, context), LabelFlip)


def data_attack_of(msg: Message, context: Context) -> DataAttack | None:
    """The data attack this node applies to its training data for ``msg`` (None: honest):
    the spec in the message's ConfigRecord (put there by ByzantineGrid or the mod, seed
    included), else the one in the node config (seeded by its ``byzantine-seed``)."""
    specs: list[tuple[object, int]] = [
        (cfg.get(ATTACK_KEY), 0) for cfg in msg.content.config_records.values()
    ]
    seed = context.node_config.get(ATTACK_SEED_KEY, 0)
    specs.append((context.node_config.get(ATTACK_KEY), int(seed)))
    for spec, spec_seed in specs:
        if not isinstance(spec, str) or not spec.strip():
            continue
        try:
            attack = get_attack(spec, seed=spec_seed)
        except ValueError:
            continue
        if getattr(attack, "data_attack", False):
            return attack  # type: ignore[return-value]
    return None


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
    _selection(defaults, "mod defaults", None)  # fail now on a selection that does nothing

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
    settings, where = _resolve(context, defaults)
    _announce(context, settings, where)
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, context)
    server_round = server_round_of(msg)
    attack = _attack_of(settings, context.node_id, server_round)
    if attack is None:
        reply = call_next(msg, context)
    elif isinstance(attack, (LabelFlip, BadNets)):  # data attacks: the ClientApp applies them
        marked = mark_data_attack(msg, data_attack_mark(attack), in_place=True)
        if isinstance(attack, ModelReplacement) and attack.active(server_round):  # boosted
            reply = _forged_reply(marked, context, call_next, _boosted(attack, msg, context))
        else:
            reply = call_next(marked, context)
    else:
        reply = _forged_reply(msg, context, call_next, attack)
    if _reports(context, defaults):
        _report(reply, attack is not None)
    return reply


def _boosted(attack: ModelReplacement, msg: Message, context: Context) -> ModelReplacement:
    """``attack`` with its boost fixed: ``boost=`` if set, else ``num-partitions`` of the
    node config over ``eta``; a ValueError (an error reply) for a method's op message."""
    config = msg.content.config_records.get(CONFIG_KEY)
    if config is not None and OP_KEY in config:
        raise ValueError(
            "model-replacement scales a FedAvg-like model update; this message asks for op "
            f"{config[OP_KEY]!r} of a method strategy (use badnets or dba there)"
        )
    clients = context.node_config.get(NUM_PARTITIONS_KEY)
    if attack.boost is None and not isinstance(clients, int):
        raise ValueError(
            f"model-replacement: this node does not know how many nodes a round has: set "
            f"boost= in {ATTACK_KEY} or {NUM_PARTITIONS_KEY} in the node config"
        )
    return attack.for_round(clients if isinstance(clients, int) else None)


def _forged_reply(
    msg: Message, context: Context, call_next: ClientAppCallable, attack: Attack
) -> Message:
    """The app's reply to ``msg`` with its vector replaced by ``attack``'s (module doc)."""
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


def _derived_seed(seed: int, node_id: int, server_round: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{node_id}:{server_round}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
