"""FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020, Alg. 1): a stateful rule that down-weights
clients whose update histories are too similar (sybils pushing one objective)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import chain, check_f, check_input
from .normclip import cosine_matrix
from .preaggregators import Bucketing

__all__ = ["FoolsGold", "History", "foolsgold_weights", "set_client_ids"]


def foolsgold_weights(cos: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """FoolsGold's weights ``alpha`` (``[n]``, in [0, 1]) from the cosine similarities of the
    clients' histories ``cos`` (``[n, n]``), Alg. 1 as the authors' code computes it:

    ``cs = cos - I`` (a client is not its own neighbour); ``v_i = max_j cs_ij``; pardoning
    ``cs_ij <- cs_ij v_i / v_j`` where ``v_j > v_i``; ``alpha_i = clamp(1 - max_j cs_ij, 0,
    1)``, divided by its maximum, 1 -> 0.99, then ``kappa (ln(alpha / (1 - alpha)) + 0.5)``
    clamped to [0, 1]. All zero when every ``alpha_i`` is 0 (all histories identical)."""
    n = cos.shape[0]
    cs = cos - torch.eye(n, dtype=cos.dtype, device=cos.device)
    v = cs.max(dim=1).values  # >= 0: the diagonal is 0
    pardon = v[:, None] < v[None, :]
    cs = torch.where(pardon, cs * (v[:, None] / torch.where(pardon, v[None, :], 1.0)), cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = alpha.max()
    if not top > 0:
        return torch.zeros_like(alpha)
    alpha = alpha / top
    alpha = torch.where(alpha == 1.0, torch.full_like(alpha, 0.99), alpha)
    return (kappa * (torch.log(alpha / (1.0 - alpha)) + 0.5)).clamp(0.0, 1.0)


@dataclass
class History:
    """The clients' summed updates: row ``k`` of ``total`` is the history of client
    ``ids[k]`` (a shared object, so that a shallow copy of the rule shares it)."""

    ids: list[int] = field(default_factory=list)
    total: torch.Tensor | None = None

    def clear(self) -> None:
        self.ids = []
        self.total = None

    def add(self, keys: list[int], x: torch.Tensor) -> torch.Tensor:
        """Add the rows of ``x`` to the histories of ``keys`` (new keys start at zero) and
        return those histories (``[n, d]``, in ``x``'s dtype and device; a view of ``total``
        when the keys are consecutive rows of it, as with row positions)."""
        total = self.total
        if total is not None and total.shape[1] != x.shape[1]:  # another model: start over
            self.clear()
            total = None
        if total is None:  # the first call: the histories are the inputs (one copy)
            self.ids, self.total = list(keys), x.clone()
            return self.total
        total = total.to(device=x.device, dtype=x.dtype)
        where = {k: i for i, k in enumerate(self.ids)}
        new = [k for k in keys if k not in where]
        if new:
            where.update({k: len(self.ids) + i for i, k in enumerate(new)})
            self.ids = self.ids + new
            total = torch.cat([total, x.new_zeros((len(new), x.shape[1]))])
        at = [where[k] for k in keys]
        rows = torch.tensor(at, dtype=torch.long, device=x.device)
        total.index_add_(0, rows, x)  # in place: no [n, d] temporary
        self.total = total
        if at == list(range(at[0], at[0] + len(at))):
            return total[at[0] : at[0] + len(at)]
        return total.index_select(0, rows)


def set_client_ids(agg: object, ids: Sequence[int]) -> None:
    """Tell the rules of ``agg``'s chain that keep state per client (``client_ids``, e.g.
    FoolsGold) which client each input row comes from (``ids[i]`` for row ``i``), for their
    next call only. Stops at Bucketing, whose base sees bucket means, not clients."""
    for part in chain(agg):
        if isinstance(part, Bucketing):
            return
        if hasattr(part, "client_ids"):
            part.client_ids = [int(i) for i in ids]


@dataclass
class FoolsGold:
    """FoolsGold (Fung et al. 2020, Alg. 1, without the optional feature-importance weights).

    Each client's history ``H_i`` is the sum of its updates so far (this call's included);
    the weights ``alpha`` come from the cosine similarities of the histories of this call's
    clients (:func:`foolsgold_weights`, confidence ``kappa``); the output is
    ``sum_i alpha_i x_i / sum_i alpha_i`` over the CURRENT inputs (the zero vector when all
    ``alpha_i`` are 0). The paper applies ``alpha_i`` as per-client learning rates; we
    normalise them, so equal weights give the mean.

    Clients are the row positions unless ``client_ids`` (one id per row) is set before the
    call (:func:`set_client_ids`; ``RobustFedAvg`` sets the replies' node ids), so that under
    partial participation each history stays with its client. ``client_ids`` applies to one
    call. ``reset()`` forgets the histories; they are also forgotten when the input width
    changes. Memory: one ``d``-vector per client ever seen. ``f`` has no effect. Cost: an
    in-place add into the histories, the Gram product of this call's histories (a gathered
    copy of them unless they are consecutive rows, as with row positions) and one GEMV.
    """

    kappa: float = 1.0
    f: int = 0
    client_ids: list[int] | None = field(default=None, init=False, repr=False)
    _history: History = field(default_factory=History, init=False, repr=False)

    requires: ClassVar[str] = "n >= 1"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones: n >= 1."""
        return 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)
        if not (isinstance(self.kappa, (int, float)) and 0 < self.kappa < float("inf")):
            raise ValueError(f"FoolsGold needs a confidence kappa > 0, got {self.kappa!r}")

    def reset(self) -> None:
        """Forget every client's history."""
        self._history.clear()
        self.client_ids = None

    def _keys(self, n: int) -> list[int]:
        ids, self.client_ids = self.client_ids, None
        if ids is None:
            return list(range(n))
        keys = [int(i) for i in ids]
        if len(keys) != n or len(set(keys)) != n:
            raise ValueError(
                f"FoolsGold: client_ids must name each of the {n} input rows once, got "
                f"{len(keys)} ids ({len(set(keys))} distinct); set one id per row, or None "
                "for the row positions"
            )
        return keys

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Update the histories with ``x`` and return the weights ``alpha`` (float64,
        ``[n]``, not normalised)."""
        check_input(x, "FoolsGold")
        keys = self._keys(x.shape[0])
        histories = self._history.add(keys, x)
        return foolsgold_weights(cosine_matrix(histories), self.kappa)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.weights(x)
        total = alpha.sum()
        w = alpha / total if total > 0 else alpha
        return w.to(device=x.device, dtype=x.dtype) @ x
