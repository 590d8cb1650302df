"""MethodStrategy: the plumbing every method strategy of flwr-byz shares (the Flower edge).

A method strategy keeps the model ``x`` (its floating-point arrays as one vector) and its own
state on the server, samples nodes with its own seeded generator, sends each sampled node an
``op`` (``grad``, ``grad_diff``, ``momentum``, ...) that :class:`flwr_byz.clients.GradientClient`
answers, validates the replies (``strategies.validation``) and aggregates them robustly. The
paper's update rule itself is a pure function in ``flwr_byz.methods``.

Only the floating-point arrays of the model are trained; integer arrays (e.g. BatchNorm's
``num_batches_tracked``) are sent back unchanged.
"""

from __future__ import annotations

import random
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..aggregators import Aggregator, get_aggregator
from ..aggregators.base import min_inputs, with_f
from ..methods.sampling import sample_nodes
from ..methods.surface import AttackSurface
from ..protocol.keys import CONFIG_KEY, SERVER_ROUND_KEY, STATE_KEY, TRAIN_LOSS_KEY
from ..protocol.records import Layout, flatten, layout_of, unflatten
from .sample_check import FArg, RunSummary, auto_f, parse_f, require
from .validation import CheckedReplies, validate_replies

__all__ = ["MethodStrategy", "aggregate_on", "build_aggregator"]


def build_aggregator(aggregator: Aggregator | str, f: int | None) -> Aggregator:
    """An aggregator from an object or a spec string, set for ``f`` Byzantine inputs."""
    if isinstance(aggregator, str):
        return get_aggregator(aggregator, f=0 if f is None else f)
    if callable(aggregator):
        return aggregator if f is None else with_f(aggregator, f, exact=True)
    raise TypeError(f"aggregator must be an Aggregator or a spec string, got {aggregator!r}")


def aggregate_on(
    device: torch.device | str | None,
    rule: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *extra: torch.Tensor,
) -> torch.Tensor:
    """``rule(x, *extra)`` computed on ``device`` (None: where ``x`` is), the result back on
    ``x``'s device: the strategies' replies and state stay on the CPU, where Flower's records
    are, and only the robust rule (the costly part: distances, sorts) runs on a GPU. A rule's
    own state (e.g. CenteredClipping's centre) stays on the device between rounds."""
    if device is None or torch.device(device) == x.device:
        return rule(x, *extra)
    out = rule(x.to(device), *(t.to(device) for t in extra))
    return out.to(x.device)


class MethodStrategy(RunSummary, Strategy):
    """Base of the method strategies: model vector, sampling, messages, validation.

    Parameters (shared by every subclass)
    ----------
    aggregator : Aggregator | str
        The robust rule (object or ``get_aggregator`` spec).
    f : int | "auto" | None
        Byzantine inputs per round the rule tolerates (None: 0 for a spec, the object's own;
        ``"auto"``: the largest the nodes sampled per round allow, chosen before round 1).
    lr : float
        Server step size gamma.
    batch_size : int
        Minibatch size b of the clients' stochastic gradients (0: the full local data).
    clients_per_round : int | None
        Nodes sampled per round (None: every connected node).
    min_available_nodes : int
        Wait until this many nodes are connected before sampling.
    seed : int
        Seeds node sampling, minibatches and compressor randomness (all logged per round).

    Before round 1 (the first :meth:`connected`), :meth:`check_sample` compares the nodes a
    round samples with what the rule needs for ``f`` and raises ``SampleTooSmallError``
    (numbers and fixes in the message) rather than skipping every round; ``start`` ends with
    one line counting the rounds that were skipped anyway (too few valid replies).

    ``device`` (attribute, default None: the CPU, where the replies arrive): where the robust
    rule runs (:func:`aggregate_on`), e.g. ``strategy.device = torch.device("cuda")``; the
    runner sets it from ``--device``.
    """

    #: Where the robust rule runs (None: where the replies are, the CPU); see the class doc.
    device: torch.device | None = None

    def __init__(
        self,
        *,
        aggregator: Aggregator | str,
        f: FArg,
        lr: float,
        batch_size: int,
        clients_per_round: int | None,
        min_available_nodes: int = 1,
        seed: int = 0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 0:
            raise ValueError(
                f"batch_size must be an int >= 0 (0: full local data), got {batch_size}"
            )
        if clients_per_round is not None and clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1 or None, got {clients_per_round}")
        f_count, self.auto_f = parse_f(f)
        self.aggregator = build_aggregator(aggregator, f_count)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.clients_per_round = None if clients_per_round is None else int(clients_per_round)
        self.min_available_nodes = int(min_available_nodes)
        self.seed = int(seed)
        self._reset()

    # --- state -----------------------------------------------------------------------------
    def _reset(self) -> None:
        """Forget the model and method state (a new run starts at round 1)."""
        self._rng = random.Random(self.seed)
        self.state_key = uuid.uuid4().hex[:12]  # namespaces the clients' context.state per run
        self.state: Any = None  # the method's server state (flwr_byz.methods), from round 1
        self._layout: Layout | None = None
        self._frozen: ArrayRecord | None = None
        self._sent_nodes: frozenset[int] = frozenset()
        self.server_round = 0
        self._sample_checked = False
        self._reset_method()

    def _reset_method(self) -> None:
        """Subclasses clear their own (non-method) state here."""

    def _init_state(self, x: torch.Tensor) -> Any:
        """The method's server state at x^0 = ``x`` (a ``flwr_byz.methods`` dataclass with
        fields ``x`` and ``x0``)."""
        raise NotImplementedError(f"{type(self).__name__} must define _init_state")

    @property
    def x(self) -> torch.Tensor | None:
        """The current model (the method state's ``x``; None before round 1)."""
        return None if self.state is None else self.state.x

    @property
    def x0(self) -> torch.Tensor | None:
        """The starting point x^0 (None before round 1)."""
        return None if self.state is None else self.state.x0

    def current(self) -> Any:
        """The method's server state (``ValueError`` before round 1)."""
        if self.state is None:
            raise ValueError(f"{type(self).__name__} has no model yet")
        return self.state

    def _start(self, server_round: int, arrays: ArrayRecord) -> None:
        """Round 1 (or first use): take ``arrays`` as x^0."""
        if server_round == 1 or self.x is None:
            self._reset()
            full = layout_of(arrays)
            self._layout = full.floating()
            if not self._layout.numel:
                raise ValueError("the model has no floating-point arrays to train")
            self._frozen = ArrayRecord(
                {k: arrays[k] for k in full.keys if k not in self._layout.keys}
            )
            self.state = self._init_state(flatten(arrays, self._layout))
        self.server_round = server_round

    @property
    def layout(self) -> Layout:
        """Layout of the trained (floating-point) arrays."""
        if self._layout is None:
            raise RuntimeError(f"{type(self).__name__} has not started (no model yet)")
        return self._layout

    def model_record(self, x: torch.Tensor | None = None) -> ArrayRecord:
        """``x`` (default: the current model) as an ArrayRecord with every array of the model."""
        vec = self.x if x is None else x
        assert vec is not None and self._frozen is not None
        record = unflatten(vec, self.layout)
        for key in self._frozen:
            record[key] = self._frozen[key]
        return record

    # --- sampling and messages ---------------------------------------------------------------
    def sample(self, grid: Grid, k: int | None, context: str) -> list[int]:
        """``k`` nodes (all connected ones if fewer: the run goes on) from the seeded generator;
        ``k=None``: every connected node, in ID order (``methods.sampling.sample_nodes``)."""
        chosen = sample_nodes(self._rng, self.connected(grid, k, context), k)
        self.sent_to(chosen)
        return chosen

    def sent_to(self, nodes: Iterable[int]) -> None:
        """Remember the nodes this round's messages go to (validation expects their replies)."""
        self._sent_nodes = frozenset(nodes)

    def connected(self, grid: Grid, k: int | None, context: str) -> list[int]:
        """The connected nodes in the grid's order, after waiting (up to 60 s) for
        ``min_available_nodes``; logs when fewer than ``k`` are connected."""
        wanted = self.min_available_nodes
        nodes = list(grid.get_node_ids())
        waited = 0.0
        while len(nodes) < wanted and waited < 60:
            log(INFO, "%s: waiting for nodes: %d connected, %d wanted", context, len(nodes), wanted)
            time.sleep(1.0)
            waited += 1.0
            nodes = list(grid.get_node_ids())
        if k is not None and len(nodes) < k:
            log(
                WARNING, "%s: only %d nodes connected, %d wanted; using all", context, len(nodes), k
            )
        if not self._sample_checked:
            self.check_sample(len(nodes))
            self._sample_checked = True
        return nodes

    def check_sample(self, connected: int) -> None:
        """Before round 1, with ``connected`` nodes: resolve ``f="auto"`` and raise
        ``SampleTooSmallError`` unless the rule runs on the ``clients_per_round`` sampled
        (all connected when None or fewer). Subclasses with other round shapes override it."""
        n = min(self.clients_per_round or connected, connected)
        who = type(self).__name__
        if self.auto_f:
            refuse = partial(
                self.require_replies, n=n, connected=connected, who=who, knob="clients_per_round"
            )
            self.aggregator = auto_f(self.aggregator, n, who, refuse=refuse)
        self.require_replies(self.aggregator, n, connected, who, "clients_per_round")

    def require_replies(
        self,
        rule: Aggregator,
        n: int,
        connected: int,
        who: str,
        knob: str | None,
        sample: str | None = None,
    ) -> None:
        """``sample_check.require`` for ``n`` replies per round out of ``connected`` nodes,
        ``n`` set by the constructor argument ``knob`` (None: by the connected nodes alone);
        ``sample`` describes the round (default: ``n`` nodes sampled by ``knob``)."""
        need = min_inputs(rule)
        fixes = []
        if need > connected:
            fixes.append(f"connect at least {need} nodes (only {connected} are)")
        if knob is not None:
            fixes.append(f"{knob.replace('_', '-')} ({knob}) >= {need}")
        if sample is None:
            value = getattr(self, knob or "", None) or "all"
            sample = f"each round samples {n} nodes ({knob}={value}, {connected} connected)"
        require(rule, n, who=who, sample=sample, fixes=fixes)

    def draw_seed(self) -> int:
        """A fresh 31-bit seed from the strategy's generator (minibatches, compressors)."""
        return self._rng.getrandbits(31)

    def messages(
        self,
        nodes: Iterable[int],
        records: Mapping[str, ArrayRecord],
        config: ConfigRecord,
        op: Mapping[str, Any],
        per_node: Callable[[int], Mapping[str, Any]] | None = None,
    ) -> list[Message]:
        """One train Message per node: ``records`` (shared), ``config`` + ``op`` (+ the
        node's own entries) and the run's ``state-key``."""
        out = []
        for node in nodes:
            cfg = ConfigRecord(dict(config.items()))
            for key, value in {**op, **(per_node(node) if per_node else {})}.items():
                cfg[key] = value
            cfg[STATE_KEY] = self.state_key
            cfg[SERVER_ROUND_KEY] = self.server_round  # seeds per-node attacks (byzantine_mod)
            content = RecordDict({**records, CONFIG_KEY: cfg})
            out.append(Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN))
        return out

    def validate(
        self,
        replies: Iterable[Message],
        expected: Mapping[str, Layout],
        context: str,
        decode: Callable[[int, RecordDict], torch.Tensor] | None = None,
    ) -> CheckedReplies:
        """The shared validation against the nodes sampled this round."""
        checked = validate_replies(
            replies, expected, expected_nodes=self._sent_nodes, context=context, decode=decode
        )
        log(
            INFO,
            "%s: %d valid replies, %d rejected",
            context,
            len(checked.node_ids),
            len(checked.rejected),
        )
        return checked

    def robust(
        self, rule: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, context: str
    ) -> torch.Tensor | None:
        """``rule(x)`` (on ``self.device``, the result on ``x``'s device), or None (logged)
        when it cannot run on these inputs (too few for its f, none at all) or its output is
        not finite."""
        if x.shape[0] == 0:
            log(WARNING, "%s: no valid reply; the step is skipped", context)
            return None
        try:
            out = aggregate_on(self.device, rule, x)
        except ValueError as exc:
            log(WARNING, "%s: the step is skipped: %s", context, exc)
            return None
        if not bool(torch.isfinite(out).all()):
            log(WARNING, "%s: the step is skipped: non-finite aggregate", context)
            return None
        return out

    @staticmethod
    def metrics(checked: CheckedReplies, **extra: float | int) -> MetricRecord:
        """The validation counts, the mean reported ``train-loss`` of the accepted replies,
        and ``extra``."""
        record = MetricRecord({k: v for k, v in checked.metrics().items()})
        losses = []
        for content in checked.contents:
            for m in content.metric_records.values():
                value = m.get(TRAIN_LOSS_KEY)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    losses.append(float(value))
        if losses:
            record[TRAIN_LOSS_KEY] = float(torch.tensor(losses).median())
        for key, value in extra.items():
            record[key] = value
        return record

    # --- the attack surface ---------------------------------------------------------------------
    @abstractmethod
    def attack_surface(self) -> AttackSurface:
        """The method's attack surface (``flwr_byz.methods.surface``): which vector the server
        aggregates from a reply, how a forged one goes back on the wire, and ShiftBack's x^0
        target; reads the live state. Every method defines it (usually ``methods.<method>
        .attack_surface``); a subclass without it cannot be instantiated. ``ByzantineGrid``,
        ``byzantine_mod`` and ShiftBack use nothing else of the method."""

    # --- no federated evaluation: the runner evaluates centrally --------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation (evaluate the model centrally with ``evaluate_fn``)."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate (see ``configure_evaluate``)."""
        return None

    def summary(self) -> None:
        """Log the strategy's options."""
        log(INFO, "\t├──> %s:", type(self).__name__)
        for key, value in self.options().items():
            log(INFO, "\t│\t├── %s: %s", key, value)

    def options(self) -> dict[str, Any]:
        """The options shown by ``summary``."""
        return {
            "aggregator": self.aggregator,
            **(
                {"f": '"auto" (the largest the sample allows, set before round 1)'}
                if self.auto_f
                else {}
            ),
            "lr": self.lr,
            "batch size": self.batch_size or "full local data",
            "clients per round": self.clients_per_round or "all",
            "seed": self.seed,
        }
