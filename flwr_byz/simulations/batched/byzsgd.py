"""ByzSGD on the batched engine: Byzantine workers and Byzantine parameter-server replicas.

The scheduling (which models reach which worker, in which order; the servers' gradient
quorums; the gather) follows the ``ByzSGD`` strategy draw for draw, with the functions of
``methods.byzsgd``; the workers' gradients at their chosen models are one ``torch.func`` call.
Workers on the ``median`` rule take the coordinate-wise median of their pulled models as one
tensor op; the ``filter`` rule (the synchronous variant) runs ``methods.byzsgd.worker_step``
per worker on gradients computed for every candidate model at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ...methods import byzsgd
from ...methods.byzsgd import ByzSGDState, WorkerState
from ...methods.sampling import sample_nodes
from ...methods.surface import AttackSurface
from ...protocol.keys import (
    BATCH_SEED_KEY,
    BATCH_SIZE_KEY,
    BYZSGD_DROPPED_KEY,
    BYZSGD_FALLBACK_KEY,
    BYZSGD_FILTER,
    BYZSGD_MEDIAN,
    BYZSGD_REJECTED_KEY,
    BYZSGD_RULE_KEY,
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
    STEP_KEY,
    VECTOR_KEY,
)
from .bytes import reply_metrics
from .methods import _MethodDriver
from .setup import RoundOutcome, Setup

__all__ = ["ByzSGDDriver"]

_NONE = -(2**62)


class ByzSGDDriver(_MethodDriver):
    """The ByzSGD strategy's steps (module doc)."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        s = self.strategy
        self.n_ps, self.f_ps, self.f_w = s.n_servers, s.f_servers, s.f_workers
        self.q = self.n_ps - self.f_ps
        self.servers = byzsgd.Servers(self.n_ps, self.f_ps, self._server_attack)
        self.state = ByzSGDState.start(self.x0, self.n_ps)
        self.fresh: frozenset[int] = frozenset()
        self.sampled = 0
        n, d, dev = self.n, self.d, self.device
        self.w_x = torch.zeros(n, d, dtype=self.dtype, device=dev)  # the workers' last model
        self.w_g = torch.zeros(n, d, dtype=self.dtype, device=dev)  # ... and gradient
        self.w_step = torch.full((n,), _NONE, dtype=torch.long, device=dev)
        self.w_history = [torch.zeros(0, dtype=torch.float64) for _ in range(n)]

    def surface(self) -> AttackSurface:
        return byzsgd.attack_surface(lambda: self.state, self.lr)

    def _server_attack(
        self, own: torch.Tensor, x0: torch.Tensor, recipient: int, step: int
    ) -> torch.Tensor | None:
        """The Byzantine replicas' attack, on the CPU (where it draws its noise on the local
        engine), its model moved back to the engine's device."""
        sent = self.strategy.server_attack(own.cpu(), x0.cpu(), recipient, step)
        return None if sent is None else sent.to(own.device)

    # --- a step ------------------------------------------------------------------------------
    def round(self, server_round: int) -> RoundOutcome:
        s = self.strategy
        self.state = replace(self.state, t=self.state.t + 1)
        t = self.state.t
        drawn = sample_nodes(self.rng, self.nodes, s.clients_per_round)
        self.sampled = len(drawn)
        if t == 1:
            byzsgd.check_quorums(self.n_ps, self.f_ps, len(drawn), self.f_w)
        plans = byzsgd.plan_step(
            self.rng,
            self.state,
            self.servers,
            drawn,
            fresh=self.fresh,
            rule=s.worker_rule,
            period=s.period,
        )
        pulls = {plan.node: list(plan.pulls) for plan in plans}
        rules = {p.node: BYZSGD_FILTER if p.filtering else BYZSGD_MEDIAN for p in plans}
        seeds = {plan.node: plan.batch_seed for plan in plans}
        op = {
            OP_KEY: OP_BYZSGD,
            BATCH_SIZE_KEY: s.batch_size,
            LR_KEY: s.lr,
            STEP_KEY: t,
            GATHER_PERIOD_KEY: s.period,
            N_SERVERS_KEY: self.n_ps,
            F_SERVERS_KEY: self.f_ps,
            N_WORKERS_KEY: len(drawn),
            F_WORKERS_KEY: self.f_w,
        }
        down = self.wire.down(
            server_round,
            drawn,
            lambda n: {REPLICA_KEY.format(j): "model" for j in range(len(pulls[n]))},
            op,
            lambda n: {BYZSGD_RULE_KEY: rules[n], BATCH_SEED_KEY: seeds[n]},
            self.marked(),
        )
        nodes = sorted(drawn)
        parts = [n - 1 for n in nodes]
        grads, losses, error, counts = self._workers(nodes, pulls, rules, seeds, op)
        vectors, _ = self.forge(grads, parts, ~error)
        accepted, reasons = self.validate(vectors, error)
        metrics = self._servers(
            vectors[accepted], [n for n, a in zip(nodes, accepted.tolist(), strict=True) if a]
        )
        kept = [c for c, a in zip(counts, accepted.tolist(), strict=True) if a]
        extra: dict[str, Any] = {
            SAMPLED_KEY: len(drawn),
            **metrics,
            "filter-rejected": sum(c[BYZSGD_REJECTED_KEY] for c in kept),
            "filter-fallback": sum(c[BYZSGD_FALLBACK_KEY] for c in kept),
            "worker-dropped-models": sum(c[BYZSGD_DROPPED_KEY] for c in kept),
        }
        out = self.metrics(accepted, reasons, losses.tolist(), **extra)
        data = self.setup.data
        up = self.wire.up(
            nodes,
            ["error" if e else VECTOR_KEY for e in error.tolist()],
            [
                reply_metrics(loss, data.sizes[p]) | c
                for loss, p, c in zip(losses.tolist(), parts, counts, strict=True)
            ],
        )
        return RoundOutcome(self.state.x, out, up, down)

    def _workers(
        self,
        nodes: list[int],
        pulls: dict[int, list[tuple[int, torch.Tensor]]],
        rules: dict[int, str],
        seeds: dict[int, int],
        op: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, int]]]:
        """Every sampled worker's step: (gradients, losses, error replies, counters)."""
        m, d, t = len(nodes), self.d, self.state.t
        parts = [n - 1 for n in nodes]
        grads = torch.zeros(m, d, dtype=self.dtype, device=self.device)
        losses = torch.zeros(m, dtype=self.dtype, device=self.device)
        error = self.setup.data.empty(parts).to(self.device)
        counts = [
            {BYZSGD_DROPPED_KEY: 0, BYZSGD_REJECTED_KEY: 0, BYZSGD_FALLBACK_KEY: 0} for _ in nodes
        ]
        models: list[list[torch.Tensor]] = []
        for i, node in enumerate(nodes):
            # as on the wire (``ByzSGD._wire``): d values reshaped to the model, finite
            sent = [mdl.reshape(-1).to(self.dtype) for _, mdl in pulls[node] if mdl.numel() == d]
            valid = [vec for vec in sent if bool(torch.isfinite(vec).all())]
            counts[i][BYZSGD_DROPPED_KEY] = len(pulls[node]) - len(valid)
            models.append(valid)
            if not valid:
                error[i] = True
        filtering = [rules[n] == BYZSGD_FILTER for n in nodes]
        for i, node in enumerate(nodes):  # a filter step without the previous step's state
            if filtering[i] and not bool(error[i]) and int(self.w_step[node - 1]) != t - 1:
                error[i] = True
        median = [i for i in range(m) if not error[i] and not filtering[i]]
        if median:
            self._median_workers(median, nodes, models, seeds, grads, losses)
        chosen = [i for i in range(m) if not error[i] and filtering[i]]
        if chosen:
            self._filter_workers(chosen, nodes, models, seeds, op, grads, losses, counts)
        return grads, losses, error, counts

    def _median_workers(
        self,
        rows: list[int],
        nodes: list[int],
        models: list[list[torch.Tensor]],
        seeds: dict[int, int],
        grads: torch.Tensor,
        losses: torch.Tensor,
    ) -> None:
        """The median rule: each worker's gradient at the coordinate-wise median of its models
        (workers with equally many valid models share one median op)."""
        by_count: dict[int, list[int]] = {}
        for i in rows:
            by_count.setdefault(len(models[i]), []).append(i)
        points = torch.zeros(len(rows), self.d, dtype=self.dtype, device=self.device)
        where = {i: j for j, i in enumerate(rows)}
        for group in by_count.values():
            stacked = torch.stack([torch.stack(models[i]) for i in group])
            medians = byzsgd.median_models(stacked)
            points[[where[i] for i in group]] = medians
        parts = [nodes[i] - 1 for i in rows]
        g, loss, _ = self.gradients(parts, [seeds[nodes[i]] for i in rows], self.batch_size, points)
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        grads[idx], losses[idx] = g, loss.to(losses.dtype)
        self._remember(parts, points, g)

    def _remember(self, parts: list[int], points: torch.Tensor, g: torch.Tensor) -> None:
        """The workers' state after a median step: model, gradient, step and (only the filter
        rule reads it) the Lipschitz coefficient of a continuing worker in its history."""
        t = self.state.t
        if self.strategy.worker_rule == BYZSGD_FILTER:
            for j, p in enumerate(parts):
                new = byzsgd.median_state(self._worker(p), points[j], g[j], t)
                self.w_history[p] = new.history
        rows = torch.tensor(parts, dtype=torch.long, device=self.device)
        self.w_x[rows], self.w_g[rows] = points, g
        self.w_step[rows] = t

    def _worker(self, p: int, copy: bool = False) -> WorkerState:
        """Partition ``p``'s worker state (``copy``: its own tensors, not views)."""
        x, g = self.w_x[p], self.w_g[p]
        if copy:
            x, g = x.clone(), g.clone()
        return WorkerState(x=x, g=g, step=int(self.w_step[p]), history=self.w_history[p])

    def _filter_workers(
        self,
        rows: list[int],
        nodes: list[int],
        models: list[list[torch.Tensor]],
        seeds: dict[int, int],
        op: dict[str, Any],
        grads: torch.Tensor,
        losses: torch.Tensor,
        counts: list[dict[str, int]],
    ) -> None:
        """The filter rule: gradients at every candidate model at once, then
        ``methods.byzsgd.worker_step`` per worker on them."""
        flat = [(i, j) for i in rows for j in range(len(models[i]))]
        points = torch.stack([models[i][j] for i, j in flat])
        parts = [nodes[i] - 1 for i, _ in flat]
        g, loss, _ = self.gradients(
            parts, [seeds[nodes[i]] for i, _ in flat], self.batch_size, points
        )
        at = {key: k for k, key in enumerate(flat)}
        for i in rows:
            p = nodes[i] - 1
            state = self._worker(p, copy=True)

            def gradient(
                model: torch.Tensor, index: int | None, i: int = i
            ) -> tuple[torch.Tensor, float]:
                k = at[(i, int(index or 0))]  # the filter rule asks for pulled models only
                return g[k], float(loss[k])

            grad, value, new, c = byzsgd.worker_step(
                models[i],
                gradient,
                state,
                rule="filter",
                step=self.state.t,
                lr=float(op[LR_KEY]),
                period=int(op[GATHER_PERIOD_KEY]),
                n_servers=self.n_ps,
                f_servers=self.f_ps,
                n_workers=int(op[N_WORKERS_KEY]),
                f_workers=self.f_w,
            )
            grads[i], losses[i] = grad, value
            counts[i][BYZSGD_REJECTED_KEY] = c["rejected"]
            counts[i][BYZSGD_FALLBACK_KEY] = c["fallback"]
            assert new.x is not None
            self.w_x[p], self.w_g[p], self.w_step[p] = new.x, grad, self.state.t
            self.w_history[p] = new.history

    def _servers(self, grads: torch.Tensor, accepted: list[int]) -> dict[str, Any]:
        """The replicas' steps on their quorums, the gather every T steps, the observed model
        (``methods.byzsgd.finish_step``, as the ByzSGD strategy's ``aggregate_train``)."""
        s = self.strategy
        self.state, stats = byzsgd.finish_step(
            self.rng,
            self.state,
            self.servers,
            grads,
            self.aggregate,
            quorum=byzsgd.worker_quorum(self.sampled, self.f_w, s.gradient_quorum),
            period=s.period,
            lr=self.lr,
        )
        self.fresh = frozenset(accepted)
        return dict(stats)
