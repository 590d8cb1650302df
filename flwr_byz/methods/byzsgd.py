"""ByzSGD (El-Mhamdi, Guerraoui, Guirguis, Hoang & Rouault, "Genuinely Distributed Byzantine
Machine Learning", PODC 2020 / Distributed Computing 2022, arXiv 1905.03853) as pure torch:
Byzantine workers AND Byzantine parameter servers.

Each step t, with n_ps server replicas (f_ps Byzantine) and n_w workers (f_w Byzantine)::

    scatter  worker: theta~ = coordinate-wise Median of the q_ps = n_ps - f_ps models it pulls
             (the synchronous variant: the first pulled model that passes the Lipschitz and
             Outliers filters); g = grad l(theta~; batch), sent to every server
    server   honest s: G_s = q_w = n_w - f_w of the gradients;  theta_s -= eta MDA_{f_w}(G_s)
    gather   every T steps (DMC): honest s: theta_s = Median of q_ps models, its own included

A step's scheduling (what each worker pulls, the servers' quorums, the gather, the observed
model; every draw from the seeded ``random.Random``) is :func:`plan_step` and
:func:`finish_step`, called by the :class:`~flwr_byz.strategies.ByzSGD` strategy and the batched
engine alike; the workers' side is :func:`worker_step` (``GradientClient``'s op ``byzsgd``). The
filters' constants follow the authors' code (LPD-EPFL/Garfield, ``Garfield_legacy/byzWorker.py``,
read, not copied): T = 1 / (3 l eta), the Lipschitz quantile (n_ps - f_ps) / n_ps, and the
Outliers bound below.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..aggregators import Median
from .common import Aggregate, shift_back_gradient
from .defaults import RunDefaults
from .sampling import draw_seeds
from .surface import IdentitySurface

__all__ = [
    "DEFAULTS",
    "HISTORY",
    "ByzSGDState",
    "ServerAttackFn",
    "Servers",
    "WorkerPlan",
    "WorkerState",
    "arrival_order",
    "arrivals",
    "attack_surface",
    "check_quorums",
    "diameter",
    "draw_quorums",
    "finish_step",
    "gather",
    "gather_period",
    "gather_step",
    "lipschitz_accepts",
    "lipschitz_coefficient",
    "median_models",
    "median_state",
    "observe",
    "observed_model",
    "outlier_bound",
    "plan_step",
    "pulls",
    "round_robin",
    "sent_by",
    "server_step",
    "worker_quorum",
    "worker_step",
]

#: Run defaults of byzsgd (``flwr_byz.methods.defaults``; chosen by
#: ``flwr-byz defaults-sweep``, docs/DEFAULTS.md); ``aggregator`` is the servers' rule over
#: the workers' gradients.
DEFAULTS: dict[str, RunDefaults] = {"byzsgd": RunDefaults(aggregator="mda", lr=1.0, rounds=40)}

HISTORY = 100
"""Past Lipschitz coefficients a worker keeps."""

_median = Median()


def check_quorums(
    n_servers: int, f_servers: int, n_workers: int | None = None, f_workers: int | None = None
) -> None:
    """Raise ``ValueError`` unless n_ps >= 3 f_ps + 2 and n_w >= 3 f_w + 1 (the paper's
    resilience conditions; a single trusted server, f_ps = 0, may stand alone)."""
    if n_servers < 1 or f_servers < 0:
        raise ValueError(f"need n_servers >= 1 and f_servers >= 0, got {n_servers}, {f_servers}")
    if f_servers > 0 and n_servers < 3 * f_servers + 2:
        raise ValueError(
            f"ByzSGD needs n_servers >= 3 f_servers + 2 = {3 * f_servers + 2} to tolerate "
            f"f_servers={f_servers} Byzantine servers, got n_servers={n_servers}"
        )
    if n_workers is not None and f_workers is not None and n_workers < 3 * f_workers + 1:
        raise ValueError(
            f"ByzSGD needs n_workers >= 3 f_workers + 1 = {3 * f_workers + 1} workers per step to "
            f"tolerate f_workers={f_workers} Byzantine workers, got {n_workers}"
        )


def gather_period(lipschitz: float, lr: float) -> int:
    """The paper's gather period T = floor(1 / (3 l eta)) (at least 1)."""
    if not (lipschitz > 0 and lr > 0):
        raise ValueError(f"need lipschitz > 0 and lr > 0, got {lipschitz}, {lr}")
    return max(1, math.floor(1.0 / (3.0 * lipschitz * lr)))


def diameter(models: torch.Tensor) -> float:
    """max_{i,j} ||x_i - x_j|| of ``[m, d]`` models (0 for m < 2), from the differences
    themselves: the Gram form of ``aggregators.base.pairwise_sq_distances`` (and cdist's
    default above 25 rows) cancels for nearly equal models, the honest replicas' usual state."""
    if models.shape[0] < 2:
        return 0.0
    x = models.to(torch.float64)
    return float(torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").max())


def lipschitz_coefficient(
    grad: torch.Tensor, grad_prev: torch.Tensor, model: torch.Tensor, model_prev: torch.Tensor
) -> float:
    """The empirical Lipschitz coefficient ||g_t - g_{t-1}|| / ||theta_t - theta_{t-1}|| (0 when
    the model did not move)."""
    step = float((model - model_prev).norm())
    return 0.0 if step == 0.0 else float((grad - grad_prev).norm()) / step


def lipschitz_accepts(k: float, history: torch.Tensor, n_servers: int, f_servers: int) -> bool:
    """Lipschitz filter: accept when ``k`` is at most the (n_ps - f_ps)/n_ps quantile of the
    past coefficients and ``k`` itself (no history: accept)."""
    if not math.isfinite(k):
        return False
    if history.numel() == 0:
        return True
    past = history.to(torch.float64).reshape(-1)
    values = torch.cat([past, torch.tensor([k], dtype=torch.float64)])
    q = (n_servers - f_servers) / n_servers
    return k <= float(torch.quantile(values, q))


def outlier_bound(
    lr: float, grad_norm: float, period: int, n_workers: int, f_workers: int, since_gather: int
) -> float:
    """Outliers filter: the largest distance a model may have from the worker's own estimate
    theta_prev - eta g_prev, ``eta ||g|| ((3T + 2)(n_w - f_w) / (4 f_w) + 2 s)`` with s the
    steps since the last gather (inf when f_w = 0: no Byzantine worker, no bound needed)."""
    if f_workers <= 0:
        return math.inf
    spread = (3 * period + 2) * (n_workers - f_workers) / (4 * f_workers)
    return lr * grad_norm * (spread + 2 * since_gather)


@dataclass(frozen=True)
class ByzSGDState:
    """The servers: every replica's own model ``replicas`` ``[n_ps, d]`` (the last f_ps are
    Byzantine), the model an observer computes ``x`` (:func:`observed_model`), the start x^0
    and the step t being taken."""

    replicas: torch.Tensor
    x: torch.Tensor
    x0: torch.Tensor
    t: int = 0

    @classmethod
    def start(cls, x0: torch.Tensor, n_servers: int) -> ByzSGDState:
        """Every replica at x^0, before step 1."""
        return cls(x0.unsqueeze(0).repeat(n_servers, 1), x0.clone(), x0.clone(), 0)


def attack_surface(state: Callable[[], ByzSGDState], lr: float) -> IdentitySurface:
    """The workers' gradients are aggregated as they arrive; ShiftBack's vector is the gradient
    ``(mult/lr)(x - x^0)`` at the observed model x."""
    return IdentitySurface(lambda mult: shift_back_gradient(state().x, state().x0, lr, mult))


# --- scheduling ----------------------------------------------------------------------------------
def arrival_order(
    rng: random.Random, n_servers: int, f_servers: int, exclude: int | None = None
) -> tuple[list[int], list[int]]:
    """The order in which the replicas' models reach a recipient: (the Byzantine replicas, the
    last ``f_servers``, in index order: adversarial scheduling puts them first; the honest
    ones, shuffled by ``rng``), without ``exclude``. One ``rng.shuffle`` per call."""
    byz = [s for s in range(n_servers - f_servers, n_servers) if s != exclude]
    honest = [s for s in range(n_servers - f_servers) if s != exclude]
    rng.shuffle(honest)
    return byz, honest


def round_robin(rank: int, step: int, n_servers: int) -> list[int]:
    """A filtering worker's pull order: every server, round-robin from ``(rank + step) mod
    n_ps`` (``rank``: the worker's rank among the step's workers)."""
    return [(rank + step + i) % n_servers for i in range(n_servers)]


def draw_quorums(rng: random.Random, m: int, quorum: int, n_servers: int) -> list[list[int]]:
    """Per server, in server order, the rows of the ``m`` gradients it aggregates: the first
    ``quorum`` to arrive, emulated by ``sorted(rng.sample(range(m), quorum))`` (all rows,
    without a draw, when ``quorum >= m``)."""
    if quorum >= m:
        return [list(range(m)) for _ in range(n_servers)]
    return [sorted(rng.sample(range(m), quorum)) for _ in range(n_servers)]


# --- servers -------------------------------------------------------------------------------------
def server_step(
    replicas: torch.Tensor,
    grads: torch.Tensor,
    quorums: Sequence[Sequence[int]],
    aggregate: Aggregate,
    *,
    lr: float,
) -> tuple[torch.Tensor, int]:
    """Every replica s: ``theta_s = theta_s - eta MDA(G_s)``, ``G_s`` the rows ``quorums[s]``
    of ``grads`` ``[m, d]`` (a replica with no aggregate keeps its model). Returns the new
    replicas ``[n_ps, d]`` and how many replicas skipped their step."""
    out = replicas.clone()
    skipped = 0
    for s, rows in enumerate(quorums):
        agg = aggregate(grads[list(rows)])
        if agg is None:
            skipped += 1
            continue
        out[s] = out[s] - lr * agg
    return out, skipped


def gather(
    replicas: torch.Tensor, n_honest: int, received: Sequence[Sequence[torch.Tensor]]
) -> tuple[torch.Tensor, int]:
    """DMC: every honest replica s takes the coordinate-wise Median of q_ps = ``n_honest``
    models, its own first, then ``received[s]`` in arrival order (non-finite or misshapen
    models are dropped and counted); the Byzantine replicas' internal models become the median
    of the honest new ones. Returns (new replicas, models dropped)."""
    new = replicas.clone()
    dropped = 0
    for s in range(n_honest):
        rows = [replicas[s]]
        for model in received[s]:
            if len(rows) == n_honest:
                break
            if model.shape != replicas[s].shape or not bool(torch.isfinite(model).all()):
                dropped += 1
                continue
            rows.append(model.to(replicas.dtype))
        new[s] = _median(torch.stack(rows))
    honest_new = new[:n_honest]
    for s in range(n_honest, replicas.shape[0]):
        new[s] = _median(honest_new)
    return new, dropped


def observed_model(models: Sequence[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """The model an observer pulling every replica computes: the coordinate-wise Median of the
    finite ``models`` of ``shape``."""
    rows = [m for m in models if m.shape == shape and bool(torch.isfinite(m).all())]
    return _median(torch.stack(rows))


# --- a step, as the strategy runs it --------------------------------------------------------------
# The scheduling of a step, shared by the ``ByzSGD`` strategy and the batched engine: every draw
# from ``rng`` (a ``random.Random``) is made here, in the strategy's order.
ServerAttackFn = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor | None]
"""``attack(own, x0, recipient, step)``: what a Byzantine replica sends (None: nothing;
``flwr_byz.attacks.server``)."""


@dataclass(frozen=True)
class Servers:
    """The replicas: n_ps = ``n_servers``, the last f_ps = ``f_servers`` of them Byzantine
    (they send ``attack(own, x^0, recipient, t)`` instead of their own model)."""

    n_servers: int
    f_servers: int
    attack: ServerAttackFn

    @property
    def n_honest(self) -> int:
        """q_ps = n_ps - f_ps, the honest replicas (indices ``0 .. q_ps - 1``)."""
        return self.n_servers - self.f_servers


def sent_by(
    state: ByzSGDState, servers: Servers, server: int, recipient: int
) -> torch.Tensor | None:
    """What replica ``server`` sends to ``recipient`` at step ``state.t`` (None: nothing)."""
    own = state.replicas[server]
    if server < servers.n_honest:
        return own
    return servers.attack(own, state.x0, recipient, state.t)


def arrivals(
    rng: random.Random,
    state: ByzSGDState,
    servers: Servers,
    recipient: int,
    exclude: int | None = None,
) -> list[tuple[int, torch.Tensor]]:
    """The (server, model) pairs reaching ``recipient`` in arrival order
    (:func:`arrival_order`, one shuffle): the Byzantine replicas' models first (stalled ones
    never arrive; each asked in index order), then the honest ones."""
    byz_order, honest = arrival_order(rng, servers.n_servers, servers.f_servers, exclude)
    byz = [(s, sent_by(state, servers, s, recipient)) for s in byz_order]
    return [(s, m) for s, m in byz if m is not None] + [(s, state.replicas[s]) for s in honest]


def pulls(
    rng: random.Random,
    state: ByzSGDState,
    servers: Servers,
    node: int,
    rank: int,
    *,
    filtering: bool,
) -> list[tuple[int, torch.Tensor]]:
    """The (server, model) pairs worker ``node`` pulls, in pull order: the median set, the
    first q_ps models to arrive (one shuffle); a ``filtering`` worker (no draw): the f_ps + 1
    servers it pulls in turn, :func:`round_robin` from ``(rank + t) mod n_ps``, skipping those
    that send nothing."""
    if not filtering:
        return arrivals(rng, state, servers, node)[: servers.n_honest]
    out: list[tuple[int, torch.Tensor]] = []
    for s in round_robin(rank, state.t, servers.n_servers):
        model = sent_by(state, servers, s, node)
        if model is not None:
            out.append((s, model))
        if len(out) == servers.f_servers + 1:
            break
    return out


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's part of a step: whether it filters (else it takes the median), the
    (server, model) pairs it pulls in pull order, and its minibatch seed."""

    node: int
    filtering: bool
    pulls: tuple[tuple[int, torch.Tensor], ...]
    batch_seed: int


def plan_step(
    rng: random.Random,
    state: ByzSGDState,
    servers: Servers,
    nodes: Sequence[int],
    *,
    fresh: frozenset[int],
    rule: str,
    period: int,
) -> list[WorkerPlan]:
    """The scatter of step ``state.t`` for the sampled ``nodes`` (draw order): per node, in
    that order, it filters when ``rule == "filter"``, the step is no gather step (t mod T != 0)
    and its last reply was applied (in ``fresh``); its :func:`pulls` (rank: its index among
    the sorted ``nodes``); then its minibatch seed (``rng.getrandbits(31)``)."""
    gathering = state.t % period == 0
    rank = {n: i for i, n in enumerate(sorted(nodes))}
    out: list[WorkerPlan] = []
    for node in nodes:
        filtering = rule == "filter" and not gathering and node in fresh
        pulled = pulls(rng, state, servers, node, rank[node], filtering=filtering)
        (seed,) = draw_seeds(rng, 1)
        out.append(WorkerPlan(node, filtering, tuple(pulled), seed))
    return out


def worker_quorum(sampled: int, f_workers: int, fixed: int | None = None) -> int:
    """q_w, the gradients a server waits for: ``fixed``, else n_w - f_w (at least 1) for the
    ``sampled`` workers n_w."""
    return fixed or max(sampled - f_workers, 1)


def gather_step(
    rng: random.Random, state: ByzSGDState, servers: Servers
) -> tuple[ByzSGDState, dict[str, float | int]]:
    """DMC (:func:`gather`): each honest replica s, in order, receives the others' models
    (``arrivals(-(s + 1), exclude=s)``, one shuffle each). Returns the new state and
    ``gather`` 1, ``diameter-before-gather`` (of the honest replicas), ``dropped-models``."""
    q = servers.n_honest
    before = diameter(state.replicas[:q])
    received = [
        [m for _, m in arrivals(rng, state, servers, -(s + 1), exclude=s)] for s in range(q)
    ]
    replicas, dropped = gather(state.replicas, q, received)
    stats = {"gather": 1, "diameter-before-gather": before, "dropped-models": dropped}
    return replace(state, replicas=replicas), stats


def observe(rng: random.Random, state: ByzSGDState, servers: Servers) -> torch.Tensor:
    """The model x an observer (recipient 0) computes from what the replicas present to it
    (:func:`observed_model`; one shuffle)."""
    seen = [m for _, m in arrivals(rng, state, servers, 0)]
    return observed_model(seen, state.replicas[0].shape)


def finish_step(
    rng: random.Random,
    state: ByzSGDState,
    servers: Servers,
    grads: torch.Tensor,
    aggregate: Aggregate,
    *,
    quorum: int,
    period: int,
    lr: float,
) -> tuple[ByzSGDState, dict[str, float | int]]:
    """The servers' side of step ``state.t`` on the accepted gradients ``[m, d]``: each
    replica's quorum of min(m, ``quorum``) rows (:func:`draw_quorums`), its MDA step
    (:func:`server_step`; ``aggregate`` is called once per replica, in order), the gather when
    t mod T = 0 (:func:`gather_step`), then the observed model (:func:`observe`). Stats:
    ``quorum``, ``skipped``, ``gather``, ``period``, the gather's, ``diameter`` (of the honest
    replicas after the step)."""
    grads = grads.to(state.replicas.dtype)
    m = grads.shape[0]
    size = min(m, quorum)
    quorums = draw_quorums(rng, m, size, servers.n_servers)
    replicas, skipped = server_step(state.replicas, grads, quorums, aggregate, lr=lr)
    state = replace(state, replicas=replicas)
    stats: dict[str, float | int] = {
        "quorum": size,
        "skipped": skipped,
        "gather": 0,
        "period": period,
    }
    if state.t % period == 0:
        state, gathered = gather_step(rng, state, servers)
        stats |= gathered
    stats["diameter"] = diameter(state.replicas[: servers.n_honest])
    return replace(state, x=observe(rng, state, servers)), stats


# --- workers -------------------------------------------------------------------------------------
def median_models(models: torch.Tensor) -> torch.Tensor:
    """Each worker's coordinate-wise Median of the models it pulled: ``[q, d] -> [d]`` or, for
    many workers at once, ``[n, q, d] -> [n, d]`` (equal to ``Median()`` per worker)."""
    if models.dim() == 2:
        return _median(models)
    q = models.shape[1]
    if q <= _NETWORK_MAX and not bool(torch.isnan(models).any()):
        s = _sorted_rows(models)  # the same values as torch.sort, without its per-row cost
    else:
        s = list(torch.sort(models, dim=1).values.unbind(1))
    if q % 2:
        return s[q // 2].clone()
    return (s[q // 2 - 1] + s[q // 2]) / 2


#: Up to this many models per worker, :func:`median_models` sorts with a min/max network.
_NETWORK_MAX = 8


def _sorted_rows(models: torch.Tensor) -> list[torch.Tensor]:
    """``models`` ``[n, q, d]`` sorted along ``q``, as ``q`` tensors ``[n, d]``: an odd-even
    transposition network (``q`` passes of element-wise min/max), exact for NaN-free input.
    ``torch.sort`` along a short middle axis costs ~7 ns per value; this is ~q^2 / 2 vector
    ops."""
    rows = list(models.unbind(1))
    q = len(rows)
    for step in range(q):
        for i in range(step % 2, q - 1, 2):
            a, b = rows[i], rows[i + 1]
            rows[i], rows[i + 1] = torch.minimum(a, b), torch.maximum(a, b)
    return rows


@dataclass(frozen=True)
class WorkerState:
    """A worker's memory between steps: its last model, gradient, step, and up to
    :data:`HISTORY` past Lipschitz coefficients (float64)."""

    x: torch.Tensor | None = None
    g: torch.Tensor | None = None
    step: int | None = None
    history: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))

    def continues(self, step: int, d: int) -> bool:
        """Whether this state is from step ``step - 1`` (the filters can run)."""
        return (
            self.x is not None
            and self.g is not None
            and self.step == step - 1
            and self.x.shape == (d,)
        )


Gradient = Callable[[torch.Tensor, int | None], tuple[torch.Tensor, float]]
"""``gradient(model, index) -> (minibatch gradient, loss)`` at ``model`` (``index``: which
pulled model it is, None for their median)."""


def worker_step(
    models: Sequence[torch.Tensor],
    gradient: Gradient,
    state: WorkerState,
    *,
    rule: str,
    step: int,
    lr: float,
    period: int,
    n_servers: int,
    f_servers: int,
    n_workers: int,
    f_workers: int,
) -> tuple[torch.Tensor, float, WorkerState, dict[str, int]]:
    """One worker's ByzSGD step on its pulled (valid) ``models`` (pull order): ``"median"``:
    the gradient at their coordinate-wise median; ``"filter"`` (needs ``state.continues``):
    the first model passing the Lipschitz and Outliers filters, else the fallback (the one
    passing Outliers with the smallest coefficient, else the closest to the estimate
    ``theta_prev - eta g_prev``). Returns (gradient, loss, new state, counts: ``rejected``
    models, ``fallback`` 1 when none passed both filters)."""
    counts = {"rejected": 0, "fallback": 0}
    continuing = state.continues(step, int(models[0].numel()))
    history = state.history
    if rule == "filter":
        if not continuing:
            raise ValueError(
                "ByzSGD worker: a filter step needs this worker's state from step "
                f"{step - 1}; the server sends the median set next time"
            )
        assert state.x is not None and state.g is not None
        since = (step - 1) % period
        estimate = state.x - lr * state.g
        tried: list[tuple[torch.Tensor, torch.Tensor, float, float, float, float]] = []
        chosen = None
        for i, vec in enumerate(models):
            grad, loss = gradient(vec, i)
            k = lipschitz_coefficient(grad, state.g, vec, state.x)
            distance = float((vec - estimate).norm())
            bound = outlier_bound(lr, float(grad.norm()), period, n_workers, f_workers, since)
            tried.append((vec, grad, loss, k, distance, bound))
            if distance <= bound and lipschitz_accepts(k, history, n_servers, f_servers):
                chosen = tried[-1]
                counts["rejected"] = len(tried) - 1
                break
        if chosen is None:
            counts["rejected"] = len(tried)
            counts["fallback"] = 1
            chosen = min(tried, key=lambda c: (0, c[3]) if c[4] <= c[5] else (1, c[4]))
        model, grad, loss, coefficient = chosen[:4]
        return grad, loss, _after_step(state, model, grad, step, coefficient), counts
    if rule == "median":
        model = median_models(torch.stack(list(models)))
        grad, loss = gradient(model, None)
        return grad, loss, median_state(state, model, grad, step), counts
    raise ValueError(f"ByzSGD worker: unknown byzsgd-rule {rule!r} (median or filter)")


def median_state(
    state: WorkerState, model: torch.Tensor, grad: torch.Tensor, step: int
) -> WorkerState:
    """A worker's state after a median step at ``model`` with gradient ``grad``: a worker
    continuing from step - 1 records its Lipschitz coefficient in its history."""
    k = None
    if state.continues(step, int(model.numel())):
        assert state.x is not None and state.g is not None
        k = lipschitz_coefficient(grad, state.g, model, state.x)
    return _after_step(state, model, grad, step, k)


def _after_step(
    state: WorkerState, model: torch.Tensor, grad: torch.Tensor, step: int, k: float | None
) -> WorkerState:
    """The state after a step at ``model`` (``k``: the coefficient to record, if any)."""
    history = state.history
    if k is not None:
        history = torch.cat([history.to(torch.float64), torch.tensor([k], dtype=torch.float64)])
    return WorkerState(model, grad, step, history[-HISTORY:])
