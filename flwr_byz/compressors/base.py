"""Shared mechanics of the compressors: the protocol and the checks of inputs and payloads.

Pure torch (no Flower import). A compressor maps a ``[d]`` float32/float64 vector ``x`` and a
seed to a wire payload (name -> tensor, on ``x``'s device) and back
(docs/ALGORITHMS.md, Compressors).
``decompress`` reads a payload that a Byzantine client may have forged: every malformed payload
(keys, shapes, dtypes, devices, index ranges, ``d``) raises ``ValueError``, never another error.
Non-finite float values are not checked here: they pass through and the caller checks them.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import ClassVar, Protocol, runtime_checkable

import torch

__all__ = [
    "FLOAT_DTYPES",
    "Compressor",
    "check_dim",
    "check_payload",
    "check_seed",
    "check_vector",
    "generator",
]

FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
"""The dtypes of the vectors the compressors accept (and of float values in payloads)."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@runtime_checkable
class Compressor(Protocol):
    """A compression operator ``Q``: ``decompress(compress(x, seed), d)`` is ``Q(x)``.

    ``omega`` is the variance bound of an unbiased compressor, ``E Q(x) = x`` and
    ``E ||Q(x) - x||^2 <= omega ||x||^2`` (0 for the identity); for a biased one
    (``biased``) it is the contraction ``alpha``, ``||Q(x) - x||^2 <= (1 - alpha) ||x||^2``.
    ``omega_for(d)`` is the exact bound at dimension ``d``.
    """

    omega: float
    biased: ClassVar[bool]

    def compress(self, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]: ...

    def decompress(self, payload: dict[str, torch.Tensor], d: int) -> torch.Tensor: ...

    def omega_for(self, d: int) -> float: ...


def check_dim(d: int, name: str) -> int:
    """``d`` as an int; ``ValueError`` unless it is an integer >= 1."""
    try:
        value = operator.index(d)
    except TypeError:
        raise ValueError(f"{name}: d must be an integer, got {type(d).__name__}") from None
    if isinstance(d, bool) or value < 1:
        raise ValueError(f"{name}: d must be an integer >= 1, got {d!r}")
    return int(value)


def check_vector(x: object, name: str) -> int:
    """The length ``d`` of ``x``; ``ValueError`` unless ``x`` is a non-empty 1-D float32 or
    float64 tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"{name}: x must be a non-empty 1-D tensor, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: x must be float32 or float64, got {x.dtype}")
    return int(x.numel())


def check_seed(seed: int, name: str) -> int:
    """``seed`` as an int; ``ValueError`` unless it is an integer that fits in int64."""
    try:
        value = int(operator.index(seed))
    except TypeError:
        raise ValueError(f"{name}: seed must be an integer, got {type(seed).__name__}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name}: seed must fit in int64, got {value}")
    return value


def check_payload(
    payload: object,
    expected: Mapping[str, tuple[tuple[int, ...], tuple[torch.dtype, ...]]],
    name: str,
) -> torch.device:
    """Raise ``ValueError`` unless ``payload`` is a dict with exactly the keys of ``expected``
    (``{key: (shape, allowed dtypes)}``), each a tensor of that shape and one of those dtypes,
    all on one device; return that device."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"{name} payload must be a dict of tensors, got {type(payload).__name__}")
    keys, want = set(payload), set(expected)
    if keys != want:
        missing, extra = sorted(want - keys), sorted(map(str, keys - want))
        raise ValueError(
            f"{name} payload must have keys {sorted(want)}; missing {missing}, extra {extra}"
        )
    devices = set()
    for key, (shape, dtypes) in expected.items():
        t = payload[key]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} payload: {key!r} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{name} payload: {key!r} has shape {tuple(t.shape)}, expected {shape}"
            )
        if t.dtype not in dtypes:
            allowed = " or ".join(str(dt) for dt in dtypes)
            raise ValueError(f"{name} payload: {key!r} has dtype {t.dtype}, expected {allowed}")
        devices.add(t.device)
    if len(devices) != 1:
        on = sorted(map(str, devices))
        raise ValueError(f"{name} payload: tensors are on different devices {on}")
    return devices.pop()


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)
