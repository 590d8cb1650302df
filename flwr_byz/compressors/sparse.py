"""Sparsifiers: Identity, RandK (unbiased) and TopK (biased).
docs/ALGORITHMS.md, Compressors.

Both sparsifiers keep ``K`` of the ``d`` coordinates, ``K = clamp(round(fraction * d), 1, d)``
for a ``fraction`` in (0, 1] or ``K = min(k, d)`` for a count ``k >= 1`` (exactly one given).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import FLOAT_DTYPES, check_dim, check_payload, check_seed, check_vector

__all__ = ["Identity", "RandK", "TopK", "top_magnitudes"]

_INT32_MAX = 2**31 - 1


@dataclass
class Identity:
    """No compression: ``Q(x) = x``, payload ``{"values": x}`` (``x``'s dtype), omega = 0."""

    omega: float = field(default=0.0, init=False, repr=False, compare=False)
    biased: ClassVar[bool] = False

    def omega_for(self, d: int) -> float:
        """0 at every dimension."""
        check_dim(d, "Identity")
        return 0.0

    def compress(self, x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """``{"values": x}`` (a detached copy); ``seed`` is ignored."""
        check_vector(x, "Identity")
        return {"values": x.detach().clone()}

    def decompress(self, payload: dict[str, torch.Tensor], d: int) -> torch.Tensor:
        """The ``[d]`` vector ``payload["values"]`` (a copy)."""
        d = check_dim(d, "Identity")
        check_payload(payload, {"values": ((d,), FLOAT_DTYPES)}, "Identity")
        return payload["values"].clone()


@dataclass(repr=False)
class _Sparse:
    """``fraction`` or ``k`` (exactly one) and the resulting ``K`` at dimension ``d``."""

    fraction: float | None = None
    k: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if (self.fraction is None) == (self.k is None):
            raise ValueError(
                f"{name} needs exactly one of fraction and k, "
                f"got fraction={self.fraction!r}, k={self.k!r}"
            )
        if self.fraction is not None:
            if (
                isinstance(self.fraction, bool)
                or not isinstance(self.fraction, numbers.Real)
                or not 0 < self.fraction <= 1
            ):
                count = _is_count(self.fraction) and self.fraction > 1
                hint = f" (for a count use k={self.fraction!r})" if count else ""
                raise ValueError(f"{name} needs a fraction in (0, 1], got {self.fraction!r}{hint}")
            self.fraction = float(self.fraction)
        elif not _is_count(self.k) or self.k < 1:  # type: ignore[operator]
            raise ValueError(f"{name} needs an integer k >= 1, got {self.k!r}")
        else:
            self.k = int(self.k)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        arg = f"fraction={self.fraction!r}" if self.fraction is not None else f"k={self.k!r}"
        return f"{type(self).__name__}({arg})"

    def k_for(self, d: int) -> int:
        """The number ``K`` of coordinates kept at dimension ``d``."""
        name = type(self).__name__
        d = check_dim(d, name)
        if d > _INT32_MAX:
            raise ValueError(f"{name}: d = {d} is too large (at most 2^31 - 1)")
        if self.fraction is not None:
            return min(max(round(self.fraction * d), 1), d)
        return min(int(self.k), d)  # type: ignore[arg-type]


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _support(seed: int, d: int, k: int) -> torch.Tensor:
    """RandK's ``K`` coordinates: the first ``K`` of a random permutation of ``range(d)``, drawn
    by a CPU generator so that every device decodes the same support from the seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(d, generator=g)[:k]


@dataclass(repr=False)
class RandK(_Sparse):
    """Random sparsification: ``K`` coordinates drawn uniformly without replacement from the
    seed, each scaled by ``d/K`` (Stich et al. 2018; Gorbunov et al. 2023's Rand-K).

    Unbiased with ``E ||Q(x) - x||^2 = (d/K - 1) ||x||^2`` exactly: ``omega_for(d) = d/K - 1``;
    the attribute ``omega = 1/fraction - 1`` (NaN when built with ``k``). Payload:
    ``{"values": [K] scaled values (x's dtype), "seed": int64 [1]}``; ``decompress`` regenerates
    the support from ``payload["seed"]`` as ``torch.randperm(d)[:K]`` of a CPU generator (the
    same on every device; it costs O(d) time, about 0.5 s at d = 10^7).
    """

    omega: float = field(default=math.nan, init=False, repr=False, compare=False)
    biased: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.omega = 1.0 / self.fraction - 1.0 if self.fraction is not None else math.nan

    def omega_for(self, d: int) -> float:
        """``d/K - 1``."""
        return d / self.k_for(d) - 1.0

    def compress(self, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """``{"values": (d/K) x[S], "seed": [seed]}`` with ``S`` the support drawn from ``seed``."""
        d = check_vector(x, "RandK")
        seed = check_seed(seed, "RandK")
        k = self.k_for(d)
        idx = _support(seed, d, k).to(x.device)
        return {
            "values": x.detach()[idx] * (d / k),
            "seed": torch.tensor([seed], dtype=torch.int64, device=x.device),
        }

    def decompress(self, payload: dict[str, torch.Tensor], d: int) -> torch.Tensor:
        """The ``[d]`` vector with ``payload["values"]`` on the support drawn from the seed."""
        d = check_dim(d, "RandK")
        k = self.k_for(d)
        device = check_payload(
            payload, {"values": ((k,), FLOAT_DTYPES), "seed": ((1,), (torch.int64,))}, "RandK"
        )
        values = payload["values"]
        idx = _support(int(payload["seed"][0]), d, k).to(device)
        out = torch.zeros(d, dtype=values.dtype, device=device)
        out[idx] = values
        return out


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def top_magnitudes(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (unsorted) of the ``k`` largest ``|x|`` along the last dimension:
    ``torch.topk(x.abs(), k, sorted=False).indices``. On CPU float32/float64 the magnitudes'
    bits are ranked as integers: for non-negative floats the integer order is the float
    order (NaN above inf, as ``topk`` ranks it), so the kernel makes the same comparisons
    and returns the same indices (ties included), 1.6x faster without its NaN checks."""
    a = x.abs()
    bits = _BITS.get(a.dtype)
    if a.device.type == "cpu" and bits is not None:
        a = a.view(bits)
    return torch.topk(a, k, sorted=False).indices


@dataclass(repr=False)
class TopK(_Sparse):
    """Greedy sparsification: the ``K`` coordinates of largest magnitude, unscaled (Alistarh et
    al. 2018; the biased compressor of EF21, Richtárik et al. 2021).

    Biased, a contraction ``||Q(x) - x||^2 <= (1 - K/d) ||x||^2``: ``alpha = omega_for(d) = K/d``;
    the attribute ``omega = fraction`` (NaN when built with ``k``). Payload:
    ``{"values": [K] (x's dtype), "indices": int32 [K], strictly increasing}``; the seed is
    ignored (ties between equal magnitudes are broken by ``torch.topk``).
    """

    omega: float = field(default=math.nan, init=False, repr=False, compare=False)
    biased: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.omega = self.fraction if self.fraction is not None else math.nan

    def omega_for(self, d: int) -> float:
        """``alpha = K/d``."""
        return self.k_for(d) / d

    def compress(self, x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """``{"values": x[I], "indices": I}``, ``I`` the ``K`` largest ``|x_i|`` in index order."""
        d = check_vector(x, "TopK")
        x = x.detach()
        idx = top_magnitudes(x, self.k_for(d)).sort().values
        return {"values": x[idx], "indices": idx.to(torch.int32)}

    def decompress(self, payload: dict[str, torch.Tensor], d: int) -> torch.Tensor:
        """The ``[d]`` vector with ``payload["values"]`` at ``payload["indices"]``, else 0."""
        d = check_dim(d, "TopK")
        k = self.k_for(d)
        device = check_payload(
            payload, {"values": ((k,), FLOAT_DTYPES), "indices": ((k,), (torch.int32,))}, "TopK"
        )
        idx = payload["indices"].to(torch.int64)
        ok = (idx[0] >= 0) & (idx[-1] < d) & (idx[1:] > idx[:-1]).all()
        if not bool(ok):
            raise ValueError(f"TopK payload: indices must be strictly increasing in [0, {d})")
        values = payload["values"]
        out = torch.zeros(d, dtype=values.dtype, device=device)
        out[idx] = values
        return out
