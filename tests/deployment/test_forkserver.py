"""What makes deployment rounds fast (issue 25), without a deployment:

- the ClientApp module Flower imports (the ``clientapp`` component of the app) loads nothing
  the ClientApp does not use: no engines, runner, strategies, plots, Ray or sklearn (a
  ``flwr-clientapp`` process per message used to import them all, ~3 s each time);
- the long-running launcher (``flwr_byz.deployment.forkserver``) runs each ClientApp task in
  a forked child, reaps it, and stops the children still running when it stops;
- ``LocalDeployment(fork_server=...)`` starts the SuperNodes with ``--isolation process`` and
  one launcher per node, whose command line names the work directory (orphan sweeps find it).

The deployments that use it are in test_deployment.py (``flwr-byz deploy``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import Message
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec
from flwr.superlink.grid import HttpGrid

from flwr_byz.deployment import LocalDeployment, NodeSpec, federation, forkserver
from flwr_byz.deployment.federation import FORK_SERVER_MODULE
from flwr_byz.interrupt import alive
from flwr_byz.simulations import metering
from flwr_byz.simulations.flower_app import CLIENT_APP, SERVER_APP

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]

#: Top-level packages the ClientApp module must not import (Flower itself imports rich,
#: typer and click: they are allowed when Flower's ClientApp runtime imports them already).
HEAVY_PACKAGES = {
    "matplotlib",
    "sklearn",
    "scipy",
    "pandas",
    "datasets",
    "flwr_datasets",
    "ray",
    "rich",
    "typer",
    "click",
}
#: flwr_byz modules the ClientApp does not use (the server side, the engines, the CLI).
HEAVY_OURS = (
    "flwr_byz.strategies",
    "flwr_byz.simulations.engines",
    "flwr_byz.simulations.runner",
    "flwr_byz.simulations.simulation",
    "flwr_byz.simulations.plots",
    "flwr_byz.simulations.report",
    "flwr_byz.simulations.config",
    "flwr_byz.simulations.metering",
    "flwr_byz.deployment",
    "flwr_byz.reproduce",
    "flwr_byz.bench",
    "flwr_byz.cli",
)
_PACKAGES = tuple(f"{m}." for m in HEAVY_OURS)

_PROBE = """
import json, sys
import flwr.supernode.runtime.run_clientapp  # what a flwr-clientapp process has loaded
before = {m.split(".")[0] for m in sys.modules}
import importlib
importlib.import_module(sys.argv[1])
print(json.dumps({"flower": sorted(before), "all": sorted(sys.modules)}))
"""


def _imports_of(module: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("component", ["pyproject", "write_app"])
def test_the_clientapp_module_imports_nothing_heavy(component: str) -> None:
    """The module the ``clientapp`` component names (in the checkout's pyproject.toml and in
    the app ``flwr-byz deploy`` writes), imported as Flower's ClientApp process imports it,
    loads no heavy package beyond what Flower's runtime has loaded, and none of our
    server-side modules."""
    if component == "pyproject":
        with open(ROOT / "pyproject.toml", "rb") as fh:
            ref = tomllib.load(fh)["tool"]["flwr"]["app"]["components"]["clientapp"]
    else:
        ref = CLIENT_APP
    module = ref.partition(":")[0]
    seen = _imports_of(module)
    loaded = set(seen["all"])
    assert module in loaded
    added = {m.split(".")[0] for m in loaded} - set(seen["flower"])
    assert not added & HEAVY_PACKAGES, sorted(added & HEAVY_PACKAGES)
    ours = sorted(m for m in loaded if m in HEAVY_OURS or m.startswith(_PACKAGES))
    assert not ours, ours


def test_the_component_strings_agree() -> None:
    """The checkout's Flower App and the one ``deploy`` writes name the same components."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        components = tomllib.load(fh)["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}


def test_the_simulations_package_loads_its_names_on_use() -> None:
    """``import flwr_byz.simulations`` loads no submodule; its names still resolve."""
    probe = (
        "import sys, flwr_byz.simulations as s\n"
        "print(sorted(m for m in sys.modules if m.startswith('flwr_byz.simulations.')))\n"
        "print(s.run_experiment.__module__, s.ExperimentConfig.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    first, second = done.stdout.strip().splitlines()[-2:]
    assert first == "[]"
    assert second == "flwr_byz.simulations.engines flwr_byz.simulations.config"


# --- the launcher ------------------------------------------------------------------------------
def _spec(token: str, task_id: int = 1) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=TaskType.CLIENT_APP,  # type: ignore[arg-type]
        runtime_api_address="127.0.0.1:1",
        token=token,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=os.getpid(),
        suppress_output=False,
        task_id=task_id,
    )


@pytest.fixture
def executor() -> Iterator[forkserver.ForkExecutor]:
    ex = forkserver.ForkExecutor()
    yield ex
    ex.close(grace=1.0)


def _reap_all(ex: forkserver.ForkExecutor, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while ex.children and time.monotonic() < deadline:
        ex.reconcile()
        time.sleep(0.05)
    assert not ex.children, "children still running"


def test_each_clientapp_task_runs_in_a_forked_child_that_is_reaped(
    executor: forkserver.ForkExecutor,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Every task: a child of this process runs Flower's ``run_clientapp`` with the task's
    token (and ends with its exit code, as ``flwr_exit`` does); the launcher reaps it and
    logs its exit code."""

    def fake_run_clientapp(**kwargs: Any) -> None:
        token = kwargs["token"]
        (tmp_path / token).write_text(json.dumps({"pid": os.getpid(), **kwargs}, default=str))
        raise SystemExit(0 if token != "bad" else 3)  # flwr_exit's ending

    monkeypatch.setattr(forkserver, "run_clientapp", fake_run_clientapp)
    for i, token in enumerate(["t1", "t2", "bad"]):
        assert executor.launch(_spec(token, i + 1)).status == "accepted"
    assert executor.launched == 3
    _reap_all(executor)
    pids = set()
    for token in ["t1", "t2", "bad"]:
        seen = json.loads((tmp_path / token).read_text())
        assert seen["token"] == token and seen["runtime_api_address"] == "127.0.0.1:1"
        assert seen["insecure"] is True and seen["parent_pid"] == os.getpid()
        pids.add(seen["pid"])
    assert len(pids) == 3 and os.getpid() not in pids
    out = capfd.readouterr().out
    assert out.count("exit code 0") == 2 and out.count("exit code 3") == 1, out


def test_close_stops_the_children_still_running(
    executor: forkserver.ForkExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task still running when the launcher stops is stopped (SIGTERM; SIGKILL if it
    ignores it) and reaped: nothing is left behind."""

    def stuck(**kwargs: Any) -> None:
        time.sleep(300)

    monkeypatch.setattr(forkserver, "run_clientapp", stuck)
    executor.launch(_spec("slow"))
    (pid,) = executor.children
    assert alive(pid)
    executor.close(grace=1.0)
    assert not executor.children and not alive(pid)


# --- the deployment ----------------------------------------------------------------------------
def test_a_fork_server_deployment_starts_nodes_with_process_isolation(tmp_path: Path) -> None:
    nodes = [NodeSpec(0, 2), NodeSpec(1, 2)]
    plain = LocalDeployment(tmp_path / "plain", nodes, tls=False, auth=False)
    assert "--isolation" not in plain.node_command(0)  # Flower's default: subprocess
    dep = LocalDeployment(
        tmp_path / "work", nodes, tls=False, auth=False, fork_server="flwr_byz.simulations.app"
    )
    command = dep.node_command(1)
    assert command[command.index("--isolation") + 1] == "process"
    port = int(command[command.index("--port") + 1])
    assert dep.runtime_ports[1] == port

    class FakeNode:
        pid = 4321

    dep.supernodes[1] = FakeNode()  # type: ignore[assignment]
    launcher = dep.launcher_command(1)
    assert launcher[:3] == [sys.executable, "-m", FORK_SERVER_MODULE]

    def option(flag: str) -> str:
        return launcher[launcher.index(flag) + 1]

    assert option("--runtime-api-address") == f"127.0.0.1:{port}"
    assert option("--parent-pid") == "4321"
    assert option("--preload") == "flwr_byz.simulations.app"
    assert str(dep.workdir) in launcher  # found by the orphan sweep (ProcessSet marker)
    assert FORK_SERVER_MODULE == forkserver.FORK_SERVER_MODULE


# --- the ServerApp's side of a round ----------------------------------------------------------
class _SlowLink(HttpGrid):
    """A SuperLink's grid whose replies arrive at given (fake) times; no connection."""

    def __init__(self, clock: list[float], arrivals: dict[str, float]) -> None:  # no super()
        self.clock = clock
        self.arrivals = dict(arrivals)  # message ID -> when its reply is there
        self.pulls: list[float] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls.append(self.clock[0])
        ready = [m for m in message_ids if self.arrivals.get(m, 1e9) <= self.clock[0]]
        for mid in ready:
            del self.arrivals[mid]
        # replies as far as send_and_receive reads them (a Message needs a running task)
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m)) for m in ready]  # type: ignore[misc]

    def send_and_receive(self, *args: Any, **kwargs: Any) -> Iterable[Message]:
        raise AssertionError("Flower's send_and_receive pulls every 3 s")


def _messages(n: int) -> list[Message]:
    return [SimpleNamespace() for _ in range(n)]  # type: ignore[misc]


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(metering.time, "sleep", sleep)
    monkeypatch.setattr(metering.time, "monotonic", lambda: clock[0])
    return clock


def test_a_round_on_a_superlink_ends_when_its_last_reply_arrives(fake_clock: list[float]) -> None:
    """Replies are pulled every ``PULL_INTERVAL`` (0.1 s), not Flower's 3 s: a round whose
    last reply arrives at 1.25 s ends before 1.4 s (Flower's pull: at 3 s)."""
    link = _SlowLink(fake_clock, {"m0": 0.0, "m1": 0.5, "m2": 1.25})
    replies = metering.send_and_receive(link, _messages(3), timeout=60.0)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert 1.25 <= link.pulls[-1] < 1.25 + 1.5 * metering.PULL_INTERVAL
    assert metering.PULL_INTERVAL <= 0.1


def test_a_round_on_a_superlink_stops_at_its_timeout(fake_clock: list[float]) -> None:
    link = _SlowLink(fake_clock, {"m0": 0.2})  # m1 never answers
    replies = metering.send_and_receive(link, _messages(2), timeout=2.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 2.0 <= link.pulls[-1] < 2.0 + 1.5 * metering.PULL_INTERVAL


def test_other_grids_answer_as_they_do() -> None:
    class Plain:
        def send_and_receive(self, messages: Iterable[Message], *, timeout: float) -> Any:
            return iter(["replies", timeout])

    assert metering.send_and_receive(Plain(), [], timeout=3.0) == ["replies", 3.0]  # type: ignore[arg-type]


# --- stopping what a deployment left -----------------------------------------------------------
def test_the_orphan_sweep_spares_this_process_and_its_ancestors(tmp_path: Path) -> None:
    """``timeout 600 flwr-byz deploy --workdir DIR`` (or a shell running it) names the work
    directory, the marker of the orphan sweep: the sweep must not stop the command that runs
    it (it did: ``deploy`` SIGTERMed its own wrapper, and so itself, after the last round)."""
    marker = str(tmp_path / "work-marker")
    probe = (
        "import json, os, sys; from flwr_byz.simulations.processes import with_marker; "
        "print(json.dumps([os.getpid(), os.getppid(), with_marker(sys.argv[1])]))"
    )
    # a wrapper (the shell) and a sibling, both naming the marker
    sibling = subprocess.Popen(["bash", "-c", f"sleep 60; : {marker}"])
    try:
        script = f'"{sys.executable}" -c "{probe}" "{marker}"; : {marker}'
        done = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=300, check=True
        )
        me, shell, found = json.loads(done.stdout.strip().splitlines()[-1])
        assert me not in found and shell not in found
        assert sibling.pid in found  # what the sweep is for is still found
    finally:
        sibling.kill()
        sibling.wait()


def test_the_fork_server_needs_flowers_superexec_executors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed Flower has them (so ``deploy`` uses the fork server: test_workdir.py
    checks it asks for one); a Flower without them keeps its process per message."""
    assert federation.fork_server_supported()
    monkeypatch.setattr(federation.importlib.util, "find_spec", lambda name: None)
    assert not federation.fork_server_supported()
