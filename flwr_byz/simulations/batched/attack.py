"""The server-side adversary of the batched engine: ``ByzantineGrid``'s rewrite of the
Byzantine replies, on the round's stacked ``[m, d]`` reply rows.

The rows are what the server aggregates from the replies (the method's attack surface,
``surface.aggregated``: a FedAvg update ``reply - model sent``, an EF21 copy ``g_i + c_i``, a
gradient), in partition order like the local engine's replies. The Byzantine rows are
replaced by ``attack(honest, own)`` in one call, ``honest`` being the finite rows of the honest
clients that replied; a ``ValueError`` of the attack leaves the replies as they are (logged), as
``ByzantineGrid`` does.
"""

from __future__ import annotations

from logging import WARNING

import torch
from flwr.supercore import log

from ...attacks import Attack
from ...clients.injection import apply_attack

__all__ = ["attack_rows"]


def attack_rows(
    attack: Attack,
    rows: torch.Tensor,
    byzantine: torch.Tensor,
    replied: torch.Tensor | None = None,
    vectors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """``rows`` ``[m, d]`` with the rows of ``byzantine`` ``[m]`` (bool) that ``replied``
    (default: all) forged; returns (new rows, number forged).

    ``vectors``: the reply vectors whose finiteness decides which honest rows the attack sees
    (``Target.vector``; default ``rows``)."""
    replied = torch.ones_like(byzantine) if replied is None else replied
    own = byzantine & replied
    count = int(own.sum())
    if count == 0:
        return rows, 0
    check = rows if vectors is None else vectors
    finite = torch.isfinite(check).all(dim=1)
    honest = rows[~byzantine & replied & finite]
    try:
        forged = apply_attack(attack, honest, rows[own])
    except ValueError as exc:
        log(WARNING, "batched engine: attack %s failed, replies kept: %s", attack, exc)
        return rows, 0
    out = rows.clone()
    out[own] = forged.to(rows.dtype)
    return out, count
