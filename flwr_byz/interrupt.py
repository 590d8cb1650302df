"""Ctrl-C and SIGTERM: a command ends promptly and quietly, with everything it started.

``handle_interrupts()`` (a context manager, main thread) installs handlers for SIGINT,
SIGTERM and SIGHUP. The first signal sets :data:`STOP` and raises :class:`Interrupted` in the
main thread: a ``SystemExit`` whose code is 128 + the signal (130, 143, 129), so ``finally``
clauses and context managers clean up as they unwind (an atomic write drops its temporary
file, Ray shuts down, a process pool or a deployment stops its processes) and, uncaught, it
ends the process with that code and no traceback. Threads that wait on something (the
simulation engine's ServerApp thread) call :func:`check`, which raises :class:`Stopped` once
:data:`STOP` is set. A second signal while that runs ends the process at once: its
descendants get SIGKILL, then ``os._exit``.

``guarded(main)`` runs a command's ``main`` that way and turns the interrupt into one line on
stderr (``flwr-byz: interrupted (SIGINT) after round 3 of 10; progress is kept in ...``: the
last :func:`note`, then the command's hint), stops any descendant process still running and
exits 130 / 143 / 129 without waiting for the interpreter's finalization.

``children_ignore_sigint()``: processes started within it ignore SIGINT. A Ctrl-C in a
terminal reaches the whole foreground process group; a pool's workers should let the parent
stop them rather than each print a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

__all__ = [
    "SIGNALS",
    "STOP",
    "Interrupted",
    "Stopped",
    "alive",
    "become_subreaper",
    "check",
    "children_ignore_sigint",
    "descendants",
    "guarded",
    "handle_interrupts",
    "note",
    "reinstall",
    "send_signal",
    "signalled",
    "stop_processes",
]

T = TypeVar("T")

#: The signals that interrupt a command.
SIGNALS: tuple[int, ...] = tuple(
    int(s) for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s
)

#: Set by the first signal; threads that wait poll it (``check``).
STOP = threading.Event()


class Interrupted(SystemExit):
    """Raised in the main thread by the first SIGINT/SIGTERM/SIGHUP; its exit code is
    128 + the signal number (130, 143, 129)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class Stopped(Exception):
    """Raised by ``check`` in a thread once the process is stopping (``STOP`` is set)."""


def check() -> None:
    """Raise ``Stopped`` when the process has been interrupted (for waiting threads)."""
    if STOP.is_set():
        raise Stopped("interrupted")


# --- the handlers ------------------------------------------------------------------------
_state: dict[str, Any] = {"signum": None, "note": "", "depth": 0, "hooks": []}
_installed: set[int] = set()


def note(text: str) -> None:
    """What the interrupt message says about the progress (e.g. ``after round 3 of 10``)."""
    _state["note"] = text


def _handler(signum: int, frame: FrameType | None) -> None:
    if STOP.is_set():  # the second signal: no more cleanup
        _hard_exit(signum)
    STOP.set()
    _state["signum"] = signum
    for hook in list(_state["hooks"]):
        hook()
    raise Interrupted(signum)


def _hard_exit(signum: int) -> NoReturn:
    _write(f"{_prog()}: {signal.Signals(signum).name} again; stopping at once")
    send_signal(descendants(os.getpid()), signal.SIGKILL)
    os._exit(128 + signum)


def _prog() -> str:
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"


def _write(line: str) -> None:
    stream = _state.get("stderr") or sys.stderr  # the real one where ``guarded`` muted it
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):  # stderr closed
        pass


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handle_interrupts(
    signals: Iterable[int] = SIGNALS, on_signal: Callable[[], None] | None = None
) -> Iterator[None]:
    """Within the block, the first of ``signals`` raises ``Interrupted`` (after calling
    ``on_signal``), a second one ends the process at once (module doc). The previous handlers
    are restored after. Outside the main thread this does nothing (Python delivers signals
    to the main thread only). A signal ignored when the block starts stays ignored."""
    if not _main_thread():
        yield
        return
    if _state["depth"] == 0:
        STOP.clear()
        _state.update(signum=None, stderr=None, note="")
    _state["depth"] += 1
    if on_signal is not None:
        _state["hooks"].append(on_signal)
    # an ignored signal stays ignored: ``nohup`` ignores SIGHUP, a shell's background job
    # SIGINT (and Python then installs no KeyboardInterrupt handler either)
    wanted = [int(s) for s in signals if signal.getsignal(s) is not signal.SIG_IGN]
    saved = {sig: signal.signal(sig, _handler) for sig in wanted}
    before = set(_installed)
    _installed.update(wanted)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        _installed.clear()
        _installed.update(before)
        if on_signal is not None:
            _state["hooks"].remove(on_signal)
        _state["depth"] -= 1
        if _state["depth"] == 0:
            STOP.clear()  # the interrupt, if any, propagates as ``Interrupted``


def reinstall() -> None:
    """Install the handlers again (main thread) where ``handle_interrupts`` is active: for
    after a library replaced them (``ray.init`` sets its own SIGTERM handler)."""
    if _main_thread():
        for sig in _installed:
            signal.signal(sig, _handler)


def signalled(signum: int) -> None:
    """Act on ``signum`` as the handler would (main thread, where ``handle_interrupts`` handles
    it; nothing otherwise): for a signal that a library's own handler took first (``ray.init``
    turns a SIGTERM into ``SystemExit(15)`` until it returns)."""
    if _main_thread() and signum in _installed:
        _handler(signum, None)


@contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Processes started within the block ignore SIGINT (the disposition survives ``exec``);
    a SIGINT for this process meanwhile stays pending and is delivered after the block.

    The SIGINT is blocked in the calling thread only: where other threads run, the kernel may
    hand it to one of them while it is ignored, and that Ctrl-C is lost (press it again; the
    block lasts as long as starting the children)."""
    if not _main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)  # a pending SIGINT is not discarded (blocked)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


# --- processes ---------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    """parent PID -> child PIDs, from ``/proc`` (empty where there is no ``/proc``)."""
    out: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(parent, []).append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first seen, breadth first)."""
    children = _children_map()
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        if child not in found:
            found.append(child)
            todo.extend(children.get(child, []))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def send_signal(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids`` that still exists (and is ours to signal)."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``prctl``): a process
    whose parent exits (a Ray worker after the raylet, an app started by a SuperNode) stays
    in this process's tree, where ``descendants`` finds it, instead of moving under init.
    False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def stop_processes(pids: Iterable[int], grace: float = 3.0) -> list[int]:
    """SIGTERM to ``pids``, SIGKILL after ``grace`` seconds to those still alive; returns
    the PIDs that got SIGKILL."""
    pids = list(pids)
    send_signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    send_signal(left, signal.SIGKILL)
    return left


# --- a command's main --------------------------------------------------------------------
class _Discard:
    """A text stream that drops what is written (``sys.stderr`` once interrupted)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _quiet(loggers: Iterable[str]) -> Callable[[], None]:
    """At the signal: silence ``loggers`` and this process's ``sys.stderr`` (what interrupted
    work still prints there, e.g. Ray's forwarded worker logs, a thread's traceback, is not
    news); the one line of ``guarded`` goes to the real stderr."""

    def hook() -> None:
        for name in loggers:
            logging.getLogger(name).disabled = True
        if _state.get("stderr") is None:
            _state["stderr"] = sys.stderr
            sys.stderr = _Discard()

    return hook


def guarded(
    main: Callable[..., T],
    *args: Any,
    quiet: Iterable[str] = ("flwr", "ray"),
    hint: Callable[[], str | None] | None = None,
    grace: float = 3.0,
    **kwargs: Any,
) -> T:
    """Run ``main(*args, **kwargs)`` under ``handle_interrupts``; an interrupt ends it with
    one line on stderr (the progress ``note``, then what ``hint()`` says, e.g. how to
    resume), no traceback, no descendant process left and exit code 128 + the signal (module
    doc). The ``quiet`` loggers and ``sys.stderr`` are silenced at the signal (the errors of
    interrupted work are not news). Outside the main thread, just ``main(...)``."""
    if not _main_thread():
        return main(*args, **kwargs)
    become_subreaper()  # so that the final sweep finds every process it started
    with handle_interrupts(on_signal=_quiet(quiet)):
        try:
            value = main(*args, **kwargs)
        except BaseException:
            if not STOP.is_set():  # SystemExit(0) of a finished command included
                raise
        else:
            if not STOP.is_set():
                return value
        _interrupted(grace, hint() if hint is not None else None)


def _interrupted(grace: float, hint: str | None) -> NoReturn:
    """The end of an interrupted command (``guarded``); still within the handlers, so a
    second signal ends it at once."""
    signum = int(_state["signum"])
    name = signal.Signals(signum).name
    where = _state["note"]
    _write(
        f"{_prog()}: interrupted ({name})"
        + (f" {where}" if where else "")
        + (f"; {hint}" if hint else "")
    )
    helpers = _helpers()
    stop_processes([p for p in descendants(os.getpid()) if p not in helpers], grace)
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    _exit_now(128 + signum)


def _helpers() -> set[int]:
    """Helper processes that end by themselves when this one exits, after their own
    cleanup, and ignore SIGTERM: ``multiprocessing``'s resource tracker."""
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    pid = getattr(getattr(tracker, "_resource_tracker", None), "_pid", None)
    return {pid} if isinstance(pid, int) else set()


def _stop_resource_tracker() -> None:
    """End ``multiprocessing``'s resource tracker now and reap it (it would end by itself
    just after this process, so that a check right at our exit would still see it)."""
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    stop = getattr(getattr(tracker, "_resource_tracker", None), "_stop", None)
    if callable(stop):
        try:
            stop()
        except Exception:  # best effort: it ends with this process anyway
            pass


def _exit_now(code: int) -> NoReturn:
    """``atexit`` handlers, flushed streams, then ``os._exit``: the interpreter's own
    finalization is skipped, which can wait seconds for a daemon thread (Flower's telemetry
    thread, started as the simulation ends, holds the GIL while it loads certificates) or
    forever for a thread that still waits on something."""
    import atexit
    import gc

    gc.collect()  # what the unwound frames held (a pool's semaphores: finalizers run)
    atexit._run_exitfuncs()
    _stop_resource_tracker()
    for stream in (sys.stdout, sys.stderr, _state.get("stderr")):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
