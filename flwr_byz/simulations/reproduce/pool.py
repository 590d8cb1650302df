"""Run many experiments on the ``local`` engine in parallel processes, and read them back.

A run whose JSON file exists is not run again, so an interrupted ``flwr-byz reproduce`` (or an
experiment script) resumes where it stopped. Each job runs with one torch thread unless its
config sets ``threads`` (the worker processes: one intra-op and inter-op thread, and
``OMP_NUM_THREADS=1`` for anything they start): on a 2-core machine two single-threaded jobs
beat one job with two threads, and the numbers do not depend on ``jobs``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import statistics
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..engines import run_experiments
from ..result import Result
from ..runner import _flower_logging
from ..threads import one_thread_per_process

__all__ = [
    "TAIL",
    "first_reaching",
    "job_pool",
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


#: Torch threads of a job whose config leaves ``threads`` unset (auto).
JOB_THREADS = 1


def _run_one(cfg: ExperimentConfig, engine: str = "local") -> str:
    """One job on the local (or batched) engine, with ``JOB_THREADS`` torch threads unless
    ``cfg.threads`` is set (the result config records the count)."""
    job = cfg if cfg.threads else dataclasses.replace(cfg, threads=JOB_THREADS)
    with _flower_logging(False, logging.ERROR), without_flower_gc():
        run_experiments([job], engine=engine)
    return str(cfg.out)


def job_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` worker processes, each pinned to one thread (``one_thread_per_process``).

    They are spawned, not forked: a child forked from a process whose OpenMP threads have run
    (torch's intra-op pool, e.g. an experiment run in this process before) hangs in its first
    parallel region (GNU libgomp is not fork-safe), e.g. a job with ``threads=2``."""
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=one_thread_per_process,
    )


def run_all(
    configs: Sequence[ExperimentConfig],
    jobs: int,
    progress: Callable[[int, int, str], None] | None = None,
    engine: str = "local",
) -> None:
    """Run the configs whose ``out`` JSON is missing, ``jobs`` processes at a time, on the
    ``engine`` (``local`` or ``batched``).

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
            report(i, len(todo), _run_one(cfg, engine))
        return
    with job_pool(jobs) as pool:
        for i, out in enumerate(pool.map(partial(_run_one, engine=engine), todo), 1):
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
