"""Byz-EF21-SGDM (Liu, Li, Yi & Johansson 2024, arXiv 2409.08640, Alg. 1) and its baselines
Byz-EF21 (eta = 1) and BR-CSGD, as Flower strategies. The algorithms are
``flwr_byz.methods.ef21``; these shells hold their state and, per round, call
``ef21.plan_round`` (sample, minibatch seeds, compressor seeds), send x^t with op ``momentum``
(``beta = 1 - eta`` and the node's ``ef21-version``; BR-CSGD: op ``grad`` with the compressor),
validate the replies (dense resets ``"grad"``, compressed ``"payload"``: decoded, and refused
when ``g_i + c_i`` would overflow) and call ``ef21.server_step`` (``brcsgd_server_step``).

The server keeps a copy g_i of every client that ever replied; one that is not sampled, or
whose reply is lost or rejected, keeps its stale copy in the aggregate, and the version
handshake (``ef21-version``, see ``GradientClient.error_feedback``) keeps the client's g_i equal
to the server's copy, so a lost reply never makes them drift.

Dense resets are bounded (``ef21.refuse_resets``): at most one per node per ``reset_interval``
rounds (first contact is always taken), refused as ``reset-limit`` beyond it, and refused as
``reset-norm`` above ``reset_norm_bound`` times the median norm of the copies. A refused reset
changes nothing on the server; the client sends it again when next sampled. Accepted resets
are counted in the round's ``resets`` metric; a node's other replies in a round where its
reset was taken are ``duplicate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from ..aggregators import Aggregator
from ..compressors import Compressor
from ..methods import ef21
from ..methods.ef21 import BRCSGDState, EF21State
from ..methods.surface import AttackSurface
from ..protocol.keys import (
    BATCH_SEED_KEY,
    BATCH_SIZE_KEY,
    BETA_KEY,
    COMPRESSOR_KEY,
    COMPRESSOR_SEED_KEY,
    COPIES_KEY,
    EF21_VERSION_KEY,
    OP_GRAD,
    OP_KEY,
    OP_MOMENTUM,
    PAYLOAD_KEY,
    POINT_KEY,
    RESETS_KEY,
    SAMPLED_KEY,
    SKIPPED_KEY,
    VECTOR_KEY,
)
from ..protocol.payload import PayloadCodec
from .method import MethodStrategy
from .sample_check import FArg, auto_f
from .validation import CheckedReplies, Rejection, validate_replies

__all__ = ["BRCSGD", "RESET_REASONS", "ByzEF21", "ByzEF21SGDM"]

#: The rejection reasons of dense resets, beyond ``validation.REASONS`` (``rejected-<reason>``).
RESET_REASONS: tuple[str, ...] = (ef21.RESET_LIMIT, ef21.RESET_NORM)


class _CompressedSGD(MethodStrategy):
    """Shared by the methods below: the compressor, and sending x^t with an op, a batch seed
    and a compressor seed per node."""

    def __init__(self, compressor: Compressor | str, **method: Any) -> None:
        self.codec = PayloadCodec(compressor)
        self._round = 0
        self._seeds: dict[int, int] = {}
        super().__init__(**method)

    @property
    def compressor(self) -> Compressor:
        """The compressor C."""
        return self.codec.compressor

    def _send(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        op: dict[str, Any],
        per_node: Callable[[int], dict[str, Any]] = lambda n: {},
    ) -> list[Message]:
        self._start(server_round, arrays)
        context = f"{type(self).__name__} round {server_round}"
        nodes = self.connected(grid, self.clients_per_round, context)
        plan = ef21.plan_round(self._rng, nodes, self.clients_per_round)
        self.sent_to(plan.nodes)
        self._seeds = plan.compressor_seed_map()
        self._round = server_round
        return self.messages(
            plan.nodes,
            {POINT_KEY: self.model_record()},
            config,
            op | {BATCH_SIZE_KEY: self.batch_size, COMPRESSOR_KEY: self.codec.spec},
            lambda n: (
                {BATCH_SEED_KEY: plan.batch_seed(n), COMPRESSOR_SEED_KEY: self._seeds[n]}
                | per_node(n)
            ),
        )

    def _sent_this_round(self, server_round: int, context: str) -> bool:
        if self._round != server_round or self.state is None:
            log(WARNING, "%s: nothing was sent this round; nothing to aggregate", context)
            return False
        return True

    def options(self) -> dict[str, Any]:
        return super().options() | {"compressor": self.compressor}


class ByzEF21SGDM(_CompressedSGD):
    """Byz-EF21-SGDM (module doc) as a Flower strategy.

    Parameters
    ----------
    aggregator : Aggregator | str (default: "nnm+cwtm")
        RAgg over the server's copies g_i (the paper: NNM + GeoMed / CWMed / CWTM).
    f : int | "auto" | None (default: None)
        Byzantine copies the rule tolerates.
    lr : float (default: 0.05)
        Server step size gamma.
    eta : float (default: 0.1)
        Momentum weight of the new gradient, in (0, 1] (1: Byz-EF21).
    compressor : Compressor | str (default: "topk:0.1")
        C, any ``flwr_byz.compressors`` spec (biased or not).
    batch_size : int (default: 32)
        Minibatch size of the stochastic gradients (0: full local data).
    clients_per_round : int | None (default: None)
        Clients sampled per round (None: all, as the paper; the others keep stale copies).
    min_available_nodes : int (default: 1)
        Wait until this many nodes are connected.
    seed : int (default: 0)
        Seeds sampling, minibatches and compressor randomness.
    reset_interval : int (default: 10)
        At most one dense reset per node per this many rounds; a reset sooner is refused
        (``rejected-reset-limit``). A node's first reset (the server has no copy) is always
        taken. 0: no limit.
    reset_norm_bound : float (default: 100.0)
        A dense reset whose norm exceeds this many times the median norm of the copies is
        refused (``rejected-reset-norm``). 0: no bound.
    """

    def __init__(
        self,
        aggregator: Aggregator | str = "nnm+cwtm",
        f: FArg = None,
        lr: float = 0.05,
        eta: float = 0.1,
        compressor: Compressor | str = "topk:0.1",
        batch_size: int = 32,
        clients_per_round: int | None = None,
        min_available_nodes: int = 1,
        seed: int = 0,
        reset_interval: int = ef21.DEFAULT_RESET_INTERVAL,
        reset_norm_bound: float = ef21.DEFAULT_RESET_NORM_BOUND,
    ) -> None:
        if not 0 < eta <= 1:
            raise ValueError(f"eta must be in (0, 1], got {eta}")
        whole = isinstance(reset_interval, (int, float)) and not isinstance(reset_interval, bool)
        if not (whole and float(reset_interval).is_integer() and reset_interval >= 0):
            raise ValueError(
                f"reset_interval must be an int >= 0 (0: no limit), got {reset_interval!r}"
            )
        if not reset_norm_bound >= 0:  # NaN too
            raise ValueError(
                f"reset_norm_bound must be >= 0 (0: no bound), got {reset_norm_bound!r}"
            )
        self.eta = float(eta)
        self.reset_interval = int(reset_interval)
        self.reset_norm_bound = float(reset_norm_bound)
        super().__init__(
            compressor,
            aggregator=aggregator,
            f=f,
            lr=lr,
            batch_size=batch_size,
            clients_per_round=clients_per_round,
            min_available_nodes=min_available_nodes,
            seed=seed,
        )

    def check_sample(self, connected: int) -> None:
        """RAgg runs over every copy the server holds, which grows to one per connected node
        (a round of ``clients_per_round`` adds the sampled nodes' copies): the rule must run
        on ``connected`` copies (the first rounds, with fewer copies, may still be skipped)."""
        who = type(self).__name__
        if self.auto_f:
            self.aggregator = auto_f(self.aggregator, connected, who)
        sample = f"the server holds at most {connected} copies ({connected} nodes connected)"
        self.require_replies(self.aggregator, connected, connected, who, None, sample)

    # --- state -----------------------------------------------------------------------------
    def _reset_method(self) -> None:
        self.versions: dict[int, int] = {}  # replies applied per node (the handshake)

    def _init_state(self, x: torch.Tensor) -> EF21State:
        return EF21State(x=x, x0=x.clone())

    @property
    def copies(self) -> dict[int, torch.Tensor]:
        """The server's copy g_i per node (a view of the method state)."""
        state: EF21State | None = self.state
        if state is None or state.copies is None or state.known is None:
            return {}
        return {
            node: state.copies[i] for i, node in enumerate(state.node_ids) if bool(state.known[i])
        }

    def attack_surface(self) -> AttackSurface:
        """``methods.ef21.attack_surface``: the attack forges the aggregated ``g_i + c_i`` of a
        compressed reply (the wire carries ``C(forged - g_i)``); a dense reset as it is."""
        return ef21.attack_surface(self.current, self.lr)

    # --- Flower ------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send x^t with op ``momentum`` and each node's ``ef21-version``."""
        return self._send(
            server_round,
            arrays,
            config,
            grid,
            {OP_KEY: OP_MOMENTUM, BETA_KEY: 1.0 - self.eta},
            lambda n: {EF21_VERSION_KEY: self.versions.get(n, -1)},
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Update the copies g_i from the replies, step with RAgg over all copies."""
        context = f"{type(self).__name__} round {server_round}"
        if not self._sent_this_round(server_round, context):
            return None, None
        dense, compressed = self._split(replies)
        resets = self._admit(self._validate_dense(dense, context), server_round, context)
        diffs = self._validate_compressed(compressed, set(resets.node_ids), context)
        for node in resets.node_ids:
            self.versions[node] = self.versions.get(node, -1) + 1
        for node in diffs.node_ids:
            self.versions[node] += 1
        nodes = resets.node_ids + diffs.node_ids
        dtype = self.state.x.dtype
        vectors = [v.to(dtype) for v in (resets.vectors, diffs.vectors) if len(v)]
        self.state, stats = ef21.server_step(
            self.state,
            nodes,
            torch.cat(vectors) if vectors else torch.zeros(0, self.layout.numel, dtype=dtype),
            torch.arange(len(nodes)) < len(resets.node_ids),
            lambda rows: self.robust(self.aggregator, rows, context),
            lr=self.lr,
            server_round=server_round,
        )
        merged = _merge(resets, diffs)
        log(
            INFO,
            "%s: %d valid replies (%d dense resets), %d rejected",
            context,
            len(merged.node_ids),
            len(resets.node_ids),
            len(merged.rejected),
        )
        metrics = self.metrics(
            merged,
            **{
                RESETS_KEY: stats["resets"],
                COPIES_KEY: stats["copies"],
                SAMPLED_KEY: len(self._sent_nodes),
                SKIPPED_KEY: stats["skipped"],
            },
        )
        return self.model_record(), metrics

    # --- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _split(replies: Iterable[Message]) -> tuple[list[Message], list[Message]]:
        """(dense resets ``"grad"``, everything else: compressed replies and errors)."""
        dense: list[Message] = []
        other: list[Message] = []
        for msg in replies:
            is_dense = not msg.has_error() and VECTOR_KEY in msg.content.array_records
            (dense if is_dense else other).append(msg)
        return dense, other

    def _validate_dense(self, replies: list[Message], context: str) -> CheckedReplies:
        return validate_replies(
            replies, {VECTOR_KEY: self.layout}, expected_nodes=self._sent_nodes, context=context
        )

    def _admit(self, resets: CheckedReplies, server_round: int, context: str) -> CheckedReplies:
        """The valid dense resets without those ``ef21.refuse_resets`` refuses (rejected,
        logged, with the reasons ``reset-limit`` / ``reset-norm``)."""
        if not resets.node_ids:
            return resets
        too_soon, too_large = ef21.refuse_resets(
            self.state,
            resets.node_ids,
            resets.vectors,
            server_round=server_round,
            interval=self.reset_interval,
            norm_bound=self.reset_norm_bound,
        )
        if not bool((too_soon | too_large).any()):
            return resets
        refused: list[Rejection] = []
        state: EF21State = self.state
        for i, node in enumerate(resets.node_ids):
            if bool(too_soon[i]):
                row, last = state.row(node), state.last_reset
                taken = "" if row is None or last is None else f" (round {int(last[row])})"
                detail = (
                    f"a dense reset within {self.reset_interval} rounds of the last one taken"
                    f"{taken}"
                )
                refused.append(_refuse(node, ef21.RESET_LIMIT, detail, context))
            elif bool(too_large[i]):
                detail = (
                    f"a dense reset of norm {float(resets.vectors[i].norm()):.3g}, above "
                    f"{self.reset_norm_bound:g} times the copies' median norm"
                )
                refused.append(_refuse(node, ef21.RESET_NORM, detail, context))
        keep = ~(too_soon | too_large)
        at = keep.nonzero().reshape(-1).tolist()
        return CheckedReplies(
            node_ids=[resets.node_ids[i] for i in at],
            contents=[resets.contents[i] for i in at],
            vectors=resets.vectors[keep],
            rejected=resets.rejected + refused,
        )

    def _validate_compressed(
        self, replies: list[Message], reset_nodes: set[int], context: str
    ) -> CheckedReplies:
        d = self.layout.numel
        state: EF21State = self.state
        seconds: list[Rejection] = []  # another reply of a node whose reset was taken
        if reset_nodes:
            rest = []
            for msg in replies:
                node = int(msg.metadata.src_node_id)
                if node in reset_nodes:
                    detail = "a dense reset from this node was already accepted"
                    seconds.append(_refuse(node, "duplicate", detail, context))
                else:
                    rest.append(msg)
            replies = rest

        def has_copy(node: int) -> None:
            if state.copy_of(node) is None:
                raise ValueError("the server has no copy of this node's g_i (a dense reset first)")

        decode = self.codec.decoder(d, self._seeds, check=has_copy)

        def decode_finite_sum(node: int, content: RecordDict) -> torch.Tensor:
            vec = decode(node, content)  # NaN/Inf in c_i itself: rejected as non-finite
            copy = state.copy_of(node)
            assert copy is not None
            total = copy + vec.to(copy.dtype)
            if bool(torch.isfinite(vec).all()) and not bool(torch.isfinite(total).all()):
                raise ValueError("g_i + c_i overflows to Inf; the copy is kept")
            return vec

        checked = validate_replies(
            replies,
            {PAYLOAD_KEY: self.codec.layout(d, state.x.dtype)},
            expected_nodes=self._sent_nodes,
            context=context,
            decode=decode_finite_sum,
        )
        checked.rejected[:0] = seconds
        return checked

    def options(self) -> dict[str, Any]:
        return super().options() | {
            "eta (momentum)": self.eta,
            "reset interval": self.reset_interval or "no limit",
            "reset norm bound": self.reset_norm_bound or "no bound",
        }


class ByzEF21(ByzEF21SGDM):
    """Byz-EF21: Byz-EF21-SGDM with eta = 1 (no momentum; error feedback of the stochastic
    gradient itself), the paper's main baseline. Parameters as :class:`ByzEF21SGDM`."""

    def __init__(
        self,
        aggregator: Aggregator | str = "nnm+cwtm",
        f: FArg = None,
        lr: float = 0.05,
        compressor: Compressor | str = "topk:0.1",
        batch_size: int = 32,
        clients_per_round: int | None = None,
        min_available_nodes: int = 1,
        seed: int = 0,
        reset_interval: int = ef21.DEFAULT_RESET_INTERVAL,
        reset_norm_bound: float = ef21.DEFAULT_RESET_NORM_BOUND,
    ) -> None:
        super().__init__(
            aggregator=aggregator,
            f=f,
            lr=lr,
            eta=1.0,
            compressor=compressor,
            batch_size=batch_size,
            clients_per_round=clients_per_round,
            min_available_nodes=min_available_nodes,
            seed=seed,
            reset_interval=reset_interval,
            reset_norm_bound=reset_norm_bound,
        )


class BRCSGD(_CompressedSGD):
    """BR-CSGD: Byzantine-robust compressed SGD, ``x^{t+1} = x^t - gamma RAgg({C(s_i)})`` with
    ``s_i`` a minibatch gradient at x^t (op ``grad`` with a ``compressor``); no momentum, no
    error feedback (the paper's baseline). Parameters as :class:`ByzEF21SGDM` without eta."""

    def __init__(
        self,
        aggregator: Aggregator | str = "nnm+cwtm",
        f: FArg = None,
        lr: float = 0.05,
        compressor: Compressor | str = "topk:0.1",
        batch_size: int = 32,
        clients_per_round: int | None = None,
        min_available_nodes: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            compressor,
            aggregator=aggregator,
            f=f,
            lr=lr,
            batch_size=batch_size,
            clients_per_round=clients_per_round,
            min_available_nodes=min_available_nodes,
            seed=seed,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send x^t with op ``grad`` and the compressor."""
        return self._send(server_round, arrays, config, grid, {OP_KEY: OP_GRAD})

    def _init_state(self, x: torch.Tensor) -> BRCSGDState:
        return BRCSGDState(x=x, x0=x.clone())

    def attack_surface(self) -> AttackSurface:
        """``methods.ef21.brcsgd_attack_surface``: the decoded ``C(s_i)`` are aggregated."""
        return ef21.brcsgd_attack_surface(self.current, self.lr)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``x -= gamma RAgg(decoded C(s_i))``."""
        context = f"{type(self).__name__} round {server_round}"
        if not self._sent_this_round(server_round, context):
            return None, None
        d = self.layout.numel
        checked = self.validate(
            replies,
            {PAYLOAD_KEY: self.codec.layout(d, self.state.x.dtype)},
            context,
            decode=self.codec.decoder(d, self._seeds),
        )
        self.state, stats = ef21.brcsgd_server_step(
            self.state,
            checked.vectors,
            lambda rows: self.robust(self.aggregator, rows, context),
            lr=self.lr,
        )
        metrics = self.metrics(
            checked, **{SAMPLED_KEY: len(self._sent_nodes), SKIPPED_KEY: stats["skipped"]}
        )
        return self.model_record(), metrics


def _refuse(node: int, reason: str, detail: str, context: str) -> Rejection:
    """A rejection made here (not by ``validate_replies``), logged as that one logs."""
    log(WARNING, "%s: rejected the reply of node %d: %s (%s)", context, node, reason, detail)
    return Rejection(node, reason, detail)


def _merge(a: CheckedReplies, b: CheckedReplies) -> CheckedReplies:
    """One CheckedReplies for the round's metrics (counts and losses; no vectors)."""
    return CheckedReplies(
        node_ids=a.node_ids + b.node_ids,
        contents=a.contents + b.contents,
        vectors=torch.empty(0),
        rejected=a.rejected + b.rejected,
    )
