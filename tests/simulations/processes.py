"""Stop the processes a test started (``flower-superlink``, a Ray head, and their descendants),
as found by the library's own process scan (``flwr_byz.deployment.processes.with_marker``: a
marker string in their command line, a temporary directory's path), with the library's
``flwr_byz.interrupt.stop_processes``."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr_byz.interrupt import alive, stop_processes

__all__ = ["stop"]


def stop(pids: Iterable[int], grace: float = 5.0) -> list[int]:
    """SIGTERM to ``pids``, SIGKILL after ``grace`` seconds to those left; returns the PIDs
    still alive (zombies count as gone) ``grace`` seconds after the SIGKILL."""
    pids = list(pids)
    stop_processes(pids, grace)
    deadline = time.monotonic() + grace
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
