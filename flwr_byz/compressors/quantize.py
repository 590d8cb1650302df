"""Quantizers: Natural compression and QSGD, both unbiased (docs/ALGORITHMS.md, Compressors)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import FLOAT_DTYPES, check_dim, check_payload, check_seed, check_vector, generator

__all__ = ["QSGD", "Natural"]


@dataclass
class Natural:
    """Natural compression (Horváth et al. 2019): ``|x_i|`` in ``[2^a, 2^(a+1))`` is rounded to
    ``2^(a+1)`` with probability ``(|x_i| - 2^a) / 2^a``, else to ``2^a``; the sign is kept and
    zero stays zero. Unbiased with ``omega = 1/8``.

    Payload: ``{"signs": uint8 [ceil(d/8)], "exponents": int8 [d]}``, the sign bits packed
    little-endian (bit ``j`` of byte ``b`` is coordinate ``8b + j``; padding bits 0) and one
    exponent byte per coordinate: ``e`` in ``[-126, 126]`` means ``±2^e`` (float32's normal
    powers of two), ``-128`` zero, ``127`` infinity and ``-127`` NaN (so non-finite inputs pass
    through to the caller's check). Out of range, ``0 < |x_i| < 2^-126`` is rounded to
    ``2^-126`` with probability ``|x_i| / 2^-126``, else to 0 (still unbiased, but each such
    coordinate adds up to ``4^-126 / 4`` to the variance beyond ``||x||^2 / 8``), and finite
    ``|x_i| >= 2^126`` is clamped to ``2^126`` (biased there). ``decompress`` returns float32.
    """

    omega: float = field(default=0.125, init=False, repr=False, compare=False)
    biased: ClassVar[bool] = False

    E_MIN: ClassVar[int] = -126
    E_MAX: ClassVar[int] = 126
    ZERO: ClassVar[int] = -128
    NAN: ClassVar[int] = -127
    INF: ClassVar[int] = 127

    def omega_for(self, d: int) -> float:
        """1/8 at every dimension."""
        check_dim(d, "Natural")
        return 0.125

    def compress(self, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """Sign bits and stochastically rounded exponents of ``x`` (see the class doc)."""
        d = check_vector(x, "Natural")
        g = generator(check_seed(seed, "Natural"), x.device)
        x = x.detach()
        ax = x.abs()
        mantissa, exponent = torch.frexp(ax)  # ax = mantissa 2^exponent, mantissa in [1/2, 1)
        low = exponent.to(torch.int32) - 1  # 2^low <= ax < 2^(low+1)
        u = torch.rand(d, generator=g, device=x.device, dtype=x.dtype)
        e = (low + (u < 2 * mantissa - 1).to(torch.int32)).clamp(max=self.E_MAX)
        tiny = torch.where(u < ax * 2.0**-self.E_MIN, self.E_MIN, self.ZERO)
        e = torch.where(low < self.E_MIN, tiny, e)
        e = torch.where(ax == 0, self.ZERO, e)
        e = torch.where(torch.isinf(ax), self.INF, e)
        e = torch.where(torch.isnan(ax), self.NAN, e)
        negative = torch.signbit(x) & (e != self.ZERO)
        return {"signs": _pack_bits(negative), "exponents": e.to(torch.int8)}

    def decompress(self, payload: dict[str, torch.Tensor], d: int) -> torch.Tensor:
        """The float32 ``[d]`` vector ``±2^e`` (0 for the zero exponent)."""
        d = check_dim(d, "Natural")
        spec = {"signs": (((d + 7) // 8,), (torch.uint8,)), "exponents": ((d,), (torch.int8,))}
        check_payload(payload, spec, "Natural")
        negative = _unpack_bits(payload["signs"], d)
        e = payload["exponents"].to(torch.int32)
        finite = (e >= self.E_MIN) & (e <= self.E_MAX)
        bits = torch.where(finite, (e + 127) << 23, 0)  # the float32 bit pattern of 2^e, or 0
        magnitude = bits.view(torch.float32)
        magnitude = torch.where(e == self.INF, math.inf, magnitude)
        magnitude = torch.where(e == self.NAN, math.nan, magnitude)
        return torch.where(negative, -magnitude, magnitude)


_BIT_WEIGHTS = [1 << j for j in range(8)]


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Bool ``[d]`` -> uint8 ``[ceil(d/8)]``, little-endian within each byte, zero padding."""
    padded = torch.zeros(-(-bits.numel() // 8) * 8, dtype=torch.int32, device=bits.device)
    padded[: bits.numel()] = bits.to(torch.int32)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.int32, device=bits.device)
    return (padded.view(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def _unpack_bits(packed: torch.Tensor, d: int) -> torch.Tensor:
    """The inverse of ``_pack_bits``; ``ValueError`` when a padding bit is set."""
    shifts = torch.arange(8, dtype=torch.int32, device=packed.device)
    bits = ((packed.to(torch.int32).unsqueeze(1) >> shifts) & 1).view(-1)
    if bool(bits[d:].any()):
        raise ValueError(f"Natural payload: padding sign bits beyond d = {d} must be 0")
    return bits[:d].bool()


@dataclass
class QSGD:
    """QSGD (Alistarh et al. 2017) with ``s`` levels: ``Q(x)_i = ||x|| sign(x_i) xi_i / s``,
    ``xi_i`` the stochastic rounding of ``s |x_i| / ||x||`` to ``floor`` or ``floor + 1``
    (with probability the fractional part). Unbiased with
    ``omega_for(d) = min(d / s^2, sqrt(d) / s)``; there is no bound free of ``d``, so the
    attribute ``omega`` is ``math.inf``.

    Payload: ``{"norm": [1] (x's dtype), "levels": [d] sign(x_i) xi_i}``, int8 for ``s <= 127``,
    int16 for ``s <= 32767`` (larger ``s`` is refused); ``x = 0`` gives all-zero levels and a
    non-finite ``x`` a non-finite ``Q(x)``. ``decompress`` returns the norm's dtype.
    """

    s: int
    omega: float = field(default=math.inf, init=False, repr=False, compare=False)
    biased: ClassVar[bool] = False

    def __post_init__(self) -> None:
        s = self.s
        if not isinstance(s, numbers.Integral) or isinstance(s, bool) or not 1 <= s <= 32767:
            raise ValueError(f"QSGD needs an integer number of levels s in [1, 32767], got {s!r}")
        self.s = int(s)

    @property
    def level_dtype(self) -> torch.dtype:
        """int8 for ``s <= 127``, else int16."""
        return torch.int8 if self.s <= 127 else torch.int16

    def omega_for(self, d: int) -> float:
        """``min(d / s^2, sqrt(d) / s)``."""
        d = check_dim(d, "QSGD")
        return min(d / self.s**2, math.sqrt(d) / self.s)

    def compress(self, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """``{"norm": [||x||], "levels": sign(x) xi}`` (see the class doc)."""
        d = check_vector(x, "QSGD")
        g = generator(check_seed(seed, "QSGD"), x.device)
        x = x.detach()
        norm = torch.linalg.vector_norm(x)
        scale = torch.where(norm > 0, self.s / norm, 0)  # 0 for x = 0 (and NaN norms)
        r = x.abs() * scale
        r = torch.where(torch.isfinite(r), r, 0).clamp(max=self.s)
        floor = r.floor()
        u = torch.rand(d, generator=g, device=x.device, dtype=x.dtype)
        xi = floor + (u < r - floor).to(x.dtype)
        levels = torch.where(x < 0, -xi, xi).to(self.level_dtype)
        return {"norm": norm.reshape(1), "levels": levels}

    def decompress(self, payload: dict[str, torch.Tensor], d: int) -> torch.Tensor:
        """The ``[d]`` vector ``levels * (norm / s)`` in the norm's dtype."""
        d = check_dim(d, "QSGD")
        spec = {"norm": ((1,), FLOAT_DTYPES), "levels": ((d,), (self.level_dtype,))}
        check_payload(payload, spec, "QSGD")
        levels = payload["levels"].to(torch.int32)
        if bool((levels.abs() > self.s).any()):
            raise ValueError(f"QSGD payload: levels must lie in [-{self.s}, {self.s}]")
        norm = payload["norm"]
        return levels.to(norm.dtype) * (norm / self.s)
