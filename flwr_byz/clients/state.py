"""Per-run client state in Flower's ``context.state``: vectors and counters under keys
namespaced by the strategy's ``state-key`` (``"flwr-byz:<state-key>:<name>"``), so that a new
run on the same node starts clean (storing anything drops an earlier run's entries).

For a checkpointed run the state also goes to disk, so that a resumed run continues it: when
the train config names a folder (``client-state-dir``, the runner's ``<checkpoint>.clients``),
:func:`save_run_state` writes this run's entries after each train op, atomically, as tensors
and ints to ``<folder>/<partition>/round-<r>.pt`` (read back with ``weights_only=True``), and
keeps the latest two rounds (a run killed during round r + 1 may have written r + 1 while its
checkpoint is still at r). In the resumed run the config carries the checkpoint's round R
(``resume-round``): :func:`load_run_state` gives a node that has no state for the run its
saved state of the latest round <= R.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.supercore import log

from ..files import atomic_write
from ..protocol.keys import (
    CLIENT_STATE_DIR_KEY,
    PARTITION_ID_KEY,
    RESUME_ROUND_KEY,
    SERVER_ROUND_KEY,
    STATE_KEY,
)
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
    "load_run_state",
    "load_vector",
    "save_run_state",
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


# --- on disk, for resumed runs ------------------------------------------------------------------

#: Version of the client-state files.
STATE_FILE_VERSION = 1
#: Rounds of state files each node keeps.
KEEP_ROUNDS = 2
_LOADED = "resume-loaded"  # this run's marker: the node has looked for saved state
_FILE = re.compile(r"round-(\d+)\.pt")


def save_run_state(context: Context, config: Mapping[str, Any]) -> Path | None:
    """Write this run's ``context.state`` entries after a train op, when ``config`` names a
    client-state folder (module doc); returns the file (None: nothing to write)."""
    folder = config.get(CLIENT_STATE_DIR_KEY)
    server_round = config.get(SERVER_ROUND_KEY)
    if not folder or not isinstance(server_round, int):
        return None
    run = state_name(config, "")
    loaded = state_name(config, _LOADED)
    entries: dict[str, Any] = {}
    for key in sorted(context.state):
        if not key.startswith(run) or key == loaded:
            continue
        if key in context.state.array_records:
            record = context.state.array_records[key]
            entries[key] = {"arrays": [[k, torch.from_numpy(a.numpy())] for k, a in record.items()]}
        elif key in context.state.config_records:
            values = dict(context.state.config_records[key])
            if not all(type(v) in (bool, int, float, str) for v in values.values()):
                raise TypeError(f"client state {key!r}: only numbers and strings are saved")
            entries[key] = {"config": values}
    if not entries:
        return None
    directory = _partition_dir(context, str(folder))
    path = directory / f"round-{server_round}.pt"
    payload = {
        "version": STATE_FILE_VERSION,
        "state-key": str(config.get(STATE_KEY, "")),
        "round": server_round,
        "entries": entries,
    }
    with atomic_write(path, durable=False) as fh:  # every round on every node: no fsync
        torch.save(payload, fh)
    rounds = sorted(_rounds(directory), reverse=True)
    later = [r for r in rounds if r > server_round]  # a stale run's, or a killed run's
    kept = [r for r in rounds if r <= server_round][:KEEP_ROUNDS]
    for r in rounds:
        if r in later or r not in kept:
            (directory / f"round-{r}.pt").unlink(missing_ok=True)
    return path


def load_run_state(context: Context, config: Mapping[str, Any]) -> Path | None:
    """In a resumed run (``resume-round`` R in ``config``), once per run: give a node with no
    state for the run its saved state of the latest round <= R; returns the file read (None:
    none). A file that cannot be read, or is of another run, is left out with a warning."""
    folder = config.get(CLIENT_STATE_DIR_KEY)
    resumed = config.get(RESUME_ROUND_KEY)
    loaded = state_name(config, _LOADED)
    if not folder or not isinstance(resumed, int) or loaded in context.state:
        return None
    run = state_name(config, "")
    has_state = any(k.startswith(run) for k in context.state)
    _drop_other_runs(context, config)
    context.state[loaded] = ConfigRecord({"round": resumed})
    if has_state:
        return None
    directory = _partition_dir(context, str(folder))
    rounds = [r for r in _rounds(directory) if r <= resumed]
    if not rounds:
        return None
    path = directory / f"round-{max(rounds)}.pt"
    try:
        entries = _read_state(path, str(config.get(STATE_KEY, "")))
    except ValueError as exc:
        log(WARNING, "client state: %s; this node starts without it", exc)
        return None
    for key, value in entries.items():
        context.state[key] = value
    return path


def _partition_dir(context: Context, folder: str) -> Path:
    partition = context.node_config.get(PARTITION_ID_KEY)
    name = str(partition) if isinstance(partition, int) else f"node-{context.node_id}"
    return Path(folder) / name


def _rounds(directory: Path) -> list[int]:
    try:
        names = [p.name for p in directory.iterdir()]
    except OSError:
        return []
    return [int(m.group(1)) for m in map(_FILE.fullmatch, names) if m is not None]


def _read_state(path: Path, state_key: str) -> dict[str, ArrayRecord | ConfigRecord]:
    """The entries of a state file (``ValueError``, one line, for anything else)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a refused pickle, a truncated file: all one case
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path} is not a readable client-state file: {first}") from None
    if not isinstance(payload, dict) or payload.get("version") != STATE_FILE_VERSION:
        raise ValueError(f"{path} is not a client-state file of version {STATE_FILE_VERSION}")
    if payload.get("state-key") != state_key:
        raise ValueError(f"{path} is of another run (state key {payload.get('state-key')!r})")
    entries = payload.get("entries")
    prefix = f"{PREFIX}{state_key}:"
    out: dict[str, ArrayRecord | ConfigRecord] = {}
    if not isinstance(entries, dict):
        raise ValueError(f"{path} holds no entries")
    for key, value in entries.items():
        if not (isinstance(key, str) and key.startswith(prefix) and isinstance(value, dict)):
            raise ValueError(f"{path}: an entry {key!r} of another run")
        if isinstance(value.get("arrays"), list):
            arrays = {}
            for pair in value["arrays"]:
                if not (
                    isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], torch.Tensor)
                ):
                    raise ValueError(f"{path}: entry {key!r} is not a list of arrays")
                arrays[str(pair[0])] = Array(np.ascontiguousarray(pair[1].numpy()))
            out[key] = ArrayRecord(arrays)
        elif isinstance(value.get("config"), dict):
            out[key] = ConfigRecord(value["config"])
        else:
            raise ValueError(f"{path}: entry {key!r} is neither arrays nor numbers")
    return out
