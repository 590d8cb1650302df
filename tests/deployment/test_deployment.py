"""Real deployments on loopback: ``flower-superlink`` + ``flower-supernode`` processes with TLS
from a generated CA and SuperNode authentication, the faults of issue 11 (a SuperNode killed
mid-training, the ServerApp killed and the run resumed from its checkpoint, an unregistered
SuperNode), and the cleanup of every process, even when a test fails.

Each node's ClientApp messages are served by one long-running launcher
(``flwr_byz.deployment.forkserver``, a fork per message), as ``flwr-byz deploy`` runs them
(``LocalDeployment(..., fork_server=...)``, Flower's ``flwr-clientapp`` process per message
where the installed Flower lacks what it needs): a round takes a few seconds, not 10-30 s of
imports. The test that runs no ClientApp (the refused SuperNodes) keeps Flower's default, and
``tests/strategies/test_byzantine_recipe.py`` runs a user's own app on Flower's
``flwr-clientapp`` per message. Deselect with ``-m "not deployment"``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flwr_byz.deployment import LocalDeployment, NodeSpec, make_node_keys
from flwr_byz.deployment.deploy import find_app, round_lines
from flwr_byz.deployment.federation import fork_server_supported
from flwr_byz.deployment.processes import with_marker
from flwr_byz.interrupt import alive, send_signal
from flwr_byz.simulations.checkpoint import Checkpoint
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiment
from flwr_byz.simulations.flower_app import CLIENT_APP

from ..simulations.processes import stop

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
FLWR_BYZ = str(Path(sys.executable).parent / "flwr-byz")
#: The ClientApp module the nodes' fork servers import (this repository's app, as
#: ``flwr-byz deploy`` runs it); None: Flower's ``flwr-clientapp`` process per message.
FORK_SERVER = CLIENT_APP.partition(":")[0] if fork_server_supported() else None


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A work directory; whatever process still runs with it in its command line (and its
    descendants) is stopped afterwards, and the test fails if any had to be."""
    yield tmp_path
    leftovers = with_marker(str(tmp_path))
    survivors = stop(leftovers)
    assert not survivors, f"processes survived SIGKILL: {survivors}"
    assert not [p for p in leftovers if alive(p)], (
        f"the deployment left processes running: {leftovers}"
    )


def _wait(predicate: object, timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


def _rounds_logged(log: Path) -> int:
    return len(round_lines(log.read_text(errors="replace"))) if log.exists() else 0


def _hold(deployment: LocalDeployment, indices: list[int], tasks: int) -> None:
    """SIGSTOP each of these nodes' ClientApp fork server as soon as it has logged ``tasks``
    finished ClientApp tasks: it runs no more ClientApps until SIGCONT (its SuperNode still
    forwards the replies already handed over)."""
    held: set[int] = set()

    def all_held() -> bool:
        for index in set(indices) - held:
            launcher = deployment.launchers[index]
            if len(_tasks_done(launcher.log)) >= tasks:
                os.kill(launcher.pid, signal.SIGSTOP)
                held.add(index)
        return held == set(indices)

    _wait(all_held, 600, f"nodes {indices} to finish {tasks} ClientApp tasks", every=0.05)


def _tasks_done(log: Path) -> list[str]:
    """The exit codes a node's ClientApp fork server logged for its tasks, in order."""
    return _tasks_done_in(log.read_text(errors="replace")) if log.exists() else []


def _tasks_done_in(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if "] ClientApp task (pid " in line]
    return [line.rsplit("exit code ", 1)[1].split(",")[0] for line in lines]


def test_tls_auth_deployment_with_a_byzantine_node_matches_simulation(workdir: Path) -> None:
    """``flwr-byz deploy``: 5 SuperNodes over TLS with authentication, 1 of them Byzantine
    (sign-flip on the node itself); RobustFedAvg(median) ends within 3 points of the same
    experiment in simulation (the attack injected by ByzantineGrid), and every process is
    gone when the command returns. ``--keep-workdir``: the logs and keys stay, and it says
    where."""
    out = workdir / "x.json"
    args = "--nodes 5 --byzantine 1 --attack sign-flip --method robust-fedavg --keep-workdir"
    proc = _deploy_cli(workdir, args + " --aggregator median --rounds 4 --dataset digits", 900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert not running(workdir), "deploy left processes running"
    assert f"work directory kept (private keys, logs): {workdir / 'work'}" in proc.stdout
    assert (workdir / "work" / "keys" / "supernode-0").exists()  # a private key, kept
    app = (workdir / "work" / "app" / "pyproject.toml").read_text()  # the Flower App it ran
    assert 'serverapp = "flwr_byz.simulations.app:server_app"' in app
    # each node's messages (the partition query, 4 rounds) were served by its long-running
    # ClientApp launcher, one forked child each, all successful
    for i in range(5):
        launcher = (workdir / "work" / "logs" / f"clientapps-{i}.log").read_text()
        assert "ClientApp fork server ready" in launcher
        assert launcher.count("exit code 0") == 5, launcher[-3000:]
        assert "exit code" not in launcher.replace("exit code 0", ""), launcher[-3000:]
    result = json.loads(out.read_text())
    cfg = result["config"]
    assert cfg["tls"] is True and cfg["auth"] is True and cfg["deployment"] is True
    assert cfg["clients"] == 5 and cfg["byzantine"] == 1 and cfg["injection"] == "nodes"
    assert len(cfg["byzantine_partitions"]) == 1
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3, 4]
    assert all(r["missing"] == 0 and r["bytes_up"] > 0 for r in result["rounds"])
    assert all(r["seconds"] > 0 for r in result["rounds"])  # seconds per round, recorded
    # the SuperLink really served TLS and authenticated the nodes
    link_log = (workdir / "work" / "logs" / "superlink.log").read_text()
    assert "https://127.0.0.1" in link_log
    assert "SuperNode authentication is disabled" not in link_log

    simulated = run_experiment(
        ExperimentConfig(
            method="robust-fedavg",
            aggregator="median",
            attack="sign-flip",
            byzantine=1,
            clients=5,
            rounds=4,
            dataset="digits",
        ),
        engine="local",
    )
    deployed = result["final"]["accuracy"]
    assert deployed > 0.8
    assert abs(deployed - simulated.accuracy) <= 0.03, (deployed, simulated.accuracy)


def test_an_unregistered_supernode_is_refused(workdir: Path) -> None:
    """A SuperNode whose key was never registered, and one with no key at all, cannot join
    a SuperLink started with --enable-supernode-auth; the registered ones stay online."""
    nodes = [NodeSpec(0, 3), NodeSpec(1, 3), NodeSpec(2, 3)]
    with LocalDeployment(workdir / "work", nodes[:2]) as deployment:
        assert len(deployment.online_nodes()) == 2
        deployment.nodes.append(nodes[2])
        intruder = make_node_keys(workdir / "intruder", "intruder")
        for key in (intruder.private, None):
            deployment.supernodes.pop(2, None)
            command = deployment.node_command(2, key)
            if key is None:
                command = [c for c in command if c != "--auth-supernode-private-key"]
            proc = deployment.procs.start(f"intruder-{key is None}", command)
            _wait(lambda p=proc: not p.running(), 120, "the intruder to give up")  # type: ignore[misc]
            assert proc.popen.returncode != 0
            log = proc.log.read_text()
            assert "could not establish a connection to the SuperLink" in log, proc.tail()
            assert "ref-exit-codes/305" in log  # Flower's "SuperNode refused" exit code
            assert len(deployment.online_nodes()) == 2
    assert not running(workdir)


def test_a_supernode_killed_mid_training_is_counted_missing_and_rejoins(
    workdir: Path,
) -> None:
    """SIGKILL one of 4 SuperNodes after round 1 and keep it down for two rounds: the round
    it misses first ends when the SuperLink declares it unavailable (or at the round timeout)
    with the other replies, the next one at once; the node is counted missing (not as a bad
    reply) and training goes on without waiting for it. Restarted with the same key, it
    rejoins under its registered node ID and answers again in the last round. Its ClientApp
    fork server dies with it and comes back with it, bound to the new SuperNode."""
    cfg = ExperimentConfig(
        dataset="digits",
        clients=4,
        rounds=5,
        aggregator="median",  # the test's setting (robust-fedavg's own default differs)
        # Round 2 ends when the SuperLink declares the node offline: Flower's heartbeat (30 s,
        # fixed) times its patience (2), 30-60 s after the kill, most of this test's time.
        # Below 60 s the timeout could end round 2 first, and round 3 would then wait for it.
        round_timeout=90.0,
        injection="nodes",
        out=str(workdir / "kill.json"),
    )
    nodes = [NodeSpec(i, 4) for i in range(4)]
    with LocalDeployment(workdir / "work", nodes, fork_server=FORK_SERVER) as deployment:
        node_id = deployment.node_ids[2]
        launcher_log = deployment.workdir / "logs" / "clientapps-2.log"
        run = deployment.start_run(find_app(ROOT), cfg.to_run_config())
        old = deployment.launchers.get(2)
        # A forked ClientApp answers within a second of its message and a round takes a few
        # seconds, which would race the test's steps: node 2 is held once it has handed over
        # its round-1 reply (partition query, round 1), so that it cannot answer round 2
        # before it is killed, and the others once they have answered round 3, so that
        # round 4 waits until node 2 is back online: it is asked in round 5.
        if old is not None:
            _hold(deployment, [2], tasks=2)
        _wait(lambda: _rounds_logged(run.log) >= 1, 600, "round 1")
        doomed = deployment.supernodes[2].tree() + (old.tree() if old is not None else [])
        deployment.kill_node(2)
        # the node is gone with its ClientApp fork server (and anything forked from it)
        _wait(lambda: not [p for p in doomed if alive(p)], 10, "node 2's processes to die")
        others = [0, 1, 3]
        if old is not None:
            _hold(deployment, others, tasks=4)
        _wait(lambda: _rounds_logged(run.log) >= 3, 600, "two rounds without the node")
        deployment.start_node(2)
        if old is not None:  # a new fork server, bound to the new SuperNode
            new = deployment.launchers[2]
            assert new is not old and new.running()
            command = [str(arg) for arg in new.popen.args]  # type: ignore[union-attr]
            parent = command[command.index("--parent-pid") + 1]
            assert parent == str(deployment.supernodes[2].pid)  # it exits with the new node
            deployment.wait_for_nodes(4)
            send_signal([deployment.launchers[i].pid for i in others], signal.SIGCONT)
        _wait(lambda: not run.running(), 900, "the run to finish")
        assert run.popen.returncode == 0, run.tail(40)
        assert node_id in deployment.online_nodes()  # rejoined under its registered ID
    assert not running(workdir)
    if FORK_SERVER is not None:
        # the first launcher served the partition query and round 1, never round 2; the
        # restarted one came up and served the rounds after the node rejoined
        before, after = launcher_log.read_text().split("ClientApp fork server ready")[1:]
        assert _tasks_done_in(before) == ["0", "0"], before[-3000:]
        assert _tasks_done_in(after), after[-3000:]
        assert set(_tasks_done_in(after)) == {"0"}, after[-3000:]
    result = json.loads(Path(cfg.out).read_text())  # type: ignore[arg-type]
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert rounds[0]["missing"] == 0
    for lost in rounds[1:3]:  # the killed node's replies never came
        assert lost["missing"] == 1
        assert lost["metrics"]["accepted"] == 3
        assert lost["rejected"] == 0  # the SuperLink's "node unavailable" is no bad reply
    assert rounds[2]["seconds"] < cfg.round_timeout  # type: ignore[operator]
    assert rounds[-1]["missing"] == 0 and rounds[-1]["metrics"]["accepted"] == 4  # back
    assert result["final"]["missing"] in (2, 3)  # round 4 may start before it reconnects
    assert result["final"]["accuracy"] > 0.85


def test_a_run_stopped_mid_training_resumes_from_its_checkpoint(workdir: Path) -> None:
    """The ServerApp is SIGKILLed after round 2 was checkpointed; a new ``flwr run`` with
    ``resume = true`` continues at round 3 and ends with exactly the numbers of an
    uninterrupted run (RobustFedAvg with centred clipping: its aggregator keeps state)."""
    checkpoint = workdir / "state" / "checkpoint.pt"
    cfg = ExperimentConfig(
        dataset="digits",
        clients=3,
        rounds=5,
        aggregator="cc",
        injection="nodes",
        round_timeout=120.0,
        checkpoint=str(checkpoint),
        out=str(workdir / "resumed.json"),
    )
    nodes = [NodeSpec(i, 3) for i in range(3)]
    with LocalDeployment(workdir / "work", nodes, fork_server=FORK_SERVER) as deployment:
        first = deployment.start_run(find_app(ROOT), cfg.to_run_config())

        def checkpointed() -> bool:
            return checkpoint.exists() and Checkpoint.load(checkpoint).round >= 2

        _wait(checkpointed, 600, "the round-2 checkpoint")
        victims = deployment.serverapp_pids()
        assert victims, "no flwr-serverapp process found"
        for pid in victims:
            os.kill(pid, 9)
        _wait(lambda: not first.running() or not deployment.serverapp_pids(), 60, "the stop")
        first.stop()
        stopped_at = Checkpoint.load(checkpoint).round
        assert 2 <= stopped_at < cfg.rounds
        assert not Path(cfg.out).exists()  # type: ignore[arg-type]

        resumed_cfg = cfg.to_run_config() | {"resume": True}
        second = deployment.run(find_app(ROOT), resumed_cfg, timeout=900)
        assert second.popen.returncode == 0, second.tail(40)
        assert f"resume: continuing from round {stopped_at}" in second.log.read_text()
        launchers = dict(deployment.launchers)
        assert len(launchers) == (0 if FORK_SERVER is None else 3)
        assert all(launcher.running() for launcher in launchers.values())
    assert not running(workdir)
    for launcher in launchers.values():  # the same fork servers served both runs
        log = launcher.log.read_text()  # complete: each logs its tasks as it stops
        assert log.count("ClientApp fork server ready") == 1, log[-3000:]
        # successes: a partition query and rounds 1 to stopped_at in the first run, a query
        # and rounds stopped_at + 1 to 5 in the resumed one (the task of the round the
        # ServerApp was killed in is left out: it may end with an error)
        assert _tasks_done_in(log).count("0") >= 7, log[-3000:]
    resumed = json.loads(Path(cfg.out).read_text())  # type: ignore[arg-type]
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4, 5]

    reference = run_experiment(
        ExperimentConfig(dataset="digits", clients=3, rounds=5, aggregator="cc"), engine="local"
    )
    assert [r["loss"] for r in resumed["rounds"]] == pytest.approx(
        [r.loss for r in reference.rounds], rel=1e-6
    )
    assert resumed["final"]["accuracy"] == pytest.approx(reference.accuracy, abs=1e-9)


def _deploy_cli(workdir: Path, args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``flwr-byz deploy <args> --out <workdir>/x.json --workdir <workdir>/work``."""
    command = [FLWR_BYZ, "deploy", *args.split(), "--out", str(workdir / "x.json")]
    command += ["--workdir", str(workdir / "work")]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=workdir)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("--nodes 3 --byzantine 1 --attack alie", ["omniscient"]),
        (  # --insecure says what it gives up before anything else is checked
            "--insecure --nodes 2 --aggregator no-such-rule",
            ["no TLS and no SuperNode authentication", "no-such-rule"],
        ),
    ],
)
def test_deploy_refuses_bad_options_before_starting_anything(
    workdir: Path, args: str, expected: list[str]
) -> None:
    proc = _deploy_cli(workdir, args)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    for phrase in expected:
        assert phrase in text
    assert not (workdir / "work").exists()  # nothing was started


def test_the_app_directory_is_found() -> None:
    assert find_app(ROOT) == ROOT  # the source checkout (`flwr run .`), as the tests above run


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("fault", ["SIGINT", "SIGTERM", "superlink-crash"])
def test_deploy_stops_every_process_on_ctrl_c_sigterm_and_error(workdir: Path, fault: str) -> None:
    """``flwr-byz deploy`` interrupted (Ctrl-C, SIGTERM) or failing (its SuperLink dies
    mid-run) exits with an error and leaves no SuperLink, SuperNode or app process behind,
    and no work directory (the private keys and logs are deleted)."""
    work = workdir / "work"
    command = [FLWR_BYZ, "deploy", *"--nodes 2 --rounds 50 --dataset digits".split()]
    command += ["--out", str(workdir / "x.json"), "--workdir", str(work)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=workdir,
        # Ctrl-C in a terminal: a job a shell starts in the background (job control off)
        # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
        preexec_fn=_sigint_default,
    )
    try:
        _wait(lambda: (work / "logs" / "run-1.log").exists(), 300, "the run to start")
        assert running(work)  # the check below sees the deployment's processes
        if fault == "superlink-crash":
            link = [p for p in with_marker(str(work)) if "flower-superlink" in _cmd(p)]
            assert link
            for pid in link:
                os.kill(pid, 9)
        else:
            proc.send_signal(getattr(signal, fault))
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output[-3000:]
    assert not running(work), output[-3000:]
    assert not (workdir / "x.json").exists()
    assert not work.exists(), sorted(work.rglob("*"))[:20]
    if fault == "superlink-crash":
        assert "error" in output and "run-1.log" in output, output[-3000:]


def running(marker: str | Path) -> list[int]:
    """The live processes (zombies left out) with ``marker`` in their command line."""
    # our own scan: checking the library's cleanup with its own scan passes if that scan is broken
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and str(marker) in _cmd(int(entry.name)):
            found.append(int(entry.name))
    return found


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
