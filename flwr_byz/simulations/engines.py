"""The engines that run experiments: ``simulation`` (Flower's simulation engine, Ray),
``local`` (one process, ``flwr_byz.simulations.local``) and ``batched`` (every client of a round
at once, on ``device``: ``flwr_byz.simulations.batched``). The first two run ``train_on_grid``,
so the numbers are the same for the same seed; the batched engine makes the same draws through
the same ``flwr_byz.methods`` functions (the same numbers up to rounding).

Threads: each experiment runs with its ``threads`` torch threads (resolved: the cores unless
set; see ``flwr_byz.simulations.threads``) in this process; the simulation engine's ClientApp
actors get ``CLIENT_THREADS`` each. The result config records both."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..clients.wrapping import innermost
from ..protocol.keys import DATASET_KEY, PARTITION_KEY, SEED_KEY
from .config import ExperimentConfig
from .metering import discover_partitions, wait_for_nodes
from .result import Result
from .runner import OnRound, _flower_logging, prepare, train_on_grid
from .threads import available_cores, env_threads, torch_threads

__all__ = ["ENGINES", "run_experiment", "run_experiments"]


def _server_app(
    configs: Sequence[ExperimentConfig], results: list[Result], on_round: OnRound | None
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        inner = innermost(grid)
        if hasattr(inner, "pull_interval"):  # in-memory grid: poll every 10 ms, not 100 ms
            inner.pull_interval = 0.01
        wait_for_nodes(grid, configs[0].clients)
        first = configs[0]
        preload: dict[str, Any] = {
            DATASET_KEY: first.dataset,
            PARTITION_KEY: first.partition,
            SEED_KEY: first.seed,
        }
        partitions = discover_partitions(grid, preload)
        for cfg in configs:
            result = train_on_grid(grid, cfg, on_round, partitions)
            # the ClientApp actors' torch threads (``env_threads`` below; a cluster of one's
            # own, ``ray_address``, sets its workers' environment itself)
            result.config["client_threads"] = None if cfg.ray_address else CLIENT_THREADS
            if cfg.out:  # written as soon as it is done: a later failure loses nothing
                result.save(cfg.out)
            results.append(result)

    return app


def _backend_config(cfg: ExperimentConfig) -> dict[str, Any]:
    init_args: dict[str, Any] = {}
    if cfg.ray_address:
        init_args["address"] = cfg.ray_address
    else:
        init_args["num_cpus"] = available_cores()
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}


#: Torch threads of each ClientApp actor of the simulation engine (one CPU each: Ray starts
#: ``cores`` of them side by side).
CLIENT_THREADS = 1


def _one_by_one(
    run: Callable[[list[ExperimentConfig], OnRound | None], list[Result]],
    configs: Sequence[ExperimentConfig],
    on_round: OnRound | None,
) -> list[Result]:
    """``run`` (an in-process engine) on each config alone, with its ``threads``."""
    results = []
    for cfg in configs:
        assert cfg.threads is not None  # resolved
        with torch_threads(cfg.threads):
            results.extend(run([cfg], on_round))
    return results


ENGINES = ("simulation", "local", "batched")
"""``simulation``: Flower's simulation engine (Ray); ``local``: in-process (``local.py``);
``batched``: every client of a round at once, on ``device`` (``flwr_byz.simulations.batched``)."""


def run_experiments(
    configs: Sequence[ExperimentConfig],
    on_round: OnRound | None = None,
    verbose: bool = False,
    engine: str = "simulation",
) -> list[Result]:
    """Run several experiments; configs with the same ``clients`` and ``ray_address`` share
    one simulation (Ray starts once). Results come back in the order of ``configs``; each is
    written to its config's ``out`` (when set) as soon as it finishes. Every config is
    validated before Ray starts. ``engine="local"`` runs them in this process instead
    (same numbers, no Ray; see ``flwr_byz.simulations.local``), ``engine="batched"`` every
    client of a round at once on ``config.device`` (``flwr_byz.simulations.batched``)."""
    from flwr.simulation import run_simulation

    from .app import client_app

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; one of {', '.join(ENGINES)}")
    resolved = [prepare(c) for c in configs]
    if engine == "batched":
        from .batched import check_batched, run_batched

        for cfg in resolved:  # every config before the first one runs
            check_batched(cfg)
        with _flower_logging(verbose):
            return _one_by_one(run_batched, resolved, on_round)
    on_gpu = sorted({c.device for c in resolved if c.device != "cpu"})
    if on_gpu:
        raise ValueError(
            f"device {on_gpu[0]!r} needs --engine batched (the {engine} engine computes on the CPU)"
        )
    if engine == "local":
        from .local import run_local

        with _flower_logging(verbose):
            return run_local(resolved, on_round)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's GPU tip
    groups: dict[tuple[int, str | None], list[int]] = {}
    for i, cfg in enumerate(resolved):
        groups.setdefault((cfg.clients, cfg.ray_address), []).append(i)
    out: dict[int, Result] = {}
    for (clients, _), members in groups.items():
        results: list[Result] = []
        server = _server_app([resolved[i] for i in members], results, on_round)
        with _flower_logging(verbose), env_threads(CLIENT_THREADS):
            run_simulation(
                server_app=server,
                client_app=client_app,
                num_supernodes=clients,
                backend_config=_backend_config(resolved[members[0]]),
                verbose_logging=verbose,
            )
        if len(results) != len(members):
            raise RuntimeError("the simulation ended before every experiment finished (see log)")
        out.update(zip(members, results, strict=True))
    return [out[i] for i in range(len(resolved))]


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
