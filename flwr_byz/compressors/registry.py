"""``get_compressor(spec)``: build a compressor from a spec string.

A spec is ``name`` or ``name:arg,arg,...`` (``flwr_byz.specs``): ``"none"`` / ``"identity"``,
``"randk:0.1"`` (a fraction of the coordinates), ``"randk:k=100"`` (a count), ``"topk:0.01"``,
``"natural"``, ``"qsgd:4"`` (the number of levels ``s``). Names are case-insensitive and may
carry ``-`` or ``_`` (``rand-k``, ``top_k``).
"""

from __future__ import annotations

import dataclasses

from ..specs import build, split_part, unknown
from .base import Compressor
from .quantize import QSGD, Natural
from .sparse import Identity, RandK, TopK

__all__ = ["ALIASES", "COMPRESSORS", "compressor_names", "compressor_spec", "get_compressor"]

COMPRESSORS: dict[str, type] = {
    "identity": Identity,
    "randk": RandK,
    "topk": TopK,
    "natural": Natural,
    "qsgd": QSGD,
}
"""Compressors by canonical name (the specs of docs/ALGORITHMS.md, Compressors)."""

ALIASES = {"none": "identity"}
"""Other names: ``none`` is the identity (no compression)."""


def compressor_names() -> dict[str, list[str]]:
    """Every name a compressor spec may take, by group (what the errors and ``--help`` list)."""
    return {"compressors": sorted(COMPRESSORS), "other spellings": sorted(ALIASES)}


def get_compressor(spec: str) -> Compressor:
    """Build the compressor described by ``spec`` (see module doc); ``ValueError`` for an
    unknown name or bad arguments."""
    name, args = split_part(spec.strip())
    key = name.lower().replace("-", "").replace("_", "")
    key = ALIASES.get(key, key)
    if key not in COMPRESSORS:
        raise unknown("compressor", name, compressor_names(), spec)
    try:
        compressor: Compressor = build(COMPRESSORS[key], args, spec.strip(), "compressor")
    except TypeError as exc:  # a required argument missing, e.g. "qsgd" without s
        raise ValueError(f"compressor spec {spec.strip()!r}: {exc}") from exc
    return compressor


def compressor_spec(compressor: Compressor) -> str:
    """The spec string that ``get_compressor`` turns back into an equal compressor (what a
    strategy sends its clients), e.g. ``"randk:fraction=0.1"``."""
    names = {cls: name for name, cls in COMPRESSORS.items()}
    name = names.get(type(compressor))
    if name is None or not dataclasses.is_dataclass(compressor):
        raise ValueError(f"{compressor!r} is not a flwr_byz compressor; pass a spec string")
    args = [
        f"{f.name}={getattr(compressor, f.name)!r}"
        for f in dataclasses.fields(compressor)
        if f.init and getattr(compressor, f.name) is not None
    ]
    return f"{name}:{','.join(args)}" if args else name
