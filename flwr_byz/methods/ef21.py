"""Byz-EF21-SGDM (Liu, Li, Yi & Johansson 2024, "Byzantine-robust and communication-efficient
distributed learning via compressed momentum filtering", arXiv 2409.08640, Alg. 1) and its
baselines Byz-EF21 (eta = 1) and BR-CSGD.

Byz-EF21-SGDM, per round t::

    server:         x^{t+1} = x^t - gamma RAgg({g_i})       the server's copies, never the c_i
    good client i:  s_i = grad f_i(x^t; xi_i)                any batch size, even 1
                    v_i = (1 - eta) v_i + eta s_i            Polyak momentum (v_i^0 = s_i)
                    c_i = C(v_i - g_i);  g_i = g_i + c_i     C biased (TopK); sends c_i only
    server:         g_i = g_i + c_i   for every accepted reply

Initialisation ``v_i = g_i = s_i``, sent dense once (a client's first reply: a *reset*). The
momentum is computed as ``beta v + (1 - beta) s`` with ``beta = 1 - eta``, the number the
clients receive. Clients that are not sampled, or whose reply is lost, keep a stale copy in the
aggregate. BR-CSGD: ``x^{t+1} = x^t - gamma RAgg({C(s_i)})``, no momentum, no error feedback.

Checked against the paper (abstract, arXiv 2409.08640) and its authors' code (read, not copied:
Lee418268753/Byzantine, ``TopMomentumWorker`` and ``TorchServer.update_gradient``).
What this module follows, and the differences:

- The update box, the dense initialisation ``v = g = s`` and "aggregate the reconstructed g_i"
  follow the paper's algorithm box; the code's momentum ``v = beta v + (1 - beta) s`` is ours
  with ``eta = 1 - beta``. Its defaults: beta = 0.9 (eta = 0.1) for images and 0.99 for a9a,
  TopK with ratio 0.1 (Top-1 for a9a), step sizes tuned over {0.5, 0.05, 0.005}, n = 20 with
  f = 9 Byzantine, NNM + {GeoMed (RFA), CWMed, CWTM}, attacks SF, LF, IPM, ALIE, batch 1 (a9a)
  and 64 (CIFAR-10). The paper's own text beyond the abstract could not be reached here.
- The authors' simulation hands every honest g_i to the server directly and gives each
  Byzantine worker the last honest g_i plus its message; here every g_i, Byzantine ones too,
  is the server's copy built from the bytes received.
- Participation and failures (the paper assumes every client replies every round): a client
  that is not sampled, or whose reply is lost or rejected, keeps its stale copy in the
  aggregate; a version handshake (``ef21-version``, see ``GradientClient.error_feedback``)
  keeps the client's g_i equal to the server's copy, so a lost reply never makes them drift.
- Byz-EF21 is eta = 1 with the same stochastic gradients (the authors' code uses full local
  gradients for it). BR-CSGD: ``x^{t+1} = x^t - gamma RAgg({C(s_i)})``, no error feedback.
- Dense resets are bounded (ours; the paper has no resets after the first round): a node
  whose reset sets its copy in one round would otherwise skip the ``d/K`` rounds its
  compressed messages take. :func:`refuse_resets` refuses a reset within ``interval`` rounds
  of the node's last accepted one (``reset-limit``; first contact is always taken), or one
  whose norm exceeds ``norm_bound`` times the median norm of the copies the server would hold
  (``reset-norm``). A refused reset is not clipped (the client's g would then differ from the
  copy for good): the server keeps its copy and version, and the handshake makes the client
  send its reset again the next time it is sampled.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .common import Aggregate, momentum_rows, sgd_step, shift_back_gradient
from .defaults import RunDefaults
from .sampling import RoundPlan
from .sampling import plan_round as _plan_round
from .surface import IdentitySurface, OffsetSurface

__all__ = [
    "DEFAULTS",
    "DEFAULT_RESET_INTERVAL",
    "DEFAULT_RESET_NORM_BOUND",
    "NO_COUNT",
    "NO_ROUND",
    "RESET_LIMIT",
    "RESET_NORM",
    "BRCSGDState",
    "Compress",
    "EF21ClientState",
    "EF21State",
    "attack_surface",
    "brcsgd_attack_surface",
    "brcsgd_client_step",
    "brcsgd_server_step",
    "client_step",
    "handshake",
    "plan_round",
    "refuse_resets",
    "reset_norm_ratios",
    "server_step",
]

#: Run defaults of the three compressed methods of this module
#: (``flwr_byz.methods.defaults``; chosen by ``flwr-byz defaults-sweep``, docs/DEFAULTS.md);
#: byz-ef21-sgdm's ``momentum`` is ``1 - eta``.
DEFAULTS: dict[str, RunDefaults] = {
    "byz-ef21-sgdm": RunDefaults(
        aggregator="nnm+cwtm", lr=2.0, momentum=0.5, compressor="topk:0.1", rounds=40
    ),
    "byz-ef21": RunDefaults(aggregator="nnm+cwtm", lr=1.0, compressor="topk:0.1", rounds=40),
    "br-csgd": RunDefaults(aggregator="nnm+cwtm", lr=1.0, compressor="topk:0.1", rounds=40),
}

Compress = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]
"""``compress(rows [n, d], seeds) -> [n, d]`` dense ``C(row_i)`` with ``seeds[i]``
(``functools.partial(flwr_byz.compressors.rows.compress_rows, C)``)."""


def plan_round(rng: random.Random, nodes: Sequence[int], k: int | None) -> RoundPlan:
    """The sample, one minibatch seed per sampled node, then one compressor seed per sampled
    node (Byz-EF21-SGDM, Byz-EF21 and BR-CSGD alike)."""
    return _plan_round(rng, nodes, k, compressor_seeds=True)


# --- client ------------------------------------------------------------------------------------
NO_COUNT = -1
"""The ``count`` of a client that has never replied (any negative count behaves alike)."""


def handshake(
    server: torch.Tensor, count: torch.Tensor, has_g: torch.Tensor, has_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The version handshake that keeps a client's g_i equal to the server's copy when a reply
    is lost or rejected (``GradientClient.error_feedback``), row-wise over ``[n]`` tensors:
    ``server`` the version the server sends (-1: it has no copy), ``count`` the client's
    (``server + 1`` stored at its last step; :data:`NO_COUNT`: none), ``has_g`` / ``has_prev``
    whether it holds a usable g / g before its last step.

    Returns (``restore``, ``reset``) ``[n]`` bool: a client one ahead (``count = server + 1``,
    its last reply never reached the server) steps from its previous g (``restore``); equal
    counts step from g; anything else (first contact, lost state, no usable g) is a ``reset``,
    ``g = v`` sent dense (Alg. 1's initialisation). ``restore`` is False on reset rows. After
    the step the client stores ``count = server + 1``, its g, and the g it stepped from as the
    previous g on the non-reset rows (none on reset rows)."""
    live = server >= 0  # counts are >= 0 here: a negative count matches nothing
    ahead = live & (count == server + 1)
    usable = torch.where(ahead, has_prev, has_g & (count == server))
    reset = ~(live & usable)
    return ahead & ~reset, reset


@dataclass(frozen=True)
class EF21ClientState:
    """Clients' momenta ``v`` ``[n, d]`` (``started``: row i has a momentum) and their copies
    ``g`` ``[n, d]`` of what the server holds."""

    v: torch.Tensor
    g: torch.Tensor
    started: torch.Tensor

    @classmethod
    def zeros(cls, n: int, d: int, dtype: torch.dtype = torch.float32) -> EF21ClientState:
        """No client has stepped yet."""
        z = torch.zeros(n, d, dtype=dtype)
        return cls(z, z.clone(), torch.zeros(n, dtype=torch.bool))


def client_step(
    grads: torch.Tensor,
    state: EF21ClientState,
    *,
    beta: float,
    reset: torch.Tensor,
    compress: Compress,
    seeds: Sequence[int],
) -> tuple[torch.Tensor, EF21ClientState]:
    """Alg. 1's client: ``v_i = beta v_i + (1 - beta) s_i`` (``s_i`` on its first step), then
    for the rows with ``reset`` (``[n]`` bool: the server has no copy) ``g_i = v_i`` and the
    reply is ``v_i`` (dense); for the others ``c_i = C(v_i - g_i)``, ``g_i = g_i + c_i`` and
    the reply is ``c_i`` (``compress`` sees only those rows, with their ``seeds``)."""
    v = momentum_rows(state.v, grads, state.started, beta)
    started = torch.ones_like(state.started)
    if bool(reset.all()):
        return v, EF21ClientState(v, v, started)
    if not bool(reset.any()):  # every row steps (no gather/scatter): the same numbers
        c = compress(v - state.g, list(seeds))
        return c.to(v.dtype), EF21ClientState(v, state.g + c.to(state.g.dtype), started)
    rows = (~reset).nonzero().reshape(-1)
    c = compress(v[rows] - state.g[rows], [seeds[int(i)] for i in rows])
    g = state.g.clone()
    g[rows] = state.g[rows] + c.to(g.dtype)
    g[reset] = v[reset]
    replies = v.clone()
    replies[rows] = c.to(v.dtype)
    return replies, EF21ClientState(v, g, started)


# --- server ------------------------------------------------------------------------------------
NO_ROUND = -(2**62)
"""``last_reset`` of a node with no accepted reset."""

DEFAULT_RESET_INTERVAL = 10
"""At most one dense reset per node per this many rounds (first contact is always taken): with
TopK(0.1) the compressed messages need ``d/K = 10`` rounds to set a whole copy too."""

DEFAULT_RESET_NORM_BOUND = 100.0
"""A dense reset's norm may be at most this many times the median norm of the copies (an
honest reset is a fresh momentum, a few times the norm of the averaged ones)."""

RESET_LIMIT = "reset-limit"
"""Rejection reason: a dense reset within ``interval`` rounds of the node's last one."""

RESET_NORM = "reset-norm"
"""Rejection reason: a dense reset whose norm exceeds the bound."""


@dataclass(frozen=True)
class EF21State:
    """Server: the model x^t, the start x^0 and a copy ``g_i`` per known node: ``copies``
    ``[N, d]`` and ``known`` ``[N]`` bool over ``node_ids`` (sorted; the aggregate stacks the
    known copies in that order); ``last_reset`` ``[N]`` long: the round of each node's last
    accepted dense reset (:data:`NO_ROUND`: none)."""

    x: torch.Tensor
    x0: torch.Tensor
    node_ids: tuple[int, ...] = ()
    copies: torch.Tensor | None = None
    known: torch.Tensor | None = None
    last_reset: torch.Tensor | None = None

    def with_nodes(self, nodes: Sequence[int]) -> EF21State:
        """The state with a slot (no copy yet) for each of ``nodes`` it lacks."""
        new = sorted(set(int(n) for n in nodes) - set(self.node_ids))
        if not new:
            return self
        ids = sorted(self.node_ids + tuple(new))
        d = self.x.numel()
        dev = self.x.device
        copies = torch.zeros(len(ids), d, dtype=self.x.dtype, device=dev)
        known = torch.zeros(len(ids), dtype=torch.bool, device=dev)
        last = torch.full((len(ids),), NO_ROUND, dtype=torch.long, device=dev)
        if self.copies is not None and self.known is not None:
            old = torch.tensor([ids.index(n) for n in self.node_ids], dtype=torch.long)
            copies[old] = self.copies
            known[old] = self.known
            if self.last_reset is not None:
                last[old] = self.last_reset.to(dev)
        return replace(self, node_ids=tuple(ids), copies=copies, known=known, last_reset=last)

    def row(self, node: int) -> int | None:
        """The slot of ``node`` (None: none)."""
        i = bisect.bisect_left(self.node_ids, int(node))
        return i if i < len(self.node_ids) and self.node_ids[i] == int(node) else None

    def copy_of(self, node: int) -> torch.Tensor | None:
        """The server's copy g_i of ``node`` (None: it has none)."""
        i = self.row(node)
        if i is None or self.known is None or self.copies is None or not bool(self.known[i]):
            return None
        return self.copies[i]

    def copies_of(self, nodes: Sequence[int]) -> torch.Tensor:
        """``[m, d]``: the server's copies g_i of ``nodes``, row by row (zero where it has
        none; :meth:`copy_of` for many nodes at once)."""
        x = self.x
        out = torch.zeros(len(nodes), x.numel(), dtype=x.dtype, device=x.device)
        if self.copies is None or self.known is None or not len(nodes) or not self.node_ids:
            return out
        ids = torch.tensor(self.node_ids, dtype=torch.long, device=x.device)
        want = torch.tensor([int(n) for n in nodes], dtype=torch.long, device=x.device)
        at = torch.searchsorted(ids, want).clamp(max=len(self.node_ids) - 1)
        has = (ids[at] == want) & self.known[at]
        return torch.where(has[:, None], self.copies[at], out)

    @property
    def num_copies(self) -> int:
        """How many nodes the server holds a copy of."""
        return 0 if self.known is None else int(self.known.sum())

    def rows_of(self, nodes: Sequence[int]) -> torch.Tensor:
        """``[m]`` long: the slots of ``nodes`` (-1 where a node has none)."""
        rows = [self.row(n) for n in nodes]
        return torch.tensor([-1 if r is None else r for r in rows], dtype=torch.long)


def refuse_resets(
    state: EF21State,
    nodes: Sequence[int],
    resets: torch.Tensor,
    *,
    server_round: int,
    interval: int = DEFAULT_RESET_INTERVAL,
    norm_bound: float = DEFAULT_RESET_NORM_BOUND,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of the dense resets ``resets`` ``[m, d]`` of ``nodes`` (distinct, finite) the
    server refuses in round ``server_round``: (``too_soon`` ``[m]``, ``too_large`` ``[m]``),
    disjoint bool masks (module doc).

    ``too_soon`` (:data:`RESET_LIMIT`): the node's last accepted reset was fewer than
    ``interval`` rounds ago (``interval <= 0``: no limit; a node with no accepted reset, first
    contact, is never too soon). ``too_large`` (:data:`RESET_NORM`), among the others: the
    reset's norm exceeds ``norm_bound`` times the median norm of the copies the server would
    hold after taking them (the known copies of the other nodes and the resets not too soon;
    ``norm_bound <= 0`` or infinite: no bound; a zero median bounds nothing)."""
    m = len(nodes)
    none = torch.zeros(m, dtype=torch.bool, device=resets.device)
    if m == 0:
        return none, none.clone()
    too_soon = none.clone()
    rows = state.rows_of(nodes).to(resets.device)
    if interval > 0 and state.last_reset is not None:
        last = torch.where(
            rows >= 0, state.last_reset.to(resets.device)[rows.clamp(min=0)], NO_ROUND
        )
        too_soon = (server_round - last) < interval
    if not (0 < norm_bound < math.inf):
        return too_soon, none
    ratios = reset_norm_ratios(state, nodes, resets, taken=~too_soon)
    return too_soon, ~too_soon & (ratios > norm_bound)


def reset_norm_ratios(
    state: EF21State, nodes: Sequence[int], resets: torch.Tensor, taken: torch.Tensor
) -> torch.Tensor:
    """``[m]``: each reset's norm over the median norm of the copies the server would hold
    after taking the resets of ``taken`` ``[m]`` bool (the known copies of the nodes not taken
    and those resets); 0 where that median is 0 or there is no copy at all
    (:func:`refuse_resets` refuses a ratio above its ``norm_bound``)."""
    norms = torch.linalg.vector_norm(resets, dim=1)
    pool = [norms[taken]]
    if state.copies is not None and state.known is not None:
        rows = state.rows_of(nodes).to(taken.device)
        others = state.known.clone()
        others[rows[(rows >= 0) & taken].to(others.device)] = False
        if bool(others.any()):
            kept = torch.linalg.vector_norm(state.copies, dim=1)[others]
            pool.append(kept.to(norms.device, norms.dtype))
    ref = torch.cat(pool)
    median = ref.median() if ref.numel() else norms.new_zeros(())
    if not bool(median > 0):
        return torch.zeros_like(norms)
    return norms / median


def server_step(
    state: EF21State,
    nodes: Sequence[int],
    replies: torch.Tensor,
    reset: torch.Tensor,
    aggregate: Aggregate,
    *,
    lr: float,
    server_round: int | None = None,
) -> tuple[EF21State, dict[str, Any]]:
    """The server's copies from the accepted replies ``[m, d]`` of ``nodes``: ``g_i = reply``
    where ``reset`` (a dense reset), ``g_i = g_i + c_i`` elsewhere; then ``x^{t+1} = x^t -
    gamma RAgg({g_i})`` over every known copy (stale ones too). On no aggregate x is kept.
    ``server_round``: recorded as the ``last_reset`` of the reset rows (None: not recorded).
    Stats: ``resets``, ``copies``, ``skipped``."""
    state = state.with_nodes(nodes)
    if state.copies is None or state.known is None:  # no node has ever replied
        return state, {"resets": 0, "copies": 0, "skipped": 1}
    copies, known = state.copies, state.known
    vecs = replies.to(state.x.dtype)
    if list(nodes) == list(state.node_ids) and bool(known.all()) and not bool(reset.any()):
        copies = copies + vecs  # every node replied a c_i: no gather, scatter or where
    elif len(nodes):
        copies, known = copies.clone(), known.clone()
        rows = torch.tensor([state.row(n) for n in nodes], dtype=torch.long)
        if bool((~known[rows] & ~reset).any()):
            raise ValueError("a compressed reply from a node the server has no copy of")
        copies[rows] = torch.where(reset[:, None], vecs, copies[rows] + vecs)
        known[rows] = True
        if server_round is not None and state.last_reset is not None and bool(reset.any()):
            last = state.last_reset.clone()
            last[rows[reset.to(rows.device)]] = int(server_round)
            state = replace(state, last_reset=last)
    state = replace(state, copies=copies, known=known)
    every = bool(known.all())
    agg = aggregate(copies if every else copies[known]) if every or bool(known.any()) else None
    if agg is not None:
        state = replace(state, x=sgd_step(state.x, agg, lr))
    stats = {"resets": int(reset.sum()), "copies": int(known.sum()), "skipped": int(agg is None)}
    return state, stats


def attack_surface(state: Callable[[], EF21State], lr: float) -> OffsetSurface:
    """The server aggregates ``g_i + c_i`` for a compressed ``c_i``: the attack forges that sum
    and the wire carries ``forged - g_i``; a dense reply is a reset (``g_i = reply``, also when
    the server holds a copy), so it is aggregated as it is, as is a reply of a node with no copy.
    ShiftBack's vector is the gradient ``(mult/lr)(x^t - x^0)``."""
    return OffsetSurface(
        offset=lambda node: state().copy_of(node),
        target=lambda mult: shift_back_gradient(state().x, state().x0, lr, mult),
        compressed_only=True,
    )


# --- BR-CSGD -------------------------------------------------------------------------------------
def brcsgd_client_step(
    grads: torch.Tensor, *, compress: Compress, seeds: Sequence[int]
) -> torch.Tensor:
    """BR-CSGD's client: the reply ``C(s_i)`` of its minibatch gradient."""
    return compress(grads, seeds)


@dataclass(frozen=True)
class BRCSGDState:
    """BR-CSGD's server: the model x^t and the start x^0."""

    x: torch.Tensor
    x0: torch.Tensor


def brcsgd_server_step(
    state: BRCSGDState, replies: torch.Tensor, aggregate: Aggregate, *, lr: float
) -> tuple[BRCSGDState, dict[str, Any]]:
    """BR-CSGD's server: ``x^{t+1} = x^t - gamma RAgg({C(s_i)})`` (x kept on no aggregate).
    Stats: ``skipped``."""
    agg = aggregate(replies)
    if agg is not None:
        state = replace(state, x=sgd_step(state.x, agg, lr))
    return state, {"skipped": int(agg is None)}


def brcsgd_attack_surface(state: Callable[[], BRCSGDState], lr: float) -> IdentitySurface:
    """BR-CSGD aggregates the decoded ``C(s_i)`` themselves; ShiftBack: ``(mult/lr)(x - x^0)``."""
    return IdentitySurface(lambda mult: shift_back_gradient(state().x, state().x0, lr, mult))
