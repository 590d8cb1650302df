"""``compress_rows``: a compressor applied to every row of an ``[n, d]`` tensor with its own seed,
as the dense ``Q(x_i)`` rows (what the server decodes), for the methods' row-wise client steps.

Row ``i`` equals ``decompress(compress(x[i], seeds[i]), d)`` (up to ties between equal
magnitudes for TopK, where any choice gives the same dense vector unless the tied values
differ in sign). Identity and TopK are vectorised; RandK draws each row's support from its
seed exactly as ``RandK.compress`` does and scatters all rows at once; the quantizers run per
row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Compressor
from .sparse import Identity, RandK, TopK, _support, top_magnitudes

__all__ = ["compress_rows"]


def compress_rows(compressor: Compressor, x: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """``[n, d]`` rows ``Q(x_i)`` with ``seeds[i]`` (module doc)."""
    if x.dim() != 2:
        raise ValueError(f"compress_rows needs an [n, d] tensor, got shape {tuple(x.shape)}")
    n, d = x.shape
    if len(seeds) != n:
        raise ValueError(f"compress_rows: {n} rows but {len(seeds)} seeds")
    x = x.detach()
    if n == 0:
        return x.clone()
    if type(compressor) is Identity:
        return x.clone()
    if type(compressor) is TopK:
        k = compressor.k_for(d)
        idx = top_magnitudes(x, k)
        return torch.zeros_like(x).scatter_(1, idx, x.gather(1, idx))
    if type(compressor) is RandK:
        k = compressor.k_for(d)
        idx = torch.stack([_support(int(s), d, k) for s in seeds]).to(x.device)
        return torch.zeros_like(x).scatter_(1, idx, x.gather(1, idx) * (d / k))
    rows = [compressor.decompress(compressor.compress(x[i], int(seeds[i])), d) for i in range(n)]
    return torch.stack(rows)
