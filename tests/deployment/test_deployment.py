"""Real deployments on loopback: ``flower-superlink`` + ``flower-supernode`` processes with TLS
from a generated CA and SuperNode authentication, the faults of issue 11 (a SuperNode killed
mid-training, the ServerApp killed and the run resumed from its checkpoint, an unregistered
SuperNode), and the cleanup of every process, even when a test fails.

``flwr-byz deploy`` serves each node's ClientApp messages from one long-running launcher
(``flwr_byz.deployment.forkserver``, a fork per message); the tests that build a
``LocalDeployment`` themselves keep Flower's ``flwr-clientapp`` process per message (about 3 s
of imports), so their rounds take 10-30 s on 2 cores: the runs are short. Deselect with
``-m "not deployment"``.
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
from flwr_byz.deployment.processes import with_marker
from flwr_byz.interrupt import alive
from flwr_byz.simulations.checkpoint import Checkpoint
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiment

from ..simulations.processes import stop

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
FLWR_BYZ = str(Path(sys.executable).parent / "flwr-byz")


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


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


def _rounds_logged(log: Path) -> int:
    return len(round_lines(log.read_text(errors="replace"))) if log.exists() else 0


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
    rejoins under its registered node ID and answers again in the last round."""
    cfg = ExperimentConfig(
        dataset="digits",
        clients=4,
        rounds=5,
        aggregator="median",  # the test's setting (robust-fedavg's own default differs)
        round_timeout=90.0,
        injection="nodes",
        out=str(workdir / "kill.json"),
    )
    with LocalDeployment(workdir / "work", [NodeSpec(i, 4) for i in range(4)]) as deployment:
        node_id = deployment.node_ids[2]
        run = deployment.start_run(find_app(ROOT), cfg.to_run_config())
        _wait(lambda: _rounds_logged(run.log) >= 1, 600, "round 1")
        deployment.kill_node(2)
        _wait(lambda: _rounds_logged(run.log) >= 3, 600, "two rounds without the node")
        deployment.start_node(2)
        _wait(lambda: not run.running(), 900, "the run to finish")
        assert run.popen.returncode == 0, run.tail(40)
        assert node_id in deployment.online_nodes()  # rejoined under its registered ID
    assert not running(workdir)
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
    with LocalDeployment(workdir / "work", [NodeSpec(i, 3) for i in range(3)]) as deployment:
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
    assert not running(workdir)
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
