"""Shared by the experiment scripts: the parallel local-engine runner and accuracy helpers of
``flwr_byz.reproduce.pool`` (resuming: a run whose JSON exists is not run again)."""

from __future__ import annotations

from flwr_byz.reproduce.pool import TAIL, pct, run_all, tail_acc

__all__ = ["TAIL", "pct", "run_all", "tail_acc"]
