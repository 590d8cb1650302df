"""Which engine runs an experiment: ``simulation`` (Flower's simulation engine, Ray:
``flwr_byz.simulations.simulation``), ``local`` (one process: ``flwr_byz.simulations.local``)
or ``batched`` (every client of a round at once, on ``device``: ``flwr_byz.simulations.batched``).
The first two run the round loop ``train_on_grid`` (``flwr_byz.simulations.runner``), so the
numbers are the same for the same seed; the batched engine makes the same draws through the
same ``flwr_byz.methods`` functions (the same numbers up to rounding).

This module only checks and dispatches: every config is prepared (``runner.prepare``, once per
run) and checked for its engine before the first one starts; each engine runs its configs with
their ``threads`` torch threads (see ``flwr_byz.simulations.threads``)."""

from __future__ import annotations

from collections.abc import Sequence

from .batched import run_batched
from .config import ExperimentConfig
from .local import run_local
from .result import Result
from .runner import OnRound, _flower_logging, prepare
from .simulation import run_simulated

__all__ = ["ENGINES", "run_experiment", "run_experiments"]


ENGINES = ("simulation", "local", "batched")
"""``simulation``: Flower's simulation engine (Ray); ``local``: in-process (``local.py``);
``batched``: every client of a round at once, on ``device`` (``flwr_byz.simulations.batched``)."""


def run_experiments(
    configs: Sequence[ExperimentConfig],
    on_round: OnRound | None = None,
    verbose: bool = False,
    engine: str = "simulation",
) -> list[Result]:
    """Run several experiments (raw or prepared configs); configs with the same ``clients``
    and ``ray_address`` share one simulation (Ray starts once). Results come back in the order
    of ``configs``; each is written to its config's ``out`` (when set) as soon as it finishes.
    Every config is validated before Ray starts. ``engine="local"`` runs them in this process
    instead (same numbers, no Ray; see ``flwr_byz.simulations.local``), ``engine="batched"``
    every client of a round at once on ``config.device`` (``flwr_byz.simulations.batched``)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; one of {', '.join(ENGINES)}")
    prepared = [prepare(c) for c in configs]  # as they are when prepared already (the CLI)
    if engine == "batched":  # checks every config for the engine before the first one runs
        with _flower_logging(verbose):
            return run_batched(prepared, on_round)
    on_gpu = sorted({c.device for c in prepared if c.device != "cpu"})
    if on_gpu:
        raise ValueError(
            f"device {on_gpu[0]!r} needs --engine batched (the {engine} engine computes on the CPU)"
        )
    if engine == "local":
        with _flower_logging(verbose):
            return run_local(prepared, on_round)
    return run_simulated(prepared, on_round, verbose)


def run_experiment(
    config: ExperimentConfig,
    on_round: OnRound | None = None,
    verbose: bool = False,
    engine: str = "simulation",
) -> Result:
    """Run one experiment on Flower's simulation engine (or ``engine="local"``: in this
    process; ``engine="batched"``: every client of a round at once) and return its
    ``Result``."""
    return run_experiments([config], on_round=on_round, verbose=verbose, engine=engine)[0]
