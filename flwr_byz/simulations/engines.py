"""Which engine runs an experiment: ``simulation`` (Flower's simulation runtime through
``flwr run`` on a local SuperLink, Ray: ``flwr_byz.simulations.simulation``), ``local`` (one
process: ``flwr_byz.simulations.local``) or ``batched`` (every client of a round at once, on
``device``: ``flwr_byz.simulations.batched``); each computes on the config's ``device``
(``flwr_byz.simulations.devices``). The first two run the round loop
``train_on_grid`` (``flwr_byz.simulations.runner``), so the numbers are the same for the same
seed; the batched engine makes the same draws through the same ``flwr_byz.methods`` functions
(the same numbers up to rounding).

This module only checks and dispatches: every config is prepared (``runner.prepare``, once per
run) and checked for its engine before the first one starts; each engine runs its configs with
their ``threads`` torch threads (see ``flwr_byz.simulations.threads``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..specs import unknown
from .batched import run_batched
from .batched.engine import check_batched
from .config import ExperimentConfig
from .devices import resolve_device
from .local import run_local
from .result import Result
from .runner import OnRound, Prepared, _flower_logging, prepare
from .simulation import run_simulated

__all__ = ["ENGINES", "check_engine", "run_experiment", "run_experiments"]


ENGINES = ("simulation", "local", "batched")
"""``simulation``: Flower's simulation runtime (``flwr run``, Ray); ``local``: in-process
(``local.py``); ``batched``: every client of a round at once, on ``device``
(``flwr_byz.simulations.batched``)."""


def run_experiments(
    configs: Sequence[ExperimentConfig],
    on_round: OnRound | None = None,
    verbose: bool = False,
    engine: str = "simulation",
) -> list[Result]:
    """Run several experiments (raw or prepared configs) on one local SuperLink (per
    ``ray_address``), one ``flwr run`` for the configs with the same ``clients`` (the
    ServerApp runs them in turn, Ray starts once). Results come back in the order
    of ``configs``; each is written to its config's ``out`` (when set) as soon as it finishes.
    Every config is validated before anything starts. ``engine="local"`` runs them in this process
    instead (same numbers, no Ray; see ``flwr_byz.simulations.local``), ``engine="batched"``
    every client of a round at once on ``config.device`` (``flwr_byz.simulations.batched``)."""
    prepared = check_engine(engine, configs)  # every config before the first one runs
    if engine == "batched":
        with _flower_logging(verbose):
            return run_batched(prepared, on_round)
    if engine == "local":
        with _flower_logging(verbose):
            return run_local(prepared, on_round)
    return run_simulated(prepared, on_round, verbose)


def check_engine(engine: str, configs: Sequence[ExperimentConfig]) -> list[Prepared]:
    """The ``configs`` prepared (``runner.prepare``) once ``engine`` is known and can run
    every one of them (the device is here: ``devices.resolve_device``; the batched engine's
    options); ``ValueError`` otherwise.
    The CLI calls it before it draws any progress; ``run_experiments`` calls it again (a
    prepared config is not checked twice)."""
    if engine not in ENGINES:
        raise unknown("engine", engine, ENGINES)
    prepared = [prepare(c) for c in configs]  # as they are when prepared already (the CLI)
    for device in sorted({c.device for c in prepared}):
        resolve_device(device)  # a CUDA device this machine lacks: one line, before anything
    if engine == "batched":
        for cfg in prepared:
            check_batched(cfg)
    return prepared


def run_experiment(
    config: ExperimentConfig,
    on_round: OnRound | None = None,
    verbose: bool = False,
    engine: str = "simulation",
) -> Result:
    """Run one experiment on Flower's simulation runtime (or ``engine="local"``: in this
    process; ``engine="batched"``: every client of a round at once) and return its
    ``Result``."""
    return run_experiments([config], on_round=on_round, verbose=verbose, engine=engine)[0]
