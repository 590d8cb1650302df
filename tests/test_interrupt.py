"""``flwr_byz.interrupt``: the first SIGINT/SIGTERM raises ``Interrupted`` (exit code 128 + the
signal) so that cleanup runs, waiting threads see ``STOP``, a second signal ends the process at
once, and ``guarded`` turns an interrupt into one line and the exit code with no process left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flwr_byz import interrupt
from flwr_byz.files import atomic_write, temp_name
from flwr_byz.interrupt import (
    STOP,
    Interrupted,
    Stopped,
    check,
    descendants,
    handle_interrupts,
)

ROOT = Path(__file__).resolve().parents[1]


def _signal_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(5)  # the handler raises long before
    raise AssertionError("no interrupt")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_first_signal_raises_interrupted_with_its_exit_code(sig: int, code: int) -> None:
    before = signal.getsignal(sig)
    with handle_interrupts():
        with pytest.raises(Interrupted) as caught:
            _signal_self(sig)
        assert STOP.is_set()
    assert caught.value.code == code and caught.value.signum == sig
    assert isinstance(caught.value, SystemExit)  # uncaught, it exits quietly with the code
    assert signal.getsignal(sig) is before  # restored
    assert not STOP.is_set()  # the next command starts afresh


def test_an_ignored_signal_stays_ignored() -> None:
    """``nohup`` ignores SIGHUP, a shell's background job SIGINT: the handlers respect that."""
    saved = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with handle_interrupts():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)  # nothing happens
            assert not STOP.is_set()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, saved)


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text("old")
    with pytest.raises(Interrupted), handle_interrupts(), atomic_write(path) as fh:
        fh.write(b"half")
        assert temp_name(path).exists()
        _signal_self(signal.SIGTERM)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_waiting_threads_see_stop() -> None:
    outcome: list[str] = []

    def wait() -> None:
        try:
            while True:
                check()
                time.sleep(0.01)
        except Stopped:
            outcome.append("stopped")

    thread = threading.Thread(target=wait, daemon=True)
    with handle_interrupts():
        thread.start()
        with pytest.raises(Interrupted):
            _signal_self(signal.SIGINT)
        thread.join(5)
    assert outcome == ["stopped"]


def test_handlers_installed_again_after_a_library_replaced_them() -> None:
    def other(signum: int, frame: object) -> None:
        raise AssertionError("the library's handler ran")

    with pytest.raises(Interrupted), handle_interrupts():
        signal.signal(signal.SIGTERM, other)  # what ray.init does
        interrupt.reinstall()
        _signal_self(signal.SIGTERM)


def test_a_signal_a_library_took_first_is_acted_on_where_handled() -> None:
    """``ray.init`` turns a SIGTERM into ``SystemExit(15)`` until it returns."""
    with handle_interrupts():
        with pytest.raises(Interrupted) as caught:
            interrupt.signalled(signal.SIGTERM)
        assert caught.value.code == 143
    interrupt.signalled(signal.SIGTERM)  # not handled here: nothing


def _ignored(pid: int, sig: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(x for x in status.splitlines() if x.startswith("SigIgn:")).split()[1], 16)
    return bool(mask & (1 << (sig - 1)))


_CHILDREN_IGNORE = """
import os, signal, subprocess, sys, time
from pathlib import Path
from flwr_byz.interrupt import Interrupted, children_ignore_sigint, handle_interrupts

def ignored(pid, sig):
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("SigIgn:"))
    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))

child = None
try:
    with handle_interrupts():
        with children_ignore_sigint():
            child = subprocess.Popen(["sleep", "30"])
            time.sleep(0.2)
            print("child ignores:", ignored(child.pid, signal.SIGINT))
            os.kill(os.getpid(), signal.SIGINT)  # pending until the block ends
            time.sleep(0.2)
            print("still in the block")
        time.sleep(5)
        print("the SIGINT was lost")
except Interrupted as exc:
    print("interrupted", exc.code)
finally:
    if child is not None:
        child.kill()
        child.wait()
print("parent ignores:", ignored(os.getpid(), signal.SIGINT))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_children_started_in_the_block_ignore_sigint_and_a_sigint_meanwhile_waits() -> None:
    """In a process of its own: the SIGINT is blocked in the calling thread only, so in a
    process with other threads (pytest's, after other tests) the kernel may hand it to one of
    them, where it is ignored (``children_ignore_sigint`` documents this)."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILDREN_IGNORE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == [
        "child ignores: True",
        "still in the block",
        "interrupted 130",
        "parent ignores: False",
    ], done.stdout


# --- guarded, in a process of its own (it ends with os._exit) -----------------------------
SCRIPT = textwrap.dedent(
    """
    import subprocess, sys, time
    from flwr_byz.interrupt import guarded, note

    def main(cleanup_seconds):
        child = subprocess.Popen(["sleep", "60"])  # left running: guarded stops it
        note("after round 3 of 10")
        try:
            print(child.pid, flush=True)  # inside: a signal from now on meets the cleanup
            time.sleep(60)
        finally:
            time.sleep(cleanup_seconds)  # slow cleanup: a second signal cuts it short

    guarded(main, float(sys.argv[1]), hint=lambda: "add --resume to continue")
    """
)


def _start(cleanup: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(cleanup)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    return proc, child


def _gone(pid: int, wait: float = 5.0) -> bool:
    """Whether ``pid`` has exited (a zombie counts) within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc").exists(), reason="needs /proc")
def test_guarded_ends_with_one_line_the_code_and_no_child_left() -> None:
    proc, child = _start(cleanup=0.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.splitlines() == [
        "-c: interrupted (SIGTERM) after round 3 of 10; add --resume to continue"
    ]
    assert _gone(child)


@pytest.mark.skipif(not Path("/proc").exists(), reason="needs /proc")
def test_a_second_signal_ends_the_process_at_once() -> None:
    proc, child = _start(cleanup=60.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # in the slow cleanup now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)  # not the 60 s of the cleanup
    assert proc.returncode == 130
    assert err.splitlines() == ["-c: SIGINT again; stopping at once"]
    assert _gone(child)
    assert "Traceback" not in err


def test_descendants_lists_children_and_grandchildren() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30; wait"])
    try:
        deadline = time.monotonic() + 5
        while len(descendants(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(descendants(proc.pid)) == 2
        assert set(descendants(proc.pid)) <= set(descendants(os.getpid()))
    finally:
        interrupt.stop_processes([proc.pid, *descendants(proc.pid)], grace=1.0)
        proc.wait()
