"""The simulation engine does not wait for Flower's wind-down behind a run's result (Ray's
shutdown, a log flush, the end of ``flwr run``'s log stream): ``run`` returns once the result
file is there, and what is left of that run (its ``flwr run`` and the ``flwr-simulation``
below the SuperLink) is killed before the next run starts, or by ``stop`` at once. Stand-in
processes here, no SuperLink (the real runs are in ``test_runner`` and ``test_cli``)."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flwr_byz.interrupt import alive, descendants
from flwr_byz.simulations import simulation
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result, RoundRecord
from flwr_byz.simulations.simulation import SimulationRuntime

TINY = ExperimentConfig(dataset="digits", clients=4, rounds=1, lr=0.1)

#: ``flwr run`` stand-in: writes the run config's ``out`` (a copy of argv[1]), then lingers.
FLWR_RUN = """
import shutil, sys, time, tomllib
config = tomllib.loads(open(sys.argv[sys.argv.index("--run-config") + 1]).read())
shutil.copy(sys.argv[1], config["out"])
time.sleep(600)
"""

#: SuperLink stand-in: a ``flwr-simulation`` child (argv[1]) and another child, both lingering.
SUPERLINK = """
import subprocess, sys, time
subprocess.Popen([sys.executable, sys.argv[1]])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
time.sleep(600)
"""


def _wait_for(check: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_run_returns_at_its_result_and_its_rest_is_killed_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "template.json"
    Result(TINY.to_dict(), [RoundRecord(1, 0.5, 0.75, 0, 10, 20, 0.1)]).finish().save(template)
    (tmp_path / "flwr-simulation").write_text("import time\ntime.sleep(600)\n")
    flwr_run = tmp_path / "flwr_run.py"
    flwr_run.write_text(FLWR_RUN)
    runtime = SimulationRuntime()
    real_start = runtime.procs.start

    def start(name, command, env=None):  # type: ignore[no-untyped-def]
        if name.startswith("run-"):  # [flwr, "run", <app>, ...] -> the stand-in
            command = [sys.executable, str(flwr_run), str(template), *command[2:]]
        return real_start(name, command, env)

    monkeypatch.setattr(runtime.procs, "start", start)
    monkeypatch.setattr(simulation, "executable", lambda name: name)
    try:
        runtime.superlink = real_start(
            "superlink", [sys.executable, "-c", SUPERLINK, str(tmp_path / "flwr-simulation")]
        )
        superlink = runtime.superlink.pid
        assert _wait_for(lambda: len(descendants(superlink)) == 2)
        first = runtime.run(dataclasses.replace(TINY, out=str(tmp_path / "first.json")))
        assert first.rounds[0].accuracy == 0.75  # the result file, read back
        (proc,) = [p for p in runtime.procs.processes if p.name == "run-1"]
        assert proc.running()  # returned at the result, the run still "winding down"
        kids = descendants(superlink)
        (simulation_pid,) = [pid for pid in kids if simulation._is_simulation(pid)]
        (other,) = [pid for pid in kids if pid != simulation_pid]
        second = runtime.run(dataclasses.replace(TINY, out=str(tmp_path / "second.json")))
        assert second.rounds[0].accuracy == 0.75
        # the first run's flwr run and flwr-simulation were killed; nothing else was
        assert not proc.running() and proc.popen.returncode == -9
        assert not alive(simulation_pid) and alive(other) and alive(superlink)
        started = time.monotonic()
        runtime.stop()
        assert time.monotonic() - started < 4.0  # no grace for a run whose result is in
        assert not runtime.procs.processes and not alive(superlink) and not alive(other)
    finally:
        runtime.stop()
