"""The timing and peak-memory harness of the aggregator benchmark.

``measure(prepare, repeats, cap_s)`` runs a call once as a warm-up (its memory probe), then
``min(repeats, cap_s // warm-up)`` timed runs (>= 1), and returns the median time and the peak
extra memory in a :class:`Measurement` (exceptions are caught into ``Measurement.error``).

Peak extra memory is (peak RSS during the call - RSS just before): the kernel's high-water mark
``VmHWM``, reset just before the call through ``/proc/self/clear_refs`` (Linux; elsewhere RSS
sampled every ~1 ms by a background thread, which can miss short spikes); on a GPU
``torch.cuda.max_memory_allocated``. It is taken on the warm-up run (and on one more run for
calls under 1 s; the smaller is kept).
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "MIB",
    "PEAK_METHOD",
    "Measurement",
    "PeakRss",
    "Prepare",
    "RssSampler",
    "measure",
    "reset_peak_rss",
    "rss_bytes",
]

MIB = 2**20


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
