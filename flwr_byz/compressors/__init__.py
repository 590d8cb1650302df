"""Compressors: pure torch, ``compress(x [d], seed) -> payload`` (the tensors sent on the wire)
and ``decompress(payload, d) -> Q(x) [d]``. See docs/ALGORITHMS.md, Compressors;
``get_compressor`` parses spec strings."""

from .base import Compressor
from .quantize import QSGD, Natural
from .registry import COMPRESSORS, compressor_spec, get_compressor
from .sparse import Identity, RandK, TopK

__all__ = [
    "COMPRESSORS",
    "QSGD",
    "Compressor",
    "Identity",
    "Natural",
    "RandK",
    "TopK",
    "compressor_spec",
    "get_compressor",
]
