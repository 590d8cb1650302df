"""The ``simulation`` engine: Flower's simulation runtime, driven as Flower documents it for
a local simulation: ``flwr run`` against a SuperLink started with ``--simulation``.

For a group of configs with the same ``ray_address`` (:class:`SimulationRuntime`):

1. ``write_app`` writes the one-file Flower App (``flwr_byz.simulations.flower_app``: our
   ServerApp and ClientApp, imported from the installed package) into a temporary work
   directory;
2. ``flower-superlink --insecure --simulation --isolation subprocess --host 127.0.0.1
   --port P`` starts, in a session of its own (a terminal's Ctrl-C reaches this process,
   which stops it), with its own ``FLWR_HOME`` and log file;
3. for every group of configs with the same ``clients`` (``run_group``), ONE ``flwr run
   <app> <connection> --run-config <file> --federation-config "num-supernodes=N ..."
   --stream``: the SuperLink starts a ``flwr-simulation`` process, which starts Ray and runs
   the ServerApp (``train_on_grid`` on the run config, ``ExperimentConfig.to_run_config``;
   for a group of several, on each run config of the JSON file that the run config's
   ``runs-file`` names, in turn, on the same ClientApp actors, the partitions discovered
   once) against ``clients`` ClientApp actors; the ServerApp writes each result to its
   config's ``out`` (absolute; a file in the work directory when the config has none) as
   soon as it is done and appends every round to the JSON-lines file named by
   ``PROGRESS_ENV``, which this process tails for ``on_round``;
4. the SuperLink and everything below it (SuperExec, ``flwr-simulation``, Ray) are stopped
   by PID (``flwr_byz.simulations.processes``) at the end, on an error and on Ctrl-C or
   SIGTERM (``flwr_byz.interrupt`` raises in this process; the ``finally`` stops them), and
   the work directory is deleted. The checkpoint of the last finished round and the results
   already written stay.

A run's results are its ``out`` files, which the ServerApp writes last (atomically):
``run_group`` returns once they are there, without waiting for Flower's wind-down behind
them (Ray's shutdown, a log flush that sleeps a second, the end of ``flwr run``'s log
stream: seconds per run). What is left of that run is SIGKILLed before the next ``flwr run``
starts (one run at a time) or by ``stop`` after the last one: nothing in it writes anything
any more. Verbose runs (their log is shown to the end) and runs on a Ray cluster of one's own
(``ray_address``: the driver leaves it through ``ray.shutdown``) still end as Flower ends them.

The ClientApp actors' ``context.state`` lives as long as the run, so a group's configs
share it: the method strategies namespace their clients' state by a key of their own
(``state-key``, new for every strategy), so that each config starts from none, as alone.

Ray: each run starts its own Ray (``init-args-num-cpus``: the cores here; one CPU per
ClientApp actor), or, with ``ray_address``, connects to that cluster (``RAY_ADDRESS`` in the
SuperLink's environment, which Ray's ``ray.init`` reads; Flower's simulation config has no
address field).

GPUs (``--device cuda`` or ``cuda:N``): one SuperLink per device; the ClientApp actors hold a
share of the GPUs as Flower's client resources (``client-resources-num-gpus``, see
``federation_config``) and train on the device named in the run config, where the ServerApp
aggregates and evaluates too (``flwr_byz.simulations.devices``).

Threads: the ServerApp runs with the config's ``threads`` torch threads
(``train_on_grid``); the ClientApp actors get ``CLIENT_THREADS`` each (the thread variables
of the SuperLink's environment, which its children inherit). The result config records both.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from ..interrupt import alive, send_signal
from .config import ExperimentConfig
from .devices import client_gpus, visible_gpus
from .flower_app import PROGRESS_ENV, RUNS_KEY, run_config_toml, toml_value, write_app
from .processes import (
    HOST,
    Lifecycle,
    ManagedProcess,
    ProcessSet,
    descendants,
    environment,
    executable,
    free_port,
)
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

#: Seconds between two looks of the SuperLink's SuperExec for a new run (Flower's default:
#: 1 s, half of it lost on average before every run starts).
TASK_POLL_INTERVAL = 0.1

#: Seconds between two looks for the SuperLink's port, a run's progress and its result.
POLL = 0.05


def federation_config(
    clients: int, ray_address: str | None = None, verbose: bool = False, device: str = "cpu"
) -> dict[str, Any]:
    """``flwr run --federation-config`` of a run: ``clients`` simulated SuperNodes, one CPU
    per ClientApp actor, Ray started on the cores here (or, with ``ray_address``, left to
    that cluster); Ray logs what Flower's defaults let it log unless ``verbose``.

    On a CUDA ``device`` each actor also holds ``client-resources-num-gpus`` =
    ``devices.client_gpus``: the GPUs (``cuda:N``: that one, the only one the runtime sees;
    ``cuda``: every GPU here) shared by the actors that run side by side (one per core, at
    most ``clients``), e.g. 1/8 of the GPU each with 8 cores; Ray gets the GPUs as
    ``init-args-num-gpus``."""
    gpus = 0
    if torch.device(device).type == "cuda":
        gpus = 1 if torch.device(device).index is not None else torch.cuda.device_count()
    actors = min(int(clients), available_cores())
    values: dict[str, Any] = {
        "num-supernodes": int(clients),
        "backend": "ray",
        "client-resources-num-cpus": 1,
        "client-resources-num-gpus": client_gpus(device, actors, gpus),
        "verbose": bool(verbose),
    }
    if not ray_address:  # a cluster of one's own: Ray refuses num_cpus when connecting
        values["init-args-num-cpus"] = available_cores()
        if gpus:
            values["init-args-num-gpus"] = gpus
    if not verbose:
        values["init-args-logging-level"] = "WARNING"
        values["init-args-log-to-driver"] = False
    return values


class SimulationRuntime(Lifecycle):
    """A SuperLink in simulation mode on loopback, and ``flwr run`` against it (module doc).

    ``ray_address``: the Ray cluster the runs use (None: each run starts its own Ray).
    ``verbose``: Flower's and Ray's logs go to stderr as they come. ``device``: the runs'
    ``--device`` (``federation_config``; ``cuda:N``: ``CUDA_VISIBLE_DEVICES=N`` for every
    process of the runtime, where it is ``cuda``). Use it as a context
    manager: ``stop`` stops every process it started and deletes the work directory."""

    def __init__(
        self,
        ray_address: str | None = None,
        verbose: bool = False,
        startup_timeout: float = 120.0,
        device: str = "cpu",
    ) -> None:
        self.ray_address = ray_address
        self.verbose = verbose
        self.device = device
        self.startup_timeout = startup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX)).resolve()
        self.port = free_port()
        self.progress = self.workdir / "progress.jsonl"
        self.procs = ProcessSet(
            self.workdir / "logs", env=self._environment(), marker=str(self.workdir)
        )
        self.superlink: ManagedProcess | None = None
        self.app = write_app(self.workdir / "app", runs=True)
        self._runs = 0
        self._winding_down: ManagedProcess | None = None  # a finished run's ``flwr run``

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
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(TASK_POLL_INTERVAL))
        env.pop("RAY_ADDRESS", None)
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        only = visible_gpus(self.device)
        if only is not None:  # cuda:N: the runtime's processes (and Ray) see that GPU only
            env["CUDA_VISIBLE_DEVICES"] = only
        return env

    def _home(self, name: str) -> dict[str, str]:
        home = self.workdir / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        return {"FLWR_HOME": str(home)}

    # --- lifecycle ----------------------------------------------------------------------------
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
                time.sleep(POLL)
        raise TimeoutError(f"the SuperLink did not listen on {self.address}:\n{process.tail()}")

    def stop(self) -> None:
        """Stop every process started (SIGTERM to each process tree, SIGKILL to what is left
        after a grace period) and delete the work directory; idempotent. When the last run's
        result is in and only Flower's wind-down is left, no grace: there is nothing left to
        save (the ServerApp wrote the result last), and Ray's actors wait for the SIGKILL."""
        self.procs.stop_all(grace=0.0 if self._winding_down is not None else 5.0)
        self.superlink = None
        self._winding_down = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _end_finished_run(self) -> None:
        """SIGKILL what is left of a run whose result is in (``run``): its ``flwr run`` and
        its ``flwr-simulation`` with Ray below it, all past the point of writing anything."""
        proc, self._winding_down = self._winding_down, None
        if proc is None or self.superlink is None:
            return
        pids = [proc.pid, *descendants(proc.pid)]
        for pid in descendants(self.superlink.pid):
            if pid not in pids and _is_simulation(pid):
                pids += [pid, *descendants(pid)]
        send_signal(pids, signal.SIGKILL)
        proc.popen.wait()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(POLL)

    def pids(self) -> set[int]:
        """The live processes of this runtime (with every descendant)."""
        return self.procs.pids()

    # --- runs ---------------------------------------------------------------------------------
    def start_run(
        self, app: str | Path, run_config: Mapping[str, Any], clients: int
    ) -> ManagedProcess:
        """``flwr run <app> <connection> --run-config <file> --federation-config ...
        --stream`` in the background: a run of the Flower App ``app`` on ``clients``
        simulated SuperNodes; the process (it ends with the run). A previous run that
        ``run`` left winding down ends first: one run at a time on the SuperLink."""
        self._end_finished_run()
        self._runs += 1
        run_file = self.workdir / f"run-{self._runs}.toml"
        run_file.write_text(run_config_toml(run_config))
        federation = federation_config(clients, self.ray_address, self.verbose, self.device)
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
        """Run ``cfg`` (prepared) with ``flwr run`` and wait for its result (also in
        ``cfg.out`` when set): ``run_group`` of one config."""
        return self.run_group([cfg], on_round)[0]

    def run_group(
        self, configs: Sequence[ExperimentConfig], on_round: OnRound | None = None
    ) -> list[Result]:
        """Run ``configs`` (prepared, all with the same ``clients``) in ONE ``flwr run``: the
        ServerApp runs them in turn on the same ClientApp actors (Ray starts once, the
        partitions are discovered once; the run config's ``RUNS_KEY`` names the list, a
        single config is the run config itself) and writes each result to its ``out`` as soon
        as it is done. Waits for every result (also in the config's ``out`` when set): the
        ``out`` files, which the ServerApp writes last; Flower's wind-down behind them is cut
        short by the next run or by ``stop`` (unless ``verbose`` or ``ray_address``).
        ``on_round`` sees every round as the ServerApp finishes it. A run that ends first:
        ``RuntimeError`` naming the configs left without a result, with the end of its log."""
        if not configs:
            return []
        if len({cfg.clients for cfg in configs}) != 1:
            raise ValueError("one flwr run needs configs with the same number of clients")
        run = self._runs + 1
        outs: list[Path] = []
        run_cfgs: list[ExperimentConfig] = []
        for k, cfg in enumerate(configs, start=1):
            name = f"result-{run}.json" if len(configs) == 1 else f"result-{run}-{k}.json"
            out = Path(cfg.out).absolute() if cfg.out else self.workdir / name
            checkpoint = str(Path(cfg.checkpoint).absolute()) if cfg.checkpoint else None
            device = "cuda" if visible_gpus(cfg.device) is not None else cfg.device  # cuda:N
            run_cfgs.append(
                dataclasses.replace(cfg, out=str(out), checkpoint=checkpoint, device=device)
            )
            outs.append(out)
        if len(set(outs)) != len(outs):
            raise ValueError("the configs of one flwr run need distinct out files")
        for out in outs:
            if out.exists():
                out.unlink()  # a stale file must not pass for this run's result
        if len(configs) == 1:
            run_config = run_cfgs[0].to_run_config()
        else:  # None: the app's default, as ``run_config_toml`` leaves it out
            runs_file = self.workdir / f"runs-{run}.json"
            listed = [
                {k: v for k, v in c.to_run_config().items() if v is not None} for c in run_cfgs
            ]
            runs_file.write_text(json.dumps(listed))
            run_config = {RUNS_KEY: str(runs_file)}
        by_out = {str(out): cfg for out, cfg in zip(outs, configs, strict=True)}
        to_the_end = self.verbose or bool(self.ray_address)  # else cut short (module doc)
        proc = self.start_run(self.app, run_config, configs[0].clients)
        with _tail(self.progress) as progress, _tail(proc.log) as log:

            def report() -> None:
                for line in progress():
                    record = json.loads(line)
                    cfg = by_out.get(record.get("out"))
                    if cfg is not None and on_round is not None:
                        on_round(cfg, RoundRecord(**record["round"]))
                for line in log():
                    if self.verbose:
                        sys.stderr.write(line)

            try:
                while proc.running() and (to_the_end or not all(o.exists() for o in outs)):
                    report()
                    time.sleep(POLL)
            except BaseException:  # Ctrl-C, SIGTERM: the round the ServerApp is reporting
                _settle(report, proc, INTERRUPT_SETTLE)  # (the interrupt's note says it)
                raise
            report()  # the rounds finished since the last look (written before ``out``)
        if proc.running():
            self._winding_down = proc
        missing = [(cfg, out) for cfg, out in zip(configs, outs, strict=True) if not out.exists()]
        if missing:
            which = "" if len(configs) == 1 else _missing(missing, len(configs))
            raise RuntimeError(
                f"the simulation ended without a result{which} (flwr run exit code "
                f"{proc.popen.returncode}); the end of its log:\n{proc.tail(40)}"
            )
        results = []
        for cfg, out in zip(configs, outs, strict=True):
            result = Result.load(out)
            # the ClientApp actors' torch threads (a cluster of one's own sets its workers')
            result.config["client_threads"] = None if cfg.ray_address else CLIENT_THREADS
            result.config["device"] = cfg.device  # cuda:N, which is "cuda" in the runtime
            if cfg.out:
                result.save(out)
            results.append(result)
        return results


def _missing(missing: Sequence[tuple[ExperimentConfig, Path]], total: int) -> str:
    """`` for N of the M configs: <method>/<attack>/seed <s> (<out>), ...`` (an error's)."""
    names = ", ".join(f"{c.method}/{c.attack}/seed {c.seed} ({out})" for c, out in missing)
    return f" for {len(missing)} of the {total} configs: {names}"


def _is_simulation(pid: int) -> bool:
    """Whether process ``pid`` runs ``flwr-simulation`` (a run on the SuperLink)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(arg.decode(errors="replace")).name == "flwr-simulation" for arg in argv[:2])


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
    """Run ``configs`` (prepared: ``runner.prepare``) on Flower's simulation runtime: one
    SuperLink per ``ray_address`` and ``device``, and on it one ``flwr run`` per group of
    configs with the same ``clients`` (``SimulationRuntime.run_group``: Ray starts once per
    group); the results in the order of ``configs``, each written to its ``out`` as soon as
    it is done."""
    links: dict[tuple[str | None, str], dict[int, list[int]]] = {}
    for i, cfg in enumerate(configs):
        link = (cfg.ray_address, cfg.device)
        links.setdefault(link, {}).setdefault(cfg.clients, []).append(i)
    out: dict[int, Result] = {}
    for (ray_address, device), groups in links.items():
        with SimulationRuntime(ray_address, verbose, device=device) as runtime:
            for members in groups.values():
                for run in _distinct_outs(configs, members):
                    results = runtime.run_group([configs[i] for i in run], on_round)
                    out.update(zip(run, results, strict=True))
    return [out[i] for i in range(len(configs))]


def _distinct_outs(configs: Sequence[Prepared], members: Sequence[int]) -> list[list[int]]:
    """``members`` cut, in order, into runs whose configs name distinct ``out`` files (a
    config's result is its ``out``; a repeated one starts the next run)."""
    runs: list[list[int]] = [[]]
    seen: set[Path] = set()
    for i in members:
        out = configs[i].out
        path = Path(out).absolute() if out else None
        if path is not None and path in seen:
            runs.append([])
            seen.clear()
        if path is not None:
            seen.add(path)
        runs[-1].append(i)
    return runs
