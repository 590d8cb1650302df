"""Run many experiments on the ``local`` engine in parallel processes, and read them back.

A run whose JSON file exists is not run again, so an interrupted ``flwr-byz reproduce`` (or an
experiment script) resumes where it stopped. Each job runs with one torch thread unless its
config sets ``threads`` (the worker processes: one intra-op and inter-op thread, and
``OMP_NUM_THREADS=1`` for anything they start): on a 2-core machine two single-threaded jobs
beat one job with two threads, and the numbers do not depend on ``jobs``.

Interrupts: the workers ignore SIGINT (a terminal's Ctrl-C reaches them too); on an
interrupt, or any other exception, ``run_all`` terminates them at once (SIGTERM: the job in
progress unwinds, so a file being written is left as it was, and the worker exits). The
runs already written stay and are not run again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from .. import interrupt
from ..simulations.config import ExperimentConfig
from ..simulations.engines import run_experiments
from ..simulations.flower_gc import without_flower_gc
from ..simulations.result import Result
from ..simulations.runner import _flower_logging
from ..simulations.threads import one_thread_per_process

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


#: Torch threads of a job whose config leaves ``threads`` unset (auto).
JOB_THREADS = 1


def _run_one(cfg: ExperimentConfig, engine: str = "local") -> str:
    """One job on the local (or batched) engine, with ``JOB_THREADS`` torch threads unless
    ``cfg.threads`` is set (the result config records the count)."""
    job = cfg if cfg.threads else dataclasses.replace(cfg, threads=JOB_THREADS)
    with _flower_logging(False, logging.ERROR), without_flower_gc():
        run_experiments([job], engine=engine)
    return str(cfg.out)


#: Whether this worker process is running a job (``_job``): a SIGTERM then unwinds it first.
_IN_JOB = False


def _worker_signal(signum: int, frame: FrameType | None) -> None:
    if _IN_JOB:
        raise interrupt.Interrupted(signum)
    os._exit(128 + signum)


def _worker_init() -> None:
    """A pool worker: one thread (``one_thread_per_process``), SIGINT ignored, and SIGTERM /
    SIGHUP end it quietly (the job in progress unwinds first: ``_job``)."""
    one_thread_per_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _worker_signal)


def _job(cfg: ExperimentConfig, engine: str = "local") -> str:
    """``_run_one`` in a pool worker; a SIGTERM (``run_all`` stopping the pool) unwinds it,
    so that an atomic write in progress removes its temporary file, then ends the worker
    without a traceback."""
    global _IN_JOB
    _IN_JOB = True
    try:
        return _run_one(cfg, engine)
    except interrupt.Interrupted as exc:
        os._exit(128 + exc.signum)
    finally:
        _IN_JOB = False


def stop_pool(pool: ProcessPoolExecutor, grace: float = 5.0) -> None:
    """Terminate ``pool``'s workers now (SIGTERM, SIGKILL after ``grace`` seconds) and cancel
    the jobs not started; the jobs in progress are lost (their futures end with
    ``BrokenProcessPool`` before this returns)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    # taken now: ``shutdown(wait=False)`` drops the executor's reference to its thread
    manager = getattr(pool, "_executor_manager_thread", None)
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
        _reap(process, 2.0)
    # the executor's own thread marks the jobs that were running as failed, then ends
    if manager is not None:
        manager.join(grace)


def _reap(process: BaseProcess, wait: float) -> None:
    """Wait up to ``wait`` seconds until ``process`` is reaped. ``join`` may return as soon
    as the exiting process has closed its files, before the kernel lets it be waited for
    (seen under load), so ``is_alive`` (which reaps it) is asked until it says no."""
    deadline = time.monotonic() + wait
    process.join(wait)
    while process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)


def job_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` worker processes, each pinned to one thread (``one_thread_per_process``),
    ignoring SIGINT and ended quietly by SIGTERM (``stop_pool``).

    They are spawned, not forked: a child forked from a process whose OpenMP threads have run
    (torch's intra-op pool, e.g. an experiment run in this process before) hangs in its first
    parallel region (GNU libgomp is not fork-safe), e.g. a job with ``threads=2``."""
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
    )


def run_all(
    configs: Sequence[ExperimentConfig],
    jobs: int,
    progress: Callable[[int, int, str], None] | None = None,
    engine: str = "local",
    pool: ProcessPoolExecutor | None = None,
) -> None:
    """Run the configs whose ``out`` JSON is missing, ``jobs`` processes at a time, on the
    ``engine`` (``local`` or ``batched``), the longest (most rounds) first so that no worker
    is left with one long run at the end.

    ``progress(done, total, out)`` is called after every run (default: a printed line).
    ``pool``: a ``job_pool(jobs)`` to run in and leave running (the caller's, reused over many
    calls: a worker's start costs seconds of imports); else one is made and shut down here.
    On an interrupt (or any error) the workers are terminated at once (``stop_pool``, also a
    caller's pool); the runs written so far stay.
    """
    if any(not c.out for c in configs):
        raise ValueError("every config needs an 'out' path")
    todo = list({c.out: c for c in configs if not Path(str(c.out)).exists()}.values())
    todo.sort(key=lambda c: -int(c.rounds))  # stable: equal lengths keep their order
    show = progress or (lambda i, n, out: print(f"[{i}/{n}] {out}", flush=True))

    def report(i: int, n: int, out: str) -> None:
        interrupt.note(f"after {i} of {n} runs")
        show(i, n, out)

    if not todo:
        return
    if jobs <= 1:
        for i, cfg in enumerate(todo, 1):
            report(i, len(todo), _run_one(cfg, engine))
        return
    own = pool is None
    workers = job_pool(jobs) if pool is None else pool
    try:
        with interrupt.children_ignore_sigint():  # the workers start in ``map``
            outs = workers.map(partial(_job, engine=engine), todo)
        for i, out in enumerate(outs, 1):
            report(i, len(todo), out)
    except BaseException:
        stop_pool(workers)
        raise
    if own:
        workers.shutdown()


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
