"""ByzSGD (El-Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely Distributed Byzantine
Machine Learning", PODC 2020 / Distributed Computing 2022, arXiv 1905.03853):
Byzantine workers AND Byzantine parameter servers.

The ServerApp hosts ``n_servers`` parameter-server replicas, each with its own model theta_s;
``f_servers`` of them are Byzantine (they run the honest algorithm internally and corrupt what
they send, see ``flwr_byz.attacks.server``). Each step t = 1, 2, ... (one Flower round):

    scatter  every server sends its model to the workers: each worker's Message carries the
             models it pulls as ArrayRecords ``model-0``, ``model-1``, ... (so the wire cost is
             real). ``worker_rule="median"`` (the paper's main algorithm): q_ps = n_ps - f_ps
             models, and the worker computes its gradient at their coordinate-wise median.
             ``worker_rule="filter"`` (the paper's synchronous variant): the worker pulls one
             server at a time, round-robin, and keeps the first model that passes its Lipschitz
             and Outliers filters; the Message carries the f_ps + 1 next servers' models in
             that order (what successive pulls would bring, in one round trip).
    server   honest server s: G_s = q_w = n_w - f_w of the gradients (the first to arrive;
             emulated by a seeded random subset per server);  theta_s -= eta MDA_{f_w}(G_s)
    gather   every T steps (DMC): honest server s: theta_s = coordinate-wise Median of q_ps
             servers' models, its own included; workers pull the median set that step.

Scheduling is adversarial: the Byzantine servers' models always arrive among the first q_ps
(unless they stall). The global model the ServerApp returns (and the runner evaluates) is the
median of the models every server presents to an observer, what a worker pulling them all
computes. A single trusted server is ``n_servers=1, f_servers=0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from ..aggregators import Aggregator
from ..aggregators.base import accepts, breakdown, min_inputs, set_f
from ..attacks.server import ServerAttack, get_server_attack
from ..methods import byzsgd
from ..methods.byzsgd import ByzSGDState, check_quorums, diameter
from ..methods.byzsgd import gather_period as paper_period
from ..methods.surface import AttackSurface
from ..protocol.keys import (
    BATCH_SEED_KEY,
    BATCH_SIZE_KEY,
    BYZSGD_DROPPED_KEY,
    BYZSGD_FALLBACK_KEY,
    BYZSGD_FILTER,
    BYZSGD_MEDIAN,
    BYZSGD_REJECTED_KEY,
    BYZSGD_RULE_KEY,
    BYZSGD_RULES,
    F_SERVERS_KEY,
    F_WORKERS_KEY,
    GATHER_PERIOD_KEY,
    LR_KEY,
    N_SERVERS_KEY,
    N_WORKERS_KEY,
    OP_BYZSGD,
    OP_KEY,
    REPLICA_KEY,
    SAMPLED_KEY,
    SKIPPED_KEY,
    STEP_KEY,
    VECTOR_KEY,
)
from .method import MethodStrategy
from .sample_check import FArg, SampleTooSmallError, parse_f, require

__all__ = ["WORKER_RULES", "ByzSGD"]

WORKER_RULES = BYZSGD_RULES


class ByzSGD(MethodStrategy):
    """ByzSGD (module doc) as a Flower strategy.

    Parameters
    ----------
    n_servers : int (default: 5)
        Parameter-server replicas n_ps hosted by this ServerApp.
    f_servers : int (default: 1)
        Byzantine replicas f_ps (n_ps >= 3 f_ps + 2): the last ``f_servers`` replicas.
    server_attack : str | ServerAttack (default: "none")
        What the Byzantine replicas send: ``none``, ``perturb``, ``negate``, ``random`` (a
        different random model to each receiver), ``stale``, ``stall``, ``non-finite``.
    worker_aggregator : Aggregator | str (default: "mda")
        The servers' rule over the workers' gradients (the paper: MDA).
    f : int | "auto" | None (default: None)
        Byzantine workers f_w the rule tolerates (n_w >= 3 f_w + 1 workers per step).
    lr : float (default: 0.05)
        Step size eta of every replica.
    gather_period : int | None (default: None)
        T, steps between gathers (None: the paper's floor(1 / (3 l eta)) with ``lipschitz``).
    lipschitz : float (default: 1.0)
        l, the gradient's Lipschitz constant assumed for T (the authors' code: 1).
    worker_rule : str (default: "median")
        ``median`` (median of q_ps models) or ``filter`` (the synchronous variant's filters).
    gradient_quorum : int | None (default: None)
        q_w, gradients each server aggregates (None: n_w - f_w).
    batch_size : int (default: 32)
        Minibatch size of the workers' gradients.
    clients_per_round : int | None (default: None)
        Workers per step (None: all).
    min_available_nodes : int (default: 1)
        Wait until this many nodes are connected.
    seed : int (default: 0)
        Seeds sampling, minibatches, quorums and the server attack.
    """

    def __init__(
        self,
        n_servers: int = 5,
        f_servers: int = 1,
        server_attack: str | ServerAttack = "none",
        worker_aggregator: Aggregator | str = "mda",
        f: FArg = None,
        lr: float = 0.05,
        gather_period: int | None = None,
        lipschitz: float = 1.0,
        worker_rule: str = "median",
        gradient_quorum: int | None = None,
        batch_size: int = 32,
        clients_per_round: int | None = None,
        min_available_nodes: int = 1,
        seed: int = 0,
    ) -> None:
        check_quorums(int(n_servers), int(f_servers))
        if worker_rule not in WORKER_RULES:
            raise ValueError(f"worker_rule must be one of {WORKER_RULES}, got {worker_rule!r}")
        if gather_period is not None and (isinstance(gather_period, bool) or gather_period < 1):
            raise ValueError(f"gather_period must be an int >= 1 or None, got {gather_period!r}")
        if gradient_quorum is not None and gradient_quorum < 1:
            raise ValueError(f"gradient_quorum must be >= 1 or None, got {gradient_quorum}")
        self.n_servers = int(n_servers)
        self.f_servers = int(f_servers)
        f_count, _ = parse_f(f)
        self.f_workers = 0 if f_count is None else int(f_count)
        self.server_attack = get_server_attack(server_attack, seed)
        self.period = (
            int(gather_period) if gather_period is not None else paper_period(lipschitz, lr)
        )
        self.worker_rule = worker_rule
        self.gradient_quorum = None if gradient_quorum is None else int(gradient_quorum)
        super().__init__(
            aggregator=worker_aggregator,
            f=f,
            lr=lr,
            batch_size=batch_size,
            clients_per_round=clients_per_round,
            min_available_nodes=min_available_nodes,
            seed=seed,
        )

    # --- state ------------------------------------------------------------------------------
    def _init_state(self, x: torch.Tensor) -> ByzSGDState:
        return ByzSGDState.start(x, self.n_servers)

    @property
    def replicas(self) -> torch.Tensor | None:
        """``[n_ps, d]``: every replica's own model (None before round 1)."""
        return None if self.state is None else self.state.replicas

    @replicas.setter
    def replicas(self, value: torch.Tensor) -> None:
        self.state = replace(self.current(), replicas=value)

    @property
    def t(self) -> int:
        """The step being taken."""
        return 0 if self.state is None else self.state.t

    def attack_surface(self) -> AttackSurface:
        """``methods.byzsgd.attack_surface``: the workers' gradients are aggregated as they
        arrive; ShiftBack's gradient is measured at the observed model."""
        return byzsgd.attack_surface(self.current, self.lr)

    def _reset_method(self) -> None:
        self.fresh: frozenset[int] = frozenset()  # workers whose last step's reply was applied
        self.pulled: dict[int, list[int]] = {}  # worker -> servers whose models it was sent
        self.diameters: list[tuple[int, float, float]] = []  # (step, before, after) per gather

    @property
    def honest(self) -> list[int]:
        """Indices of the honest replicas."""
        return list(range(self.n_servers - self.f_servers))

    @property
    def byzantine(self) -> list[int]:
        """Indices of the Byzantine replicas."""
        return list(range(self.n_servers - self.f_servers, self.n_servers))

    def honest_models(self) -> torch.Tensor:
        """``[n_ps - f_ps, d]``: the honest replicas' models."""
        if self.replicas is None:
            raise RuntimeError("ByzSGD has not started (no model yet)")
        return self.replicas[: self.n_servers - self.f_servers]

    def servers(self) -> byzsgd.Servers:
        """The replicas as ``methods.byzsgd`` sees them (with the current ``server_attack``)."""
        return byzsgd.Servers(self.n_servers, self.f_servers, self.server_attack)

    def sent_by(self, server: int, recipient: int) -> torch.Tensor | None:
        """What replica ``server`` sends to ``recipient`` this step (None: nothing)."""
        return byzsgd.sent_by(self.current(), self.servers(), server, recipient)

    def arrivals(
        self, recipient: int, exclude: int | None = None
    ) -> list[tuple[int, torch.Tensor]]:
        """The models reaching ``recipient`` in arrival order: the Byzantine replicas' first
        (adversarial scheduling; stalled ones never arrive), then the honest ones shuffled."""
        return byzsgd.arrivals(self._rng, self.current(), self.servers(), recipient, exclude)

    def check_sample(self, connected: int) -> None:
        """Before step 1: n_w (``clients_per_round`` of the ``connected`` workers) must be
        >= 3 f_w + 1 and the servers' rule must run on their quorum q_w (n_w - f_w, or
        ``gradient_quorum``). ``f="auto"``: the largest f_w for which both hold."""
        n_w = min(self.clients_per_round or connected, connected)

        def quorum(f: int) -> int:
            return min(byzsgd.worker_quorum(n_w, f, self.gradient_quorum), n_w)

        if self.auto_f:
            top = breakdown(self.aggregator, n_w)
            fits = (g for g in range(top, -1, -1) if 3 * g + 1 <= n_w)
            best = next((g for g in fits if accepts(self.aggregator, quorum(g), g)), 0)
            self.aggregator, self.f_workers = set_f(self.aggregator, best), best
            log(
                INFO,
                'ByzSGD: f="auto": f_w=%d, the most %r tolerates on the quorum of %d of the %d '
                "workers a step samples",
                best,
                self.aggregator,
                quorum(best),
                n_w,
            )
        sampled = f"each step samples {n_w} workers (clients_per_round="
        sampled += f"{self.clients_per_round or 'all'}, {connected} connected)"
        try:
            check_quorums(self.n_servers, self.f_servers, n_w, self.f_workers)
        except ValueError as exc:
            need = 3 * self.f_workers + 1
            raise SampleTooSmallError(
                f"ByzSGD: tolerating f_workers={self.f_workers} needs n_workers >= 3 f_workers "
                f"+ 1 = {need} workers per step, but {sampled} ({exc}). Fix one of: "
                f"clients-per-round (clients_per_round) >= {need}; "
                f'f <= {(n_w - 1) // 3} or f="auto".'
            ) from None
        q = quorum(self.f_workers)
        need = min_inputs(self.aggregator)
        fixes = (
            [f"gradient-quorum (gradient_quorum) >= {need}"]
            if self.gradient_quorum
            else [f"clients-per-round (clients_per_round) >= {need + self.f_workers}"]
        )
        require(
            self.aggregator,
            q,
            who="ByzSGD",
            sample=f"each server aggregates a quorum of {q} gradients (q_w: {sampled[5:]})",
            fixes=fixes,
        )

    # --- scatter ----------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send each worker the models it pulls (``model-<j>``, ``methods.byzsgd.plan_step``)
        with op ``byzsgd``."""
        self._start(server_round, arrays)
        self.state = replace(self.current(), t=self.t + 1)
        context = f"ByzSGD step {self.t}"
        nodes = self.sample(grid, self.clients_per_round, context)
        if self.t == 1:
            check_quorums(self.n_servers, self.f_servers, len(nodes), self.f_workers)
        elif len(nodes) < 3 * self.f_workers + 1:
            need = 3 * self.f_workers + 1
            log(WARNING, "%s: %d workers < 3 f_w + 1 = %d", context, len(nodes), need)
        op = {
            OP_KEY: OP_BYZSGD,
            BATCH_SIZE_KEY: self.batch_size,
            LR_KEY: self.lr,
            STEP_KEY: self.t,
            GATHER_PERIOD_KEY: self.period,
            N_SERVERS_KEY: self.n_servers,
            F_SERVERS_KEY: self.f_servers,
            N_WORKERS_KEY: len(nodes),
            F_WORKERS_KEY: self.f_workers,
        }
        out: list[Message] = []
        replicas = self.current().replicas
        honest = {s: self.model_record(replicas[s]) for s in self.honest}  # built once
        plans = byzsgd.plan_step(
            self._rng,
            self.current(),
            self.servers(),
            nodes,
            fresh=self.fresh,
            rule=self.worker_rule,
            period=self.period,
        )
        self.pulled = {plan.node: [s for s, _ in plan.pulls] for plan in plans}
        for plan in plans:
            records = {
                REPLICA_KEY.format(j): honest[s] if s in honest else self._wire(m)
                for j, (s, m) in enumerate(plan.pulls)
            }
            own: dict[str, Any] = {
                BYZSGD_RULE_KEY: BYZSGD_FILTER if plan.filtering else BYZSGD_MEDIAN,
                BATCH_SEED_KEY: plan.batch_seed,
            }
            out.extend(self.messages([plan.node], records, config, op | own))
        return out

    def _wire(self, model: torch.Tensor) -> ArrayRecord:
        """A Byzantine model as sent: the model's arrays, or (wrong length) one raw array
        that the worker drops."""
        if model.numel() == self.layout.numel:
            return self.model_record(model.reshape(-1))
        return ArrayRecord({"model": Array(model.detach().cpu().numpy())})

    # --- server steps and gather -------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Each replica: MDA over its quorum of gradients and a step; every T steps, DMC
        (``methods.byzsgd.finish_step``)."""
        context = f"ByzSGD step {self.t}"
        if self.replicas is None or self.server_round != server_round:
            log(WARNING, "%s: nothing was sent this round; nothing to aggregate", context)
            return None, None
        checked = self.validate(replies, {VECTOR_KEY: self.layout}, context)
        replica = iter(range(self.n_servers))
        self.state, stats = byzsgd.finish_step(
            self._rng,
            self.current(),
            self.servers(),
            checked.vectors,
            lambda rows: self.robust(self.aggregator, rows, f"{context} server {next(replica)}"),
            quorum=byzsgd.worker_quorum(
                len(self._sent_nodes), self.f_workers, self.gradient_quorum
            ),
            period=self.period,
            lr=self.lr,
        )
        self.fresh = frozenset(checked.node_ids)
        if stats["gather"]:
            self.diameters.append((self.t, stats["diameter-before-gather"], stats["diameter"]))
        extra: dict[str, float | int] = {SAMPLED_KEY: len(self._sent_nodes)}
        extra |= {(SKIPPED_KEY if k == "skipped" else k): v for k, v in stats.items()}
        extra |= _worker_counts(checked.contents)
        return self.model_record(), self.metrics(checked, **extra)

    def gather(self) -> dict[str, float | int]:
        """DMC (``methods.byzsgd.gather_step``): every honest replica takes the coordinate-wise
        median of q_ps models (its own first); non-finite or missing models are dropped.
        Returns the gather's metrics."""
        self.state, stats = byzsgd.gather_step(self._rng, self.current(), self.servers())
        after = diameter(self.honest_models())
        self.diameters.append((self.t, stats["diameter-before-gather"], after))
        return stats

    def observed_model(self) -> torch.Tensor:
        """The median of the (finite) models every replica presents to an observer."""
        return byzsgd.observe(self._rng, self.current(), self.servers())

    def options(self) -> dict[str, Any]:
        return super().options() | {
            "servers": f"{self.n_servers} ({self.f_servers} Byzantine: {self.server_attack})",
            "Byzantine workers f_w": self.f_workers,
            "gather period T": self.period,
            "worker rule": self.worker_rule,
            "gradient quorum": self.gradient_quorum or "n_w - f_w",
        }


def _worker_counts(contents: Iterable[Any]) -> dict[str, float | int]:
    """Sum of the workers' filter counters over the accepted replies."""
    keys = {"filter-rejected": BYZSGD_REJECTED_KEY, "filter-fallback": BYZSGD_FALLBACK_KEY}
    keys["worker-dropped-models"] = BYZSGD_DROPPED_KEY
    out: dict[str, float | int] = dict.fromkeys(keys, 0)
    for content in contents:
        for record in content.metric_records.values():
            for name, key in keys.items():
                value = record.get(key, 0)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    if math.isfinite(value) and value > 0:  # a count; anything else is noise
                        out[name] += int(value)
    return out
