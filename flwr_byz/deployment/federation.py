"""LocalDeployment: one SuperLink and N SuperNodes as separate processes on loopback.

It is what ``flwr-byz deploy`` runs and what docs/DEPLOYMENT.md does by hand on real hosts:

1. credentials: a private CA and the SuperLink's TLS certificate; one ECDSA key pair per
   SuperNode (``credentials``);
2. ``flower-superlink --ssl-ca-certfile ... --ssl-certfile ... --ssl-keyfile ...
   --enable-supernode-auth`` (``--insecure`` only when asked: no TLS and no authentication);
3. a ``flwr`` connection (``$FLWR_HOME/config.toml``, ``[superlink.<name>]`` with the CA as
   ``root-certificates``) and ``flwr supernode register <key>.pub`` for every node;
4. ``flower-supernode --root-certificates ca.crt --auth-supernode-private-key <key>
   --node-config "partition-id=i num-partitions=N [byzantine-attack='...']"``; with
   ``fork_server`` (what ``flwr-byz deploy`` uses), ``--isolation process`` and, beside each
   SuperNode, one long-running ClientApp launcher (``flwr_byz.deployment.forkserver``) that
   imports the ClientApp once and forks a child per message, instead of Flower starting a
   ``flwr-clientapp`` process (3-5 s of imports) per message;
5. ``flwr run <app> <connection> --run-config <file> --stream``.

Every process gets its own ``FLWR_HOME`` under the work directory (apps and logs of a node
stay apart, as on separate hosts) and its own log file; ``stop()`` (also on ``with`` exit,
Ctrl-C and interpreter exit) stops them all with their children.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_text
from ..protocol.keys import ATTACK_KEY, NUM_PARTITIONS_KEY, PARTITION_ID_KEY
from ..simulations.flower_app import run_config_toml
from ..simulations.flower_app import toml_value as _toml_value
from ..simulations.processes import (
    HOST,
    Lifecycle,
    ManagedProcess,
    ProcessSet,
    descendants,
    free_port,
)
from ..simulations.processes import environment as _environment
from ..simulations.processes import executable as _executable
from .credentials import NodeKeys, TlsFiles, make_node_keys, make_tls

__all__ = [
    "CONNECTION",
    "FORK_SERVER_MODULE",
    "LocalDeployment",
    "NodeSpec",
    "fork_server_supported",
    "free_port",
    "run_config_toml",
]

#: Name of the ``flwr`` SuperLink connection the deployment writes.
CONNECTION = "flwr-byz-deployment"
#: The long-running ClientApp launcher (``python -m``; see ``forkserver``), not imported here:
#: it imports Flower's ClientApp runtime.
FORK_SERVER_MODULE = "flwr_byz.deployment.forkserver"


def fork_server_supported() -> bool:
    """Whether the installed Flower has what the fork server builds on (its SuperExec
    executors and the Runtime HTTP API, Flower 1.42); else a deployment keeps Flower's
    ``flwr-clientapp`` process per message."""
    needed = ("flwr.supercore.superexec.executor", "flwr.supercore.runtime")
    try:
        return all(importlib.util.find_spec(name) is not None for name in needed)
    except ImportError:  # a parent package missing
        return False


@dataclass
class NodeSpec:
    """One SuperNode: its partition and, for a Byzantine node, its attack spec."""

    partition: int
    num_partitions: int
    attack: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def node_config(self) -> str:
        """The ``--node-config`` string."""
        values: dict[str, Any] = {
            PARTITION_ID_KEY: self.partition,
            NUM_PARTITIONS_KEY: self.num_partitions,
        }
        if self.attack:
            values[ATTACK_KEY] = self.attack
        values.update(self.extra)
        return " ".join(f"{k}={_toml_value(v)}" for k, v in values.items())


class LocalDeployment(Lifecycle):
    """A SuperLink and SuperNodes on 127.0.0.1 (see the module doc).

    ``nodes``: the SuperNodes to start. ``tls``/``auth``: TLS from a generated CA and
    SuperNode authentication (auth needs TLS). ``workdir`` holds credentials, homes and logs.
    ``fork_server``: the module of the ClientApp the runs use (e.g.
    ``"flwr_byz.simulations.app"``), imported once by a long-running launcher per node (module
    doc, step 4); None: a ``flwr-clientapp`` process per message, which any app allows.
    """

    def __init__(
        self,
        workdir: str | Path,
        nodes: list[NodeSpec],
        *,
        tls: bool = True,
        auth: bool = True,
        startup_timeout: float = 120.0,
        fork_server: str | None = None,
    ) -> None:
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS (tls=True)")
        self.workdir = Path(workdir).resolve()
        self.nodes = list(nodes)
        self.tls = tls
        self.auth = auth
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.procs = ProcessSet(self.workdir / "logs", env=_environment(), marker=str(self.workdir))
        self.superlink: ManagedProcess | None = None
        self.supernodes: dict[int, ManagedProcess] = {}
        #: The ClientApp module a node's long-running launcher imports once (``forkserver``);
        #: None: Flower's default, a ``flwr-clientapp`` process per message.
        self.fork_server = fork_server
        self.launchers: dict[int, ManagedProcess] = {}  # node index -> its fork server
        self.runtime_ports: dict[int, int] = {}  # node index -> its Runtime API port
        self.tls_files: TlsFiles | None = None
        self.keys: dict[int, NodeKeys] = {}
        self.node_ids: dict[int, int] = {}  # node index -> registered node ID (auth)
        self._runs = 0

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        """Credentials, SuperLink, the ``flwr`` connection, registration, SuperNodes; returns
        when every SuperNode is connected."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.tls_files = make_tls(self.workdir / "certificates")
        self.start_superlink()
        self._write_connection()
        for index in range(len(self.nodes)):
            if self.auth:
                self.keys[index] = make_node_keys(self.workdir / "keys", f"supernode-{index}")
                self.node_ids[index] = self.register(self.keys[index].public)
            self.start_node(index)
        self.wait_for_nodes(len(self.nodes))

    def stop(self) -> None:
        """Stop every process this deployment started (idempotent)."""
        self.procs.stop_all()
        self.supernodes.clear()
        self.launchers.clear()
        self.superlink = None

    def pids(self) -> set[int]:
        """The live processes of this deployment (with every descendant)."""
        return self.procs.pids()

    # --- SuperLink ----------------------------------------------------------------------------
    def start_superlink(self) -> ManagedProcess:
        command = [
            _executable("flower-superlink"),
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",  # no network: use this environment
        ]
        if self.tls_files is not None:
            command += [
                "--ssl-ca-certfile",
                str(self.tls_files.ca_cert),
                "--ssl-certfile",
                str(self.tls_files.server_cert),
                "--ssl-keyfile",
                str(self.tls_files.server_key),
            ]
        else:
            command.append("--insecure")
        if self.auth:
            command.append("--enable-supernode-auth")
        self.superlink = self.procs.start("superlink", command, env=self._home("superlink"))
        self._wait_for_port(self.superlink)
        return self.superlink

    def _wait_for_port(self, process: ManagedProcess) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not process.running():
                raise RuntimeError(f"the SuperLink exited at start:\n{process.tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"the SuperLink did not listen on {self.address}:\n{process.tail()}")

    def _home(self, name: str) -> dict[str, str]:
        home = self.workdir / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        return {"FLWR_HOME": str(home)}

    # --- the flwr CLI ---------------------------------------------------------------------------
    @property
    def cli_env(self) -> dict[str, str]:
        """Environment of ``flwr`` commands (their ``FLWR_HOME`` holds the connection)."""
        return self._home("cli")

    def _write_connection(self) -> None:
        lines = [
            "[superlink]",
            f'default = "{CONNECTION}"',
            "",
            f"[superlink.{CONNECTION}]",
            f'address = "{self.address}"',
        ]
        if self.tls_files is not None:
            lines.append(f"root-certificates = {json.dumps(str(self.tls_files.ca_cert))}")
        else:
            lines.append("insecure = true")
        write_text(Path(self.cli_env["FLWR_HOME"]) / "config.toml", "\n".join(lines) + "\n")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``flwr <args>`` against this deployment's SuperLink."""
        return subprocess.run(
            [_executable("flwr"), *args],
            env={**_environment(), **self.cli_env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _flwr_json(self, *args: str) -> dict[str, Any]:
        done = self.flwr(*args, "--format", "json")
        try:
            data = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            data = {"success": False, "error-message": done.stdout + done.stderr}
        return dict(data)

    def register(self, public_key: Path) -> int:
        """``flwr supernode register``; the node ID the SuperLink gave the key."""
        data = self._flwr_json("supernode", "register", str(public_key), CONNECTION)
        if not data.get("success"):
            raise RuntimeError(f"flwr supernode register failed: {data.get('error-message')}")
        return int(data["node-id"])

    def online_nodes(self) -> list[int]:
        """IDs of the SuperNodes the SuperLink sees online (``flwr supernode ls``)."""
        data = self._flwr_json("supernode", "ls", CONNECTION)
        return [int(n["node-id"]) for n in data.get("nodes", []) if n.get("status") == "online"]

    def wait_for_nodes(self, count: int, timeout: float | None = None) -> list[int]:
        """Wait until ``count`` SuperNodes are online; their IDs."""
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        online: list[int] = []
        while time.monotonic() < deadline:
            online = self.online_nodes()
            if len(online) >= count:
                return online
            for index, proc in self.supernodes.items():
                if not proc.running():
                    raise RuntimeError(f"SuperNode {index} exited:\n{proc.tail()}")
            for index, proc in self.launchers.items():
                if not proc.running():
                    raise RuntimeError(
                        f"the ClientApp fork server of SuperNode {index} exited:\n{proc.tail()}"
                    )
            time.sleep(0.5)
        raise TimeoutError(f"{len(online)} of {count} SuperNodes online after waiting")

    # --- SuperNodes -----------------------------------------------------------------------------
    def node_command(self, index: int, private_key: Path | None = None) -> list[str]:
        """The ``flower-supernode`` command of node ``index`` (``private_key``: another key,
        e.g. an unregistered one)."""
        spec = self.nodes[index]
        self.runtime_ports[index] = free_port()
        command = [
            _executable("flower-supernode"),
            "--superlink",
            self.address,
            "--port",  # its Runtime API, where the ClientApps fetch their messages
            str(self.runtime_ports[index]),
            "--node-config",
            spec.node_config(),
        ]
        if self.fork_server is not None:
            command += ["--isolation", "process"]  # the launcher is ours: start_launcher
        if self.tls_files is not None:
            command += ["--root-certificates", str(self.tls_files.ca_cert)]
        else:
            command.append("--insecure")
        key = private_key or (self.keys[index].private if index in self.keys else None)
        if key is not None:
            command += ["--auth-supernode-private-key", str(key)]
        return command

    def start_node(self, index: int, private_key: Path | None = None) -> ManagedProcess:
        """Start (or restart) SuperNode ``index``."""
        old = self.supernodes.get(index)
        if old is not None and old.running():
            raise RuntimeError(f"SuperNode {index} is already running")
        command = self.node_command(index, private_key)
        proc = self.procs.start(f"supernode-{index}", command, env=self._home(f"node-{index}"))
        self.supernodes[index] = proc
        if self.fork_server is not None:
            self.start_launcher(index)
        return proc

    def launcher_command(self, index: int) -> list[str]:
        """The command of node ``index``'s ClientApp fork server (``forkserver``): it serves
        the node's Runtime API, exits with the SuperNode (``--parent-pid``), and its command
        line names the work directory (``--tag``), so a crash's orphans are found by it."""
        return [
            sys.executable,
            "-m",
            FORK_SERVER_MODULE,
            "--runtime-api-address",
            f"{HOST}:{self.runtime_ports[index]}",
            "--insecure",  # the Runtime API is served on loopback without TLS, as for Flower's
            "--parent-pid",
            str(self.supernodes[index].pid),
            "--preload",
            str(self.fork_server),
            "--tag",
            str(self.workdir),
        ]

    def start_launcher(self, index: int) -> ManagedProcess:
        """Start node ``index``'s long-running ClientApp launcher (``fork_server`` set): the
        node's ClientApps run in children forked from it, one per message, without imports."""
        old = self.launchers.get(index)
        if old is not None and old.running():
            raise RuntimeError(f"the ClientApp fork server of SuperNode {index} is running")
        command = self.launcher_command(index)
        env = self._home(f"node-{index}")  # the node's FLWR_HOME: the FABs install there
        proc = self.procs.start(f"clientapps-{index}", command, env=env)
        self.launchers[index] = proc
        return proc

    def kill_node(self, index: int) -> None:
        """SIGKILL SuperNode ``index`` and its children (a crashed host), with its ClientApp
        fork server and the ClientApps running in it."""
        self.supernodes[index].kill()
        if index in self.launchers:
            self.launchers[index].kill()

    # --- runs -----------------------------------------------------------------------------------
    def start_run(self, app: str | Path, run_config: Mapping[str, Any]) -> ManagedProcess:
        """``flwr run <app> <connection> --run-config <file> --stream`` in the background."""
        self._runs += 1
        config_file = self.workdir / f"run-{self._runs}.toml"
        write_text(config_file, run_config_toml(run_config))
        command = [
            _executable("flwr"),
            "run",
            str(Path(app).resolve()),
            CONNECTION,
            "--run-config",
            str(config_file),
            "--stream",
        ]
        return self.procs.start(f"run-{self._runs}", command, env=self.cli_env)

    def run(
        self, app: str | Path, run_config: Mapping[str, Any], timeout: float = 3600.0
    ) -> ManagedProcess:
        """``start_run`` and wait for it (``TimeoutError`` after ``timeout`` seconds)."""
        proc = self.start_run(app, run_config)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.stop()
            raise TimeoutError(f"the run did not finish in {timeout:.0f} s") from exc
        return proc

    def serverapp_pids(self) -> list[int]:
        """The live ``flwr-serverapp`` processes under the SuperLink."""
        if self.superlink is None:
            return []
        out = []
        for pid in descendants(self.superlink.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if b"flwr-serverapp" in cmd and state != "Z":
                out.append(pid)
        return sorted(set(out))
