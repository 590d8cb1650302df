"""Ctrl-C and SIGTERM end every ``flwr-byz`` command promptly: exit code 130 / 143, one line
on stderr, no traceback, none of its processes left (Ray's, the reproduce pool's, the
deployment's), and the checkpoint and result files load.

The commands run in a process of their own (``interrupt_probe``): SIGINT goes to the whole
process group, as a terminal's Ctrl-C does; SIGTERM to the command alone, as ``kill`` does.
The local engine's runs are the fast part; the simulation engine (Ray), ``reproduce`` and
``deploy`` are slow.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flwr_byz.reproduce.pool import job_pool, stop_pool
from flwr_byz.simulations.checkpoint import Checkpoint
from flwr_byz.simulations.result import Result

from .interrupt_probe import FLWR_BYZ, Outcome, after, interrupt, run_args

CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
BOTH = [signal.SIGINT, signal.SIGTERM]


def _check(outcome: Outcome, sig: int, *, within: float = 10.0) -> str:
    """The common promise; returns the one line."""
    assert outcome.rc == CODES[sig], outcome.summary() + "\n" + outcome.stderr[-3000:]
    assert outcome.seconds < within, outcome.summary()
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, outcome.stderr[-3000:]
    assert lines[0].startswith(f"flwr-byz: interrupted ({signal.Signals(sig).name})"), lines
    assert not outcome.left, f"processes left running: {outcome.left}"
    return lines[0]


def _no_temporary_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _interrupted_run(engine: str, sig: int, tmp_path: Path) -> tuple[Outcome, Path]:
    checkpoint = tmp_path / "ckpt.pt"
    ready: Callable[[], bool] = after(10.0) if engine == "batched" else checkpoint.exists
    outcome = interrupt(run_args(engine, tmp_path), sig, ready, cwd=tmp_path)
    return outcome, checkpoint


@pytest.mark.slow
def test_ctrl_c_on_the_local_engine(tmp_path: Path) -> None:
    outcome, checkpoint = _interrupted_run("local", signal.SIGINT, tmp_path)
    line = _check(outcome, signal.SIGINT)
    assert f"progress is kept in {checkpoint}" in line or str(checkpoint) in line, line
    assert Checkpoint.load(checkpoint).round >= 1
    assert not (tmp_path / "result.json").exists()  # the run did not finish
    _no_temporary_files(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "sig"), [("local", signal.SIGTERM), ("batched", signal.SIGINT)])
def test_sigterm_on_the_local_engine_and_ctrl_c_on_the_batched_one(
    engine: str, sig: int, tmp_path: Path
) -> None:
    """The interrupted local run then continues from its checkpoint."""
    outcome, checkpoint = _interrupted_run(engine, sig, tmp_path)
    _check(outcome, sig)
    _no_temporary_files(tmp_path)
    if engine == "batched":  # it writes no checkpoint
        return
    done = Checkpoint.load(checkpoint).round
    assert done >= 1
    # the same command with --resume (and one more round) finishes the run
    args = [*run_args(engine, tmp_path, rounds=done + 1), "--resume"]
    finished = subprocess.run(
        [str(FLWR_BYZ), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    assert len(Result.load(tmp_path / "result.json").rounds) == done + 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", BOTH)
def test_the_simulation_engine_stops_its_superlink_and_ray(sig: int, tmp_path: Path) -> None:
    """The SuperLink, ``flwr run``, ``flwr-simulation`` (the ServerApp) and Ray's processes
    are all stopped. Before (``run_simulation`` in this process): Ctrl-C left the process
    waiting for its ServerApp thread (alive 240 s later), SIGTERM aborted in Ray's handler
    (exit -6) with an ActorDiedError traceback."""
    outcome, checkpoint = _interrupted_run("simulation", sig, tmp_path)
    line = _check(outcome, sig)
    assert "after round" in line and str(checkpoint) in line, line
    assert Checkpoint.load(checkpoint).round >= 1
    _no_temporary_files(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sig", BOTH)
def test_reproduce_stops_its_pool_and_keeps_the_finished_runs(sig: int, tmp_path: Path) -> None:
    """Before: SIGTERM left the pool's workers running (and writing); Ctrl-C waited for the
    jobs in progress to finish."""
    work = tmp_path / "work"
    args = ["reproduce", "c1.1", "--quick", "--jobs", "2", "--work", str(work)]
    args += ["--docs", str(tmp_path / "docs")]
    ready = lambda: any(work.glob("*/runs/*.json"))  # noqa: E731 - a run done, others running
    outcome = interrupt(args, sig, ready, cwd=tmp_path)
    line = _check(outcome, sig)
    assert f"finished runs are kept in {work}" in line, line
    runs = list(work.glob("*/runs/*.json"))
    assert runs and all(Result.load(p).rounds for p in runs)
    _no_temporary_files(tmp_path)


@pytest.mark.slow
@pytest.mark.deployment
@pytest.mark.parametrize("sig", BOTH)
def test_deploy_stops_the_superlink_and_the_supernodes(sig: int, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    args = ["deploy", "--insecure", "--nodes", "3", "--rounds", "100", "--dataset", "mnist1d"]
    args += ["--model", "logreg", "--local-epochs", "1", "--out", str(tmp_path / "r.json")]
    args += ["--checkpoint", str(checkpoint), "--workdir", str(tmp_path / "work")]
    outcome = interrupt(args, sig, checkpoint.exists, cwd=tmp_path)
    line = _check(outcome, sig)
    assert str(checkpoint) in line, line
    assert Checkpoint.load(checkpoint).round >= 1
    _no_temporary_files(tmp_path)


# --- the parts ---------------------------------------------------------------------------
def test_pool_workers_ignore_sigint_and_stop_pool_ends_their_jobs_at_once() -> None:
    pool = job_pool(1)
    try:
        assert pool.submit(signal.getsignal, signal.SIGINT).result(120) == signal.SIG_IGN
        job = pool.submit(time.sleep, 120)
        workers = list(pool._processes.values())
        time.sleep(0.2)
        start = time.monotonic()
        stop_pool(pool)
        assert time.monotonic() - start < 5.0
        assert not any(w.is_alive() for w in workers)
        assert job.cancelled() or job.done()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
