"""The ``simulation`` engine: Flower's simulation engine (Ray), one ServerApp running
``train_on_grid`` for a group of configs against ``clients`` ClientApp actors.

Configs with the same ``clients`` and ``ray_address`` share one simulation (Ray starts once per
group); each result is written to its config's ``out`` as soon as it is done.

Interrupts: a Ctrl-C or SIGTERM (``flwr_byz.interrupt``) ends the run promptly: Ray is started
here, so that the interrupt handlers can be installed again after ``ray.init`` (which replaces
the SIGTERM handler), and shut down on any exit; the ServerApp thread, which Flower does not
stop, ends at its next wait for the nodes (``StoppableGrid``). The checkpoint of the last
finished round and the results already written stay.

Threads: each experiment runs with its ``threads`` torch threads in this process
(``train_on_grid``); the ClientApp actors get ``CLIENT_THREADS`` each. The result config
records both."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from .. import interrupt
from ..clients.wrapping import GridWrapper, innermost
from ..protocol.keys import DATASET_KEY, PARTITION_KEY, SEED_KEY
from .app import client_app
from .config import ExperimentConfig
from .metering import discover_partitions, wait_for_nodes
from .result import Result
from .runner import OnRound, Prepared, _flower_logging, train_on_grid
from .threads import available_cores, env_threads

__all__ = ["CLIENT_THREADS", "StoppableGrid", "run_simulated"]

#: Torch threads of each ClientApp actor of the simulation engine (one CPU each: Ray starts
#: ``cores`` of them side by side).
CLIENT_THREADS = 1


class StoppableGrid(GridWrapper):
    """A Grid whose waits end with ``interrupt.Stopped`` once ``stop`` is set or the process
    is interrupted: the ServerApp thread of a simulation that ended (Flower's
    ``run_simulation`` neither stops nor waits for it) would otherwise wait for replies that
    never come, up to the round timeout, and keep the process alive."""

    def __init__(self, grid: Grid, stop: threading.Event) -> None:
        super().__init__(grid)
        self.stop = stop
        #: Flower's polling grids (in-memory, gRPC) have one; a grid without (a test's fake)
        #: answers at once and keeps its own ``send_and_receive``.
        self.pull_interval: float | None = getattr(innermost(grid), "pull_interval", None)

    def _check(self) -> None:
        if self.stop.is_set():
            raise interrupt.Stopped("the simulation has ended")
        interrupt.check()

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self.grid.get_node_ids()

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull until every reply is in or ``timeout`` passed (Flower's
        ``InMemoryGrid.send_and_receive``, checking for the end at every poll)."""
        if self.pull_interval is None:
            self._check()
            return self.grid.send_and_receive(messages, timeout=timeout)
        waiting = {i for i in self.push_messages(messages) if i}
        end = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while timeout is None or time.monotonic() < end:
            got = list(self.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                break
            time.sleep(self.pull_interval)
        return replies


def _server_app(
    configs: Sequence[ExperimentConfig],
    results: list[Result],
    on_round: OnRound | None,
    stop: threading.Event | None = None,
) -> ServerApp:
    """The ServerApp running ``configs`` one after the other; ends quietly (its results so
    far appended) once ``stop`` is set or the process is interrupted."""
    app = ServerApp()
    ended = threading.Event() if stop is None else stop

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        inner = innermost(grid)
        if hasattr(inner, "pull_interval"):  # in-memory grid: poll every 10 ms, not 100 ms
            inner.pull_interval = 0.01
        try:
            _serve(StoppableGrid(grid, ended), configs, results, on_round)
        except interrupt.Stopped:
            pass  # the simulation ended (the main thread says why)

    return app


def _serve(
    grid: Grid,
    configs: Sequence[ExperimentConfig],
    results: list[Result],
    on_round: OnRound | None,
) -> None:
    """The body of the ServerApp of ``_server_app``."""
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


def _backend_config(cfg: ExperimentConfig, verbose: bool = False) -> dict[str, Any]:
    """The Ray backend's config; without ``verbose`` Ray logs what ``run_simulation`` would
    let it log (Flower's defaults, set here since ``_start_ray`` starts Ray first)."""
    from flwr.supercore.constant import DEFAULT_SIMULATION_CONFIG

    init_args: dict[str, Any] = {}
    if cfg.ray_address:
        init_args["address"] = cfg.ray_address
    else:
        init_args["num_cpus"] = available_cores()
    if not verbose:
        init_args["logging_level"] = DEFAULT_SIMULATION_CONFIG.init_args_logging_level
        init_args["log_to_driver"] = DEFAULT_SIMULATION_CONFIG.init_args_log_to_driver
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}


def _start_ray(backend_config: dict[str, Any]) -> None:
    """Start Ray (or connect to ``address``) as Flower's Ray backend does, then install the
    interrupt handlers again: ``ray.init`` replaces the SIGTERM handler with its own, which
    dumps a stack and aborts. Ray's processes ignore a terminal's SIGINT: this process stops
    them (``ray.shutdown``)."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    try:
        with interrupt.children_ignore_sigint():
            RayBackend(backend_config)  # ``ray.init`` with Flower's arguments; no actor yet
    except SystemExit as exc:  # a SIGTERM while ``ray.init`` ran: Ray's handler exited
        interrupt.reinstall()
        if exc.code == signal.SIGTERM and not isinstance(exc, interrupt.Interrupted):
            interrupt.signalled(signal.SIGTERM)  # our ``Interrupted`` where we handle it
        raise
    interrupt.reinstall()


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def run_simulated(
    configs: Sequence[Prepared], on_round: OnRound | None = None, verbose: bool = False
) -> list[Result]:
    """Run ``configs`` (prepared: ``runner.prepare``) on Flower's simulation engine, one
    simulation per group of configs with the same ``clients`` and ``ray_address``; the results
    in the order of ``configs``."""
    from flwr.simulation import run_simulation  # imports Ray: only when this engine runs

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's GPU tip
    groups: dict[tuple[int, str | None], list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault((cfg.clients, cfg.ray_address), []).append(i)
    out: dict[int, Result] = {}
    for (clients, _), members in groups.items():
        results: list[Result] = []
        ended = threading.Event()
        server = _server_app([configs[i] for i in members], results, on_round, ended)
        backend_config = _backend_config(configs[members[0]], verbose)
        with _flower_logging(verbose), env_threads(CLIENT_THREADS):
            try:
                _start_ray(backend_config)
                run_simulation(
                    server_app=server,
                    client_app=client_app,
                    num_supernodes=clients,
                    backend_config=backend_config,
                    verbose_logging=verbose,
                )
            finally:  # Ctrl-C, SIGTERM, an error: the ServerApp thread and Ray end too
                ended.set()
                _stop_ray()
        if len(results) != len(members):
            raise RuntimeError("the simulation ended before every experiment finished (see log)")
        out.update(zip(members, results, strict=True))
    return [out[i] for i in range(len(configs))]
