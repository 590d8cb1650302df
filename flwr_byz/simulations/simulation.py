"""The ``simulation`` engine: Flower's simulation runtime, driven as Flower documents it for
a local simulation: ``flwr run`` against a SuperLink started with ``--simulation``.

For a group of configs with the same ``ray_address`` (:class:`SimulationRuntime`):

1. ``write_app`` writes the one-file Flower App (``flwr_byz.simulations.flower_app``: our
   ServerApp and ClientApp, imported from the installed package) into a temporary work
   directory;
2. ``flower-superlink --insecure --simulation --isolation subprocess --host 127.0.0.1
   --port P`` starts, in a session of its own (a terminal's Ctrl-C reaches this process,
   which stops it), with its own ``FLWR_HOME`` and log file;
3. for every config, ``flwr run <app> <connection> --run-config <file>
   --federation-config "num-supernodes=N ..." --stream``: the SuperLink starts a
   ``flwr-simulation`` process, which starts Ray and runs the ServerApp (``train_on_grid``
   on the run config, ``ExperimentConfig.to_run_config``) against ``clients`` ClientApp
   actors; the ServerApp writes the result to the config's ``out`` (absolute; a file in the
   work directory when the config has none) and appends every round to the JSON-lines file
   named by ``PROGRESS_ENV``, which this process tails for ``on_round``;
4. the SuperLink and everything below it (SuperExec, ``flwr-simulation``, Ray) are stopped
   by PID (``flwr_byz.simulations.processes``) at the end, on an error and on Ctrl-C or
   SIGTERM (``flwr_byz.interrupt`` raises in this process; the ``finally`` stops them), and
   the work directory is deleted. The checkpoint of the last finished round and the results
   already written stay.

Ray: each run starts its own Ray (``init-args-num-cpus``: the cores here; one CPU per
ClientApp actor), or, with ``ray_address``, connects to that cluster (``RAY_ADDRESS`` in the
SuperLink's environment, which Ray's ``ray.init`` reads; Flower's simulation config has no
address field).

Threads: the ServerApp runs with the config's ``threads`` torch threads
(``train_on_grid``); the ClientApp actors get ``CLIENT_THREADS`` each (the thread variables
of the SuperLink's environment, which its children inherit). The result config records both.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .config import ExperimentConfig
from .flower_app import PROGRESS_ENV, run_config_toml, toml_value, write_app
from .processes import HOST, ManagedProcess, ProcessSet, environment, executable, free_port
from .result import Result, RoundRecord
from .runner import OnRound, Prepared
from .threads import THREAD_ENV, available_cores

__all__ = ["CLIENT_THREADS", "CONNECTION", "SimulationRuntime", "run_simulated"]

#: Torch threads of each ClientApp actor of the simulation engine (one CPU each: Ray starts
#: ``cores`` of them side by side).
CLIENT_THREADS = 1

#: The name of the ``flwr`` connection to the engine's SuperLink.
CONNECTION = "flwr-byz-simulation"

WORKDIR_PREFIX = "flwr-byz-simulation-"

#: Seconds an interrupted run still reads the rounds the ServerApp reports (``_settle``).
INTERRUPT_SETTLE = 1.0


def federation_config(
    clients: int, ray_address: str | None = None, verbose: bool = False
) -> dict[str, Any]:
    """``flwr run --federation-config`` of a run: ``clients`` simulated SuperNodes, one CPU
    per ClientApp actor, Ray started on the cores here (or, with ``ray_address``, left to
    that cluster); Ray logs what Flower's defaults let it log unless ``verbose``."""
    values: dict[str, Any] = {
        "num-supernodes": int(clients),
        "backend": "ray",
        "client-resources-num-cpus": 1,
        "client-resources-num-gpus": 0.0,
        "verbose": bool(verbose),
    }
    if not ray_address:  # a cluster of one's own: Ray refuses num_cpus when connecting
        values["init-args-num-cpus"] = available_cores()
    if not verbose:
        values["init-args-logging-level"] = "WARNING"
        values["init-args-log-to-driver"] = False
    return values


class SimulationRuntime:
    """A SuperLink in simulation mode on loopback, and ``flwr run`` against it (module doc).

    ``ray_address``: the Ray cluster the runs use (None: each run starts its own Ray).
    ``verbose``: Flower's and Ray's logs go to stderr as they come. Use it as a context
    manager: ``stop`` stops every process it started and deletes the work directory."""

    def __init__(
        self,
        ray_address: str | None = None,
        verbose: bool = False,
        startup_timeout: float = 120.0,
    ) -> None:
        self.ray_address = ray_address
        self.verbose = verbose
        self.startup_timeout = startup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX)).resolve()
        self.port = free_port()
        self.progress = self.workdir / "progress.jsonl"
        self.procs = ProcessSet(
            self.workdir / "logs", env=self._environment(), marker=str(self.workdir)
        )
        self.superlink: ManagedProcess | None = None
        self.app = write_app(self.workdir / "app")
        self._runs = 0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _environment(self) -> dict[str, str]:
        """Of the SuperLink and of everything below it (``flwr-simulation``, Ray)."""
        env = environment()
        env.update({k: str(CLIENT_THREADS) for k in THREAD_ENV})  # the ClientApp actors
        env[PROGRESS_ENV] = str(self.progress)
        env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's GPU tip
        env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")  # no network: loopback only
        env.pop("RAY_ADDRESS", None)
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        return env

    def _home(self, name: str) -> dict[str, str]:
        home = self.workdir / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        return {"FLWR_HOME": str(home)}

    # --- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> SimulationRuntime:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink and write the ``flwr`` connection to it."""
        command = [
            executable("flower-superlink"),
            "--insecure",  # loopback only
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",  # no network: use this environment
        ]
        self.superlink = self.procs.start("superlink", command, env=self._home("superlink"))
        self._wait_for_port(self.superlink)
        config = self.workdir / "homes" / "cli" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\ninsecure = true\n'
        )

    def _wait_for_port(self, process: ManagedProcess) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not process.running():
                raise RuntimeError(f"the SuperLink exited at start:\n{process.tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"the SuperLink did not listen on {self.address}:\n{process.tail()}")

    def stop(self) -> None:
        """Stop every process started (SIGTERM to each process tree, SIGKILL to what is left)
        and delete the work directory; idempotent."""
        self.procs.stop_all()
        self.superlink = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def pids(self) -> set[int]:
        """The live processes of this runtime (with every descendant)."""
        return self.procs.pids()

    # --- runs ---------------------------------------------------------------------------------
    def start_run(
        self, app: str | Path, run_config: Mapping[str, Any], clients: int
    ) -> ManagedProcess:
        """``flwr run <app> <connection> --run-config <file> --federation-config ...
        --stream`` in the background: a run of the Flower App ``app`` on ``clients``
        simulated SuperNodes; the process (it ends with the run)."""
        self._runs += 1
        run_file = self.workdir / f"run-{self._runs}.toml"
        run_file.write_text(run_config_toml(run_config))
        federation = federation_config(clients, self.ray_address, self.verbose)
        command = [
            executable("flwr"),
            "run",
            str(Path(app).absolute()),
            CONNECTION,
            "--run-config",
            str(run_file),
            "--federation-config",
            " ".join(f"{k}={toml_value(v)}" for k, v in federation.items()),
            "--stream",
        ]
        return self.procs.start(f"run-{self._runs}", command, env=self._home("cli"))

    def run(self, cfg: ExperimentConfig, on_round: OnRound | None = None) -> Result:
        """Run ``cfg`` (prepared) with ``flwr run`` and wait for it; its result (also in
        ``cfg.out`` when set). ``on_round`` sees every round as the ServerApp finishes it."""
        name = f"result-{self._runs + 1}.json"
        out = Path(cfg.out).absolute() if cfg.out else self.workdir / name
        checkpoint = str(Path(cfg.checkpoint).absolute()) if cfg.checkpoint else None
        run_cfg = dataclasses.replace(cfg, out=str(out), checkpoint=checkpoint)
        if out.exists():
            out.unlink()  # a stale file must not pass for this run's result
        proc = self.start_run(self.app, run_cfg.to_run_config(), cfg.clients)
        with _tail(self.progress) as progress, _tail(proc.log) as log:

            def report() -> None:
                for line in progress():
                    record = json.loads(line)
                    if record.get("out") == str(out) and on_round is not None:
                        on_round(cfg, RoundRecord(**record["round"]))
                for line in log():
                    if self.verbose:
                        sys.stderr.write(line)

            try:
                while proc.running():
                    report()
                    time.sleep(0.1)
            except BaseException:  # Ctrl-C, SIGTERM: the round the ServerApp is reporting
                _settle(report, proc, INTERRUPT_SETTLE)  # (the interrupt's note says it)
                raise
            report()  # the rounds finished since the last look
        if not out.exists():
            raise RuntimeError(
                f"the simulation ended without a result (flwr run exit code "
                f"{proc.popen.returncode}); the end of its log:\n{proc.tail(40)}"
            )
        result = Result.load(out)
        # the ClientApp actors' torch threads (a cluster of one's own sets its workers' own)
        result.config["client_threads"] = None if cfg.ray_address else CLIENT_THREADS
        if cfg.out:
            result.save(out)
        return result


def _settle(report: Callable[[], None], proc: ManagedProcess, seconds: float) -> None:
    """``report`` for ``seconds`` more while ``proc`` runs: the ServerApp reports a round
    just after saving its checkpoint, and an interrupt that came in between should still
    see it."""
    deadline = time.monotonic() + seconds
    while True:
        report()
        if time.monotonic() >= deadline or not proc.running():
            return
        time.sleep(0.05)


@contextmanager
def _tail(path: Path) -> Iterator[Any]:
    """A function returning the complete lines appended to ``path`` since its last call."""
    state: dict[str, Any] = {"fh": None, "rest": ""}

    def read() -> list[str]:
        fh: IO[str] | None = state["fh"]
        if fh is None:
            try:
                fh = state["fh"] = open(path, encoding="utf-8", errors="replace")
            except OSError:
                return []
        text = state["rest"] + fh.read()
        lines = text.splitlines(keepends=True)
        state["rest"] = lines.pop() if lines and not lines[-1].endswith("\n") else ""
        return lines

    try:
        yield read
    finally:
        if state["fh"] is not None:
            state["fh"].close()


def run_simulated(
    configs: Sequence[Prepared], on_round: OnRound | None = None, verbose: bool = False
) -> list[Result]:
    """Run ``configs`` (prepared: ``runner.prepare``) on Flower's simulation runtime, one
    ``flwr run`` each, on one SuperLink per ``ray_address``; the results in the order of
    ``configs``, each written to its ``out`` as soon as it is done."""
    groups: dict[str | None, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(cfg.ray_address, []).append(i)
    out: dict[int, Result] = {}
    for ray_address, members in groups.items():
        with SimulationRuntime(ray_address, verbose) as runtime:
            for i in members:
                out[i] = runtime.run(configs[i], on_round)
    return [out[i] for i in range(len(configs))]
