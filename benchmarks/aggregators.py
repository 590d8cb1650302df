"""Speed and peak-memory benchmark: flwr_byz aggregators vs Flower and ByzFL.

For every size ``(n, d)`` (float32, f = n // 4, Bulyan f = (n - 3) // 4) and every rule, it
times (median of ``--repeats`` runs after one warm-up) and measures the peak extra memory of

* ours: ``flwr_byz.aggregators.get_aggregator(spec, f)`` on an ``[n, d]`` torch tensor;
* Flower Message API: ``flwr.serverapp.strategy.<Strategy>.aggregate_train`` on reply Messages
  (ArrayRecord with the client's layers + MetricRecord with "num-examples"), rebuilt before
  every run (outside the timing); this includes Flower's deserialisation and stacking;
* Flower numpy core: the numpy functions those strategies call, on the already-stacked array;
* Flower legacy: ``flwr.server.strategy.aggregate`` functions on ``list[tuple[NDArrays, int]]``;
* ByzFL 0.0.11 (``byzfl.aggregators``) on a torch tensor and on a numpy array;
* ``torch.mean(x, dim=0)``, the memory-bandwidth floor.

Peak extra memory is (peak RSS during the call - RSS just before): the kernel's high-water mark
``VmHWM``, reset just before the call through ``/proc/self/clear_refs`` (Linux; elsewhere RSS
sampled every ~1 ms by a background thread, which can miss short spikes); on a GPU
``torch.cuda.max_memory_allocated``. It is taken on the warm-up run (and on one more run for
calls under 1 s; the smaller is kept) and reported in MiB and as a multiple of the input.
Results go to JSON (``--out``) and a table is printed. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import importlib.metadata
import itertools
import json
import logging
import math
import os
import platform
import statistics
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flwr_byz.aggregators import get_aggregator
from flwr_byz.files import write_text
from flwr_byz.simulations.local import ensure_task_identity

MIB = 2**20
SIZES: tuple[tuple[int, int], ...] = ((20, 100_000), (50, 1_000_000), (100, 1_000_000))
QUICK_SIZES: tuple[tuple[int, int], ...] = ((20, 100_000),)

# (display name, get_aggregator spec)
RULES: tuple[tuple[str, str], ...] = (
    ("Mean", "mean"),
    ("Median", "median"),
    ("TrimmedMean", "trimmedmean"),
    ("GeometricMedian", "geomed"),
    ("Krum", "krum"),
    ("MultiKrum", "multikrum"),
    ("Bulyan", "bulyan"),
    ("CenteredClipping", "cc"),
    ("MDA", "mda"),
    ("Meamed", "meamed"),
    ("MoNNA", "monna"),
    ("CAF", "caf"),
    ("SMEA", "smea"),
    ("NNM+Mean", "nnm+mean"),
    ("NNM+Krum", "nnm+krum"),
    ("Bucketing(2)+Median", "bucketing:2+median"),
    ("Clipping+Mean", "clipping:1+mean"),
    ("ARC+Mean", "arc+mean"),
    ("CTMA+Median", "ctma+median"),
    ("CTMA+GeometricMedian", "ctma+geomed"),
)

# Flower counterparts (Message-API strategy / numpy core / legacy function) by rule name.
FLOWER_KIND: dict[str, str] = {
    "Mean": "mean",  # FedAvg / weighted sum / aggregate
    "Median": "median",  # FedMedian / np.median / aggregate_median
    "TrimmedMean": "trimmedmean",  # FedTrimmedAvg / trim_mean / aggregate_trimmed_avg
    "Krum": "krum",  # Krum / select_multikrum / aggregate_krum(to_keep=0)
    "MultiKrum": "multikrum",  # MultiKrum(n - f) / select_multikrum / aggregate_krum(n - f)
    "Bulyan": "bulyan",  # Bulyan / select_multikrum + aggregate_n_closest_weights / ...
}

# Up-front skip limits for baselines whose cost explodes (documented in the README).
BYZFL_MAX_SUBSETS = 100_000  # ByzFL MDA loops over all C(n, f) subsets in Python
BYZFL_SMEA_MAX_WORK = 1e9  # ByzFL SMEA touches (n - f) * d floats per subset: C(n,f)*(n-f)*d
BYZFL_NNM_MAX_BYTES = 8e9  # ByzFL NNM gathers an [n, n - f, d] float32 tensor
LEGACY_BULYAN_MAX_WORK = 1e11  # legacy Bulyan: Python-loop pairwise norms, sum m^2 * d

BASELINES = ("flower_msg", "flower_numpy", "flower_legacy", "byzfl")
NOT_REQUESTED = "skipped: not requested (--baselines)"


# --------------------------------------------------------------------------- memory / timing


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS so RSS counts live memory only (glibc)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
try:
    _STATM: int | None = os.open("/proc/self/statm", os.O_RDONLY)
except OSError:
    _STATM = None


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc/self/statm``), or None elsewhere."""
    if _STATM is None:
        return None
    return int(os.pread(_STATM, 128, 0).split()[1]) * _PAGE


def _status_bytes(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes, or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS (``VmHWM``) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


class PeakRss:
    """Context manager: the peak RSS above its entry value, from the kernel's high-water mark
    (``VmHWM``, reset on entry), so that no allocation is missed however short it lives."""

    def __init__(self) -> None:
        self.base: int | None = None
        self.peak: int | None = None

    def __enter__(self) -> PeakRss:
        reset_peak_rss()
        self.base = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = _status_bytes("VmHWM")  # the result is still alive here: it counts

    @property
    def extra(self) -> int | None:
        """Peak RSS minus RSS at entry, in bytes."""
        if self.base is None or self.peak is None:
            return None
        return max(0, self.peak - self.base)


PEAK_METHOD = "rss_hwm" if reset_peak_rss() else "rss_sampled_1ms"
"""How CPU peaks are measured here: ``VmHWM`` reset per call, or the sampling fallback."""


class RssSampler:
    """Context manager recording the peak RSS above its entry value, sampled every ~1 ms (the
    fallback where the kernel's peak cannot be reset)."""

    def __init__(self, interval_s: float = 1e-3) -> None:
        self.interval_s = interval_s
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = rss_bytes()
        if now is not None and self.peak is not None:
            self.peak = max(self.peak, now)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.base = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()  # the result is still alive here: it counts
        self._stop.set()
        self._thread.join()

    @property
    def extra(self) -> int | None:
        """Peak RSS minus RSS at entry, in bytes."""
        if self.base is None or self.peak is None:
            return None
        return max(0, self.peak - self.base)


@dataclass
class Measurement:
    """Outcome of one measured implementation: median time, peak extra memory, or an error."""

    ms: float | None = None
    peak_bytes: int | None = None
    runs: int = 0
    error: BaseException | None = None
    times_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0


Prepare = Callable[[], Callable[[], object]]
"""Builds fresh inputs (not timed) and returns the zero-argument call to time."""


def _run_once(prepare: Prepare, cuda: bool, probe: bool) -> tuple[float, int | None]:
    call = prepare()
    gc.collect(1)  # young generations only: a full collect costs ~0.1 s with torch imported
    _malloc_trim()
    out: object = None
    peak: int | None = None
    try:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            out = call()
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() - base
        elif probe:
            with PeakRss() if PEAK_METHOD == "rss_hwm" else RssSampler() as sampler:
                t0 = time.perf_counter()
                out = call()
                elapsed = time.perf_counter() - t0
            peak = sampler.extra
        else:
            t0 = time.perf_counter()
            out = call()
            elapsed = time.perf_counter() - t0
    finally:
        del out, call
        gc.collect(1)
    return elapsed, peak


def measure(prepare: Prepare, repeats: int, cap_s: float, cuda: bool = False) -> Measurement:
    """Warm-up (memory probe), then ``min(repeats, cap_s // warm-up)`` timed runs (>= 1).

    A warm-up longer than ``cap_s`` is recorded as a single-run timing and not repeated.
    Exceptions are caught and returned in ``Measurement.error``.
    """
    m = Measurement()
    start = time.perf_counter()
    gc.collect()
    try:
        warm, peak = _run_once(prepare, cuda, probe=True)
        peaks = [peak]
        if warm > cap_s:
            m.times_ms = [warm * 1e3]
        else:
            timed = min(repeats, max(1, int(cap_s // max(warm, 1e-9))))
            m.times_ms = [_run_once(prepare, cuda, probe=False)[0] * 1e3 for _ in range(timed)]
            if warm < 1.0:  # a second, cheap probe without the warm-up's one-time allocations
                peaks.append(_run_once(prepare, cuda, probe=True)[1])
    except Exception as exc:
        m.error = exc
    m.wall_s = time.perf_counter() - start
    if m.error is not None:
        return m
    m.ms = statistics.median(m.times_ms)
    m.runs = len(m.times_ms)
    known = [p for p in peaks if p is not None]
    m.peak_bytes = min(known) if known else None
    return m


def describe_error(exc: BaseException, refused: bool = False) -> str:
    """``refused: <msg>`` for a ValueError of ours, ``error: <Type>: <msg>`` otherwise."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if refused and isinstance(exc, ValueError):
        return f"refused: {msg}"
    return f"error: {type(exc).__name__}: {msg}"[:300]


# --------------------------------------------------------------------------- inputs


def make_inputs(n: int, d: int, f: int, seed: int) -> torch.Tensor:
    """``[n, d]`` float32: n - f honest rows ``mu + 0.1 N(0, I)``, f Byzantine rows x (-3)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g).mul_(0.1).add_(mu)
    if f:
        x[n - f :].mul_(-3.0)
    return x


def layer_bounds(d: int, layers: int) -> list[tuple[int, int]]:
    """Split ``range(d)`` into ``layers`` contiguous chunks (the fake model's layers)."""
    cuts = np.linspace(0, d, max(1, min(layers, d)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts)]


# --------------------------------------------------------------------------- Flower


class FlowerReplies:
    """Reply Messages built from pre-serialised Arrays: cheap to rebuild before every run."""

    def __init__(self, xn: np.ndarray, bounds: list[tuple[int, int]]) -> None:
        from flwr.app import Array, ConfigRecord, Message, RecordDict

        ensure_task_identity()
        self.payload: list[list[tuple[str, Array]]] = [
            [
                (f"layer{j}", Array(np.ascontiguousarray(row[a:b])))
                for j, (a, b) in enumerate(bounds)
            ]
            for row in xn
        ]
        self.instructions = [
            Message(
                RecordDict({"config": ConfigRecord({})}), dst_node_id=i + 1, message_type="train"
            )
            for i in range(xn.shape[0])
        ]

    def build(self) -> list[Any]:
        """Fresh reply Messages (new records around the shared immutable bytes)."""
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

        replies = []
        for ins, layers in zip(self.instructions, self.payload, strict=True):
            arrays = ArrayRecord(
                {
                    k: Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=a.data)
                    for k, a in layers
                }
            )
            content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10})})
            replies.append(Message(content, reply_to=ins))
        return replies


def trimmed_beta(n: int, f: int) -> float:
    """FedTrimmedAvg's cut fraction with ``int(beta * n) == f``."""
    beta = f / n
    return beta if int(beta * n) == f else (f + 0.5) / n


def flower_strategy(kind: str, n: int, f: int, fb: int) -> Any:
    """The ``flwr.serverapp.strategy`` strategy doing rule ``kind``."""
    from flwr.serverapp import strategy as s

    if kind == "mean":
        return s.FedAvg()
    if kind == "median":
        return s.FedMedian()
    if kind == "trimmedmean":
        return s.FedTrimmedAvg(beta=trimmed_beta(n, f))
    if kind == "krum":
        return s.Krum(num_malicious_nodes=f)
    if kind == "multikrum":
        return s.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f)
    if kind == "bulyan":
        return s.Bulyan(num_malicious_nodes=fb)
    raise KeyError(kind)


class _StackedRow:
    """Duck-types what ``select_multikrum`` reads of a RecordDict/ArrayRecord, over one row of
    the already-stacked array (so Flower's own function runs without deserialisation)."""

    def __init__(self, row: np.ndarray) -> None:
        self.row = row
        self.array_records = {"arrays": self}

    def __getitem__(self, key: str) -> _StackedRow:
        return self

    def to_numpy_ndarrays(self) -> list[np.ndarray]:
        return [self.row]


def _weighted_sum(rows: Sequence[np.ndarray]) -> np.ndarray:
    """FedAvg's ``aggregate_arrayrecords`` core with equal weights."""
    w = 1.0 / len(rows)
    acc = rows[0] * w
    for row in rows[1:]:
        acc += row * w
    return acc


def flower_numpy_call(kind: str, xn: np.ndarray, f: int, fb: int) -> Callable[[], object]:
    """The numpy functions of Flower's Message-API strategy ``kind`` on the stacked array."""
    from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
    from flwr.serverapp.strategy.multikrum import select_multikrum

    n = xn.shape[0]

    def run() -> object:
        if kind == "mean":
            return _weighted_sum(list(xn))
        if kind == "median":
            return np.median(xn, axis=0)
        if kind == "trimmedmean":
            return trim_mean(xn, trimmed_beta(n, f))
        contents: list[Any] = [_StackedRow(row) for row in xn]
        if kind == "krum":
            return select_multikrum(contents, f, 1)[0].row * 1.0
        if kind == "multikrum":
            return _weighted_sum([c.row for c in select_multikrum(contents, f, n - f)])
        if kind == "bulyan":
            theta = n - 2 * fb
            selected = [[c.row] for c in select_multikrum(contents, fb, theta)]
            medians = [np.median(arr, axis=0) for arr in zip(*selected, strict=True)]
            return aggregate_n_closest_weights(medians, selected, theta - 2 * fb)
        raise KeyError(kind)

    return run


def flower_legacy_call(
    kind: str, xn: np.ndarray, f: int, fb: int, bounds: list[tuple[int, int]]
) -> Callable[[], object]:
    """``flwr.server.strategy.aggregate`` on a fresh ``list[tuple[NDArrays, int]]`` (views)."""
    from flwr.server.strategy import aggregate as agg

    n = xn.shape[0]
    results = [([row[a:b] for a, b in bounds], 10) for row in xn]
    if kind == "mean":
        return lambda: agg.aggregate(results)
    if kind == "median":
        return lambda: agg.aggregate_median(results)
    if kind == "trimmedmean":
        return lambda: agg.aggregate_trimmed_avg(results, trimmed_beta(n, f))
    if kind == "krum":
        return lambda: agg.aggregate_krum(results, num_malicious=f, to_keep=0)
    if kind == "multikrum":
        return lambda: agg.aggregate_krum(results, num_malicious=f, to_keep=n - f)
    if kind == "bulyan":  # pops from ``results``: hence the fresh list per run
        return lambda: agg.aggregate_bulyan(
            results, num_malicious=fb, aggregation_rule=agg.aggregate_krum, to_keep=0
        )
    raise KeyError(kind)


def legacy_skip(kind: str, n: int, d: int, fb: int) -> str | None:
    """Reason to skip a legacy function up front, or None."""
    if kind == "bulyan":
        work = sum(m * m for m in range(2 * fb + 1, n + 1)) * d
        if work > LEGACY_BULYAN_MAX_WORK:
            return (
                f"skipped: legacy aggregate_bulyan re-runs aggregate_krum (pairwise norms in a "
                f"Python double loop) theta={n - 2 * fb} times: sum m^2 * d = {work:.1e} "
                f"> {LEGACY_BULYAN_MAX_WORK:.0e} element ops (minutes)"
            )
    return None


# --------------------------------------------------------------------------- ByzFL

BYZFL_STUBS = (
    "byzfl.benchmark",
    "byzfl.benchmark.benchmark",
    "byzfl.benchmark.managers",
    "byzfl.benchmark.train",
    "byzfl.benchmark.evaluate_results",
)


def import_byzfl() -> tuple[types.ModuleType | None, str | None]:
    """``byzfl.aggregators`` with ``byzfl.benchmark`` (which needs torchvision) stubbed out."""
    for name in BYZFL_STUBS:
        sys.modules.setdefault(name, types.ModuleType(name))
    try:
        # Not ``import byzfl.aggregators as m``: byzfl/__init__ star-imports the package, which
        # rebinds the attribute ``byzfl.aggregators`` to the submodule of the same name (no
        # pre-aggregators there); import_module returns the package from sys.modules.
        return importlib.import_module("byzfl.aggregators"), None
    except Exception as exc:
        return None, f"ByzFL not importable: {type(exc).__name__}: {exc}"


def _fresh(data: Any) -> Any:
    """A copy of a torch tensor or numpy array."""
    return data.clone() if isinstance(data, torch.Tensor) else data.copy()


def _chain(*stages: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(v: Any) -> Any:
        for stage in stages:
            v = stage(v)
        return v

    return run


def byzfl_factory(
    name: str, bz: types.ModuleType, f: int
) -> Callable[[], Callable[[Any], Any]] | None:
    """A factory of fresh ByzFL callables for rule ``name`` (CenteredClipping is stateful);
    None where ByzFL has no such rule."""
    table: dict[str, Callable[[], Callable[[Any], Any]]] = {
        "Mean": lambda: bz.Average(),
        "Median": lambda: bz.Median(),
        "TrimmedMean": lambda: bz.TrMean(f=f),
        "GeometricMedian": lambda: bz.GeometricMedian(),  # ByzFL defaults nu=0.1, T=3
        "Krum": lambda: bz.Krum(f=f),
        "MultiKrum": lambda: bz.MultiKrum(f=f),
        "CenteredClipping": lambda: bz.CenteredClipping(),  # tau=100, L=1 = ours
        "MDA": lambda: bz.MDA(f=f),
        "Meamed": lambda: bz.Meamed(f=f),
        "MoNNA": lambda: bz.MoNNA(f=f),
        "CAF": lambda: bz.CAF(f=f),
        "SMEA": lambda: bz.SMEA(f=f),
        "NNM+Mean": lambda: _chain(bz.NNM(f=f), bz.Average()),
        "NNM+Krum": lambda: _chain(bz.NNM(f=f), bz.Krum(f=f)),
        "Bucketing(2)+Median": lambda: _chain(bz.Bucketing(s=2), bz.Median()),
        "Clipping+Mean": lambda: _chain(bz.Clipping(c=1.0), bz.Average()),
        "ARC+Mean": lambda: _chain(bz.ARC(f=f), bz.Average()),
    }
    return table.get(name)


BYZFL_MISSING = {
    "Bulyan": "ByzFL 0.0.11 has no Bulyan",
    "CTMA+Median": "ByzFL 0.0.11 has no CTMA",
    "CTMA+GeometricMedian": "ByzFL 0.0.11 has no CTMA",
}
BYZFL_MUTATES = {"Clipping+Mean", "ARC+Mean"}  # ByzFL Clipping/ARC clip their input in place

RULE_NOTES: dict[str, tuple[str, ...]] = {
    "Mean": ("Flower: FedAvg (equal num-examples) / its weighted-sum loop / aggregate()",),
    "GeometricMedian": ("ByzFL GeometricMedian at its defaults nu=0.1, T=3 (ours: eps=1e-6)",),
    "Bulyan": (
        "Flower Message-API Bulyan picks theta inputs by one MultiKrum scoring (not iterated "
        "Krum) and runs gc.collect() per selected reply (to_numpy_ndarrays(keep_input=False))",
    ),
    "Clipping+Mean": ("ByzFL Clipping(c=1.0) clips in place: it gets a fresh copy per run",),
    "ARC+Mean": ("ByzFL ARC clips in place: it gets a fresh copy per run",),
}


def byzfl_skip(name: str, n: int, d: int, f: int) -> str | None:
    """Reason to skip ByzFL up front (no counterpart, or infeasible by a documented rule)."""
    if name in BYZFL_MISSING:
        return f"skipped: {BYZFL_MISSING[name]}"
    subsets = math.comb(n, f)
    if name == "MDA" and subsets > BYZFL_MAX_SUBSETS:
        return (
            f"skipped: ByzFL MDA enumerates C({n},{f}) = {subsets:.2e} "
            f"> {BYZFL_MAX_SUBSETS:.0e} subsets in Python"
        )
    if name == "SMEA":
        work = subsets * (n - f) * d
        if work > BYZFL_SMEA_MAX_WORK:
            return (
                f"skipped: ByzFL SMEA touches C({n},{f})*(n-f)*d = {work:.1e} "
                f"> {BYZFL_SMEA_MAX_WORK:.0e} floats (one (n-f) x d slice per subset)"
            )
    if name.startswith("NNM"):
        need = n * (n - f) * d * 4
        if need > BYZFL_NNM_MAX_BYTES:
            return (
                f"skipped: ByzFL NNM gathers n*(n-f)*d*4 = {need / 1e9:.1f} GB "
                f"> {BYZFL_NNM_MAX_BYTES / 1e9:.0f} GB"
            )
    return None


# --------------------------------------------------------------------------- driver


def norm_name(name: str) -> str:
    """Case/punctuation-insensitive key: "NNM+Krum" and "nnm+krum" -> "nnmkrum"."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def select_rules(only: str | None) -> list[tuple[str, str]]:
    """The rules named in ``--only`` (display names or specs), or all of them."""
    if not only:
        return list(RULES)
    lookup = {}
    for name, spec in RULES:
        lookup[norm_name(name)] = (name, spec)
        lookup[norm_name(spec)] = (name, spec)
    chosen = []
    for item in only.split(","):
        if not item.strip():
            continue
        key = norm_name(item)
        if key not in lookup:
            try:  # any other spec of ours (no baseline has it)
                get_aggregator(item.strip(), f=1)
            except ValueError:
                known = ", ".join(n for n, _ in RULES)
                raise SystemExit(f"unknown rule {item!r}; known: {known}, or any spec") from None
            lookup[key] = (item.strip(), item.strip())
        if lookup[key] not in chosen:
            chosen.append(lookup[key])
    return chosen


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"50x1000000,100x1000000"`` -> ``[(50, 1000000), (100, 1000000)]``."""
    sizes = []
    for part in text.split(","):
        n, _, d = part.strip().lower().partition("x")
        sizes.append((int(n), int(d.replace("_", ""))))
    return sizes


def machine_info(device: str) -> dict[str, Any]:
    """CPU, memory and library versions of this run."""

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "flwr": version("flwr"),
        "byzfl": version("byzfl"),
        "device": device,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None
            )
        with open("/proc/meminfo") as fh:
            info["mem_total_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if device.startswith("cuda"):
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """Runs every selected rule at one size and fills the JSON entry."""

    def __init__(
        self,
        n: int,
        d: int,
        args: argparse.Namespace,
        bz: types.ModuleType | None,
        bz_error: str | None,
    ) -> None:
        self.n, self.d, self.args, self.bz, self.bz_error = n, d, args, bz, bz_error
        self.f = self.n // 4
        self.fb = (self.n - 3) // 4
        self.device = torch.device(self.args.device)
        self.cuda = self.device.type == "cuda"
        self.input_bytes = self.n * self.d * 4
        self.bounds = layer_bounds(self.d, self.args.layers)
        self.x = make_inputs(self.n, self.d, self.f, self.args.seed)
        self.xn = self.x.numpy()
        self.xd = self.x.to(self.device) if self.cuda else self.x
        self._replies: FlowerReplies | None = None

    def run(self, prepare: Prepare, cuda: bool = False) -> Measurement:
        return measure(prepare, self.args.repeats, self.args.cap_s, cuda=cuda)

    def replies(self) -> FlowerReplies:
        if self._replies is None:
            self._replies = FlowerReplies(self.xn, self.bounds)
        return self._replies

    def record(
        self, entry: dict[str, Any], key: str, m: Measurement, refused: bool = False
    ) -> None:
        """Store ``m`` under ``<key>_ms``/``_peak_mb``/``_peak_ratio`` (or the skip reason)."""
        entry[f"{key}_ms"] = None if m.ms is None else round(m.ms, 3)
        entry[f"{key}_peak_mb"] = None if m.peak_bytes is None else round(m.peak_bytes / MIB, 2)
        entry[f"{key}_peak_ratio"] = (
            None if m.peak_bytes is None else round(m.peak_bytes / self.input_bytes, 3)
        )
        entry["runs"][key] = m.runs
        entry["wall_s"][key] = round(m.wall_s, 2)
        if m.error is not None:
            entry["skipped"][key] = describe_error(m.error, refused=refused)
        elif m.runs == 1 and m.ms is not None:
            if m.ms > self.args.cap_s * 1e3:
                entry["notes"].append(f"{key}: single run (warm-up > {self.args.cap_s:g} s)")

    def measure_baseline(self, entry: dict[str, Any], key: str, prepare: Prepare) -> None:
        """Time baseline ``key`` unless ``--baselines`` leaves it out."""
        if key in self.args.baselines:
            self.record(entry, key, self.run(prepare))
        else:
            self.skip(entry, key, NOT_REQUESTED)

    def skip(self, entry: dict[str, Any], key: str, reason: str) -> None:
        for suffix in ("ms", "peak_mb", "peak_ratio"):
            entry[f"{key}_{suffix}"] = None
        entry["runs"][key] = 0
        entry["skipped"][key] = reason

    def size_entry(self, rules: list[tuple[str, str]], floor: Measurement) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": self.n,
            "d": self.d,
            "f": self.f,
            "f_bulyan": self.fb,
            "input_mb": round(self.input_bytes / MIB, 2),
            "peak_memory": "cuda_allocated" if self.cuda else PEAK_METHOD,
            "layers": len(self.bounds),
            "mean_floor_ms": None if floor.ms is None else round(floor.ms, 3),
            "rules": {},
        }
        for name, spec in rules:
            out["rules"][name] = self.bench_rule(name, spec, floor)
        return out

    def bench_rule(self, name: str, spec: str, floor: Measurement) -> dict[str, Any]:
        n, d = self.n, self.d
        f = self.fb if name == "Bulyan" else self.f
        e: dict[str, Any] = {"spec": spec, "f": f, "runs": {}, "wall_s": {}, "skipped": {}}
        e["notes"] = []
        _log(f"[{n}x{d}] {name}: ours")

        def ours() -> Callable[[], object]:
            agg = get_aggregator(spec, f)
            return lambda: agg(self.xd)

        self.record(e, "ours", self.run(ours, cuda=self.cuda), refused=True)
        e["ours_peak_kind"] = "cuda_allocated" if self.cuda else PEAK_METHOD

        kind = FLOWER_KIND.get(name)
        wanted = set(self.args.baselines)
        if kind is None:
            for key in ("flower_msg", "flower_numpy", "flower_legacy"):
                self.skip(e, key, "skipped: no Flower counterpart")
        else:
            _log(f"[{n}x{d}] {name}: Flower message API / numpy core / legacy")
            strategy = flower_strategy(kind, n, f, self.fb)
            e["flower_strategy"] = type(strategy).__name__

            def msg() -> Callable[[], object]:
                replies = self.replies().build()
                return lambda: strategy.aggregate_train(1, replies)

            self.measure_baseline(e, "flower_msg", msg)
            self.measure_baseline(
                e, "flower_numpy", lambda: flower_numpy_call(kind, self.xn, f, self.fb)
            )
            reason = legacy_skip(kind, n, d, self.fb)
            if "flower_legacy" not in wanted:
                self.skip(e, "flower_legacy", NOT_REQUESTED)
            elif reason:
                self.skip(e, "flower_legacy", reason)
            else:
                self.record(
                    e,
                    "flower_legacy",
                    self.run(lambda: flower_legacy_call(kind, self.xn, f, self.fb, self.bounds)),
                )

        reason = self.bz_error or byzfl_skip(name, n, d, f)
        if "byzfl" not in wanted:
            reason = NOT_REQUESTED
        if not reason and self.bz is not None and byzfl_factory(name, self.bz, f) is None:
            reason = "skipped: no ByzFL counterpart"
        if reason or self.bz is None:
            for key in ("byzfl_torch", "byzfl_numpy"):
                self.skip(e, key, reason or "skipped: ByzFL not importable")
        else:
            factory = byzfl_factory(name, self.bz, f)
            assert factory is not None  # checked above
            copy = name in BYZFL_MUTATES
            for key, data in (("byzfl_torch", self.x), ("byzfl_numpy", self.xn)):
                _log(f"[{n}x{d}] {name}: {key}")

                def prep(data: Any = data) -> Callable[[], object]:
                    fn, v = factory(), (_fresh(data) if copy else data)
                    return lambda: fn(v)

                self.record(e, key, self.run(prep))
        e["notes"].extend(RULE_NOTES.get(name, ()))

        self.summarise(e, floor)
        return e

    def summarise(self, e: dict[str, Any], floor: Measurement) -> None:
        """Best ByzFL input type, speedups, and the multiple of the mean floor."""
        bz = {k: e[f"byzfl_{k}_ms"] for k in ("torch", "numpy") if e[f"byzfl_{k}_ms"] is not None}
        best = min(bz, key=lambda k: bz[k]) if bz else None
        e["byzfl_impl"] = best
        e["byzfl_ms"] = bz[best] if best else None
        e["byzfl_peak_mb"] = e[f"byzfl_{best}_peak_mb"] if best else None
        e["mean_floor_ms"] = None if floor.ms is None else round(floor.ms, 3)
        ours = e["ours_ms"]

        def ratio(base: float | None) -> float | None:
            return None if base is None or not ours else round(base / ours, 2)

        candidates = [v for v in (e["flower_msg_ms"], e["byzfl_ms"]) if v is not None]
        e["speedup_vs_best_baseline"] = ratio(min(candidates) if candidates else None)
        e["speedup_vs_flower_msg"] = ratio(e["flower_msg_ms"])
        e["speedup_vs_flower_numpy"] = ratio(e["flower_numpy_ms"])
        e["speedup_vs_flower_legacy"] = ratio(e["flower_legacy_ms"])
        e["speedup_vs_byzfl"] = ratio(e["byzfl_ms"])
        e["x_of_mean"] = None if ours is None or not floor.ms else round(ours / floor.ms, 2)


# --------------------------------------------------------------------------- table


def _fmt(v: float | None, width: int, suffix: str = "") -> str:
    if v is None:
        return "-".rjust(width)
    text = f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return (text + suffix).rjust(width)


def print_table(size: dict[str, Any]) -> None:
    """Readable per-size table on stdout, then the skip reasons."""
    print(
        f"\nn={size['n']} d={size['d']} f={size['f']} (Bulyan f={size['f_bulyan']}), "
        f"input {size['input_mb']} MiB, torch.mean floor {_fmt(size['mean_floor_ms'], 0)} ms; "
        f"peak = extra memory of ours ({size.get('peak_memory', 'rss')}), xInput = peak / input"
    )
    cols = (
        ("rule", 21), ("ours ms", 9), ("peak MiB", 9), ("xInput", 7), ("Fl.msg", 8),
        ("Fl.np", 8), ("Fl.legacy", 9), ("ByzFL", 8), ("impl", 5), ("best/ours", 9),
        ("leg/ours", 8), ("xMean", 7),
    )  # fmt: skip
    print(" ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(cols)))
    notes: list[str] = []
    for name, r in size["rules"].items():
        failed = "refused" if r["skipped"].get("ours", "").startswith("refused") else "error"
        ours = _fmt(r["ours_ms"], 9) if r["ours_ms"] is not None else failed.rjust(9)
        row = [
            name.ljust(21),
            ours,
            _fmt(r["ours_peak_mb"], 9),
            _fmt(r["ours_peak_ratio"], 7),
            _fmt(r["flower_msg_ms"], 8),
            _fmt(r["flower_numpy_ms"], 8),
            _fmt(r["flower_legacy_ms"], 9),
            _fmt(r["byzfl_ms"], 8),
            (r["byzfl_impl"] or "-").rjust(5),
            _fmt(r["speedup_vs_best_baseline"], 9, "x"),
            _fmt(r["speedup_vs_flower_legacy"], 8, "x"),
            _fmt(r["x_of_mean"], 7),
        ]
        print(" ".join(row))
        reasons: dict[str, list[str]] = {}
        for key, why in r["skipped"].items():
            if "no Flower counterpart" not in why:
                reasons.setdefault(why, []).append(key)
        notes.extend(f"  {name} / {', '.join(keys)}: {why}" for why, keys in reasons.items())
        notes.extend(f"  {name}: {note}" for note in r["notes"])
    if notes:
        print("notes:")
        print("\n".join(notes))


# --------------------------------------------------------------------------- main


def mean_call(x: torch.Tensor) -> Prepare:
    """The memory-bandwidth floor: ``torch.mean(x, dim=0)``."""
    return lambda: lambda: torch.mean(x, dim=0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="only n=20, d=100000")
    p.add_argument("--sizes", help="comma list of NxD, e.g. 50x1000000,100x1000000")
    p.add_argument("--only", help="comma list of rule names or specs, e.g. krum,median,nnm+krum")
    p.add_argument("--out", default="benchmarks/results/aggregators.json", help="JSON output")
    p.add_argument("--device", default="cpu", help="device of our rules (baselines: CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    p.add_argument("--cap-s", type=float, default=60.0, help="single run if warm-up > cap")
    p.add_argument("--layers", type=int, default=4, help="layers of the fake Flower model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma list of baselines to time (default: all of {','.join(BASELINES)})",
    )
    args = p.parse_args(argv)
    args.baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = sorted(set(args.baselines) - set(BASELINES))
    if unknown:
        p.error(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; write JSON to ``--out`` and print the tables."""
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.WARNING)  # aggregate_train logs every call at INFO
    sizes = parse_sizes(args.sizes) if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    rules = select_rules(args.only)
    bz, bz_error = import_byzfl()
    result: dict[str, Any] = {
        "machine": machine_info(args.device),
        "config": {
            "repeats": args.repeats,
            "cap_s": args.cap_s,
            "layers": args.layers,
            "seed": args.seed,
            "dtype": "float32",
            "peak_memory_cpu": PEAK_METHOD,
            "f": "n // 4 (Bulyan: (n - 3) // 4)",
            "byzfl_import": bz_error or "ok (byzfl.benchmark stubbed)",
            "limits": {
                "byzfl_mda_max_subsets": BYZFL_MAX_SUBSETS,
                "byzfl_smea_max_work": BYZFL_SMEA_MAX_WORK,
                "byzfl_nnm_max_bytes": BYZFL_NNM_MAX_BYTES,
                "legacy_bulyan_max_work": LEGACY_BULYAN_MAX_WORK,
            },
        },
        "sizes": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for n, d in sizes:
        bench = Bench(n, d, args, bz, bz_error)
        _log(f"[{n}x{d}] torch.mean floor")
        floor = bench.run(mean_call(bench.xd), cuda=bench.cuda)
        entry = bench.size_entry(rules, floor)
        if bench.cuda:
            entry["mean_floor_cpu_ms"] = bench.run(mean_call(bench.x)).ms
        result["sizes"].append(entry)
        del bench
        gc.collect()
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        result["machine"]["loadavg_end"] = (
            list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        )
        write_text(out, json.dumps(result, indent=2) + "\n")  # partial results survive (atomic)
    for size in result["sizes"]:
        print_table(size)
    print(f"\nwrote {out} in {result['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
