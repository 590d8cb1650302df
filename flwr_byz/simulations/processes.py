"""Flower's processes that we start (a SuperLink, SuperNodes, ``flwr run``): started in their
own session, logged to a file each, and stopped with everything they spawned (Flower's
SuperLink/SuperNode start SuperExec, ``flwr-serverapp``, ``flwr-simulation`` and
``flwr-clientapp`` processes, some of them in sessions of their own). The simulation engine
(``flwr_byz.simulations.simulation``) and the loopback deployment (``flwr_byz.deployment``)
both use them.

``ProcessSet.stop_all`` is idempotent and is also registered with ``atexit``, so the processes
go away on normal exit, on an exception and on Ctrl-C alike; ``handle_termination`` turns
SIGTERM/SIGHUP into the same path (the ``flwr-byz`` CLI does so for SIGINT as well:
``flwr_byz.interrupt``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from ..interrupt import alive, descendants, handle_interrupts, send_signal

__all__ = [
    "Lifecycle",
    "ManagedProcess",
    "ProcessSet",
    "descendants",
    "environment",
    "executable",
    "free_port",
    "handle_termination",
    "stop_together",
    "with_marker",
]

#: The loopback address every process we start listens on.
HOST = "127.0.0.1"

_L = TypeVar("_L", bound="Lifecycle")


class Lifecycle:
    """A set of processes used as a context manager: ``start`` on entry (``stop`` at once if
    it fails part-way, so nothing it started is left), ``stop`` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _L) -> _L:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def executable(name: str) -> str:
    """The Flower executable ``name`` next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install flwr in this environment")
    return found


def environment() -> dict[str, str]:
    """This environment with the interpreter's ``bin`` first on PATH: the SuperLink and
    SuperNodes start ``flower-superexec`` (and the apps) by name."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")  # many small processes share the cores
    return env


def ancestors(pid: int | None = None) -> list[int]:
    """The parent of ``pid`` (default: this process), its parent, and so on up to PID 1."""
    chain: list[int] = []
    pid = os.getpid() if pid is None else pid
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        chain.append(pid)
    return chain


def with_marker(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``, with all their descendants; never
    this process nor one of its ancestors (``timeout 600 flwr-byz deploy --workdir DIR`` or a
    shell running it names the marker too, and would be stopped with this process in it)."""
    found: list[int] = []
    spared = {os.getpid(), *ancestors()}
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return found
    for pid in entries:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid not in spared and marker.encode() in cmdline and pid not in found:
            found += [pid, *(d for d in descendants(pid) if d not in found and d not in spared)]
    return found


@dataclass
class ManagedProcess:
    """A started command: its ``Popen``, name and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    _fh: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[int]:
        """This process and everything below it."""
        return [self.pid, *descendants(self.pid)]

    def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """``sig`` to the process tree, SIGKILL after ``grace`` seconds to what is left."""
        stop_together([self], grace, sig)

    def kill(self) -> None:
        """SIGKILL the process tree at once (a crash, as the fault tests stage it)."""
        self.stop(grace=0.0, sig=signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_together(
    processes: Sequence[ManagedProcess], grace: float = 10.0, sig: int = signal.SIGTERM
) -> None:
    """``sig`` to every process tree at once, SIGKILL after ``grace`` seconds to what is
    left (the slowest one sets the time, not their sum: a SuperNode takes about 2 s)."""
    trees = [process.tree() for process in processes]
    for pids in trees:
        send_signal(pids, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for pids in trees for p in pids):
        for process in processes:
            process.popen.poll()  # reap our child so it does not linger as a zombie
        time.sleep(0.1)
    for process, pids in zip(processes, trees, strict=True):
        send_signal([p for p in pids + descendants(process.pid) if alive(p)], signal.SIGKILL)
        try:
            process.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass
        if process._fh is not None:
            process._fh.close()
            process._fh = None


class ProcessSet:
    """Processes started in their own session, stopped together (newest first)."""

    def __init__(
        self, log_dir: str | Path, env: dict[str, str] | None = None, marker: str | None = None
    ) -> None:
        self.log_dir = Path(log_dir)
        self.env = dict(os.environ if env is None else env)
        self.marker = marker
        self.processes: list[ManagedProcess] = []
        atexit.register(self.stop_all)

    def start(
        self, name: str, command: Sequence[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        """Start ``command`` (stdout and stderr to ``<log_dir>/<name>.log``, appended)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        fh = open(log, "ab")  # closed by ManagedProcess.stop
        popen = subprocess.Popen(
            list(command),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **(env or {})},
            start_new_session=True,  # Ctrl-C in the terminal reaches us, not them
        )
        process = ManagedProcess(name, popen, log, fh)
        self.processes.append(process)
        return process

    def stop_all(self, grace: float = 5.0) -> None:
        """Stop every process at once (SIGTERM, newest first; SIGKILL after ``grace`` seconds
        to what is left), then whatever still runs with ``marker`` in its command line
        (children orphaned by a crashed parent leave its tree: Flower's SuperExec and apps);
        safe to call more than once."""
        processes = self.processes[::-1]
        self.processes.clear()
        stop_together(processes, grace)
        if self.marker:
            orphans = with_marker(self.marker)
            send_signal(orphans, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and any(alive(p) for p in orphans):
                time.sleep(0.1)
            send_signal([p for p in orphans if alive(p)], signal.SIGKILL)

    def pids(self) -> set[int]:
        """Every live process this set started, with descendants."""
        return {p for proc in self.processes for p in proc.tree() if alive(p)}


@contextmanager
def handle_termination() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``flwr_byz.interrupt.Interrupted`` (a
    ``SystemExit`` with code 128 + the signal), so ``finally`` clauses and context managers
    clean up as on Ctrl-C; a second signal ends the process at once. The previous handlers
    are restored after."""
    with handle_interrupts((signal.SIGTERM, signal.SIGHUP)):
        yield
