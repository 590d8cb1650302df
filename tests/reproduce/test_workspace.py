"""The run store: runs named by a hash of their (pinned) config, run once and reused; the
parallel pool and the accuracy helpers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from flwr_byz.methods.defaults import LEGACY
from flwr_byz.reproduce import Budget, Workspace, pool
from flwr_byz.reproduce.workspace import pinned
from flwr_byz.simulations.config import METHOD_OPTIONS, ExperimentConfig

from .helpers import result


def test_out_path_is_a_hash_of_the_config(tmp_path: Path) -> None:
    ws = Workspace(Budget.make(quick=True, jobs=1), tmp_path, tmp_path / "docs")
    cfg = ExperimentConfig(rounds=3)
    assert ws.out_path(cfg) == ws.out_path(dataclasses.replace(cfg, out="elsewhere.json"))
    assert ws.out_path(cfg) != ws.out_path(dataclasses.replace(cfg, seed=1))
    assert ws.out_path(cfg).parent == tmp_path / "quick" / "runs"
    full = Workspace(Budget.make(quick=False, jobs=1), tmp_path, tmp_path / "docs")
    assert full.out_path(cfg).parent == tmp_path / "full" / "runs"  # budgets never mix


def test_setups_are_pinned_not_left_to_the_method_defaults(tmp_path: Path) -> None:
    """An option a setup leaves to the method takes its value from before the methods had
    their own defaults: a re-swept default moves no claim, and no run file is renamed."""
    cfg = ExperimentConfig(method="byz-ef21-sgdm", rounds=3, lr=1.0, compressor="topk:0.1")
    fixed = pinned(cfg)
    assert fixed.lr == 1.0 and fixed.compressor == "topk:0.1"  # set: kept
    for name in METHOD_OPTIONS:
        if getattr(cfg, name) is None:
            assert getattr(fixed, name) == getattr(LEGACY, name), name
    assert pinned(fixed) == fixed
    ws = Workspace(Budget.make(quick=True, jobs=1), tmp_path, tmp_path / "docs")
    assert ws.out_path(cfg) == ws.out_path(fixed)


def test_run_all_skips_existing_and_needs_out(tmp_path: Path) -> None:
    done = tmp_path / "done.json"
    done.write_text("{}")
    seen: list[tuple[object, ...]] = []
    pool.run_all([ExperimentConfig(out=str(done))], jobs=1, progress=lambda *a: seen.append(a))
    assert seen == []  # nothing to do
    with pytest.raises(ValueError, match="'out' path"):
        pool.run_all([ExperimentConfig()], jobs=1)


def test_workspace_runs_once_and_reuses(tmp_path: Path) -> None:
    ws = Workspace(Budget.make(quick=True, jobs=1), tmp_path, tmp_path / "docs")
    cfg = ExperimentConfig(
        method="robust-fedavg", aggregator="cwmed", clients=4, rounds=2, dataset="digits",
        local_epochs=1,
    )  # fmt: skip
    first = ws.run({"a": cfg, "b": cfg})  # one config under two names: one run
    files = list((tmp_path / "quick" / "runs").glob("*.json"))
    assert len(files) == 1 and len(first["a"].rounds) == 2
    assert first["a"].config["batch_size"] == LEGACY.batch_size  # ran pinned
    stamp = files[0].stat().st_mtime_ns
    again = ws.run({"c": cfg})
    assert files[0].stat().st_mtime_ns == stamp  # reused, not rerun
    assert again["c"].rounds[-1].accuracy == first["b"].rounds[-1].accuracy


def test_run_all_runs_the_longest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Most rounds first (equal lengths in their given order), so that the last runs of a
    call are short ones and no worker idles behind one long run."""
    order: list[str] = []
    monkeypatch.setattr(pool, "_run_one", lambda cfg, engine="local": order.append(cfg.out))
    rounds = {"a": 10, "b": 600, "c": 100, "d": 600, "e": 1200}
    configs = [ExperimentConfig(rounds=r, out=str(tmp_path / k)) for k, r in rounds.items()]
    pool.run_all(configs, jobs=1, progress=lambda *a: None)
    assert [Path(o).name for o in order] == ["e", "b", "d", "c", "a"]


def test_workspace_keeps_its_worker_processes_until_closed(tmp_path: Path) -> None:
    """With jobs > 1 the workers start once and serve every ``run`` call (a worker's start
    costs seconds of imports); ``close`` (or the ``with`` block) ends them."""
    cfg = ExperimentConfig(
        method="robust-fedavg", aggregator="cwmed", clients=4, rounds=1, dataset="digits",
        local_epochs=1,
    )  # fmt: skip
    with Workspace(Budget.make(quick=True, jobs=2), tmp_path, tmp_path / "docs") as ws:
        ws.run({"a": cfg})
        workers = ws._pool
        assert workers is not None
        pids = {p.pid for p in (workers._processes or {}).values()}
        ws.run({"b": dataclasses.replace(cfg, seed=1), "c": dataclasses.replace(cfg, seed=2)})
        assert ws._pool is workers
        pids2 = {p.pid for p in (workers._processes or {}).values()}
        assert pids <= pids2 and len(pids2) <= 2  # started on demand, up to jobs, and kept
        ws.run({"d": dataclasses.replace(cfg, seed=3), "e": dataclasses.replace(cfg, seed=4)})
        assert {p.pid for p in (workers._processes or {}).values()} == pids2
        ws.run({"a": cfg})  # all stored: nothing to run, the pool stays as it is
        assert ws._pool is workers
    assert ws._pool is None
    assert len(list((tmp_path / "quick" / "runs").glob("*.json"))) == 5


def test_without_flower_gc_skips_only_flowers_collect() -> None:
    from flwr.app.message import arrayrecord

    original = arrayrecord.gc
    with pool.without_flower_gc():
        assert arrayrecord.gc is not original
        arrays = [np.ones((3, 2), dtype=np.float32)]
        record = ArrayRecord(arrays, keep_input=False)  # the path that calls gc.collect()
        assert record["0"].numpy().sum() == 6.0
    assert arrayrecord.gc is original


def test_helpers() -> None:
    cfg = ExperimentConfig(rounds=4)
    r = result(cfg, [0.1, 0.5, 0.3, 0.9])
    assert pool.first_reaching(r, 0.4) == 1
    assert pool.first_reaching(r, 0.35, tail=2) == 2  # trailing means 0.1, 0.3, 0.4, 0.6
    assert pool.first_reaching(r, 0.95) is None
    assert pool.tail_acc(r, tail=2) == pytest.approx(0.6)
    assert pool.mean_std([0.5, math.nan, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))
    assert all(math.isnan(v) for v in pool.mean_std([math.nan]))
    assert pool.pct(None) == "n/a" and pool.pct(0.1234) == "12.3"
