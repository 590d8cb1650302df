"""Shared mechanics of the aggregators: the protocol, input checks, distances, column sorts.

Everything here is pure torch on ``[n, d]`` tensors (no Flower import). Every aggregator calls
these helpers instead of re-deriving them: one Gram product for pairwise distances
(docs/ALGORITHMS.md, Pairwise distances), one input check, one coordinate-wise sort.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

__all__ = [
    "Aggregator",
    "PreAggregator",
    "accepts",
    "breakdown",
    "chain",
    "check_f",
    "check_finite",
    "check_input",
    "column_chunks",
    "gram",
    "largest_f",
    "lowest",
    "max_inputs",
    "mean_closest_to_median",
    "mean_of_rows",
    "median_of_sorted",
    "min_inputs",
    "normalized_weights",
    "pairwise_sq_distances",
    "requirement",
    "set_f",
    "smallest_in_rows",
    "smallest_sorted",
    "sort_columns",
    "sorted_column_chunks",
    "sorted_columns_reduce",
    "sq_distances_to",
    "torch_sort_bytes",
    "with_f",
]


@runtime_checkable
class Aggregator(Protocol):
    """A robust aggregation rule: ``[n, d]`` float tensor in, ``[d]`` tensor out (same dtype).

    ``f`` is the number of Byzantine inputs the rule is configured to tolerate.
    """

    f: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class PreAggregator(Aggregator, Protocol):
    """A rule that first maps the inputs (``pre``) and then applies a ``base`` aggregator."""

    base: Aggregator

    def pre(self, x: torch.Tensor) -> torch.Tensor: ...


def check_f(f: int, name: str = "f") -> int:
    """Validate a Byzantine count (a non-negative int) and return it."""
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {f!r}")
    return int(f)


def check_input(
    x: torch.Tensor,
    rule: str,
    min_n: int = 1,
    requirement: str = "n >= 1",
    finite: bool = True,
) -> torch.Tensor:
    """Check an aggregator input and return it.

    Raises ``ValueError`` naming the problem when ``x`` is not a 2-D floating tensor, holds
    NaN/Inf, or has fewer than ``min_n`` rows (``requirement`` is the rule's condition, e.g.
    ``"n >= 2f + 3"``, printed in the message). ``finite=False`` skips the NaN/Inf pass for a
    caller that checks a derived result with ``check_finite`` instead.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{rule}: expected a torch.Tensor of shape [n, d], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{rule}: expected a 2-D tensor [n, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{rule}: expected a floating-point tensor, got dtype {x.dtype}")
    n = x.shape[0]
    if n < min_n:
        raise ValueError(f"{rule} needs {requirement} (at least {min_n} inputs), got n={n}")
    if finite and x.numel():
        check_finite(x, x.sum(), rule)
    return x


def check_finite(x: torch.Tensor, derived: torch.Tensor, rule: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN/Inf, looking at ``x`` itself only when
    ``derived`` (a reduction of ``x`` through which NaN/Inf propagate: a sum, a mean) is
    non-finite, which may also be a harmless overflow.
    """
    if not bool(torch.isfinite(derived).all()) and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"{rule}: input rows {bad[:10]} contain NaN or Inf")


def normalized_weights(
    w: torch.Tensor, x: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Check per-input weights ``w`` (``[n]``, finite, >= 0, positive sum) for the rows of
    ``x`` and return them divided by their sum, on ``x``'s device in ``dtype`` (default:
    ``x``'s dtype).
    """
    w = torch.as_tensor(w)
    if w.dim() != 1 or w.shape[0] != x.shape[0]:
        raise ValueError(f"expected {x.shape[0]} weights (one per input), got {tuple(w.shape)}")
    w = w.to(device=x.device, dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return (w / w.sum()).to(dtype or x.dtype)


def gram(x: torch.Tensor) -> torch.Tensor:
    """The Gram matrix ``x @ x.T`` (one GEMM in the input dtype, ``[n, n]``).

    Not centred: centring costs a full copy of ``x`` (3x the GEMM's time at ``[50, 1M]``). In
    float32 the squared distances derived from it carry a relative error of about
    ``eps * ||x||^2 / ||x_i - x_j||^2``. If a finite input's squared norm overflows the dtype
    (e.g. a float32 row of norm > 1.8e19), the product is redone in float64 on ``x / max|x|``
    (float64 so that the small rows do not underflow) and rescaled; float64 is then returned.
    """
    g = x @ x.T
    if bool(torch.isfinite(g).all()):
        return g
    xs = x.double()
    scale = xs.abs().amax()
    xs = xs / scale if x.dtype == torch.float64 else xs.div_(scale)  # never x in place
    return (xs @ xs.T) * scale.square()


def _sq_from_gram(g: torch.Tensor) -> torch.Tensor:
    diag = g.diagonal()
    d2 = diag[:, None] + diag[None, :] - 2.0 * g
    # A GEMM need not return an exactly symmetric x @ x.T (it depends on the BLAS kernel the
    # CPU picks); D_ij != D_ji would break ties by index differently on different machines.
    # Adding the transpose is exactly symmetric (floating-point addition commutes).
    d2 = (0.5 * (d2 + d2.T)).clamp_min_(0.0)
    d2.fill_diagonal_(0.0)
    return d2


def pairwise_sq_distances(x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances ``D_ij = ||x_i - x_j||^2`` from one Gram product, ``[n, n]``.

    ``D_ij = G_ii + G_jj - 2 G_ij`` clamped at 0 with an exact zero diagonal
    (docs/ALGORITHMS.md, Pairwise distances).
    Pass a precomputed ``g = gram(x)`` to reuse it.
    """
    return _sq_from_gram(gram(x) if g is None else g)


def sq_distances_to(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||x_i - y||^2`` for every row of ``x`` (``[n]``): ``||x_i||^2 - 2<x_i, y> + ||y||^2``.

    On overflow of the dtype it is redone in float64 on ``x / s, y / s`` (``s = max|x|, |y|``)
    and returned in float64, like ``gram``.
    """
    d2 = torch.linalg.vector_norm(x, dim=1).square() - 2.0 * (x @ y) + y @ y
    if bool(torch.isfinite(d2).all()):
        return d2.clamp_min_(0.0)
    xs, ys = x.double(), y.double()
    scale = torch.maximum(xs.abs().amax(), ys.abs().amax())
    xs, ys = xs / scale, ys / scale
    d2 = torch.linalg.vector_norm(xs, dim=1).square() - 2.0 * (xs @ ys) + ys @ ys
    return d2.clamp_min_(0.0) * scale.square()


def sort_columns(x: torch.Tensor) -> torch.Tensor:
    """Sort every column of ``x`` (ascending along dim 0) and return a new tensor.

    On CPU for float32/float64 this uses NumPy's vectorised (x86-simd-sort) kernel through a
    zero-copy view: measured 6x faster than ``torch.sort(x, dim=0)`` at ``[50, 1M]`` on the
    2-core reference machine (0.27 s vs 1.55 s). Elsewhere (CUDA, other dtypes) ``torch.sort``.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=0))
    return torch.sort(x, dim=0).values


SCRATCH_FRACTION = 8
"""The chunked column kernels keep their scratch within 1/``SCRATCH_FRACTION`` of the input."""

CPU_CHUNK_ELEMS = 1 << 19
"""On CPU, a sorted chunk holds at most this many entries (2 MiB of float32): it stays in cache
for the reduction that follows (Meamed's window scan reads it ``n - f`` times)."""

MIN_CHUNK_BYTES = 1 << 18
"""A chunk's scratch is at least this much (unless ``x`` is narrower): on small inputs the
per-chunk Python overhead would dominate, so those may exceed the fraction."""

CHUNK_ALIGN = 256
"""Chunk widths are multiples of this many columns. torch's CPU sum over rows handles the
columns in blocks of 4 SIMD vectors (32 float32 with AVX2, 64 with AVX-512) and the rest
apart, with a different rounding: aligned chunks put every column in the same kind of block
as the whole tensor does, so chunked float sums equal the unchunked ones bit for bit."""


def _numpy_sorts(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def torch_sort_bytes(x: torch.Tensor, extra: int = 0) -> int:
    """Scratch bytes per entry of ``torch.sort`` over a chunk of ``x``'s columns, plus ``extra``
    bytes per entry of the caller's: values, int64 indices, a copy of the chunk (on CUDA,
    unchunked at n=100, d=1e7: 12 bytes per float32 entry). On CPU 4x that: its first call on
    each chunk allocates twice, and the heap fragments from one chunk to the next."""
    return (3 * x.element_size() + 8 + extra) * (4 if x.device.type == "cpu" else 1)


def column_chunks(x: torch.Tensor, rows: int, col_bytes: int) -> list[slice]:
    """Consecutive column slices of ``x`` (``[n, d]``) for a kernel that needs ``col_bytes`` of
    scratch per column of ``rows`` entries: the scratch of one chunk stays within
    ``1 / SCRATCH_FRACTION`` of ``x``'s bytes (at least ``MIN_CHUNK_BYTES``), and on CPU
    within ``CPU_CHUNK_ELEMS`` entries; widths are multiples of ``CHUNK_ALIGN``. On CUDA the
    chunks are as wide as the budget allows.
    """
    d = x.shape[1]
    budget = max(x.numel() * x.element_size() // SCRATCH_FRACTION, MIN_CHUNK_BYTES)
    cols = budget // max(col_bytes, 1)
    if x.device.type == "cpu":
        cols = min(cols, CPU_CHUNK_ELEMS // max(rows, 1))
    cols = max(CHUNK_ALIGN, cols - cols % CHUNK_ALIGN)
    starts = list(range(0, d, cols))
    if len(starts) > 1 and d - starts[-1] < CHUNK_ALIGN:
        # a last chunk narrower than CHUNK_ALIGN (e.g. 7 columns, under one SIMD vector)
        # would be summed by another kernel than the same columns of the whole tensor
        starts[-1] -= CHUNK_ALIGN
        if starts[-1] == starts[-2]:
            starts.pop()
    return [slice(a, b) for a, b in itertools.pairwise([*starts, d])]


def sorted_column_chunks(
    x: torch.Tensor, rows: torch.Tensor | None = None, extra_rows: int = 2
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(cols, s)`` chunk by chunk: ``s`` is ``sort_columns(x[rows][:, cols])`` (every row when
    ``rows`` is None), the same values bit for bit, without ever holding all of it. ``s`` is
    only valid until the next chunk is drawn (on CPU one buffer serves every chunk).

    Each sort sees the same column as the whole-tensor sort would (the same kernel, one column at
    a time), so any column-wise reduction of the chunks equals that of the whole. The scratch
    (the sorted chunk; for ``torch.sort``, used off CPU and for other dtypes, its indices and
    copies too; plus ``extra_rows`` rows for the caller's reduction) stays within the bounds of
    :func:`column_chunks`.
    """
    m = x.shape[0] if rows is None else int(rows.numel())
    size = x.element_size()
    if not _numpy_sorts(x):
        for cols in column_chunks(x, m, m * torch_sort_bytes(x) + extra_rows * size):
            yield cols, torch.sort(x[:, cols] if rows is None else x[rows, cols], dim=0).values
        return
    # rows: the gathered chunk is a second copy
    chunks = column_chunks(x, m, m * size * (1 if rows is None else 2) + extra_rows * size)
    xn = x.detach().numpy()
    picked = None if rows is None else rows.cpu().numpy()
    if len(chunks) <= 1:  # the whole: exactly the unchunked sort (a contiguous copy)
        for cols in chunks:
            yield cols, torch.from_numpy(np.sort(xn if picked is None else xn[picked], axis=0))
        return
    # One buffer, a cache line wider than the chunk: numpy sorts a column by gathering its m
    # entries, one per row; with a row stride of a power-of-two multiple of the line size
    # (the aligned width) they all fall in a few cache sets and evict each other (3x slower).
    width = max(c.stop - c.start for c in chunks)
    buf = np.empty((m, width + 64 // size), dtype=xn.dtype)
    for cols in chunks:
        a = buf[:, : cols.stop - cols.start]
        a[...] = xn[:, cols] if picked is None else xn[picked, cols]
        a.sort(axis=0)  # np.sort(x, axis=0) is a copy and this in-place sort
        yield cols, torch.from_numpy(a)


def sorted_columns_reduce(
    x: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    rows: torch.Tensor | None = None,
    extra_rows: int = 2,
) -> torch.Tensor:
    """``reduce(sort_columns(x[rows]))`` for a column-wise ``reduce`` (``[m, c]`` sorted to
    ``[c]``), computed chunk by chunk (:func:`sorted_column_chunks`): the same result bit for
    bit, with a peak of extra memory of about ``1 / SCRATCH_FRACTION`` of ``x`` plus the
    ``[d]`` output instead of a full sorted copy. ``extra_rows``: how many ``[c]`` rows
    ``reduce`` allocates.
    """
    out = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
    for cols, s in sorted_column_chunks(x, rows, extra_rows):
        out[cols] = reduce(s)
    return out


def mean_closest_to_median(s: torch.Tensor, k: int) -> torch.Tensor:
    """Per column, the mean of the ``k`` values closest to the column median.

    ``s`` must already be column-sorted (``sort_columns``). The ``k`` values nearest the median
    form a contiguous window of the sorted column; the window with the smallest largest
    distance to the median is that set (ties: the lower window). The ``n - k + 1`` candidate
    windows are scanned in order, each step vectorised over all columns, with the window sum
    updated by one add and one subtract (Meamed, Bulyan's second phase). Scanning beats
    ``argmin(dim=0)`` over an ``[n - k + 1, d]`` tensor, which torch's CPU kernel does 10x
    slower than the whole scan.
    """
    n = s.shape[0]
    med = median_of_sorted(s)
    window = s[:k].sum(dim=0)
    best = window.clone()
    best_spread = torch.maximum(med - s[0], s[k - 1] - med)
    if _numpy_sorts(s):
        _scan_windows_numpy(s, k, med, window, best, best_spread)
        return best.div_(k)
    spread, upper, better = torch.empty_like(med), torch.empty_like(med), torch.empty_like(med)
    # Preallocated outputs and a 0/1 float mask: torch.where and fresh tensors are 10x slower
    # than these in-place kernels on CPU.
    for j in range(1, n - k + 1):
        window.add_(s[k - 1 + j]).sub_(s[j - 1])
        torch.sub(med, s[j], out=spread)
        torch.sub(s[k - 1 + j], med, out=upper)
        torch.maximum(spread, upper, out=spread)
        torch.lt(spread, best_spread, out=better)  # strict: ties keep the lower window
        torch.minimum(spread, best_spread, out=best_spread)
        torch.sub(window, best, out=upper)
        best.addcmul_(upper, better)
    return best.div_(k)


def _scan_windows_numpy(
    s: torch.Tensor,
    k: int,
    med: torch.Tensor,
    window: torch.Tensor,
    best: torch.Tensor,
    best_spread: torch.Tensor,
) -> None:
    """The window scan of :func:`mean_closest_to_median` in NumPy ufuncs on views of the same
    memory: the same IEEE operations in the same order (so the same bits), at less cost per
    call than torch's, which counts when the scan runs once per chunk of columns."""
    sn, md, win, bst, bsp = (t.numpy() for t in (s, med, window, best, best_spread))
    spread, upper, better = np.empty_like(md), np.empty_like(md), np.empty_like(md)
    with np.errstate(all="ignore"):  # overflow to inf / NaN as in torch, silently
        for j in range(1, s.shape[0] - k + 1):
            np.add(win, sn[k - 1 + j], out=win)
            np.subtract(win, sn[j - 1], out=win)
            np.subtract(md, sn[j], out=spread)
            np.subtract(sn[k - 1 + j], md, out=upper)
            np.maximum(spread, upper, out=spread)
            np.less(spread, bsp, out=better)  # strict: ties keep the lower window
            np.minimum(spread, bsp, out=bsp)
            np.subtract(win, bst, out=upper)
            np.multiply(upper, better, out=upper)  # torch's addcmul_: best + upper * better
            np.add(bst, upper, out=bst)


def median_of_sorted(s: torch.Tensor) -> torch.Tensor:
    """Column medians of a column-sorted ``s`` (even n: mean of the two middle values)."""
    n = s.shape[0]
    if n % 2:
        return s[n // 2].clone()
    return (s[n // 2 - 1] + s[n // 2]) / 2


_SORT_BELOW = 80
"""Rows of at most this many entries: :func:`smallest_in_rows` sorts (faster there)."""


def smallest_in_rows(s: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``[n, m]`` mask of the ``k`` smallest entries of each row of ``s``, ties by the
    smaller column index: the first ``k`` of a stable ascending sort of the row, found by a
    selection instead of a sort. Each row's k-th smallest value ``t`` (``np.partition`` on
    CPU, ``torch.kthvalue`` elsewhere) is a threshold: every entry ``< t`` is in, then the
    leftmost entries ``== t`` fill the rest: 4x faster than ``torch.sort`` at ``[1000, 1000]``
    on the 2-core reference machine, slower below about 80 columns (where the sort is used).
    A row with NaN (sorted last) falls back to the sort.
    """
    n, m = s.shape
    if k >= m:
        return torch.ones(n, m, dtype=torch.bool, device=s.device)
    if k <= 0 or n == 0:
        return torch.zeros(n, m, dtype=torch.bool, device=s.device)
    kth = None
    if m > _SORT_BELOW:
        if s.device.type == "cpu" and s.dtype in (torch.float32, torch.float64):
            kth = torch.from_numpy(np.partition(s.detach().numpy(), k - 1, axis=1)[:, k - 1])
        else:
            kth = torch.kthvalue(s, k, dim=1).values
    if kth is None or bool(kth.isnan().any()):
        order = torch.sort(s, dim=1, stable=True).indices[:, :k]
        return torch.zeros(n, m, dtype=torch.bool, device=s.device).scatter_(1, order, True)
    t = kth[:, None]
    below = s < t
    tied = s == t
    room = k - below.sum(dim=1, keepdim=True)
    return below | (tied & (tied.cumsum(dim=1) <= room))


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def smallest_sorted(s: torch.Tensor, k: int) -> torch.Tensor:
    """``s.topk(k, dim=1, largest=False).values``: each row's ``k`` smallest, ascending, bit
    for bit. For a non-negative CPU float32/float64 ``s`` (distances) the float bits are
    ranked as integers (-0.0 as 0): the same order, so the kernel makes the same comparisons,
    without its NaN checks (1.8x faster at ``[1000, 1000]``)."""
    bits = _BITS.get(s.dtype)
    if s.device.type == "cpu" and bits is not None and bool((s >= 0).all()):
        key = s.view(bits).clamp_min(0)  # >= 0 excludes NaN; -0.0 (the sign bit) ties 0.0
        return s.gather(1, key.topk(k, dim=1, largest=False).indices)
    return s.topk(k, dim=1, largest=False).values


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest scores, ties by the smaller index (stable sort)."""
    return torch.sort(scores, stable=True).indices[:k]


def mean_of_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean of the rows ``idx`` of ``x`` as one GEMV (no gathered copy of the rows)."""
    w = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    w[idx] = 1.0 / idx.numel()
    return w @ x


A = TypeVar("A")


def with_f(agg: A, f: int, exact: bool = False) -> A:
    """A shallow copy of ``agg`` configured for ``f`` Byzantine inputs (wrappers: recursively).

    By default ``f`` only lowers each rule's own ``f`` (a wrapper handing its base fewer
    inputs than it got, as Bucketing's bucket means); ``exact=True`` sets it everywhere.
    """
    new = copy.copy(agg)
    base = getattr(new, "base", None)
    if base is not None:
        new.base = with_f(base, f, exact)  # type: ignore[attr-defined]
    if hasattr(new, "f"):
        new.f = check_f(f) if exact else min(new.f, f)
    return new


# --- what a rule needs: how many inputs for its f ----------------------------------------------
#
# Every rule of this package declares the inputs it accepts for a Byzantine count f:
# ``min_inputs(f)`` (the fewest, e.g. Krum's 2f + 3), ``max_inputs(f)`` where a rule also has
# an upper limit (SMEA's C(n, f) subsets), and ``requires`` (the condition, as text). They are
# exactly the bounds the rule's ``ValueError`` enforces on an input of n rows (tested), so a
# strategy can check the number of nodes it samples before round 1 instead of discovering it
# round after round. Wrappers (``base``) combine their own bound with their base's.


def _own_f(agg: object, f: int | None) -> int:
    return int(getattr(agg, "f", 0) or 0) if f is None else check_f(f)


def set_f(agg: A, f: int | None) -> A:
    """``agg`` itself when ``f`` is None, else ``with_f(agg, f, exact=True)`` (every ``f`` of
    the chain set to ``f``: what a strategy's ``f`` does to an aggregator object)."""
    return agg if f is None else with_f(agg, f, exact=True)


def min_inputs(agg: object, f: int | None = None) -> int:
    """The fewest inputs ``agg`` accepts when set for ``f`` Byzantine inputs (None: its own
    ``f``). A callable that declares nothing is taken to accept any n >= 1."""
    method = getattr(agg, "min_inputs", None)
    return int(method(f)) if callable(method) else 1


def max_inputs(agg: object, f: int | None = None) -> int | None:
    """The most inputs ``agg`` accepts for ``f`` (None: no upper limit)."""
    method = getattr(agg, "max_inputs", None)
    return method(f) if callable(method) else None


class KeepsAllButF:
    """The bound of a wrapper that keeps n - f of its inputs before its ``base`` (NNM, CTMA):
    n > f, and what ``base`` needs (its upper limit too, if it has one)."""

    requires: ClassVar[str] = "n > f"
    base: Any

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: each part its own f)."""
        return max(_own_f(self, f) + 1, min_inputs(self.base, f))

    def max_inputs(self, f: int | None = None) -> int | None:
        """``base``'s upper limit, if it has one."""
        return max_inputs(self.base, f)


def accepts(agg: object, n: int, f: int | None = None) -> bool:
    """Whether ``agg`` set for ``f`` (None: its own) runs on ``n`` inputs: exactly when its
    ``ValueError`` for the number of inputs does not fire."""
    top = max_inputs(agg, f)
    return min_inputs(agg, f) <= n and (top is None or n <= top)


def chain(agg: object) -> list[object]:
    """``agg``, its ``base``, the base's base, ...: the wrappers, then the base rule last."""
    out = [agg]
    while (base := getattr(out[-1], "base", None)) is not None and len(out) < 64:
        out.append(base)
    return out


def breakdown(agg: object, n: int) -> int:
    """The most Byzantine inputs among ``n`` that ``agg`` can tolerate at all, whatever it
    requires: fewer than half (no rule tells a Byzantine half from the honest one), 0 for a
    base rule that is not robust (``Mean``), and at most a rule's ``F_LIMIT`` (MDA's 24)."""
    base = chain(agg)[-1]
    cap = 0 if getattr(base, "NOT_ROBUST", False) else max((n - 1) // 2, 0)
    for part in chain(agg):
        cap = min(cap, getattr(part, "F_LIMIT", cap))
    return cap


def largest_f(agg: object, n: int) -> int | None:
    """The largest f (at most :func:`breakdown`) for which ``agg`` runs on ``n`` inputs;
    None when it cannot run on ``n`` inputs even with f = 0."""
    for f in range(breakdown(agg, n), -1, -1):
        if accepts(agg, n, f):
            return f
    return None


def requirement(agg: object) -> str:
    """The conditions on n of ``agg`` and its bases, e.g. ``"NNM: n > f; Krum: n >= 2f + 3"``."""
    parts = []
    for part in chain(agg):
        text = getattr(part, "requires", None)
        if text:
            parts.append(f"{type(part).__name__}: {text}")
    return "; ".join(parts) or "n >= 1"
