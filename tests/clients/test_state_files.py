"""``flwr_byz.clients.state``: a node's per-run state saved beside the checkpoint and loaded
back in a resumed run.

``save_run_state`` writes only this run's entries (tensors and ints, read with
``weights_only=True``) to ``<folder>/<partition>/round-<r>.pt``, keeps the latest two rounds
and drops later ones (a stale run's); nothing without the config keys. ``load_run_state``
gives a node with no state its latest saved round <= the resumed round, exactly, once per run;
a file of another run, a broken one or a crafted pickle is left out with a warning (and runs
nothing).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from flwr_byz.clients.state import (
    BYZSGD_K,
    EF21_COUNT,
    MOMENTUM,
    load_count,
    load_run_state,
    load_vector,
    save_run_state,
    state_name,
    store_count,
    store_vector,
)
from flwr_byz.protocol.keys import (
    CLIENT_STATE_DIR_KEY,
    PARTITION_ID_KEY,
    RESUME_ROUND_KEY,
    SERVER_ROUND_KEY,
    STATE_KEY,
)


def _context(partition: int | None = 3) -> Context:
    node_config = {} if partition is None else {PARTITION_ID_KEY: partition}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})  # fmt: skip


def _config(folder: Path, server_round: int, resume: int | None = None, key: str = "run-a"):
    config: dict[str, Any] = {
        STATE_KEY: key,
        CLIENT_STATE_DIR_KEY: str(folder),
        SERVER_ROUND_KEY: server_round,
    }
    if resume is not None:
        config[RESUME_ROUND_KEY] = resume
    return config


def _stepped(context: Context, config: dict[str, Any], value: float) -> None:
    store_vector(context, config, MOMENTUM, torch.full((4,), value, dtype=torch.float64))
    store_count(context, config, EF21_COUNT, int(value))


def _rounds(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_nothing_is_written_without_a_folder(tmp_path: Path) -> None:
    context = _context()
    config = {STATE_KEY: "run-a", SERVER_ROUND_KEY: 1}
    _stepped(context, config, 1.0)
    assert save_run_state(context, config) is None
    assert save_run_state(_context(), _config(tmp_path, 1)) is None  # no state: no file
    assert list(tmp_path.iterdir()) == []


def test_the_file_holds_this_runs_entries_as_tensors_and_ints(tmp_path: Path) -> None:
    context = _context()
    context.state["other"] = ConfigRecord({"x": 1})  # not ours: never saved
    config = _config(tmp_path, 5)
    _stepped(context, config, 2.5)
    path = save_run_state(context, config)
    assert path == tmp_path / "3" / "round-5.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["state-key"] == "run-a" and payload["round"] == 5
    assert set(payload["entries"]) == {state_name(config, MOMENTUM), state_name(config, EF21_COUNT)}
    arrays = payload["entries"][state_name(config, MOMENTUM)]["arrays"]
    assert arrays[0][0] == "v" and torch.equal(arrays[0][1], torch.full((4,), 2.5).double())
    assert payload["entries"][state_name(config, EF21_COUNT)] == {"config": {"count": 2}}


def test_the_latest_two_rounds_are_kept_and_later_ones_dropped(tmp_path: Path) -> None:
    context = _context()
    folder = tmp_path / "3"
    for r in (1, 2, 4, 7):
        config = _config(tmp_path, r)
        _stepped(context, config, float(r))
        save_run_state(context, config)
    assert _rounds(folder) == ["round-4.pt", "round-7.pt"]
    config = _config(tmp_path, 5)  # a resumed run at round 5: round 7 is a stale run's
    save_run_state(context, config)
    assert _rounds(folder) == ["round-4.pt", "round-5.pt"]


def test_a_resumed_node_loads_its_latest_round_not_after_the_checkpoint(tmp_path: Path) -> None:
    before = _context()
    for r in (1, 3, 4):
        config = _config(tmp_path, r)
        _stepped(before, config, float(r))
        store_vector(before, config, BYZSGD_K, torch.tensor([0.5, 1.5], dtype=torch.float64))
        save_run_state(before, config)
    after = _context()
    config = _config(tmp_path, 4, resume=3)
    assert load_run_state(after, config) == tmp_path / "3" / "round-3.pt"
    m = load_vector(after, config, MOMENTUM)
    assert (
        m is not None
        and m.dtype == torch.float64
        and torch.equal(m, torch.full((4,), 3.0).double())
    )
    assert load_count(after, config, EF21_COUNT) == 3
    history = load_vector(after, config, BYZSGD_K)
    assert history is not None and torch.equal(history, torch.tensor([0.5, 1.5]).double())
    store_vector(after, config, MOMENTUM, torch.zeros(4, dtype=torch.float64))
    assert load_run_state(after, config) is None  # once per run: its own state stays
    assert torch.equal(load_vector(after, config, MOMENTUM), torch.zeros(4).double())  # type: ignore[arg-type]


def test_a_node_with_state_or_without_files_loads_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, 3, resume=2)
    assert load_run_state(_context(), config) is None  # no files
    busy = _context()
    _stepped(busy, config, 9.0)
    saved = _config(tmp_path, 2)
    other = _context()
    _stepped(other, saved, 1.0)
    save_run_state(other, saved)
    assert load_run_state(busy, config) is None  # it has state of this run
    assert load_count(busy, config, EF21_COUNT) == 9
    assert load_run_state(_context(partition=4), config) is None  # another partition's folder


def test_without_a_partition_the_folder_is_named_by_node(tmp_path: Path) -> None:
    context = _context(partition=None)
    config = _config(tmp_path, 1)
    _stepped(context, config, 1.0)
    assert save_run_state(context, config) == tmp_path / "node-7" / "round-1.pt"


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def _crafted(path: Path, marker: Path) -> None:
    torch.save({"version": 1, "state-key": "run-a", "entries": _Marker(marker)}, path)


@pytest.mark.parametrize(
    ("write", "warned"),
    [
        (lambda p, m: _crafted(p, m), "is not a readable client-state file"),
        (lambda p, m: p.write_bytes(b"truncated"), "is not a readable client-state file"),
        (lambda p, m: torch.save({"version": 1, "state-key": "run-b", "entries": {}}, p),
         "is of another run"),
        (lambda p, m: torch.save({"version": 9}, p), "not a client-state file of version 1"),
        (lambda p, m: torch.save({"version": 1, "state-key": "run-a",
                                  "entries": {"flwr-byz:run-b:momentum": {}}}, p),
         "an entry 'flwr-byz:run-b:momentum' of another run"),
    ],
    ids=["crafted-pickle", "truncated", "another-run", "another-version", "foreign-entry"],
)  # fmt: skip
def test_a_bad_file_is_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, write: Any, warned: str
) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "3").mkdir()
    write(tmp_path / "3" / "round-2.pt", marker)
    context = _context()
    config = _config(tmp_path, 3, resume=2)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        assert load_run_state(context, config) is None
    assert warned in caplog.text and "this node starts without it" in caplog.text
    assert load_vector(context, config, MOMENTUM) is None
    assert not marker.exists()
