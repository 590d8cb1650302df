"""Per-run client state in Flower's ``context.state``: vectors and counters under keys
namespaced by the strategy's ``state-key`` (``"flwr-byz:<state-key>:<name>"``), so that a new
run on the same node starts clean (storing anything drops an earlier run's entries)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from ..protocol.keys import STATE_KEY
from ..protocol.records import flatten

__all__ = [
    "BYZSGD_G",
    "BYZSGD_K",
    "BYZSGD_STEP",
    "BYZSGD_X",
    "DOUBLE_D",
    "DOUBLE_X",
    "EF21_COUNT",
    "EF21_G",
    "EF21_G_PREV",
    "MOMENTUM",
    "drop",
    "load_count",
    "load_vector",
    "state_name",
    "store_count",
    "store_vector",
]

PREFIX = "flwr-byz:"

# The names of the per-run client state (``context.state``; never on the wire).
#: Worker momentum m (op ``momentum``).
MOMENTUM = "momentum"
#: EF21: the client's g (the server's copy of it).
EF21_G = "ef21-g"
#: EF21: g before the last step (restored when that reply was lost).
EF21_G_PREV = "ef21-g-prev"
#: EF21: the client's version of g (its replies the server applied, minus one).
EF21_COUNT = "ef21-count"
#: mu2-SGD: the last corrected momentum d.
DOUBLE_D = "double-d"
#: mu2-SGD: the last query point x.
DOUBLE_X = "double-x"
#: ByzSGD worker: the last model it chose.
BYZSGD_X = "byzsgd-x"
#: ByzSGD worker: the last gradient it computed.
BYZSGD_G = "byzsgd-g"
#: ByzSGD worker: its past Lipschitz coefficients.
BYZSGD_K = "byzsgd-k"
#: ByzSGD worker: the step of the stored state.
BYZSGD_STEP = "byzsgd-step"


def state_name(config: Mapping[str, Any], name: str) -> str:
    """The ``context.state`` key of ``name`` for the run of ``config["state-key"]``."""
    return f"{PREFIX}{config.get(STATE_KEY, '')}:{name}"


def load_vector(context: Context, config: Mapping[str, Any], name: str) -> torch.Tensor | None:
    """The stored vector ``name`` of this run, or None."""
    record = context.state.array_records.get(state_name(config, name))
    return None if record is None else flatten(record)


def store_vector(
    context: Context, config: Mapping[str, Any], name: str, vector: torch.Tensor
) -> None:
    """Store ``vector`` as ``name`` (and drop an earlier run's state)."""
    _drop_other_runs(context, config)
    data = np.ascontiguousarray(vector.detach().cpu().numpy())
    context.state[state_name(config, name)] = ArrayRecord({"v": Array(data)})


def load_count(context: Context, config: Mapping[str, Any], name: str) -> int | None:
    """The stored counter ``name`` of this run, or None."""
    record = context.state.config_records.get(state_name(config, name))
    value = None if record is None else record.get("count")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def store_count(context: Context, config: Mapping[str, Any], name: str, count: int) -> None:
    """Store the counter ``name`` (and drop an earlier run's state)."""
    _drop_other_runs(context, config)
    context.state[state_name(config, name)] = ConfigRecord({"count": int(count)})


def drop(context: Context, config: Mapping[str, Any], name: str) -> None:
    """Forget ``name`` (no-op if absent)."""
    key = state_name(config, name)
    if key in context.state:
        del context.state[key]


def _drop_other_runs(context: Context, config: Mapping[str, Any]) -> None:
    run = state_name(config, "")
    for key in [k for k in context.state if k.startswith(PREFIX) and not k.startswith(run)]:
        del context.state[key]  # an earlier run's state
