"""Find and stop the processes a test started (``flower-superlink``, a Ray head, and their
descendants), by a marker string in their command line (a temporary directory's path)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def processes_with(marker: str) -> set[int]:
    """PIDs whose command line contains ``marker``, plus all their descendants."""
    pids = _pids()
    found = {p for p in pids if p != os.getpid() and marker in _cmdline(p)}
    parents = {p: _ppid(p) for p in pids}
    grew = True
    while grew:
        children = {p for p, parent in parents.items() if parent in found} - found
        grew = bool(children)
        found |= children
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def stop(pids: set[int], grace: float = 5.0) -> set[int]:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the PIDs still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
    return alive(pids)
