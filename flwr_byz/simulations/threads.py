"""Torch thread counts, set on purpose by every engine.

A run gets ``ExperimentConfig.threads`` torch threads; ``None`` (``0`` in a run config) means
auto: ``$OMP_NUM_THREADS`` when it is set, else the CPU cores this process may run on (its
affinity mask). Where jobs run side by side, each gets one thread: the parallel jobs of
``flwr-byz reproduce`` (``reproduce.pool``) and the ClientApp actors of Flower's simulation
engine (one CPU each). On a 2-core machine two single-threaded jobs beat one job with two
threads, and a tiny model's ops gain nothing from intra-op threads that, on a busy machine,
stall behind other processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

__all__ = [
    "THREAD_ENV",
    "available_cores",
    "env_threads",
    "one_thread_per_process",
    "resolve_threads",
    "torch_threads",
]

#: Environment variables the thread pools of torch's backends (OpenMP, MKL, OpenBLAS) read
#: when a process starts: set for child processes (Ray actors, pool workers).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where
    there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def resolve_threads(requested: int | None) -> int:
    """The thread count of a run: ``requested`` when > 0, else ``$OMP_NUM_THREADS`` when it
    is a positive integer, else :func:`available_cores`."""
    if requested is not None and requested > 0:
        return int(requested)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (in this thread, and for threads that
    start torch work afterwards); the previous count is restored at the end."""
    saved = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)


@contextmanager
def env_threads(n: int) -> Iterator[None]:
    """Set :data:`THREAD_ENV` to ``n`` for the processes started in the block (Ray's worker
    processes inherit the environment of the process that starts Ray); restored at the end."""
    saved: Mapping[str, str | None] = {k: os.environ.get(k) for k in THREAD_ENV}
    os.environ.update({k: str(int(n)) for k in THREAD_ENV})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def one_thread_per_process() -> None:
    """Pin this (worker) process to one thread: torch's intra-op and, where torch still
    allows it, inter-op pools, and :data:`THREAD_ENV` for the processes it starts. The
    initializer of ``reproduce.pool``'s worker processes."""
    os.environ.update({k: "1" for k in THREAD_ENV})
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only before the first inter-op work (a forked parent's counts)
        pass
