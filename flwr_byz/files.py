"""Files written atomically: a run killed at any instant leaves the previous file or the new
one, never a truncated one, and no temporary file behind once it exits.

``atomic_write(path)`` yields a binary file object on a temporary file in the same directory
(``.<name>.<pid>.tmp``); when the block ends normally the data is flushed, ``fsync``-ed and
renamed over ``path`` (``os.replace``, atomic on POSIX), and the directory entry is synced.
On any exception (``KeyboardInterrupt`` and ``SystemExit`` included) the temporary file is
deleted and ``path`` is untouched. A process killed with SIGKILL cannot clean up: its
temporary file is swept by the next write of the same ``path`` (the pid in the name is gone).

``check_writable(path)`` is what a command calls before its first round, so that a bad
``--out`` fails in a line, not after training.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "check_writable",
    "temp_name",
    "write_bytes",
    "write_json",
    "write_npz_cache",
    "write_text",
]


def temp_name(path: Path, pid: int | None = None) -> Path:
    """The temporary file that ``atomic_write`` uses for ``path`` in process ``pid``."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _probe_name(path: Path) -> Path:
    """The file ``check_writable`` creates and deletes (never ``atomic_write``'s own temp)."""
    return path.with_name(f".{path.name}.{os.getpid()}.probe.tmp")


def _sweep(path: Path) -> None:
    """Delete temporary files of ``path`` left by processes that no longer exist."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)(\.probe)?\.tmp")
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match is None:
                continue
            pid = int(match.group(1))
            if pid != os.getpid() and not _alive(pid):
                with contextlib.suppress(OSError):
                    entry.unlink()


def _sync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. some network file systems)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: int | None = None, durable: bool = True
) -> Iterator[IO[bytes]]:
    """A binary file whose content replaces ``path`` atomically when the block succeeds.

    Parents are created. ``mode`` (e.g. ``0o600`` for a private key) is set on the temporary
    file before any byte is written; by default a file that replaces another keeps the
    other's permission bits, and a new one gets ``0o666`` minus the umask, as ``open`` would
    give it. One writer of a given ``path`` at a time per process. ``durable=False`` skips
    the two ``fsync`` calls: still atomic against a killed process (the rename is), but not
    against a power loss; for files rewritten often and cheap to lose (the nodes' state).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    tmp = temp_name(path)
    if mode is None:
        with contextlib.suppress(OSError):
            before = path.stat()
            if stat.S_ISREG(before.st_mode):
                mode = stat.S_IMODE(before.st_mode)
    tmp.unlink(missing_ok=True)  # a stale one of a reused pid: its permissions must not stay
    # a given mode holds from the start (0o600 at creation, then exactly ``mode``); without
    # one the umask applies, as for ``open``
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fd = -1  # owned by fh now
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _sync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, mode) as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"), mode)


def write_json(
    path: str | Path, data: Any, indent: int | None = 1, mode: int | None = None
) -> Path:
    """Write ``data`` as strict JSON (no NaN) plus a newline, atomically; returns ``path``."""
    return write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n", mode)


def write_npz_cache(path: Path, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to the cache file ``path`` as ``.npz`` (no pickle), atomically:
    processes that build the same file at once each write their own temporary file. A cache
    that cannot be written only warns (the caller has the arrays; a later load builds them
    again)."""
    import warnings

    import numpy as np

    try:
        with atomic_write(path, mode=0o644) as fh:  # the cache is shared
            np.savez(fh, **arrays)
    except OSError as exc:
        warnings.warn(f"could not cache {path.name} in {path.parent}: {exc}", stacklevel=3)


def check_writable(path: str | Path, what: str = "--out") -> Path:
    """Raise ``ValueError`` (one line) unless a file can be written at ``path``.

    Creates the missing parent directories (they would be created at the end anyway) and
    tries a temporary file there, which is removed again. ``path`` itself is not touched.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file" if blocker is not None else _reason(exc)
        raise ValueError(f"{what} {path}: cannot create {path.parent}: {reason}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} is not writable")
    probe = _probe_name(path)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot write in {path.parent}: {_reason(exc)}") from None
    os.close(fd)
    probe.unlink(missing_ok=True)
    return path


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
