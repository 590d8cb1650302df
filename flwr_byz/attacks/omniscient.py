"""Omniscient attacks: the Byzantine nodes read the round's honest vectors ``[h, d]`` (h >= 1)
and all send a vector built from them. ``mu``, ``sigma``: coordinate-wise mean and std of
``honest`` (``honest_stats``). docs/ALGORITHMS.md, Attacks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import ClassVar

import torch

from ..aggregators.base import gram, pairwise_sq_distances
from .base import broadcast_rows, check_attack_input, honest_stats

__all__ = ["ALIE", "IPM", "Mimic", "MinMax", "MinSum", "alie_z"]


@dataclass
class IPM:
    """Inner product manipulation: every Byzantine vector is ``-eps * mu`` (Xie et al. 2020,
    Sec. 3; "empire"). With ``eps < 1`` the mean of all n vectors keeps a positive inner
    product with ``mu`` only while ``b eps < h``."""

    eps: float = 0.1
    omniscient: ClassVar[bool] = True

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, "IPM", self.omniscient)
        return broadcast_rows(honest.mean(dim=0) * (-float(self.eps)), own)


def alie_z(n: int, b: int) -> float:
    """ALIE's default ``z = Phi^{-1}((n - s) / n)``, ``s = floor(n/2 + 1) - b`` (Baruch et al.
    2019, Alg. 3): ``s`` honest nodes must look farther from ``mu`` than the Byzantine vector.

    The probability is clamped into ``[1/(2n), 1 - 1/(2n)]``, half a node from 0 and 1: for
    ``b >= floor(n/2 + 1)`` (a Byzantine majority, ``s <= 0``) the formula gives ``p >= 1``,
    ``z = +inf``; for ``b = 0`` and ``n <= 2`` it gives ``p = 0``, ``z = -inf``. Inside the
    clamp (every case with ``1 <= s <= n - 1``) the paper's value is unchanged.
    """
    if isinstance(n, bool) or isinstance(b, bool) or n < 1 or not 0 <= b <= n:
        raise ValueError(f"alie_z needs n >= 1 and 0 <= b <= n, got n={n!r}, b={b!r}")
    s = math.floor(n / 2 + 1) - b
    p = min(max((n - s) / n, 0.5 / n), 1.0 - 0.5 / n)
    return NormalDist().inv_cdf(p)


@dataclass
class ALIE:
    """A little is enough: every Byzantine vector is ``mu - z * sigma`` (Baruch et al. 2019,
    Alg. 3); ``z = None`` takes ``alie_z(h + b, b)``."""

    z: float | None = None
    omniscient: ClassVar[bool] = True

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, "ALIE", self.omniscient)
        h, b = honest.shape[0], own.shape[0]
        z = alie_z(h + b, b) if self.z is None else float(self.z)
        mu, sigma = honest_stats(honest)
        return broadcast_rows(mu - z * sigma, own)


_PERTURBATIONS = ("std", "unit", "sign")


def _perturbation(kind: str, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Shejwalkar & Houmansadr's perturbation ``p``: ``-sigma/||sigma||``, ``-mu/||mu||`` or
    ``-sign(mu)``; the zero vector where that norm is 0."""
    if kind == "sign":
        return -torch.sign(mu)
    v = sigma if kind == "std" else mu
    norm = torch.linalg.vector_norm(v)
    return -v / norm if bool(norm > 0) else torch.zeros_like(v)


def _largest_gamma(a: torch.Tensor, bb: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The largest ``gamma >= 0`` with ``a gamma^2 + 2 bb_i gamma + c_i <= 0`` for every i
    (``a > 0``, ``c_i <= 0`` so that ``gamma = 0`` is feasible, up to rounding: ``c`` is
    clamped at 0). Each constraint holds on ``[r_i^-, r_i^+]`` with ``r_i^- <= 0 <= r_i^+``;
    the answer is ``min_i r_i^+``, computed without cancellation: ``r^+ = -c / (bb + s)``
    when ``bb > 0``, else ``(s - bb) / a``, with ``s = sqrt(bb^2 - a c)``."""
    c = c.clamp_max(0.0)
    s = (bb * bb - a * c).clamp_min(0.0).sqrt()
    pos = bb > 0
    root = torch.where(pos, -c / torch.where(pos, bb + s, 1.0), (s - bb) / a)
    return root.min()


@dataclass
class _Optimised:
    """Shared part of MinMax and MinSum: ``v = mu + gamma * p`` with the largest ``gamma``
    that keeps ``v`` within the honest vectors' spread (Shejwalkar & Houmansadr 2021, Alg. 1).

    The paper finds ``gamma`` by bisection; here every constraint is a quadratic in ``gamma``
    and ``gamma`` is its exact largest root. Distances come from one Gram product of the
    centred honest vectors (centring keeps float32 accurate). ``last_gamma`` holds the value
    of the last call (0 when ``p = 0``: all honest vectors equal, or ``mu = 0`` for
    ``"unit"``/``"sign"``; then ``v = mu``).
    """

    perturbation: str = "std"
    last_gamma: float | None = field(default=None, init=False, repr=False, compare=False)
    omniscient: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.perturbation not in _PERTURBATIONS:
            raise ValueError(
                f"{type(self).__name__} perturbation must be one of {list(_PERTURBATIONS)}, "
                f"got {self.perturbation!r}"
            )

    def _gamma(
        self, d2: torch.Tensor, a2: torch.Tensor, bp: torch.Tensor, p2: torch.Tensor
    ) -> torch.Tensor:
        """``gamma`` from the honest squared distances ``d2`` ``[h, h]``, ``a2_i =
        ||mu - h_i||^2``, ``bp_i = <p, mu - h_i>`` and ``p2 = ||p||^2`` (float64)."""
        raise NotImplementedError

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, type(self).__name__, self.omniscient)
        mu, sigma = honest_stats(honest)
        p = _perturbation(self.perturbation, mu, sigma)
        p2 = torch.linalg.vector_norm(p.double()).square()
        if not bool(p2 > 0):
            self.last_gamma = 0.0
            return broadcast_rows(mu, own)
        centred = honest - mu  # rows -(mu - h_i)
        g = gram(centred)
        d2 = pairwise_sq_distances(centred, g).double()
        a2 = g.diagonal().double()
        bp = -(centred @ p).double()
        gamma = self._gamma(d2, a2, bp, p2)
        self.last_gamma = float(gamma)
        return broadcast_rows(mu + gamma.to(mu.dtype) * p, own)


@dataclass
class MinMax(_Optimised):
    """Min-Max (Shejwalkar & Houmansadr 2021, Eq. 6 / Alg. 1): ``v = mu + gamma * p``,
    ``p = -sigma/||sigma||`` (``perturbation="std"``, default), ``-mu/||mu||`` (``"unit"``)
    or ``-sign(mu)`` (``"sign"``); ``gamma`` the largest value with
    ``max_i ||v - h_i|| <= max_{i,k} ||h_i - h_k||``: per honest i,
    ``||p||^2 gamma^2 + 2 <p, mu - h_i> gamma + ||mu - h_i||^2 - R^2 <= 0``, and ``gamma`` is
    the smallest of their positive roots (see ``_Optimised``)."""

    def _gamma(
        self, d2: torch.Tensor, a2: torch.Tensor, bp: torch.Tensor, p2: torch.Tensor
    ) -> torch.Tensor:
        return _largest_gamma(p2, bp, a2 - d2.max())


@dataclass
class MinSum(_Optimised):
    """Min-Sum (Shejwalkar & Houmansadr 2021, Eq. 7): ``v = mu + gamma * p`` as ``MinMax``
    with ``sum_i ||v - h_i||^2 <= max_i sum_k ||h_i - h_k||^2``, one quadratic
    ``h ||p||^2 gamma^2 + 2 <p, sum_i (mu - h_i)> gamma + sum_i ||mu - h_i||^2 - R_s <= 0``
    (its linear term is 0 up to rounding)."""

    def _gamma(
        self, d2: torch.Tensor, a2: torch.Tensor, bp: torch.Tensor, p2: torch.Tensor
    ) -> torch.Tensor:
        h = a2.shape[0]
        return _largest_gamma(h * p2, bp.sum(), a2.sum() - d2.sum(dim=1).max())


@dataclass
class Mimic:
    """Mimic: every Byzantine vector is a copy of the honest vector ``honest[idx]``
    (Karimireddy et al. 2022, Sec. 6; it over-represents one honest node under heterogeneity).

    ``idx = None``: at the first call, the honest row with the largest ``|<h_i - mu, v>|``,
    ``v`` the top principal direction of the centred honest matrix (ties up to rounding:
    the smaller index; row 0 when all rows are equal). Computed from the ``[h, h]`` centred
    Gram matrix (``eigh``; the projections are ``sqrt(lambda) u``, ``u`` its top
    eigenvector), never a ``d x d`` matrix. The paper estimates the direction online over
    the first rounds; here the first call's choice is kept for every later call (``reset()``
    forgets it). A call with fewer honest rows than the stored (or given) index uses
    ``idx % h``.
    """

    idx: int | None = None
    chosen: int | None = field(default=None, init=False, repr=False, compare=False)
    omniscient: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.idx is not None and (isinstance(self.idx, bool) or self.idx < 0):
            raise ValueError(f"Mimic idx must be None or >= 0, got {self.idx!r}")

    def reset(self) -> None:
        """Forget the row chosen at the first call."""
        self.chosen = None

    @staticmethod
    def principal_row(honest: torch.Tensor) -> int:
        """Index of the row with the largest |projection| on the top principal direction."""
        centred = honest - honest.mean(dim=0)
        evals, evecs = torch.linalg.eigh(gram(centred).double())
        if not bool(evals[-1] > 0):
            return 0
        weight = evecs[:, -1].abs()
        # ties up to the rounding of the input dtype go to the smaller index
        tol = 64 * torch.finfo(honest.dtype).eps * weight.max()
        return int((weight >= weight.max() - tol).nonzero()[0, 0])

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, "Mimic", self.omniscient)
        if self.idx is not None:
            self.chosen = int(self.idx)
        elif self.chosen is None:
            self.chosen = self.principal_row(honest)
        return broadcast_rows(honest[self.chosen % honest.shape[0]], own)
