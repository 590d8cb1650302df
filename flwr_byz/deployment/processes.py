"""The processes of a local deployment: started in their own session, logged to a file each,
and stopped with everything they spawned (Flower's SuperLink/SuperNode start SuperExec,
``flwr-serverapp`` and ``flwr-clientapp`` processes, some of them in sessions of their own).

``ProcessSet.stop_all`` is idempotent and is also registered with ``atexit``, so the processes
go away on normal exit, on an exception and on Ctrl-C (``KeyboardInterrupt``) alike; the CLI
turns SIGTERM/SIGHUP into the same path (``handle_termination``).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

__all__ = [
    "ManagedProcess",
    "ProcessSet",
    "descendants",
    "handle_termination",
    "with_marker",
]


def _children_map() -> dict[int, list[int]]:
    """parent PID -> child PIDs, from ``/proc`` (empty where there is no ``/proc``)."""
    out: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(parent, []).append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first seen, breadth first)."""
    children = _children_map()
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        if child not in found:
            found.append(child)
            todo.extend(children.get(child, []))
    return found


def with_marker(marker: str) -> list[int]:
    """Processes (other than this one) whose command line contains ``marker``, with all
    their descendants."""
    found: list[int] = []
    me = os.getpid()
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return found
    for pid in entries:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid != me and marker.encode() in cmdline and pid not in found:
            found += [pid, *(d for d in descendants(pid) if d not in found)]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _signal(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


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
        pids = self.tree()
        _signal(pids, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            self.popen.poll()  # reap our child so it does not linger as a zombie
            time.sleep(0.1)
        _signal([p for p in pids + descendants(self.pid) if _alive(p)], signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass
        if self._fh is not None:
            self._fh.close()
            self._fh = None

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

    def stop_all(self) -> None:
        """Stop every process (newest first), then whatever still runs with ``marker`` in its
        command line (children orphaned by a crashed parent leave its tree: Flower's SuperExec
        and apps); safe to call more than once."""
        while self.processes:
            self.processes.pop().stop()
        if self.marker:
            orphans = with_marker(self.marker)
            _signal(orphans, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and any(_alive(p) for p in orphans):
                time.sleep(0.1)
            _signal([p for p in orphans if _alive(p)], signal.SIGKILL)

    def pids(self) -> set[int]:
        """Every live process this set started, with descendants."""
        return {p for proc in self.processes for p in proc.tree() if _alive(p)}


@contextmanager
def handle_termination() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``SystemExit`` (so ``finally`` clauses and
    context managers clean up as on Ctrl-C); the previous handlers are restored after."""

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    saved = {sig: signal.signal(sig, _exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
