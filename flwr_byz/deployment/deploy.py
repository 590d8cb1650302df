"""``flwr-byz deploy``: one experiment on a real SuperLink and real SuperNodes (loopback).

The experiment is an ``ExperimentConfig`` as for ``flwr-byz run``; ``clients`` is the number
of SuperNodes. The Byzantine nodes are the partitions ``byzantine_partitions`` picks for the
seed (the same ones a simulation attacks); each is started with a ``byzantine-attack`` node
config and corrupts its own replies (``byzantine_mod``), so the ServerApp runs with
``injection = "nodes"``. Omniscient attacks (ALIE, IPM, MinMax, MinSum, Mimic) need the honest
replies, which a SuperNode does not see, and are refused here.

The ServerApp writes the same result JSON as a simulation; ``deploy`` adds to its ``config``
``deployment = true``, ``tls`` and ``auth`` (the transport and node authentication used).

The Flower App run is the one ``write_app`` writes into the work directory (its components
are imported from the installed flwr_byz: no source checkout is read), or ``--app DIR``.
For the former, each SuperNode runs with ``--isolation process`` beside a long-running
ClientApp launcher (``flwr_byz.deployment.forkserver``) that imports the ClientApp once and
forks per message; ``--app DIR`` keeps Flower's ``flwr-clientapp`` process per message (its
modules come from the FAB). The result's rounds record their seconds (``RoundRecord.seconds``).

The work directory holds the private keys of the SuperLink and of every SuperNode, each
process's ``FLWR_HOME``, the Flower App and the logs: ``deploy`` deletes it at the end
(success, error, Ctrl-C, SIGTERM) unless asked to keep it, and deletes only what it created
(:class:`WorkDir`).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path

from flwr.common.logger import log as flwr_log

from ..attacks import get_attack
from ..attacks.registry import attack_names
from ..protocol.keys import ATTACK_SEED_KEY
from ..simulations.config import ExperimentConfig
from ..simulations.devices import resolve_device
from ..simulations.result import Result
from ..simulations.runner import byzantine_partitions, prepare
from ..specs import listing
from .federation import LocalDeployment, NodeSpec, fork_server_supported
from .flower_app import CLIENT_APP, write_app

__all__ = [
    "DeploymentError",
    "WorkDir",
    "check_attack",
    "deploy",
    "find_app",
    "node_specs",
    "round_lines",
]

#: Called with (round, rounds, accuracy) for every round the ServerApp logs.
OnProgress = Callable[[int, int, float], None]

_ROUND = re.compile(r"\[flwr-byz\] round (\d+)/(\d+)\s+accuracy ([0-9.naN]+)")


class DeploymentError(RuntimeError):
    """The deployment or its run failed; the message names the log to read."""


WORKDIR_PREFIX = "flwr-byz-deploy-"


@dataclass(frozen=True)
class WorkDir:
    """Where a deployment keeps its credentials, ``FLWR_HOME``s and logs, and what ``deploy``
    deletes at the end: only what it created.

    * no ``--workdir``: a new temporary directory ``flwr-byz-deploy-*``, deleted whole;
    * a ``--workdir`` that does not exist: created (with its missing parents) and used as is;
      the topmost directory created is deleted;
    * a ``--workdir`` that exists: a new ``flwr-byz-deploy-*`` directory inside it is used and
      deleted; nothing else in it is touched (a stale ``keys/`` of an earlier run included).

    ``owned`` is the directory to delete (None until :meth:`create` for an existing parent).
    """

    requested: Path | None
    owned: Path | None

    @classmethod
    def plan(cls, workdir: str | Path | None) -> WorkDir:
        """What :meth:`create` will create, without creating anything; ``ValueError`` for a
        ``workdir`` that exists but is not a directory."""
        if workdir is None:
            return cls(None, None)
        path = Path(workdir).absolute()
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"--workdir {workdir} exists and is not a directory")
            return cls(path, None)
        top = path
        while not top.parent.exists():
            top = top.parent
        return cls(path, top)

    def owns(self, path: str | Path) -> bool:
        """Whether ``path`` lies in the directory that will be deleted."""
        if self.owned is None:
            return False
        return Path(path).absolute().is_relative_to(self.owned)

    def create(self) -> tuple[Path, Path]:
        """Create the work directory: (where the deployment writes, what to delete)."""
        if self.requested is None:
            work = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            return work, work
        if self.owned is None:
            work = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=self.requested))
            return work, work
        self.requested.mkdir(parents=True)  # not exist_ok: we delete only what we created
        return self.requested, self.owned


def remove_workdir(path: Path, attempts: int = 3) -> bool:
    """Delete ``path`` and everything in it (retried: a process being stopped may still add a
    file); False, with a warning logged, if something could not be deleted."""
    for attempt in range(attempts):
        try:
            shutil.rmtree(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if attempt == attempts - 1:
                flwr_log(
                    WARNING,
                    "flwr-byz deploy: could not delete the work directory %s: %s",
                    path,
                    exc,
                )
            time.sleep(0.2)
    return False


def find_app(app: str | Path) -> Path:
    """``app`` resolved, if it is a Flower App directory (a ``pyproject.toml`` with
    ``[tool.flwr.app]``, as in a flwr-byz source checkout); else ``DeploymentError``."""
    pyproject = Path(app) / "pyproject.toml"
    if pyproject.is_file() and "[tool.flwr.app]" in pyproject.read_text():
        return Path(app).resolve()
    raise DeploymentError(
        f"--app {app}: no Flower App there (a pyproject.toml with [tool.flwr.app]); "
        "leave --app out to run the installed flwr_byz"
    )


def node_specs(cfg: ExperimentConfig) -> list[NodeSpec]:
    """One SuperNode per client; the seed's Byzantine partitions carry the attack."""
    attacked = cfg.byzantine > 0 and cfg.attack.strip().lower() not in ("none", "")
    byzantine = set(byzantine_partitions(cfg)) if attacked else set()
    return [
        NodeSpec(
            partition=i,
            num_partitions=cfg.clients,
            attack=cfg.attack if i in byzantine else None,
            extra={ATTACK_SEED_KEY: cfg.seed} if i in byzantine else {},
        )
        for i in range(cfg.clients)
    ]


def round_lines(text: str) -> list[tuple[int, int, float]]:
    """The ``(round, rounds, accuracy)`` of every round line the ServerApp logged."""
    return [(int(a), int(b), float(c)) for a, b, c in _ROUND.findall(text)]


def check_attack(cfg: ExperimentConfig) -> None:
    """``ValueError`` unless the Byzantine SuperNodes can make ``cfg.attack`` on their own
    (an omniscient attack reads the honest replies, which a node cannot)."""
    if cfg.byzantine == 0 or cfg.attack.strip().lower() in ("none", ""):
        return
    attack = get_attack(cfg.attack, seed=cfg.seed)
    if getattr(attack, "omniscient", False):
        raise ValueError(
            f"attack {cfg.attack!r} is omniscient (it reads the honest replies), which a "
            "SuperNode cannot do; use it in simulation (flwr-byz run), or a per-node attack "
            f"here: {listing(attack_names(per_node=True)['attacks'])}"
        )


def deploy(
    config: ExperimentConfig,
    *,
    workdir: str | Path | None = None,
    insecure: bool = False,
    app: str | Path | None = None,
    on_round: OnProgress | None = None,
    timeout: float = 3600.0,
    keep_workdir: bool = False,
    on_workdir: Callable[[Path], None] | None = None,
) -> Result:
    """Start the deployment, run ``config`` on it with ``flwr run``, stop every process, and
    return (and write to ``config.out``) the result. ``insecure``: no TLS, no node
    authentication (local tests only). ``app``: the Flower App directory to run (default:
    ``write_app`` into the work directory). The work directory (``workdir``, see
    :class:`WorkDir`) is deleted when this returns or raises, unless ``keep_workdir``;
    ``on_workdir(path)`` is called once it exists. ``ValueError`` before anything starts when
    ``config.out`` or the checkpoint would lie in the directory to delete."""
    if not config.out:
        raise ValueError("deploy needs config.out (where the ServerApp writes the result)")
    nodes = (
        config if config.injection == "nodes" else dataclasses.replace(config, injection="nodes")
    )
    cfg = prepare(nodes)  # the config deployed, once (as it is when the CLI prepared it)
    check_attack(cfg)
    resolve_device(cfg.device)  # the ServerApp's (a node's own: its node config ``device``)
    app_dir = find_app(app) if app is not None else None
    out = Path(cfg.out).resolve()  # type: ignore[arg-type]
    run_cfg = dataclasses.replace(
        cfg,
        out=str(out),
        checkpoint=str(Path(cfg.checkpoint).resolve()) if cfg.checkpoint else None,
    )
    plan = WorkDir.plan(workdir)
    for what, path in (("--out", out), ("--checkpoint", run_cfg.checkpoint)):
        if path and not keep_workdir and plan.owns(path):
            raise ValueError(
                f"{what} {path} lies in the work directory {plan.owned}, which deploy deletes "
                "at the end: put it elsewhere or pass --keep-workdir"
            )
    if out.exists():
        out.unlink()  # a stale file must not pass for this run's result
    work, owned = plan.create()
    try:
        if on_workdir is not None:
            on_workdir(work)
        # our own app: one long-running ClientApp launcher per node, importing it once
        ours = app_dir is None and fork_server_supported()
        fork_server = CLIENT_APP.partition(":")[0] if ours else None
        if app_dir is None:
            app_dir = write_app(work / "app")
        tls = auth = not insecure
        specs = node_specs(cfg)
        with LocalDeployment(
            work, specs, tls=tls, auth=auth, fork_server=fork_server
        ) as deployment:
            run = deployment.start_run(app_dir, run_cfg.to_run_config())
            seen = 0
            deadline = time.monotonic() + timeout
            while run.running():
                if time.monotonic() > deadline:
                    raise DeploymentError(
                        f"the run did not finish in {timeout:.0f} s; "
                        f"{_logs(run.log, work, keep_workdir)}:\n{run.tail(20)}"
                    )
                time.sleep(0.5)
                seen = _report(run.log, seen, on_round)
            _report(run.log, seen, on_round)
            if not out.exists():
                raise DeploymentError(
                    f"the run ended without a result (exit code {run.popen.returncode}); "
                    f"{_logs(run.log, work, keep_workdir)}:\n{run.tail(20)}"
                )
        result = Result.load(out)
        kept = str(work) if keep_workdir else None  # a deleted directory is not recorded
        result.config.update(
            {"deployment": True, "tls": tls, "auth": auth, "nodes": cfg.clients, "workdir": kept}
        )
        result.save(out)
        return result
    finally:  # the processes are stopped (the with block): delete their files
        if not keep_workdir:
            remove_workdir(owned)


def _logs(run_log: Path, work: Path, kept: bool) -> str:
    """Where to read the logs: the kept files, or the tail below (the directory is deleted)."""
    if kept:
        return f"see {run_log} and the logs in {work / 'logs'}"
    return (
        f"the end of {run_log.name} below (the work directory with the logs is deleted; "
        "--keep-workdir keeps it)"
    )


def _report(log: Path, seen: int, on_round: OnProgress | None) -> int:
    try:
        rounds = round_lines(log.read_text(errors="replace"))
    except OSError:
        return seen
    if on_round is not None:
        for r, total, accuracy in rounds[seen:]:
            on_round(r, total, accuracy)
    return len(rounds)
