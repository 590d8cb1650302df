"""FLTrust's aggregation rule (Cao, Fang, Liu & Gong, NDSS 2021, "FLTrust: Byzantine-robust
Federated Learning via Trust Bootstrapping", Alg. 1 and Eq. (2)-(4)): the server's own update
``g_0`` on a small clean root data set bootstraps the trust in the clients' updates.

Pure torch, ``[n, d]`` updates and a ``[d]`` reference in, ``[d]`` out; the Flower strategy
is ``flwr_byz.strategies.FLTrust`` (docs/ALGORITHMS.md, FLTrust).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import check_f, check_input

__all__ = ["FLTrustRule", "fltrust", "fltrust_with_scores", "trust_scores"]


def _check(updates: torch.Tensor, reference: torch.Tensor) -> None:
    check_input(updates, "FLTrust")
    if not isinstance(reference, torch.Tensor) or reference.shape != updates.shape[1:]:
        shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else reference
        raise ValueError(
            f"FLTrust: the reference (the server's update g_0) must be a [d] = "
            f"[{updates.shape[1]}] tensor like each update row, got {shape}"
        )
    if not bool(torch.isfinite(reference).all()):
        raise ValueError(
            "FLTrust: the reference (the server's update g_0) holds NaN/Inf: check the "
            "server's training on the root data set (its learning rate)"
        )


def _scores(
    updates: torch.Tensor, reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(TS [n], ||g_i|| [n], ||g_0||)``; a zero-norm g_i or g_0 has cosine 0 (TS 0)."""
    ref = reference.to(device=updates.device, dtype=updates.dtype)
    tiny = torch.finfo(updates.dtype).tiny
    norms = torch.linalg.vector_norm(updates, dim=1)
    ref_norm = torch.linalg.vector_norm(ref)
    unit = ref / ref_norm.clamp_min(tiny)  # <g_i, g_0/||g_0||> <= ||g_i||: no overflow
    cos = (updates @ unit) / norms.clamp_min(tiny)
    cos = torch.where((norms > 0) & (ref_norm > 0), cos, torch.zeros_like(cos))
    return cos.clamp(-1.0, 1.0).relu(), norms, ref_norm


def trust_scores(updates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``TS_i = ReLU(cos(g_i, g_0))`` (Eq. 2) of every row ``g_i`` of ``updates`` ``[n, d]``
    against the server's update ``reference`` ``[d]``; 0 for a zero-norm ``g_i`` or ``g_0``."""
    _check(updates, reference)
    return _scores(updates, reference)[0]


def fltrust_with_scores(
    updates: torch.Tensor, reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, TS)``: FLTrust's aggregate ``g`` ``[d]`` and the trust scores ``TS`` ``[n]``.

    ``g = sum_i TS_i gbar_i / sum_j TS_j`` (Eq. 4) with ``gbar_i = (||g_0|| / ||g_i||) g_i``
    (Eq. 3: every update rescaled to the reference's norm) and ``TS_i = ReLU(cos(g_i, g_0))``
    (Eq. 2). When every score is 0 (no update points the reference's way, or ``g_0 = 0``) the
    aggregate is the zero update. One pass for the norms and dot products, one weighted row
    sum: ``gbar_i`` is never materialised. ``ValueError`` for a non-finite or misshapen input.
    """
    _check(updates, reference)
    scores, norms, ref_norm = _scores(updates, reference)
    total = scores.sum()
    if not bool(total > 0):
        return torch.zeros_like(updates[0]), scores
    tiny = torch.finfo(norms.dtype).tiny  # TS_i > 0 only where ||g_i|| > 0
    weights = torch.where(scores > 0, scores / norms.clamp_min(tiny), 0.0) * ref_norm
    return (weights @ updates) / total, scores


def fltrust(updates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """FLTrust's aggregate of ``updates`` ``[n, d]`` given the server's update ``reference``
    ``[d]`` (Eq. 2-4; :func:`fltrust_with_scores`)."""
    return fltrust_with_scores(updates, reference)[0]


@dataclass
class FLTrustRule:
    """FLTrust as the rule object a strategy holds (``strategy.aggregator``): ``rule(updates,
    reference)`` is :func:`fltrust`. It takes no Byzantine count (``f`` stays 0: the trust
    comes from the reference, not from a majority) and runs on any n >= 1. Unlike an
    ``Aggregator`` it needs the reference as well (``needs_reference``)."""

    f: int = 0

    requires: ClassVar[str] = "n >= 1"
    #: Called as ``rule(updates, reference)``, not as an ``[n, d] -> [d]`` Aggregator.
    needs_reference: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if check_f(self.f) != 0:
            raise ValueError(
                f"FLTrust takes no Byzantine count (f must be 0, got {self.f}): its trust "
                "scores come from the server's root data set"
            )

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs: 1 (any f)."""
        return 1

    def __call__(self, updates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return fltrust(updates, reference)
