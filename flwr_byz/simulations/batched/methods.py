"""The method strategies on the batched engine: every sampled client's op at once, through the
same ``flwr_byz.methods`` functions the Flower shells call.

A driver holds what the shell and its clients hold on the local engine: the method's server
state, the clients' states as ``[N, d]`` tensors (rows: partitions), the strategy's seeded
generator. Per round: ``plan_round`` (the same draws), the minibatch gradients of all sampled
clients in one ``torch.func`` call, ``client_step`` row-wise, the attack on the aggregated
vectors (the method's attack surface, as ``ByzantineGrid`` applies it), the validation of
``strategies.validation`` (error replies, non-finite vectors), ``server_step``, and the bytes
of the Messages the local engine would exchange (``bytes``). Hyperparameters are read
from the strategy object ``build_strategy`` makes, so defaults and ``--param`` agree.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...aggregators import Mean
from ...aggregators.base import with_f
from ...attacks import SurfaceAttack
from ...compressors import Compressor
from ...compressors.rows import compress_rows
from ...methods import ef21, marina, momentum, mu2sgd
from ...methods.common import Aggregate, guarded
from ...methods.surface import AttackSurface
from ...protocol.keys import (
    BATCH_SEED_KEY,
    BATCH_SIZE_KEY,
    BETA_KEY,
    COMPRESSOR_KEY,
    COMPRESSOR_SEED_KEY,
    COPIES_KEY,
    EF21_VERSION_KEY,
    OP_DOUBLE,
    OP_GRAD,
    OP_GRAD_DIFF,
    OP_KEY,
    OP_MOMENTUM,
    PAYLOAD_KEY,
    POINT_KEY,
    PREV_KEY,
    RESETS_KEY,
    SAMPLED_KEY,
    SKIPPED_KEY,
    VECTOR_KEY,
)
from ...protocol.payload import PayloadCodec
from ..methods import build_strategy
from ..runner import train_config
from .attack import attack_rows
from .bytes import WireSizes, reply_metrics
from .setup import Driver, RoundOutcome, Setup

__all__ = ["METHOD_DRIVERS"]


@dataclass
class _Replies:
    """A round's replies in partition order: the sampled ``nodes``, their ``partitions``, the
    reply vectors as the server decodes them ``[m, d]``, which clients failed (an error reply),
    their reported losses and kinds (``VECTOR_KEY`` / ``PAYLOAD_KEY``)."""

    nodes: list[int]
    partitions: list[int]
    vectors: torch.Tensor
    error: torch.Tensor
    losses: list[float]
    kinds: list[str] = field(default_factory=list)


class _MethodDriver:
    """What every method driver shares (module doc)."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.cfg = setup.cfg
        self.strategy: Any = build_strategy(setup.cfg)
        s: Any = self.strategy
        self.rng = random.Random(s.seed)  # MethodStrategy._reset
        self.nodes = setup.node_ids
        self.lr = float(s.lr)
        self.batch_size = int(s.batch_size)
        self.aggregate: Aggregate = guarded(s.aggregator)
        self.x0 = setup.x0
        self.dtype = setup.x0.dtype
        self.d = setup.fm.d
        n, device = setup.cfg.clients, setup.device
        self.n, self.device = n, device
        codec: PayloadCodec | None = getattr(s, "codec", None)
        self.compressor: Compressor | None = None if codec is None else codec.compressor
        self.wire = WireSizes(setup.layout, setup.x0, train_config(setup.cfg), self.compressor)
        # the dtype ``validate_replies`` decodes payloads to (float32 unless a float64 array)
        self.payload_dtype = (
            codec.layout(self.d, self.dtype).vector_dtype if codec is not None else self.dtype
        )
        attack = setup.vector_attack
        if isinstance(attack, SurfaceAttack):  # ShiftBack (ByzantineGrid.bind)
            attack.bind(self.surface())

    # --- overridden -------------------------------------------------------------------------
    def surface(self) -> AttackSurface:
        """The method's attack surface at its current state."""
        raise NotImplementedError

    # --- shared steps -----------------------------------------------------------------------
    def compress(self, rows: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """``Q(row_i)`` with ``seeds[i]``, dense (as the server decodes the payload)."""
        assert self.compressor is not None
        return compress_rows(self.compressor, rows, seeds)

    def gradients(
        self, partitions: Sequence[int], seeds: Sequence[int], batch_size: int, points: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(minibatch gradients ``[m, d]``, losses ``[m]``, error ``[m]``: the partition has no
        data, its ClientApp raises) of ``GradientClient``'s batches at ``points``."""
        data = self.setup.data
        batches = data.minibatches(partitions, batch_size, seeds)
        grads, losses = self.setup.fm.gradients(
            points,
            data.x[batches.index],
            data.y[batches.index],
            batches.mask,
            self.cfg.weight_decay,
        )
        return grads, losses, data.empty(partitions).to(grads.device)

    def rows(self, parts: Sequence[int], ok: torch.Tensor) -> torch.Tensor | slice:
        """The rows of the clients' state tensors of ``parts`` that replied (``ok``): a
        slice when that is every client in order (no gather or scatter needed)."""
        if len(parts) == self.n and bool(ok.all()) and list(parts) == list(range(self.n)):
            return slice(None)
        return torch.tensor(list(parts), dtype=torch.long, device=self.device)[ok]

    @staticmethod
    def scatter(replies: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """The ``[len(ok), d]`` reply rows: ``replies`` (one per ``ok`` client) in place, zeros
        for the clients that failed (their rows are rejected as errors)."""
        if bool(ok.all()):
            return replies
        out = replies.new_zeros(len(ok), replies.shape[1])
        return out.index_put_((ok,), replies)

    def forge(
        self,
        aggregated: torch.Tensor,
        partitions: Sequence[int],
        replied: torch.Tensor,
        vectors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attack on the aggregated rows of one group of replies (``ByzantineGrid``):
        returns (rows with the Byzantine ones forged, which rows were forged)."""
        attack = self.setup.vector_attack
        byz = self.setup.byzantine_mask(partitions).to(aggregated.device) & replied
        if attack is None or not bool(byz.any()):
            return aggregated, torch.zeros_like(byz)
        out, count = attack_rows(attack, aggregated, byz, replied, vectors)
        return out, byz if count else torch.zeros_like(byz)

    def validate(
        self, vectors: torch.Tensor, error: torch.Tensor, extra: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Counter[str]]:
        """``strategies.validation`` on the round's rows: error replies, then non-finite
        vectors, then ``extra`` (``malformed``) are rejected. Returns (accepted ``[m]``, the
        rejection reasons)."""
        finite = torch.isfinite(vectors).all(dim=1) if vectors.numel() else ~error
        reasons: Counter[str] = Counter()
        reasons["error-reply"] = int(error.sum())
        bad = ~error & ~finite
        reasons["non-finite"] = int(bad.sum())
        accepted = ~error & finite
        if extra is not None:
            reasons["malformed"] = int((accepted & extra).sum())
            accepted = accepted & ~extra
        return accepted, Counter({k: v for k, v in reasons.items() if v})

    @staticmethod
    def metrics(
        accepted: torch.Tensor, reasons: Counter[str], losses: Sequence[float], **extra: Any
    ) -> dict[str, float]:
        """``MethodStrategy.metrics``: the validation counts, the median reported loss of the
        accepted replies, and ``extra``."""
        out: dict[str, float] = {
            "accepted": float(int(accepted.sum())),
            "rejected": float(sum(reasons.values())),
        }
        for reason, count in sorted(reasons.items()):
            out[f"rejected-{reason}"] = float(count)
        kept = [loss for loss, ok in zip(losses, accepted.tolist(), strict=True) if ok]
        if kept:
            out["train-loss"] = float(torch.tensor(kept).median())
        for key, value in extra.items():
            out[key] = float(value)
        return out

    def marked(self) -> Callable[[int], bool]:
        """Whether a node's messages carry ByzantineGrid's LabelFlip mark."""
        setup = self.setup
        if setup.attack is None or setup.vector_attack is not None:
            return lambda node: False
        byz = set(setup.byzantine)
        return lambda node: node - 1 in byz

    def up_bytes(self, replies: _Replies) -> int:
        """Bytes of the round's replies."""
        data = self.setup.data
        kinds = [
            "error" if bool(e) else kind
            for e, kind in zip(replies.error.tolist(), replies.kinds, strict=True)
        ]
        metrics = [
            reply_metrics(loss, data.sizes[p])
            for loss, p in zip(replies.losses, replies.partitions, strict=True)
        ]
        return self.wire.up(replies.nodes, kinds, metrics)


# --- robust-momentum ---------------------------------------------------------------------------
class MomentumDriver(_MethodDriver):
    """RobustMomentum: worker momentum, robust aggregation, Eq. (10) clipping."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.state = momentum.MomentumState(x=self.x0, x0=self.x0.clone())
        zeros = momentum.MomentumClientState.zeros(self.n, self.d, self.dtype)
        self.clients = momentum.MomentumClientState(
            zeros.m.to(self.device), zeros.started.to(self.device)
        )
        self.beta = float(self.strategy.momentum)

    def surface(self) -> AttackSurface:
        return momentum.attack_surface(lambda: self.state, self.lr)

    def round(self, server_round: int) -> RoundOutcome:
        s = self.strategy
        plan = momentum.plan_round(self.rng, self.nodes, s.clients_per_round)
        nodes = sorted(plan.nodes)
        parts = [n - 1 for n in nodes]
        seeds = [plan.batch_seed(n) for n in nodes]
        down = self.wire.down(
            server_round,
            plan.nodes,
            {POINT_KEY: "model"},
            {OP_KEY: OP_MOMENTUM, BETA_KEY: s.momentum, BATCH_SIZE_KEY: s.batch_size},
            lambda n: {BATCH_SEED_KEY: plan.batch_seed(n)},
            self.marked(),
        )
        grads, losses, error = self.gradients(parts, seeds, self.batch_size, self.state.x)
        ok = ~error
        rows = self.rows(parts, ok)
        replies, new = momentum.client_step(
            grads[ok],
            momentum.MomentumClientState(self.clients.m[rows], self.clients.started[rows]),
            beta=self.beta,
        )
        self.clients.m[rows] = new.m
        self.clients.started[rows] = new.started
        vectors = self.scatter(replies, ok)
        vectors, _ = self.forge(vectors, parts, ok)
        accepted, reasons = self.validate(vectors, error)
        self.state, stats = momentum.server_step(
            self.state, vectors[accepted], self.aggregate, lr=self.lr, clip_alpha=s.clip_alpha
        )
        level = stats["clip_level"]
        metrics = self.metrics(
            accepted,
            reasons,
            losses.tolist(),
            **{
                "clip-level": -1.0 if level is None else level,
                "clipped": stats["clipped"],
                SAMPLED_KEY: len(plan.nodes),
                SKIPPED_KEY: stats["skipped"],
            },
        )
        out = _Replies(nodes, parts, vectors, error, losses.tolist(), [VECTOR_KEY] * len(nodes))
        return RoundOutcome(self.state.x, metrics, self.up_bytes(out), down)


# --- mu2-SGD -------------------------------------------------------------------------------------
class Mu2Driver(_MethodDriver):
    """mu2-SGD: corrected momentum on the clients, AnyTime averaging on the server."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.state = mu2sgd.Mu2State.start(self.x0)
        z = mu2sgd.Mu2ClientState.zeros(self.n, self.d, self.dtype)
        self.clients = mu2sgd.Mu2ClientState(
            z.d.to(self.device), z.x_prev.to(self.device), z.started.to(self.device)
        )

    def surface(self) -> AttackSurface:
        s = self.strategy
        return mu2sgd.attack_surface(
            lambda: self.state, self.lr, alpha_lr=s.alpha_lr, floor=s.floor
        )

    def round(self, server_round: int) -> RoundOutcome:
        s = self.strategy
        self.state = mu2sgd.begin_round(self.state)
        beta = mu2sgd.corrected_beta(self.state.t, s.floor)
        plan = mu2sgd.plan_round(self.rng, self.nodes, s.clients_per_round)
        nodes = sorted(plan.nodes)
        parts = [n - 1 for n in nodes]
        seeds = [plan.batch_seed(n) for n in nodes]
        down = self.wire.down(
            server_round,
            plan.nodes,
            {POINT_KEY: "model"},
            {OP_KEY: OP_DOUBLE, BETA_KEY: beta, BATCH_SIZE_KEY: s.batch_size},
            lambda n: {BATCH_SEED_KEY: plan.batch_seed(n)},
            self.marked(),
        )
        x = self.state.x
        grads, losses, error = self.gradients(parts, seeds, self.batch_size, x)
        ok = ~error
        rows = self.rows(parts, ok)
        state = mu2sgd.Mu2ClientState(
            self.clients.d[rows], self.clients.x_prev[rows], self.clients.started[rows]
        )
        grads_prev = None
        if bool(state.started.any()):  # the same minibatches at each client's previous point
            okparts = [p for p, e in zip(parts, error.tolist(), strict=True) if not e]
            okseeds = [sd for sd, e in zip(seeds, error.tolist(), strict=True) if not e]
            grads_prev, _, _ = self.gradients(okparts, okseeds, self.batch_size, state.x_prev)
        replies, new = mu2sgd.client_step(grads[ok], grads_prev, x, state, beta=beta)
        self.clients.d[rows], self.clients.x_prev[rows] = new.d, new.x_prev
        self.clients.started[rows] = new.started
        vectors = self.scatter(replies, ok)
        vectors, _ = self.forge(vectors, parts, ok)
        accepted, reasons = self.validate(vectors, error)
        self.state, stats = mu2sgd.server_step(
            self.state,
            vectors[accepted],
            self.aggregate,
            lr=self.lr,
            alpha_lr=s.alpha_lr,
            floor=s.floor,
        )
        metrics = self.metrics(
            accepted,
            reasons,
            losses.tolist(),
            **{
                "beta": stats["beta"],
                "gamma": stats["gamma"],
                SAMPLED_KEY: len(plan.nodes),
                SKIPPED_KEY: stats["skipped"],
            },
        )
        out = _Replies(nodes, parts, vectors, error, losses.tolist(), [VECTOR_KEY] * len(nodes))
        return RoundOutcome(self.state.x, metrics, self.up_bytes(out), down)


# --- BR-CSGD ---------------------------------------------------------------------------------
class BRCSGDDriver(_MethodDriver):
    """BR-CSGD: compressed minibatch gradients, robust aggregation."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.state = ef21.BRCSGDState(x=self.x0, x0=self.x0.clone())

    def surface(self) -> AttackSurface:
        return ef21.brcsgd_attack_surface(lambda: self.state, self.lr)

    def round(self, server_round: int) -> RoundOutcome:
        s = self.strategy
        plan = ef21.plan_round(self.rng, self.nodes, s.clients_per_round)
        nodes = sorted(plan.nodes)
        parts = [n - 1 for n in nodes]
        seeds = [plan.batch_seed(n) for n in nodes]
        cseeds = [plan.compressor_seed(n) for n in nodes]
        down = self.wire.down(
            server_round,
            plan.nodes,
            {POINT_KEY: "model"},
            {OP_KEY: OP_GRAD, BATCH_SIZE_KEY: s.batch_size, COMPRESSOR_KEY: s.codec.spec},
            lambda n: {
                BATCH_SEED_KEY: plan.batch_seed(n),
                COMPRESSOR_SEED_KEY: plan.compressor_seed(n),
            },
            self.marked(),
        )
        grads, losses, error = self.gradients(parts, seeds, self.batch_size, self.state.x)
        ok = ~error
        vectors = torch.zeros(len(nodes), self.d, dtype=self.payload_dtype, device=self.device)
        okseeds = [c for c, e in zip(cseeds, error.tolist(), strict=True) if not e]
        vectors[ok] = ef21.brcsgd_client_step(grads[ok], compress=self.compress, seeds=okseeds).to(
            self.payload_dtype
        )
        forged, byz = self.forge(vectors, parts, ok)
        if bool(byz.any()):  # the forged vectors travel compressed: the server decodes Q(v)
            byz_seeds = [c for c, b in zip(cseeds, byz.tolist(), strict=True) if b]
            vectors = forged.clone()
            vectors[byz] = self.compress(forged[byz], byz_seeds).to(self.payload_dtype)
        accepted, reasons = self.validate(vectors, error)
        self.state, stats = ef21.brcsgd_server_step(
            self.state, vectors[accepted], self.aggregate, lr=self.lr
        )
        metrics = self.metrics(
            accepted,
            reasons,
            losses.tolist(),
            **{SAMPLED_KEY: len(plan.nodes), SKIPPED_KEY: stats["skipped"]},
        )
        out = _Replies(nodes, parts, vectors, error, losses.tolist(), [PAYLOAD_KEY] * len(nodes))
        return RoundOutcome(self.state.x, metrics, self.up_bytes(out), down)


# --- Byz-EF21-SGDM, Byz-EF21 -------------------------------------------------------------------
class EF21Driver(_MethodDriver):
    """Byz-EF21-SGDM (and Byz-EF21, eta = 1): momentum, EF21 error feedback, the server's
    copies g_i, with ``GradientClient``'s version handshake."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.state = ef21.EF21State(x=self.x0, x0=self.x0.clone())
        n, d, dev = self.n, self.d, self.device
        z = ef21.EF21ClientState.zeros(n, d, self.dtype)
        self.clients = ef21.EF21ClientState(z.v.to(dev), z.g.to(dev), z.started.to(dev))
        self.g_prev = torch.zeros(n, d, dtype=self.dtype, device=dev)
        self.has_g = torch.zeros(n, dtype=torch.bool, device=dev)
        self.has_prev = torch.zeros(n, dtype=torch.bool, device=dev)
        self.count = torch.full((n,), ef21.NO_COUNT, dtype=torch.long, device=dev)
        self.versions = torch.full((n,), -1, dtype=torch.long, device=dev)  # the server's
        self.beta = 1.0 - float(self.strategy.eta)

    def surface(self) -> AttackSurface:
        return ef21.attack_surface(lambda: self.state, self.lr)

    def round(self, server_round: int) -> RoundOutcome:
        s = self.strategy
        plan = ef21.plan_round(self.rng, self.nodes, s.clients_per_round)
        nodes = sorted(plan.nodes)
        parts = [n - 1 for n in nodes]
        seeds = [plan.batch_seed(n) for n in nodes]
        cseeds = [plan.compressor_seed(n) for n in nodes]
        versions = {n: int(self.versions[n - 1]) for n in plan.nodes}
        down = self.wire.down(
            server_round,
            plan.nodes,
            {POINT_KEY: "model"},
            {
                OP_KEY: OP_MOMENTUM,
                BETA_KEY: 1.0 - s.eta,
                BATCH_SIZE_KEY: s.batch_size,
                COMPRESSOR_KEY: s.codec.spec,
            },
            lambda n: {
                BATCH_SEED_KEY: plan.batch_seed(n),
                COMPRESSOR_SEED_KEY: plan.compressor_seed(n),
                EF21_VERSION_KEY: versions[n],
            },
            self.marked(),
        )
        grads, losses, error = self.gradients(parts, seeds, self.batch_size, self.state.x)
        ok = ~error
        dense, vectors = self._clients(parts, grads, ok, cseeds)
        vectors, dense = self._attack(parts, cseeds, vectors, dense, ok)
        accepted, reasons = self._validate(parts, vectors, dense, error)
        accepted = self._admit(server_round, parts, vectors, dense, accepted, reasons)
        applied = [p for p, a in zip(parts, accepted.tolist(), strict=True) if a]
        self.versions[applied] += 1
        self.state, stats = ef21.server_step(
            self.state,
            [p + 1 for p in applied],
            vectors[accepted].to(self.dtype),
            dense[accepted],
            self.aggregate,
            lr=self.lr,
            server_round=server_round,
        )
        metrics = self.metrics(
            accepted,
            reasons,
            losses.tolist(),
            **{
                RESETS_KEY: stats["resets"],
                COPIES_KEY: stats["copies"],
                SAMPLED_KEY: len(plan.nodes),
                SKIPPED_KEY: stats["skipped"],
            },
        )
        kinds = [VECTOR_KEY if d else PAYLOAD_KEY for d in dense.tolist()]
        out = _Replies(nodes, parts, vectors, error, losses.tolist(), kinds)
        return RoundOutcome(self.state.x, metrics, self.up_bytes(out), down)

    def _clients(
        self, parts: list[int], grads: torch.Tensor, ok: torch.Tensor, cseeds: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The clients' steps with ``GradientClient.error_feedback``'s handshake
        (``methods.ef21.handshake``): (which replies are dense resets ``[m]``, the reply
        vectors ``[m, d]``)."""
        rows = self.rows(parts, ok)
        server = self.versions[rows]
        restore, reset = ef21.handshake(
            server, self.count[rows], self.has_g[rows], self.has_prev[rows]
        )
        g = self.clients.g[rows]
        if bool(restore.any()):  # its last reply never reached the server: the previous g
            g = torch.where(restore[:, None], self.g_prev[rows], g)
        normal = ~reset
        state = ef21.EF21ClientState(self.clients.v[rows], g, self.clients.started[rows])
        okseeds = [c for c, o in zip(cseeds, ok.tolist(), strict=True) if o]
        replies, new = ef21.client_step(
            grads[ok], state, beta=self.beta, reset=reset, compress=self.compress, seeds=okseeds
        )
        if bool(normal.any()):  # before g is overwritten (it may be a view of it)
            self.g_prev[rows] = torch.where(normal[:, None], g, self.g_prev[rows])
        self.clients.v[rows] = new.v
        self.clients.g[rows] = new.g
        self.clients.started[rows] = new.started
        self.has_prev[rows] = normal
        self.has_g[rows] = True
        self.count[rows] = server + 1
        if bool(ok.all()):
            dense, vectors = reset, replies
        else:
            dense = torch.zeros(len(parts), dtype=torch.bool, device=self.device)
            dense[ok] = reset
            vectors = torch.zeros(len(parts), self.d, dtype=self.dtype, device=self.device)
            vectors[ok] = replies
        if self.payload_dtype != self.dtype:  # what the server decodes (Natural: float32)
            vectors = torch.where(
                dense[:, None], vectors, vectors.to(self.payload_dtype).to(self.dtype)
            )
        return dense, vectors

    def _offsets(self, parts: Sequence[int]) -> torch.Tensor:
        """The server's copies g_i of ``parts`` (zero where it has none)."""
        return self.state.copies_of([p + 1 for p in parts])

    def _attack(
        self,
        parts: list[int],
        cseeds: list[int],
        vectors: torch.Tensor,
        dense: torch.Tensor,
        ok: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ByzantineGrid on the two kinds of replies, each with its own honest peers: the dense
        resets (aggregated as they are) and the compressed ``c_i`` (aggregated as ``g_i +
        c_i``: forged ``v`` goes back as ``C(v - g_i)``)."""
        if self.setup.vector_attack is None:
            return vectors, dense
        out = vectors.clone()
        resets = ok & dense
        if bool(resets.any()):
            idx = resets.nonzero().reshape(-1)
            rows, _ = self.forge(vectors[idx], [parts[i] for i in idx.tolist()], ok[idx])
            out[idx] = rows
        compressed = ok & ~dense
        if bool(compressed.any()):
            idx = compressed.nonzero().reshape(-1)
            sub = [parts[i] for i in idx.tolist()]
            wire = vectors[idx].to(self.payload_dtype)
            base = -self._offsets(sub).to(self.payload_dtype)
            forged, byz = self.forge(wire - base, sub, ok[idx], vectors=wire)
            if bool(byz.any()):
                values = base[byz] + forged[byz].to(base.dtype)
                byz_seeds = [
                    cseeds[i] for i, b in zip(idx.tolist(), byz.tolist(), strict=True) if b
                ]
                wire = wire.clone()
                wire[byz] = self.compress(values, byz_seeds).to(self.payload_dtype)
                out[idx] = wire.to(self.dtype)
        return out, dense

    def _admit(
        self,
        server_round: int,
        parts: list[int],
        vectors: torch.Tensor,
        dense: torch.Tensor,
        accepted: torch.Tensor,
        reasons: Counter[str],
    ) -> torch.Tensor:
        """``ByzEF21SGDM._admit``: ``accepted`` without the dense resets that
        ``methods.ef21.refuse_resets`` refuses (counted in ``reasons``)."""
        resets = accepted & dense
        if not bool(resets.any()):
            return accepted
        idx = resets.nonzero().reshape(-1)
        s = self.strategy
        too_soon, too_large = ef21.refuse_resets(
            self.state,
            [parts[i] + 1 for i in idx.tolist()],
            vectors[idx],
            server_round=server_round,
            interval=s.reset_interval,
            norm_bound=s.reset_norm_bound,
        )
        for reason, mask in ((ef21.RESET_LIMIT, too_soon), (ef21.RESET_NORM, too_large)):
            if bool(mask.any()):
                reasons[reason] += int(mask.sum())
        accepted = accepted.clone()
        accepted[idx[too_soon | too_large]] = False
        return accepted

    def _validate(
        self, parts: list[int], vectors: torch.Tensor, dense: torch.Tensor, error: torch.Tensor
    ) -> tuple[torch.Tensor, Counter[str]]:
        """ByzEF21SGDM's validation: a compressed ``c_i`` whose sum ``g_i + c_i`` overflows is
        ``malformed``."""
        overflow = torch.zeros_like(dense)
        copies = self.state.copies
        limit = torch.finfo(self.dtype).max
        if copies is not None:  # cheap bound first: |g_i + c_i| <= max |g| + max |c|
            bound = float(copies.abs().amax()) + float(vectors.abs().amax())
            if not bound < limit:
                total = self._offsets(parts) + vectors.to(self.dtype)
                finite = torch.isfinite(vectors).all(dim=1)
                overflow = ~dense & finite & ~torch.isfinite(total).all(dim=1)
        return self.validate(vectors, error, overflow)


# --- Byz-VR-MARINA-PP --------------------------------------------------------------------------
class MarinaDriver(_MethodDriver):
    """Byz-VR-MARINA-PP: full rounds of (full-batch) gradients, difference rounds of compressed
    gradient differences clipped by the server."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.state = marina.MarinaState(x=self.x0, x0=self.x0.clone())
        self.plan: marina.MarinaPlan | None = None

    def surface(self) -> AttackSurface:
        return marina.attack_surface(
            lambda: self.state, lambda: self.plan is None or self.plan.full, self.lr
        )

    def round(self, server_round: int) -> RoundOutcome:
        s = self.strategy
        plan, self.state = marina.plan_round(
            self.rng,
            self.state,
            self.nodes,
            lr=self.lr,
            p=s.p,
            alpha=s.alpha,
            batch_size=s.batch_size,
            clients_per_round=s.clients_per_round,
            full_round_clients=s.full_round_clients,
            full_rounds=s.full_rounds,
        )
        self.plan = plan
        nodes = sorted(plan.nodes)
        parts = [n - 1 for n in nodes]
        seeds = [plan.batch_seed(n) for n in nodes]
        if plan.full:
            down = self.wire.down(
                server_round,
                plan.nodes,
                {POINT_KEY: "model"},
                {OP_KEY: OP_GRAD, BATCH_SIZE_KEY: s.full_batch_size},
                lambda n: {BATCH_SEED_KEY: plan.batch_seed(n)},
                self.marked(),
            )
            return self._full(server_round, plan, nodes, parts, seeds, down)
        down = self.wire.down(
            server_round,
            plan.nodes,
            {POINT_KEY: "model", PREV_KEY: "model"},
            {OP_KEY: OP_GRAD_DIFF, BATCH_SIZE_KEY: s.batch_size, COMPRESSOR_KEY: s.compressor_spec},
            lambda n: {
                BATCH_SEED_KEY: plan.batch_seed(n),
                COMPRESSOR_SEED_KEY: plan.compressor_seed(n),
            },
            self.marked(),
        )
        return self._difference(plan, nodes, parts, seeds, down)

    def _full(
        self,
        server_round: int,
        plan: marina.MarinaPlan,
        nodes: list[int],
        parts: list[int],
        seeds: list[int],
        down: int,
    ) -> RoundOutcome:
        s = self.strategy
        grads, losses, error = self.gradients(parts, seeds, s.full_batch_size, self.state.x)
        ok = ~error
        vectors = torch.where(ok[:, None], grads, 0.0)
        vectors, _ = self.forge(vectors, parts, ok)
        accepted, reasons = self.validate(vectors, error)
        data = self.setup.data
        sizes = [
            float(data.sizes[p])
            for p, a in zip(parts, accepted.tolist(), strict=True)
            if a and data.sizes[p] > 0
        ]
        f = int(getattr(s.aggregator, "f", 0) or 0)
        n_full = marina.f_full(f, len(plan.nodes), s.clients_per_round, s.f_full)
        rule = guarded(with_f(s.aggregator, n_full, exact=True))
        return self._step(
            plan, nodes, parts, vectors, error, losses, accepted, reasons, rule, sizes, down
        )

    def _difference(
        self,
        plan: marina.MarinaPlan,
        nodes: list[int],
        parts: list[int],
        seeds: list[int],
        down: int,
    ) -> RoundOutcome:
        s = self.strategy
        assert self.state.x_prev is not None
        grads, losses, error = self.gradients(parts, seeds, s.batch_size, self.state.x)
        prev, _, _ = self.gradients(parts, seeds, s.batch_size, self.state.x_prev)
        ok = ~error
        cseeds = [plan.compressor_seed(n) for n in nodes]
        okseeds = [c for c, o in zip(cseeds, ok.tolist(), strict=True) if o]
        vectors = torch.zeros(len(nodes), self.d, dtype=self.payload_dtype, device=self.device)
        vectors[ok] = marina.client_step(
            grads[ok], prev[ok], compress=self.compress, seeds=okseeds
        ).to(self.payload_dtype)
        forged, byz = self.forge(vectors, parts, ok)
        if bool(byz.any()):  # the forged vectors travel compressed: the server decodes Q(v)
            byz_seeds = [c for c, b in zip(cseeds, byz.tolist(), strict=True) if b]
            vectors = forged.clone()
            vectors[byz] = self.compress(forged[byz], byz_seeds).to(self.payload_dtype)
        accepted, reasons = self.validate(vectors, error)
        rule = guarded(Mean()) if s.plain_mean_on_diffs else self.aggregate
        return self._step(
            plan, nodes, parts, vectors, error, losses, accepted, reasons, rule, [], down
        )

    def _step(
        self,
        plan: marina.MarinaPlan,
        nodes: list[int],
        parts: list[int],
        vectors: torch.Tensor,
        error: torch.Tensor,
        losses: torch.Tensor,
        accepted: torch.Tensor,
        reasons: Counter[str],
        rule: Aggregate,
        sizes: list[float],
        down: int,
    ) -> RoundOutcome:
        self.state, stats = marina.server_step(
            self.state, plan, vectors[accepted], rule, local_sizes=sizes
        )
        metrics = self.metrics(
            accepted,
            reasons,
            losses.tolist(),
            **{
                "full-round": int(plan.full),
                "clip-level": -1.0 if plan.level is None else plan.level,
                "clipped": stats["clipped"],
                SAMPLED_KEY: len(plan.nodes),
                SKIPPED_KEY: stats["skipped"],
            },
        )
        kind = VECTOR_KEY if plan.full else PAYLOAD_KEY
        out = _Replies(nodes, parts, vectors, error, losses.tolist(), [kind] * len(nodes))
        return RoundOutcome(self.state.x, metrics, self.up_bytes(out), down)


#: method name -> driver class (the others: ``batched.DRIVERS``)
METHOD_DRIVERS: dict[str, Callable[[Setup], Driver]] = {
    "robust-momentum": MomentumDriver,
    "mu2sgd": Mu2Driver,
    "br-csgd": BRCSGDDriver,
    "byz-ef21-sgdm": EF21Driver,
    "byz-ef21": EF21Driver,
    "byz-vr-marina-pp": MarinaDriver,
}
