"""Shared by the experiment scripts: run configs on the local engine in parallel processes
(resuming: a run whose JSON exists is not run again) and read accuracies off results."""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result
from flwr_byz.simulations.runner import _flower_logging, run_experiments

__all__ = ["TAIL", "pct", "run_all", "tail_acc"]

TAIL = 10  # accuracies are the mean of the last TAIL rounds (MNIST-1D curves are noisy)


def _run_one(cfg: ExperimentConfig) -> str:
    import torch

    torch.set_num_threads(1)  # one core per job
    with _flower_logging(False, logging.ERROR):
        run_experiments([cfg], engine="local")
    return str(cfg.out)


def run_all(configs: list[ExperimentConfig], jobs: int) -> None:
    """Run the configs whose JSON is missing, ``jobs`` processes at a time."""
    todo = [c for c in configs if not (c.out and Path(c.out).exists())]
    print(f"{len(configs)} runs, {len(todo)} to do", flush=True)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for i, out in enumerate(pool.map(_run_one, todo), 1):
            print(f"[{i}/{len(todo)}] {out}", flush=True)


def tail_acc(r: Result, upto: int | None = None) -> float:
    """Mean accuracy of the ``TAIL`` rounds ending at round index ``upto`` (default: last)."""
    end = len(r.rounds) if upto is None else upto + 1
    accs = [rec.accuracy for rec in r.rounds[max(0, end - TAIL) : end]]
    return sum(accs) / len(accs) if accs else float("nan")


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal ("n/a" for NaN)."""
    return "n/a" if x != x else f"{100 * x:.1f}"
