"""A long-running ClientApp launcher for a SuperNode: imports once, forks per message.

Flower 1.42 runs every message a SuperNode receives in a new ``flwr-clientapp`` process
(``flwr-clientapp --token ...`` serves one task and exits; no version of the command serves
more). Each such process imports Python, Flower, torch and the ClientApp's module again:
3-5 s per message on two cores, so a round of ``flwr-byz deploy`` took 20-25 s.

With ``flower-supernode --isolation process`` the SuperNode does not start a launcher of its
own (``flower-superexec``): a separate process is expected to poll its Runtime API for tasks.
This module is that process:

    python -m flwr_byz.deployment.forkserver --runtime-api-address 127.0.0.1:PORT \\
        --insecure --parent-pid SUPERNODE_PID --preload flwr_byz.simulations.app

It imports Flower's ClientApp runtime, torch and the ``--preload`` modules once, then polls
the Runtime API (``AcquireTask``, every ``--poll-interval`` seconds; Flower's launcher polls
every second) and, for every ClientApp task, forks a child that runs Flower's own
``run_clientapp`` with the task's token, as ``flwr-clientapp --token`` would: the same
protocol, the same per-message process isolation (the child exits after its message), without
the imports. Children are reaped as they finish and stopped (SIGTERM, then SIGKILL) when the
launcher stops (SIGTERM, SIGHUP, Ctrl-C, or its SuperNode exiting: ``--parent-pid``); each
child also exits when the launcher dies (Flower's parent-process monitor). Task types other
than ClientApp go to Flower's subprocess launcher, as ``flower-superexec`` would.

``flwr-byz deploy`` starts one per SuperNode (``LocalDeployment(..., fork_server=True)``);
the ``--preload`` module must be the one the FAB's ``clientapp`` component names and come
from this environment, which holds for the app ``deploy`` writes (``--app DIR`` keeps one
``flwr-clientapp`` per message: its modules come from the FAB).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import NoReturn

from flwr.common.constant import RUNTIME_DEPENDENCY_INSTALL
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.plugin import AutoExecPlugin
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime.run_clientapp import run_clientapp

from ..interrupt import alive, handle_interrupts, send_signal

__all__ = ["FORK_SERVER_MODULE", "ForkExecutor", "main", "serve"]

#: ``python -m`` this to start the launcher.
FORK_SERVER_MODULE = "flwr_byz.deployment.forkserver"

#: Seconds between two ``AcquireTask`` polls (Flower's ``flower-superexec``: 1 s).
POLL_INTERVAL = 0.1

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ForkExecutor:
    """A Flower SuperExec executor (``flwr.supercore.superexec.executor.Executor``) that runs
    ClientApp tasks in children forked from this process; other task types are started as
    Flower's subprocess executor starts them."""

    def __init__(self) -> None:
        self.children: dict[int, float] = {}  # pid -> when it was forked (monotonic)
        self.launched = 0
        self._subprocess = SubprocessExecutor()

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        """Every task type, at any time (no capacity gate, as Flower's subprocess one)."""
        del insecure, root_certificates_path
        return supported_task_types, set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        """Return at once: forks have no capacity gate."""
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork a child that runs ``spec``'s ClientApp task and exits."""
        if spec.task_type != TaskType.CLIENT_APP:
            return self._subprocess.launch(spec)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _run_child(spec)
        self.children[pid] = time.monotonic()
        self.launched += 1
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the children that have finished, logging each one's exit code and seconds."""
        for pid, started in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                done, status = pid, 0
            if done == 0:
                continue
            del self.children[pid]
            code = os.waitstatus_to_exitcode(status)
            seconds = time.monotonic() - started
            print(
                f"[flwr-byz] ClientApp task (pid {pid}): exit code {code}, {seconds:.2f} s",
                flush=True,
            )

    def close(self, grace: float = 5.0) -> None:
        """Stop the children still running: SIGTERM, SIGKILL after ``grace`` seconds."""
        self.reconcile()
        send_signal(list(self.children), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            time.sleep(0.05)
            self.reconcile()
        send_signal([p for p in self.children if alive(p)], signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()


def _run_child(spec: ExecutionSpec) -> NoReturn:
    """In a forked child: Flower's ``run_clientapp`` for the task, then ``os._exit`` (no
    ``atexit`` handler or ``finally`` of the launcher runs in the child)."""
    code = 1
    try:
        for sig in _SIGNALS:  # the launcher's handlers are not the child's
            signal.signal(sig, signal.SIG_DFL)
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            ),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as exc:  # run_clientapp ends with flwr_exit -> sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # the child must reach os._exit
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(
    runtime_api_address: str,
    *,
    insecure: bool,
    root_certificates: str | None = None,
    parent_pid: int | None = None,
    preload: Sequence[str] = (),
    poll_interval: float = POLL_INTERVAL,
) -> None:
    """Import ``preload``, then launch every task the Runtime API at ``runtime_api_address``
    hands out until a signal (or the parent process exiting) stops this process."""
    # Imported once here, inherited by every child: torch, and torch._dynamo, which the first
    # optimizer a process builds imports (8 s on a loaded 2-core machine, more than torch).
    import torch
    import torch._dynamo  # noqa: F401

    for module in preload:
        importlib.import_module(module)
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    executor = ForkExecutor()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=validate_and_resolve_root_certificates(root_certificates, insecure),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    plugin = AutoExecPlugin(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates,
        runtime_dependency_install=RUNTIME_DEPENDENCY_INSTALL,
        executor=executor,
    )
    print(f"[flwr-byz] ClientApp fork server ready (pid {os.getpid()})", flush=True)
    try:
        with handle_interrupts(_SIGNALS):
            while True:
                executor.reconcile()
                types, fabs = executor.get_eligible_capacity(set(plugin.supported_task_types))
                reply = client.AcquireTask(
                    AcquireTaskRequest(supported_task_types=types, agentapp_fab_hashes=fabs)
                )
                if reply.HasField("task") and reply.token:
                    plugin.launch_task(token=reply.token, task=reply.task)
                    continue  # another task may be waiting
                time.sleep(poll_interval)
    finally:
        executor.close()
        client.close()
        print(
            f"[flwr-byz] ClientApp fork server stopped after {executor.launched} tasks", flush=True
        )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m flwr_byz.deployment.forkserver`` (module doc)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {FORK_SERVER_MODULE}",
        description="Serve a SuperNode's ClientApp tasks (flower-supernode --isolation "
        "process) from one long-running process that forks per message.",
    )
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--preload", action="append", default=[], help="module to import")
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL)
    parser.add_argument("--tag", default="", help="ignored: marks the command line")
    args = parser.parse_args(argv)
    serve(
        args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=args.root_certificates,
        parent_pid=args.parent_pid,
        preload=args.preload,
        poll_interval=args.poll_interval,
    )


if __name__ == "__main__":
    main()
