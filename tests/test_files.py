"""``flwr_byz.files``: atomic writes (the old file or the new one, never a part, no temporary
file left) and the writability check that commands run before their first round."""

from __future__ import annotations

import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flwr_byz.files import (
    atomic_write,
    check_writable,
    temp_name,
    write_bytes,
    write_json,
    write_text,
)


class Boom(Exception):
    pass


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary files in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- atomic_write ------------------------------------------------------------------------
def test_write_creates_parents_and_returns_the_path(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    assert write_bytes(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    assert write_text(target, "héllo") == target
    assert target.read_text(encoding="utf-8") == "héllo"
    assert leftovers(target.parent) == []


def test_an_exception_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(Boom), atomic_write(target) as fh:
        fh.write(b"half of the new")
        assert temp_name(target).exists()  # the data goes to the temp file, not to target
        assert target.read_text() == "old"
        raise Boom
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupts_clean_up_too(tmp_path: Path, exc: type[BaseException]) -> None:
    target = tmp_path / "result.json"
    with pytest.raises(exc), atomic_write(target) as fh:
        fh.write(b"x")
        raise exc()
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_a_failed_rename_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "is-a-dir"
    target.mkdir()
    with pytest.raises(OSError):
        write_bytes(target, b"x")
    assert target.is_dir()
    assert leftovers(tmp_path) == []


def test_write_json_is_strict_and_writes_nothing_for_nan(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json(target, {"a": [1, 2.5, None]})
    assert target.read_text() == '{\n "a": [\n  1,\n  2.5,\n  null\n ]\n}\n'
    with pytest.raises(ValueError):
        write_json(target, {"a": math.nan})
    assert target.read_text().startswith('{\n "a": [')  # the previous file
    assert leftovers(tmp_path) == []


def test_a_stale_temp_of_a_dead_process_is_swept(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    stale = temp_name(target, dead_pid())
    stale.write_bytes(b"left by a kill -9")
    probe = tmp_path / f".out.json.{dead_pid()}.probe.tmp"
    probe.write_bytes(b"")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert not stale.exists()
    assert not probe.exists()


def test_temps_of_live_processes_and_other_files_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "out"
    alive = temp_name(target, os.getppid())  # a live process, still writing
    alive.write_bytes(b"in progress")
    other = temp_name(tmp_path / "out.json", dead_pid())  # another file's temp
    other.write_bytes(b"not ours")
    write_text(target, "new")
    assert alive.exists() and other.exists()


def test_a_stale_temp_of_this_pid_is_replaced_not_reused(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    stale = temp_name(target)
    stale.write_bytes(b"garbage that is longer than the new data")
    stale.chmod(0o644)
    write_bytes(target, b"secret", mode=0o600)
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


def test_a_given_mode_holds_from_the_first_byte(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    with atomic_write(target, mode=0o600) as fh:
        assert stat.S_IMODE(os.fstat(fh.fileno()).st_mode) == 0o600
        fh.write(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_text(target, "again", mode=0o640)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_default_mode_follows_the_umask_or_the_replaced_file(tmp_path: Path) -> None:
    fresh = write_text(tmp_path / "fresh.txt", "x")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask()
    private = tmp_path / "private.txt"
    private.write_text("old")
    private.chmod(0o600)
    write_text(private, "new")  # no mode given: the replaced file's bits stay
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


WRITER = textwrap.dedent(
    """
    import sys
    from flwr_byz.files import write_bytes
    path, size = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    i = 0
    while True:
        write_bytes(path, bytes([65 + i % 2]) * size)
        i += 1
    """
)


def test_a_process_killed_while_writing_leaves_a_whole_file(tmp_path: Path) -> None:
    """SIGKILL at arbitrary instants of a write loop: the file is always one whole version
    (all A or all B), and the next write sweeps the killed process's temporary file."""
    target = tmp_path / "big.bin"
    size = 1 << 20
    write_bytes(target, b"A" * size)
    for delay in (0.05, 0.13, 0.21):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target), str(size)], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = target.read_bytes()
        assert len(data) == size and data in (b"A" * size, b"B" * size)
    write_bytes(target, b"done")
    assert leftovers(tmp_path) == []


# --- check_writable ----------------------------------------------------------------------
def one_line_error(path: Path) -> str:
    with pytest.raises(ValueError) as info:
        check_writable(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--out {path}")
    return message


@pytest.mark.parametrize(("durable", "syncs"), [(True, 2), (False, 0)])
def test_durable_decides_the_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, syncs: int
) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    path = tmp_path / "state.pt"
    with atomic_write(path, durable=durable) as fh:
        fh.write(b"abc")
    assert path.read_bytes() == b"abc"  # atomic either way
    assert len(calls) == syncs  # the file and its directory, or neither


def test_check_writable_accepts_a_new_file_and_touches_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "out.json"
    assert check_writable(target) == target
    assert target.parent.is_dir() and not target.exists()
    assert leftovers(target.parent) == []
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    check_writable(existing)
    assert existing.read_text() == "keep"
    assert leftovers(tmp_path) == []


def test_check_writable_refuses_a_directory(tmp_path: Path) -> None:
    assert "is a directory" in one_line_error(tmp_path)


def test_check_writable_refuses_a_path_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert f"cannot create {blocker}: {blocker} is a file" in one_line_error(blocker / "out.json")
    message = one_line_error(blocker / "sub" / "out.json")
    assert f"cannot create {blocker / 'sub'}: {blocker} is a file" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only directories")
def test_check_writable_refuses_a_read_only_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "cannot write" in one_line_error(locked / "out.json")
        assert "cannot create" in one_line_error(locked / "sub" / "out.json")
    finally:
        locked.chmod(0o700)


def test_check_writable_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^--out-dir "):
        check_writable(tmp_path, what="--out-dir")
