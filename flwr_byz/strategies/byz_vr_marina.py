"""ByzVRMarinaPP: Byz-VR-MARINA-PP (Malinovsky, Richtárik, Horváth & Gorbunov 2024, arXiv
2311.14127, Algorithm 1) as a Flower strategy. The algorithm is ``flwr_byz.methods.marina``;
this shell holds its state, and per round:

- ``configure_train``: ``marina.plan_round`` (the coin c_k, the step to x^{k+1}, lambda_{k+1},
  the sample and the seeds), then op ``grad`` at x^{k+1} (full round, ``full_batch_size``) or
  op ``grad_diff`` with x^{k+1} (``"arrays"``) and x^k (``"prev"``), the compressor spec and a
  compressor seed per node (difference round: the reply is the compressor's payload);
- ``aggregate_train``: validation (payloads decoded with the seed sent), then
  ``marina.server_step`` with ARAgg (set for ``f_full`` in full rounds; the plain mean on
  differences for Byz-VR-MARINA+).

Round 1 is always a full round from x^0. ``alpha=None`` disables clipping; Byz-VR-MARINA is
``clients_per_round = full_round_clients = n`` with ``alpha=None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any, Literal

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from ..aggregators import Aggregator, Mean
from ..aggregators.base import accepts, with_f
from ..compressors import Compressor
from ..methods import marina
from ..methods.marina import MarinaPlan, MarinaState
from ..methods.surface import AttackSurface
from ..protocol.keys import (
    BATCH_SEED_KEY,
    BATCH_SIZE_KEY,
    COMPRESSOR_KEY,
    COMPRESSOR_SEED_KEY,
    NUM_EXAMPLES_KEY,
    OP_GRAD,
    OP_GRAD_DIFF,
    OP_KEY,
    PAYLOAD_KEY,
    POINT_KEY,
    PREV_KEY,
    SAMPLED_KEY,
    SKIPPED_KEY,
    VECTOR_KEY,
)
from ..protocol.payload import PayloadCodec
from .method import MethodStrategy
from .sample_check import FArg, auto_f

__all__ = ["ByzVRMarinaPP"]


class ByzVRMarinaPP(MethodStrategy):
    """Byz-VR-MARINA-PP as a Flower strategy (module doc: Algorithm 1).

    Parameters
    ----------
    aggregator : Aggregator | str (default: "bucketing:2+median")
        ARAgg, the robust rule; the paper's experiments use Bucketing(s=2) + coordinate-wise
        median.
    compressor : Compressor | str (default: "none")
        The unbiased compressor Q of the gradient differences (``flwr_byz.compressors`` spec:
        ``"randk:0.1"``, ``"natural"``, ``"qsgd:8"``, ...). The payload travels as is, so the
        uplink bytes shrink.
    p : float | None (default: None)
        Probability of a full-gradient round; None: ``b / m`` with m the median local data
        size the clients report in the first round (the paper's default).
    alpha : float | None (default: 1.0)
        Clipping multiplier: ``lambda_{k+1} = alpha ||x^{k+1} - x^k||``; None: no clipping.
    clients_per_round : int (default: 4)
        C, clients sampled in a gradient-difference round.
    full_round_clients : int | None (default: None)
        C_hat, clients sampled in a full round; None: every connected client.
    lr : float (default: 0.1)
        Step size gamma.
    batch_size : int (default: 32)
        Minibatch size b of the gradient differences.
    full_batch_size : int (default: 0)
        Batch size of the full rounds' gradients; 0: the whole local data set.
    f, f_full : int | None (default: None)
        Byzantine inputs the rule tolerates in difference rounds / full rounds (None: f for a
        spec string is 0; f_full defaults to ``ceil(f * C_hat / C)``). ``f="auto"``: the
        largest f for which both round shapes can run, chosen before round 1.
    full_rounds : "random" | "epoch" (default: "random")
        "random": the Bernoulli(p) coin of the paper; "epoch": the reference code's variant,
        a full round (every client, no clipping) every ``ceil(m / b)`` rounds.
    plain_mean_on_diffs : bool (default: False)
        Byz-VR-MARINA+: average the clipped differences with the plain mean.
    min_available_nodes : int (default: 1)
        Wait until this many nodes are connected.
    seed : int (default: 0)
        Seeds the coins, the samples, the minibatches and the compressors (logged per round).

    The train MetricRecord of each round carries ``full-round``, ``clip-level``, ``clipped``
    (replies shortened by the clipping), ``skipped`` (1: no valid aggregate, g kept) and the
    validation counts.
    """

    def __init__(
        self,
        aggregator: Aggregator | str = "bucketing:2+median",
        compressor: Compressor | str = "none",
        p: float | None = None,
        alpha: float | None = 1.0,
        clients_per_round: int = 4,
        full_round_clients: int | None = None,
        lr: float = 0.1,
        batch_size: int = 32,
        full_batch_size: int = 0,
        f: FArg = None,
        f_full: int | None = None,
        full_rounds: Literal["random", "epoch"] = "random",
        plain_mean_on_diffs: bool = False,
        min_available_nodes: int = 1,
        seed: int = 0,
    ) -> None:
        if p is not None and not 0 < p <= 1:
            raise ValueError(f"p must be in (0, 1] or None, got {p}")
        if alpha is not None and not alpha > 0:
            raise ValueError(f"alpha must be > 0 or None (no clipping), got {alpha}")
        if full_round_clients is not None and full_round_clients < clients_per_round:
            raise ValueError(
                f"full_round_clients (C_hat={full_round_clients}) must be >= "
                f"clients_per_round (C={clients_per_round})"
            )
        if full_rounds not in ("random", "epoch"):
            raise ValueError(f"full_rounds must be 'random' or 'epoch', got {full_rounds!r}")
        if full_batch_size < 0:
            raise ValueError(f"full_batch_size must be >= 0, got {full_batch_size}")
        if batch_size < 1:
            raise ValueError(
                f"batch_size must be >= 1 for the gradient differences, got {batch_size}"
            )
        self.codec = PayloadCodec(compressor)
        self.compressor: Compressor = self.codec.compressor
        if self.codec.biased:
            raise ValueError(
                f"Byz-VR-MARINA-PP needs an unbiased compressor; {self.compressor!r} is biased"
            )
        self.compressor_spec = self.codec.spec
        self.p = p
        self.alpha = alpha
        self.full_round_clients = full_round_clients
        self.full_batch_size = int(full_batch_size)
        self.f_full = f_full
        self.full_rounds = full_rounds
        self.plain_mean_on_diffs = bool(plain_mean_on_diffs)
        super().__init__(
            aggregator=aggregator,
            f=f,
            lr=lr,
            batch_size=batch_size,
            clients_per_round=clients_per_round,
            min_available_nodes=min_available_nodes,
            seed=seed,
        )

    # --- state ---------------------------------------------------------------------------------
    def _reset_method(self) -> None:
        self._round: MarinaPlan | None = None  # this round's plan
        self._planned = 0  # the server round of ``_round``

    def _init_state(self, x: torch.Tensor) -> MarinaState:
        return MarinaState(x=x, x0=x.clone())

    @property
    def g(self) -> torch.Tensor | None:
        """g^k; None until the first full round succeeds."""
        return None if self.state is None else self.state.g

    @property
    def x_prev(self) -> torch.Tensor | None:
        """x^k, the previous point (the round's point is ``x`` = x^{k+1})."""
        return None if self.state is None else self.state.x_prev

    @property
    def local_size(self) -> float | None:
        """m, the median local data size the clients reported (None: not yet)."""
        return None if self.state is None else self.state.local_size

    @property
    def p_effective(self) -> float:
        """p, or ``b / m`` once the clients have reported their data size m (else 1)."""
        return marina.p_effective(self.p, self.batch_size, self.local_size)

    def attack_surface(self) -> AttackSurface:
        """``methods.marina.attack_surface``: ShiftBack's reply is the gradient back to x^0 in
        a full round, that minus g^k in a difference round."""
        return marina.attack_surface(
            self.current, lambda: self._round is None or self._round.full, self.lr
        )

    def check_sample(self, connected: int) -> None:
        """Two round shapes: difference rounds aggregate the C sampled replies with the rule
        set for f (Byz-VR-MARINA+: the plain mean), full rounds the C_hat sampled (every
        connected node when None or ``full_rounds="epoch"``) with the rule set for f_full.
        ``f="auto"``: the largest f for which both run."""
        who = type(self).__name__
        c = min(self.clients_per_round or connected, connected)
        everyone = self.full_round_clients is None or self.full_rounds == "epoch"
        c_hat = connected if everyone else min(self.full_round_clients or connected, connected)

        def full_rule(f: int) -> Aggregator:
            n_full = marina.f_full(f, c_hat, self.clients_per_round, self.f_full)
            return with_f(self.aggregator, n_full, exact=True)

        if self.auto_f:
            first = c_hat if self.plain_mean_on_diffs else c
            self.aggregator = auto_f(
                self.aggregator, first, who, fits=lambda g: accepts(full_rule(g), c_hat)
            )
        if not self.plain_mean_on_diffs:
            self.require_replies(
                self.aggregator, c, connected, f"{who} (difference rounds)", "clients_per_round"
            )
        rule = full_rule(int(getattr(self.aggregator, "f", 0) or 0))
        knob = None if everyone else "full_round_clients"
        sample = (
            f"each full round samples {c_hat} nodes (full_round_clients="
            f"{'all' if everyone else c_hat}, {connected} connected) with the rule set for "
            f"f_full={getattr(rule, 'f', 0)} (f_full, default ceil(f C_hat / C))"
        )
        self.require_replies(rule, c_hat, connected, f"{who} (full rounds)", knob, sample)

    # --- Flower Strategy -------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flip the coin, step ``x^{k+1} = x^k - gamma g^k``, sample, send the op."""
        self._start(server_round, arrays)
        context = f"{type(self).__name__} round {server_round}"
        plan, self.state = marina.plan_round(
            self._rng,
            self.state,
            self.connected(grid, None, context),
            lr=self.lr,
            p=self.p,
            alpha=self.alpha,
            batch_size=self.batch_size,
            clients_per_round=self.clients_per_round,
            full_round_clients=self.full_round_clients,
            full_rounds=self.full_rounds,
        )
        self._round, self._planned = plan, server_round
        self.sent_to(plan.nodes)
        full, level, nodes = plan.full, plan.level, plan.nodes
        log(
            INFO,
            "%s: coin c_k=%d (p=%.4g), %d clients sampled, clip level %s",
            context,
            int(full),
            self.p_effective,
            len(nodes),
            "off" if level is None else f"{level:.4g}",
        )
        if full:
            return self.messages(
                nodes,
                {POINT_KEY: self.model_record()},
                config,
                {OP_KEY: OP_GRAD, BATCH_SIZE_KEY: self.full_batch_size},
                lambda n: {BATCH_SEED_KEY: plan.batch_seed(n)},
            )
        return self.messages(
            nodes,
            {POINT_KEY: self.model_record(), PREV_KEY: self.model_record(self.x_prev)},
            config,
            {
                OP_KEY: OP_GRAD_DIFF,
                BATCH_SIZE_KEY: self.batch_size,
                COMPRESSOR_KEY: self.compressor_spec,
            },
            lambda n: {
                BATCH_SEED_KEY: plan.batch_seed(n),
                COMPRESSOR_SEED_KEY: plan.compressor_seed(n),
            },
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Full round: ``g = ARAgg(grads)``; else ``g += ARAgg(clip(Q(Delta_i)))``."""
        context = f"{type(self).__name__} round {server_round}"
        plan = self._round
        if plan is None or self._planned != server_round or self.state is None:
            log(WARNING, "%s: nothing was sent this round; nothing to aggregate", context)
            return None, None
        sizes: list[float] = []
        if plan.full:
            checked = self.validate(replies, {VECTOR_KEY: self.layout}, context)
            sizes = _local_sizes(checked.contents)
            f = int(getattr(self.aggregator, "f", 0) or 0)
            n_full = marina.f_full(f, len(plan.nodes), self.clients_per_round, self.f_full)
            rule: Aggregator = with_f(self.aggregator, n_full, exact=True)
        else:
            d = self.layout.numel
            checked = self.validate(
                replies,
                {PAYLOAD_KEY: self.codec.layout(d, self.state.x.dtype)},
                context,
                decode=self.codec.decoder(d, plan.compressor_seed_map()),
            )
            rule = Mean() if self.plain_mean_on_diffs else self.aggregator
        self.state, stats = marina.server_step(
            self.state,
            plan,
            checked.vectors,
            lambda rows: self.robust(rule, rows, context),
            local_sizes=sizes,
        )
        metrics = self.metrics(
            checked,
            **{
                "full-round": int(plan.full),
                "clip-level": -1.0 if plan.level is None else plan.level,
                "clipped": stats["clipped"],
                SAMPLED_KEY: len(plan.nodes),
                SKIPPED_KEY: stats["skipped"],
            },
        )
        return self.model_record(), metrics

    def options(self) -> dict[str, Any]:
        return super().options() | {
            "compressor": self.compressor,
            "p": "b/m" if self.p is None else self.p,
            "alpha (clipping)": "off" if self.alpha is None else self.alpha,
            "full-round clients": self.full_round_clients or "all",
            "full rounds": self.full_rounds,
        }


def _local_sizes(contents: list[RecordDict]) -> list[float]:
    """The positive local data sizes (``num-examples``) the accepted replies report."""
    sizes = []
    for content in contents:
        for record in content.metric_records.values():
            value = record.get(NUM_EXAMPLES_KEY)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                sizes.append(float(value))
    return sizes
