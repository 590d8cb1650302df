"""Byz-VR-MARINA-PP (Malinovsky, Richtárik, Horváth, Gorbunov 2024, arXiv 2311.14127,
Algorithm 1): Byzantine-robust variance reduction with client sampling, where the *server*
clips every compressed gradient difference to a level proportional to the last step.

Per round k (ALGORITHMS.md section 4.1)::

    c_k ~ Bernoulli(p);  S_k = C_hat sampled clients if c_k = 1 else C
    x^{k+1} = x^k - gamma g^k;   lambda_{k+1} = alpha ||x^{k+1} - x^k||
    c_k = 1: client i sends grad f_i(x^{k+1})                  (op "grad", full local data)
             g^{k+1} = ARAgg({grad f_i(x^{k+1})})
    c_k = 0: client i sends Q(Delta_i), Delta_i the minibatch gradient difference between
             x^{k+1} and x^k on the same minibatch            (op "grad_diff")
             g^{k+1} = g^k + ARAgg({clip_{lambda_{k+1}}(Q(Delta_i))})

Round 1 is always a full round from x^0 (g^0 = 0, so x^1 = x^0 and g^1 = ARAgg of the full
gradients at x^0). ``alpha=None`` disables clipping (the paper's ablation); Byz-VR-MARINA is
``clients_per_round = full_round_clients = n`` with ``alpha=None``.

Differences from the paper's reference code (SamuelHorvath/VR_Byzantine, partial_participation):
the clipping level follows the paper, ``lambda = alpha ||x^{k+1} - x^k||``, where the code uses
``clip_mult ||g^k||`` (= ``clip_mult / gamma`` times the paper's level); and every client
computes its step only when sampled (the code computes all clients every round).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, Literal

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from ..aggregators import Aggregator, Mean
from ..aggregators.base import with_f
from ..compressors import Compressor
from .compressed import PayloadCodec
from .method import PAYLOAD_KEY, POINT_KEY, PREV_KEY, VECTOR_KEY, MethodStrategy
from .updates import clip_rows, sgd_step

__all__ = ["ByzVRMarinaPP"]


@dataclass(frozen=True)
class _Round:
    """What ``configure_train`` decided for a round."""

    server_round: int
    full: bool
    level: float | None  # lambda_{k+1}; None: no clipping
    nodes: tuple[int, ...]
    compressor_seeds: dict[int, int]


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
        size the clients report in the first round (ALGORITHMS.md default).
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
        spec string is 0; f_full defaults to ``ceil(f * C_hat / C)``).
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
        f: int | None = None,
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
        self.g: torch.Tensor | None = None  # g^k; None until the first full round succeeds
        self.x_prev: torch.Tensor | None = None
        self.local_size: float | None = None  # m, from the clients' reports
        self.rounds_since_full = 0
        self._round: _Round | None = None

    @property
    def p_effective(self) -> float:
        """p, or ``b / m`` once the clients have reported their data size m (else 1)."""
        if self.p is not None:
            return self.p
        if not self.local_size:
            return 1.0
        return min(1.0, self.batch_size / self.local_size)

    def _is_full_round(self) -> bool:
        if self.g is None:
            return True
        if self.full_rounds == "epoch":
            steps = math.ceil((self.local_size or self.batch_size) / self.batch_size)
            return self.rounds_since_full >= steps - 1  # one full + (steps - 1) diff rounds
        return self._rng.random() < self.p_effective

    def shift_back_vector(self, mult: float | None) -> torch.Tensor:
        """ShiftBack's reply: in a full round the gradient ``G = (mult/lr)(x^{k+1} - x^0)``,
        in a difference round ``G - g^k`` (so that ``g^{k+1} = G`` if it wins)."""
        target = super().shift_back_vector(mult)
        plan = self._round
        if plan is not None and not plan.full and self.g is not None:
            return target - self.g
        return target

    # --- Flower Strategy -------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flip the coin, step ``x^{k+1} = x^k - gamma g^k``, sample, send the op."""
        self._start(server_round, arrays)
        assert self.x is not None
        context = f"{type(self).__name__} round {server_round}"
        full = self._is_full_round()
        x_new = self.x if self.g is None else sgd_step(self.x, self.g, self.lr)
        level = None
        if not full and self.alpha is not None:
            level = self.alpha * float(torch.linalg.vector_norm(x_new - self.x))
        self.x_prev, self.x = self.x, x_new
        k = self.clients_per_round
        if full:
            k = self.full_round_clients or len(list(grid.get_node_ids()))
            if self.full_rounds == "epoch":
                k = len(list(grid.get_node_ids()))
        nodes = self.sample(grid, k, context)
        batch_seeds = {n: self.draw_seed() for n in nodes}
        comp_seeds = {} if full else {n: self.draw_seed() for n in nodes}
        self._round = _Round(server_round, full, level, tuple(nodes), comp_seeds)
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
                {POINT_KEY: self.model_record(x_new)},
                config,
                {"op": "grad", "batch-size": self.full_batch_size},
                lambda n: {"batch-seed": batch_seeds[n]},
            )
        return self.messages(
            nodes,
            {POINT_KEY: self.model_record(x_new), PREV_KEY: self.model_record(self.x_prev)},
            config,
            {"op": "grad_diff", "batch-size": self.batch_size, "compressor": self.compressor_spec},
            lambda n: {"batch-seed": batch_seeds[n], "compressor-seed": comp_seeds[n]},
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Full round: ``g = ARAgg(grads)``; else ``g += ARAgg(clip(Q(Delta_i)))``."""
        context = f"{type(self).__name__} round {server_round}"
        plan = self._round
        if plan is None or plan.server_round != server_round or self.x is None:
            log(WARNING, "%s: nothing was sent this round; nothing to aggregate", context)
            return None, None
        clipped = 0
        if plan.full:
            checked = self.validate(replies, {VECTOR_KEY: self.layout}, context)
            self._learn_local_size(checked.contents)
            rule = with_f(self.aggregator, self._f_full(len(plan.nodes)), exact=True)
            agg = self.robust(rule, checked.vectors, context)
            if agg is not None:
                self.g = agg.to(self.x.dtype)
                self.rounds_since_full = 0
        else:
            assert self.g is not None
            d = self.layout.numel
            checked = self.validate(
                replies,
                {PAYLOAD_KEY: self.codec.layout(d, self.x.dtype)},
                context,
                decode=self.codec.decoder(d, plan.compressor_seeds),
            )
            deltas, clipped = clip_rows(checked.vectors, plan.level)
            rule = Mean() if self.plain_mean_on_diffs else self.aggregator
            agg = self.robust(rule, deltas, context)
            if agg is not None:
                self.g = self.g + agg.to(self.g.dtype)
            self.rounds_since_full += 1
        skipped = int(agg is None)
        metrics = self.metrics(
            checked,
            **{
                "full-round": int(plan.full),
                "clip-level": -1.0 if plan.level is None else plan.level,
                "clipped": clipped,
                "sampled": len(plan.nodes),
                "skipped": skipped,
            },
        )
        return self.model_record(), metrics

    # --- helpers ---------------------------------------------------------------------------------
    def _f_full(self, n: int) -> int:
        if self.f_full is not None:
            return self.f_full
        f = int(getattr(self.aggregator, "f", 0) or 0)
        return min(math.ceil(f * n / (self.clients_per_round or n)), max(n - 1, 0))

    def _learn_local_size(self, contents: list[RecordDict]) -> None:
        """m = median of the reported local data sizes (robust to a few inflated reports)."""
        sizes = []
        for content in contents:
            for record in content.metric_records.values():
                value = record.get("num-examples")
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    sizes.append(float(value))
        if sizes:
            self.local_size = statistics.median(sizes)

    def options(self) -> dict[str, Any]:
        return super().options() | {
            "compressor": self.compressor,
            "p": "b/m" if self.p is None else self.p,
            "alpha (clipping)": "off" if self.alpha is None else self.alpha,
            "full-round clients": self.full_round_clients or "all",
            "full rounds": self.full_rounds,
        }
