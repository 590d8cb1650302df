"""Scale-out: an existing Ray cluster through ``ray_address`` (``--ray-address``), and 1,000
virtual clients with ``clients_per_round`` sampling on this 2-core machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flwr_byz.deployment.processes import with_marker
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiment

from .processes import stop


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_runs_on_an_existing_ray_cluster() -> None:
    ray = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    # a short temp dir: Ray's socket paths must stay under the 107-byte AF_UNIX limit
    temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    env = dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    start = subprocess.run(
        [ray, "start", "--head", "--num-cpus", "2", "--port", str(port),
         "--include-dashboard=false", "--temp-dir", temp, "--disable-usage-stats"],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        cfg = ExperimentConfig(
            method="robust-fedavg", aggregator="cwmed", dataset="digits", clients=6, rounds=2,
            lr=0.1, ray_address=f"127.0.0.1:{port}",
        )  # fmt: skip
        result = run_experiment(cfg)
        assert [r.round for r in result.rounds] == [1, 2]
        assert result.accuracy > 0.3
        status = subprocess.run(
            [ray, "status", "--address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0  # the cluster outlived the experiment: it was external
        # the run's driver (Flower's simulation runtime) connected to it: its log is there
        assert list(Path(temp).glob("session_*/logs/python-core-driver-*.log"))
    finally:
        leftovers = stop(with_marker(temp))
    assert not leftovers


@pytest.mark.slow
def test_a_thousand_virtual_clients_sampled_per_round() -> None:
    cfg = ExperimentConfig(
        method="robust-fedavg", aggregator="cwmed", dataset="synthetic-logreg", clients=1000,
        clients_per_round=20, byzantine=100, attack="sign-flip:scale=10", rounds=3, lr=0.1,
    )  # fmt: skip
    result = run_experiment(cfg)
    assert result.config["clients"] == 1000 and result.config["f"] == 2
    assert len(result.config["byzantine_partitions"]) == 100
    assert [r.round for r in result.rounds] == [1, 2, 3]
    one = result.rounds[-1].bytes_down / 20  # 20 messages a round, each the logreg model
    assert all(15 * one < r.bytes_down < 25 * one for r in result.rounds)
    assert result.accuracy > 0.6  # synthetic-logreg, 2 classes
