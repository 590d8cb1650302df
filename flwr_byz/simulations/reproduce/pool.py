"""Run many experiments on the ``local`` engine in parallel processes, and read them back.

A run whose JSON file exists is not run again, so an interrupted ``flwr-byz reproduce`` (or an
experiment script) resumes where it stopped. Each job is pinned to one torch thread: on a
2-core machine two single-threaded jobs beat one job with two threads.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..result import Result
from ..runner import _flower_logging, run_experiments

__all__ = [
    "TAIL",
    "first_reaching",
    "mean_std",
    "pct",
    "run_all",
    "tail_acc",
    "without_flower_gc",
]

TAIL = 10  # "accuracy" of a claim = mean of the last TAIL rounds (MNIST-1D curves are noisy)


class _NoCollect:
    """Stands in for the ``gc`` module inside ``flwr.app.message.arrayrecord``."""

    @staticmethod
    def collect(generation: int = 2) -> int:
        return 0


@contextmanager
def without_flower_gc() -> Iterator[None]:
    """Skip the ``gc.collect()`` that Flower's ``ArrayRecord`` conversions run with
    ``keep_input=False`` (Flower's Bulyan: once per selected reply, ~0.1 s each in a process
    that imported torch). Only the time changes, never a number; the performance section
    measures Flower as shipped."""
    from flwr.app.message import arrayrecord

    saved = arrayrecord.gc
    arrayrecord.gc = _NoCollect  # type: ignore[assignment]
    try:
        yield
    finally:
        arrayrecord.gc = saved


def _run_one(cfg: ExperimentConfig) -> str:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core per job
    try:
        with _flower_logging(False, logging.ERROR), without_flower_gc():
            run_experiments([cfg], engine="local")
    finally:
        torch.set_num_threads(threads)
    return str(cfg.out)


def run_all(
    configs: Sequence[ExperimentConfig],
    jobs: int,
    progress: Callable[[int, int, str], None] | None = None,
) -> None:
    """Run the configs whose ``out`` JSON is missing, ``jobs`` processes at a time.

    ``progress(done, total, out)`` is called after every run (default: a printed line).
    """
    if any(not c.out for c in configs):
        raise ValueError("every config needs an 'out' path")
    todo = list({c.out: c for c in configs if not Path(str(c.out)).exists()}.values())
    report = progress or (lambda i, n, out: print(f"[{i}/{n}] {out}", flush=True))
    if not todo:
        return
    if jobs <= 1:
        for i, cfg in enumerate(todo, 1):
            report(i, len(todo), _run_one(cfg))
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for i, out in enumerate(pool.map(_run_one, todo), 1):
            report(i, len(todo), out)


def tail_acc(r: Result, upto: int | None = None, tail: int = TAIL) -> float:
    """Mean accuracy of the ``tail`` rounds ending at round index ``upto`` (default: last)."""
    end = len(r.rounds) if upto is None else upto + 1
    accs = [rec.accuracy for rec in r.rounds[max(0, end - tail) : end]]
    return sum(accs) / len(accs) if accs else math.nan


def first_reaching(r: Result, target: float, tail: int = 1) -> int | None:
    """Index of the first round whose trailing ``tail``-round mean accuracy >= ``target``."""
    for i in range(len(r.rounds)):
        if tail_acc(r, i, tail) >= target:
            return i
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite ``values``."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def pct(x: Any) -> str:
    """A fraction as a percentage with one decimal ("n/a" for NaN/None)."""
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"
