"""This repository as a Flower App: ``flwr run . --stream --run-config ...`` on a local
simulation federation, with the Flower home in a temporary directory; every Flower process
the run started is stopped afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flwr_byz.deployment.processes import with_marker
from flwr_byz.interrupt import alive

from .processes import stop

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_flwr_run_with_run_config_overrides(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    out = tmp_path / "app-result.json"
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"  # offline: no `uv sync`
    overrides = (
        "aggregator='nnm+krum' attack='alie' num-byzantine=2 rounds=2 dataset='digits' "
        f"lr=0.1 seed=7 out='{out}'"
    )
    command = [
        str(Path(sys.executable).parent / "flwr"),
        "run",
        ".",
        "--stream",
        "--run-config",
        overrides,
        "--federation-config",
        "num-supernodes=8",
    ]
    try:
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert "[flwr-byz] final accuracy" in log, log[-4000:]
        result = json.loads(out.read_text())
    finally:
        leftovers = stop(with_marker(str(home)))
    assert not leftovers, f"Flower processes survived: {leftovers}"
    assert not [p for p in with_marker(str(home)) if alive(p)]
    cfg = result["config"]
    assert (cfg["aggregator"], cfg["attack"], cfg["byzantine"], cfg["seed"]) == (
        "nnm+krum",
        "alie",
        2,
        7,
    )
    assert cfg["clients"] == 8 and cfg["dataset"] == "digits" and cfg["method"] == "robust-fedavg"
    assert len(cfg["byzantine_partitions"]) == 2
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in result["rounds"])
    assert result["final"]["accuracy"] > 0.3  # digits, 2 rounds, robust rule under ALIE
