"""``compress_rows``: row i is ``decompress(compress(x[i], seeds[i]))`` for every compressor."""

from __future__ import annotations

import pytest
import torch

from flwr_byz.compressors import get_compressor
from flwr_byz.compressors.rows import compress_rows
from flwr_byz.compressors.sparse import top_magnitudes

SPECS = ["none", "randk:0.2", "randk:k=3", "topk:0.3", "natural", "qsgd:4"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_equal_the_per_row_round_trip(spec: str, dtype: torch.dtype) -> None:
    comp = get_compressor(spec)
    x = torch.randn(6, 23, generator=torch.Generator().manual_seed(2), dtype=dtype)
    x[2, :5] = 0.0  # zeros: TopK ties among them give the same dense vector
    seeds = [11, 0, 7, 2**31 - 1, 5, 11]
    out = compress_rows(comp, x, seeds)
    want = torch.stack([comp.decompress(comp.compress(x[i], seeds[i]), 23) for i in range(6)])
    assert out.shape == want.shape and out.dtype == want.dtype
    assert torch.equal(out, want)


def test_rows_checks_shapes() -> None:
    comp = get_compressor("topk:0.5")
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        compress_rows(comp, torch.zeros(4), [0])
    with pytest.raises(ValueError, match="seeds"):
        compress_rows(comp, torch.zeros(2, 4), [0])
    assert compress_rows(comp, torch.zeros(0, 4), []).shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_magnitudes_is_topk_of_abs_ties_included(dtype: torch.dtype) -> None:
    """The integer-bits ranking picks exactly the indices ``torch.topk(x.abs())`` picks, in
    the same order, also among ties of equal magnitude and opposite sign, zeros, -0.0, inf and
    NaN."""
    g = torch.Generator().manual_seed(5)
    for levels in (1, 3, 1000):
        for n, d in [(1, 1), (4, 9), (7, 300), (3, 5000)]:
            x = (torch.randint(-levels, levels + 1, (n, d), generator=g) * 0.25).to(dtype)
            x.view(-1)[:: max(1, d // 3)] = -0.0
            if d >= 9:
                x[0, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")], dtype=dtype)
            for k in sorted({1, max(1, d // 10), d // 2 or 1, d}):
                want = torch.topk(x.abs(), k, sorted=False).indices
                assert torch.equal(top_magnitudes(x, k), want), (levels, n, d, k)
                assert torch.equal(top_magnitudes(x[0], k), want[0]), (levels, n, d, k)
