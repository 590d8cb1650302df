"""The sort-based rules work a chunk of columns at a time: the same bits as sorting the whole
``[n, d]`` input at once, and a peak of extra memory of a fraction of the input (measured in a
subprocess). CAF's small eigenproblem runs on the CPU whatever the input's device."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import flwr_byz.aggregators.base as base
from flwr_byz.aggregators import CAF, CTMA, Bulyan, Meamed, Median, TrimmedMean
from flwr_byz.aggregators.base import (
    column_chunks,
    lowest,
    mean_closest_to_median,
    mean_of_rows,
    median_of_sorted,
    normalized_weights,
    sort_columns,
    sq_distances_to,
)

BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bit patterns (so 0.0 and -0.0 differ)."""
    bits = BITS[a.element_size()]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(bits), b.view(bits))


def whole_weighted_median(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``Median.weighted`` as first written, on the whole input at once."""
    a = normalized_weights(w, x, torch.float64)
    values, order = torch.sort(x, dim=0, stable=True)
    cum = a[order].cumsum(dim=0)
    lo = (2.0 * cum >= 1.0 - 1e-12).to(torch.int8).argmax(dim=0, keepdim=True)
    hi = (2.0 * cum > 1.0 + 1e-12).to(torch.int8).argmax(dim=0, keepdim=True)
    return ((values.gather(0, lo) + values.gather(0, hi)) / 2).squeeze(0)


def unchunked(rule: str, x: torch.Tensor, f: int, w: torch.Tensor) -> torch.Tensor:
    """Each rule as it was before chunking: one sort of the whole input."""
    n = x.shape[0]
    if rule == "median":
        return median_of_sorted(sort_columns(x))
    if rule == "trimmedmean":
        return sort_columns(x)[f : n - f].mean(dim=0) if f else x.mean(dim=0)
    if rule == "meamed":
        return mean_closest_to_median(sort_columns(x), n - f)
    if rule == "bulyan":
        sel = Bulyan(f).select(x)
        return mean_closest_to_median(sort_columns(x[sel]), sel.numel() - 2 * f)
    if rule == "ctma":
        anchor = median_of_sorted(sort_columns(x))
        return mean_of_rows(x, lowest(sq_distances_to(x, anchor), n - f))
    return whole_weighted_median(x, w)


def chunked(rule: str, x: torch.Tensor, f: int, w: torch.Tensor) -> torch.Tensor:
    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "median": Median(),
        "trimmedmean": TrimmedMean(f),
        "meamed": Meamed(f),
        "bulyan": Bulyan(f),
        "ctma": CTMA(f, Median()),
        "weighted": lambda v: Median().weighted(v, w),
    }
    return table[rule](x)


def inputs(n: int, d: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.randn(n, d, generator=g, dtype=torch.float64)
    ties = torch.randint(-2, 3, (n, d), generator=g).double()  # exact ties everywhere
    ties[ties == 1] = -0.0  # and signed zeros
    big = smooth / smooth.abs().max() * torch.finfo(dtype).max  # sums that overflow
    return [v.to(dtype) for v in (smooth, ties, big)]


RULES = ("median", "trimmedmean", "meamed", "bulyan", "ctma", "weighted")
# d: not a multiple of the 256-column chunk; 263 and 1031 end in a tail narrower than a SIMD
# vector (summed by another kernel if it were a chunk of its own); 1 and 200: one chunk
SIZES = ((1, 1), (2, 200), (5, 999), (7, 263), (13, 1031), (21, 777), (50, 3001), (11, 1))


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.float16, torch.bfloat16],  # numpy sort; torch.sort
)
@pytest.mark.parametrize("rule", RULES)
def test_chunked_equals_unchunked_bit_for_bit(
    rule: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "CPU_CHUNK_ELEMS", 64)  # 256-column chunks
    monkeypatch.setattr(base, "MIN_CHUNK_BYTES", 1)
    for n, d in SIZES:
        f = (n - 3) // 4 if rule == "bulyan" else (n - 1) // 4
        if f < 0:
            continue
        g = torch.Generator().manual_seed(n * d)
        w = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
        w[0] = w[1:].sum() if n > 2 else w[0]  # an exact tie at half the total weight
        for x in inputs(n, d, dtype, n + d):
            got, want = chunked(rule, x, f, w), unchunked(rule, x, f, w)
            assert same_bits(got, want), (rule, dtype, n, d)


def test_chunked_equals_unchunked_on_several_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "CPU_CHUNK_ELEMS", 1 << 12)
    monkeypatch.setattr(base, "MIN_CHUNK_BYTES", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for rule in RULES:
            x = inputs(20, 100_003, torch.float32, 3)[0]
            w = torch.rand(20, dtype=torch.float64) + 0.1
            assert same_bits(chunked(rule, x, 4, w), unchunked(rule, x, 4, w)), rule
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("d", [1, 255, 256, 257, 263, 511, 513, 5000, 100_003])
@pytest.mark.parametrize("n", [1, 3, 40, 300])
def test_column_chunks_cover_the_columns_aligned(n: int, d: int) -> None:
    x = torch.empty(n, d)
    col_bytes = 4 * n
    chunks = column_chunks(x, n, col_bytes)
    assert chunks[0].start == 0 and chunks[-1].stop == d
    assert all(c.start % base.CHUNK_ALIGN == 0 for c in chunks)
    for a, b in itertools.pairwise(chunks):
        assert a.stop == b.start
    widths = [c.stop - c.start for c in chunks]
    if len(chunks) > 1:
        assert min(widths) >= base.CHUNK_ALIGN  # no narrow tail chunk
        budget = max(x.numel() * 4 // base.SCRATCH_FRACTION, base.MIN_CHUNK_BYTES)
        assert max(widths) <= max(budget // col_bytes, 2 * base.CHUNK_ALIGN)
        assert max(widths) * n <= max(base.CPU_CHUNK_ELEMS, 2 * base.CHUNK_ALIGN * n)


def test_nonfinite_inputs_are_still_refused() -> None:
    x = torch.randn(9, 3000)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[4, 2999] = bad  # in the last chunk
        for agg in (Median(), TrimmedMean(2), Meamed(2), Bulyan(1), CTMA(2)):
            with pytest.raises(ValueError, match="NaN or Inf"):
                agg(y)


# ----------------------------------------------------------------------------- peak memory

PROBE = textwrap.dedent(
    """
    import ctypes, gc, json, sys
    import torch
    from flwr_byz.aggregators import CTMA, Bulyan, Meamed, Median, TrimmedMean

    torch.set_num_threads(1)
    libc = ctypes.CDLL("libc.so.6")

    def status(key):
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith(key))

    def peak_extra(call):
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := VmRSS
        before = status("VmRSS")
        out = call()
        return status("VmHWM") - before

    n, d, dtype = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])
    x = torch.randn(n, d).to(dtype)
    w = torch.rand(n, dtype=torch.float64) + 0.5
    rules = {
        "median": Median(), "trimmedmean": TrimmedMean(n // 4), "meamed": Meamed(n // 4),
        "bulyan": Bulyan((n - 3) // 4), "ctma+median": CTMA(n // 4, Median()),
        "weighted-median": lambda v: Median().weighted(v, w),
    }
    size = x.numel() * x.element_size()
    peaks = {}
    for k in sys.argv[4].split(","):
        r = rules[k]
        r(x[:, :1000].clone())  # one-time allocations (kernels, thread pools) before measuring
        peaks[k] = peak_extra(lambda: r(x)) / size
    print(json.dumps(peaks))
    """
)


def peak_multiples(n: int, d: int, dtype: str, rules: list[str]) -> dict[str, float]:
    """Peak extra RSS of each rule over ``[n, d]`` ``dtype`` input, as a multiple of it."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(n), str(d), dtype, ",".join(rules)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=root,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        with open("/proc/self/status") as fh:
            return any(ln.startswith("VmHWM") for ln in fh)
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("dtype", ["float32", "float16"])  # numpy's sort; torch.sort
def test_peak_extra_memory_is_a_fraction_of_the_input(dtype: str) -> None:
    """Unchunked, each of these held a sorted copy of the input (1x to 1.7x extra; the weighted
    median 8x); chunked, at most 1/8 of it plus the output (1/n of it) and the allocator's
    slack. (In float16 the Gram product of Bulyan and CTMA overflows and is redone in
    float64, a copy of 4x the input: only the sorting rules there.)"""
    n, d = 20, 500_000  # 40 MB of float32
    rules = ["median", "trimmedmean", "meamed", "weighted-median"]
    if dtype == "float32":
        rules += ["bulyan", "ctma+median"]
    peaks = peak_multiples(n, d, dtype, rules)
    assert set(peaks) == set(rules)
    for rule, multiple in peaks.items():
        assert multiple <= 0.25, (rule, dtype, peaks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_extra_memory_on_cuda() -> None:
    n, d = 50, 2_000_000
    x = torch.randn(n, d, device="cuda")
    w = torch.rand(n, dtype=torch.float64) + 0.5
    rules: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "median": Median(),
        "trimmedmean": TrimmedMean(12),
        "meamed": Meamed(12),
        "bulyan": Bulyan(11),
        "ctma+median": CTMA(12, Median()),
        "weighted-median": lambda v: Median().weighted(v, w),
    }
    for rule, agg in rules.items():
        agg(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        agg(x)
        torch.cuda.synchronize()
        multiple = (torch.cuda.max_memory_allocated() - before) / (x.numel() * 4)
        assert multiple <= 0.25, (rule, multiple)


# ----------------------------------------------------------------------------- CAF on the CPU


class OnGpu(torch.Tensor):
    """A CPU tensor standing for one on a GPU: what is computed from it stays ``OnGpu``, and
    ``.cpu()`` / ``.to("cpu")`` give a plain tensor (the copy to the host)."""

    moved: ClassVar[list[tuple[int, ...]]] = []  # shapes copied to the host

    @classmethod
    def __torch_function__(
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        to_cpu = func is torch.Tensor.cpu or (
            func is torch.Tensor.to and "cpu" in [str(a) for a in (*args[1:], kwargs.get("device"))]
        )
        if to_cpu:
            cls.moved.append(tuple(args[0].shape))
            return args[0].as_subclass(torch.Tensor).clone()
        return super().__torch_function__(func, types, args, kwargs)


def test_caf_eigenproblem_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    eigh = torch.linalg.eigh
    seen: list[type] = []

    def checked_eigh(a: torch.Tensor, *args: object, **kwargs: object) -> object:
        seen.append(type(a))
        assert type(a) is torch.Tensor and a.device.type == "cpu", "eigh off the CPU"
        return eigh(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", checked_eigh)
    OnGpu.moved.clear()
    n, f = 11, 3
    x = torch.randn(n, 500, dtype=torch.float64)
    x[-f:] *= -5.0
    out = CAF(f)(x.as_subclass(OnGpu))
    assert seen and all(t is torch.Tensor for t in seen)
    assert OnGpu.moved == [(n, n)]  # only the small matrix crosses, once
    assert type(out) is OnGpu  # the weighted sum of the rows stays on the device
    assert torch.equal(out.as_subclass(torch.Tensor), CAF(f)(x))
