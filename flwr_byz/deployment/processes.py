"""The processes of a local deployment: ``flwr_byz.simulations.processes`` (the simulation
engine starts its SuperLink the same way), re-exported here."""

from __future__ import annotations

from ..simulations.processes import (
    ManagedProcess,
    ProcessSet,
    descendants,
    environment,
    executable,
    free_port,
    handle_termination,
    stop_together,
    with_marker,
)

__all__ = [
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
