"""Interrupt a ``flwr-byz`` command the way a user does and measure how it ends.

``interrupt(args, sig, ready)`` starts ``flwr-byz ARGS`` (this environment's script) in a
session of its own, with a marker in its environment that every process it starts inherits
(Ray's raylet and workers, pool workers and SuperNodes included). It waits until ``ready()``
is true (e.g. the checkpoint file exists), sends ``sig`` (SIGINT to the whole process group,
as Ctrl-C in a terminal does; SIGTERM to the process alone, as ``kill`` does) and reports the
exit code, the seconds to exit, the Traceback lines of stderr and the processes left behind.
Whatever is left is killed afterwards.

The figures of a ``flwr-byz run`` interrupted after its first round (``--engine``: local,
simulation or batched; ``--signal``: INT or TERM)::

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.simulations.interrupt_probe --engine simulation
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLWR_BYZ = Path(sys.executable).parent / "flwr-byz"  # the console script of this environment
MARKER = "FLWR_BYZ_INTERRUPT_PROBE"


def marked(token: str) -> set[int]:
    """Live processes (zombies excluded) whose environment has ``MARKER=token``."""
    needle = f"{MARKER}={token}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.add(int(entry))
    return found


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class Outcome:
    """How an interrupted command ended."""

    rc: int | None  # None: still running after the timeout (then killed)
    seconds: float  # from the signal to the exit (the timeout when it did not exit)
    stderr: str
    stdout: str
    left: set[int]  # marked processes alive once the command exited (or timed out)
    left_later: set[int]  # ... and ``settle`` seconds later

    @property
    def tracebacks(self) -> int:
        return self.stderr.count("Traceback")

    def summary(self) -> str:
        rc = "still running" if self.rc is None else f"rc {self.rc}"
        last = [line for line in self.stderr.strip().splitlines() if line.strip()][-1:]
        return (
            f"{rc}, {self.seconds:.1f} s to exit, {self.tracebacks} traceback(s), "
            f"{len(self.left)} process(es) left at exit, {len(self.left_later)} after settling; "
            f"last stderr line: {last[0] if last else '(none)'!r}"
        )


def interrupt(
    args: Sequence[str],
    sig: int,
    ready: Callable[[], bool],
    *,
    cwd: Path,
    start_timeout: float = 300.0,
    timeout: float = 60.0,
    settle: float = 3.0,
    env: dict[str, str] | None = None,
    group: bool | None = None,
) -> Outcome:
    """Start ``flwr-byz ARGS``, wait for ``ready()``, send ``sig``, measure (module doc).
    ``group``: send it to the whole process group (default: for SIGINT only)."""
    token = uuid.uuid4().hex
    environ = {**os.environ, "OMP_NUM_THREADS": "1", MARKER: token, **(env or {})}
    environ.pop("COLUMNS", None)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        proc = subprocess.Popen(
            [str(FLWR_BYZ), *args],
            cwd=cwd,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + start_timeout
            while not ready():
                if proc.poll() is not None:
                    err.seek(0)
                    raise RuntimeError(
                        f"flwr-byz exited ({proc.returncode}) before it was ready:\n"
                        + err.read().decode(errors="replace")[-3000:]
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready after {start_timeout:.0f} s")
                time.sleep(0.05)
            sent = time.monotonic()
            to_group = sig == signal.SIGINT if group is None else group
            if to_group:
                os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the foreground group
            else:
                os.kill(proc.pid, sig)
            try:
                rc: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
            seconds = time.monotonic() - sent
            left = marked(token)
            time.sleep(settle if left else 0.0)
            left_later = marked(token)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            _kill(marked(token))
        out.seek(0)
        err.seek(0)
        return Outcome(
            rc,
            seconds,
            err.read().decode(errors="replace"),
            out.read().decode(errors="replace"),
            left,
            left_later,
        )


def run_args(engine: str, work: Path, rounds: int = 200, clients: int = 4) -> list[str]:
    """A small ``flwr-byz run`` that checkpoints every round into ``work/ckpt.pt`` (the
    batched engine writes none) and writes its result to ``work/result.json``."""
    checkpoint = [] if engine == "batched" else ["--checkpoint", str(work / "ckpt.pt")]
    return [
        "run",
        "--engine", engine,
        "--method", "robust-fedavg",
        "--aggregator", "median",
        "--clients", str(clients),
        "--rounds", str(rounds),
        "--dataset", "mnist1d",
        "--model", "logreg",
        "--local-epochs", "1",
        "--threads", "1",
        *checkpoint,
        "--out", str(work / "result.json"),
    ]  # fmt: skip


def after(seconds: float) -> Callable[[], bool]:
    """A ``ready`` that is true ``seconds`` after its first call."""
    start: list[float] = []

    def ready() -> bool:
        start.extend([] if start else [time.monotonic()])
        return time.monotonic() - start[0] >= seconds

    return ready


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="simulation")
    parser.add_argument("--signal", default="INT", choices=["INT", "TERM"])
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument(
        "--pid-only", action="store_true", help="signal the command alone, not its group"
    )
    args = parser.parse_args(argv)
    sig = signal.SIGINT if args.signal == "INT" else signal.SIGTERM
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = work / "ckpt.pt"
        ready = after(10.0) if args.engine == "batched" else ckpt.exists
        outcome = interrupt(
            run_args(args.engine, work),
            sig,
            ready,
            cwd=work,
            timeout=args.timeout,
            group=False if args.pid_only else None,
        )
        print(f"{args.engine} engine, SIG{args.signal}: {outcome.summary()}")
        if outcome.tracebacks:
            print(outcome.stderr[-4000:], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
