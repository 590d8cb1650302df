"""``flwr-byz deploy``: one experiment on a real SuperLink and real SuperNodes (loopback).

The experiment is an ``ExperimentConfig`` as for ``flwr-byz run``; ``clients`` is the number
of SuperNodes. The Byzantine nodes are the partitions ``byzantine_partitions`` picks for the
seed (the same ones a simulation attacks); each is started with a ``byzantine-attack`` node
config and corrupts its own replies (``byzantine_mod``), so the ServerApp runs with
``injection = "nodes"``. Omniscient attacks (ALIE, IPM, MinMax, MinSum, Mimic) need the honest
replies, which a SuperNode does not see, and are refused here.

The ServerApp writes the same result JSON as a simulation; ``deploy`` adds to its ``config``
``deployment = true``, ``tls`` and ``auth`` (the transport and node authentication used).
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..attacks import get_attack
from ..protocol.keys import ATTACK_SEED_KEY
from ..simulations.config import ExperimentConfig
from ..simulations.result import Result
from ..simulations.runner import byzantine_partitions, prepare
from .federation import LocalDeployment, NodeSpec

__all__ = ["DeploymentError", "deploy", "find_app", "node_specs", "round_lines"]

#: Called with (round, rounds, accuracy) for every round the ServerApp logs.
OnProgress = Callable[[int, int, float], None]

_ROUND = re.compile(r"\[flwr-byz\] round (\d+)/(\d+)\s+accuracy ([0-9.naN]+)")


class DeploymentError(RuntimeError):
    """The deployment or its run failed; the message names the log to read."""


def find_app(app: str | Path | None = None) -> Path:
    """The Flower App directory: ``app``, else the source tree this package was loaded from
    (the directory whose ``pyproject.toml`` has ``[tool.flwr.app]``)."""
    candidates = [Path(app)] if app else [Path(__file__).resolve().parents[2], Path.cwd()]
    for path in candidates:
        pyproject = path / "pyproject.toml"
        if pyproject.is_file() and "[tool.flwr.app]" in pyproject.read_text():
            return path.resolve()
    raise DeploymentError(
        "no Flower App found (a pyproject.toml with [tool.flwr.app]): run from a flwr-byz "
        "clone or pass --app DIR"
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


def _check_attack(cfg: ExperimentConfig) -> None:
    if cfg.byzantine == 0 or cfg.attack.strip().lower() in ("none", ""):
        return
    attack = get_attack(cfg.attack, seed=cfg.seed)
    if getattr(attack, "omniscient", False):
        raise ValueError(
            f"attack {cfg.attack!r} is omniscient (it reads the honest replies), which a "
            "SuperNode cannot do; use it in simulation (flwr-byz run), or a per-node attack "
            "here (sign-flip, scale, gaussian, bit-flip, non-finite, label-flip)"
        )


def deploy(
    config: ExperimentConfig,
    *,
    workdir: str | Path | None = None,
    insecure: bool = False,
    app: str | Path | None = None,
    on_round: OnProgress | None = None,
    timeout: float = 3600.0,
) -> Result:
    """Start the deployment, run ``config`` on it with ``flwr run``, stop every process, and
    return (and write to ``config.out``) the result. ``insecure``: no TLS, no node
    authentication (local tests only)."""
    if not config.out:
        raise ValueError("deploy needs config.out (where the ServerApp writes the result)")
    cfg = dataclasses.replace(prepare(config), injection="nodes")
    _check_attack(cfg)
    app_dir = find_app(app)
    out = Path(cfg.out).resolve()  # type: ignore[arg-type]
    run_cfg = dataclasses.replace(
        cfg,
        out=str(out),
        checkpoint=str(Path(cfg.checkpoint).resolve()) if cfg.checkpoint else None,
    )
    if out.exists():
        out.unlink()  # a stale file must not pass for this run's result
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="flwr-byz-deploy-"))
    tls = auth = not insecure
    with LocalDeployment(work, node_specs(cfg), tls=tls, auth=auth) as deployment:
        run = deployment.start_run(app_dir, run_cfg.to_run_config())
        seen = 0
        deadline = time.monotonic() + timeout
        while run.running():
            if time.monotonic() > deadline:
                raise DeploymentError(f"the run did not finish in {timeout:.0f} s; see {run.log}")
            time.sleep(0.5)
            seen = _report(run.log, seen, on_round)
        _report(run.log, seen, on_round)
        if not out.exists():
            raise DeploymentError(
                f"the run ended without a result (exit code {run.popen.returncode}); "
                f"see {run.log} and the logs in {work / 'logs'}:\n{run.tail(20)}"
            )
    result = Result.load(out)
    result.config.update(
        {"deployment": True, "tls": tls, "auth": auth, "nodes": cfg.clients, "workdir": str(work)}
    )
    result.save(out)
    return result


def _report(log: Path, seen: int, on_round: OnProgress | None) -> int:
    try:
        rounds = round_lines(log.read_text(errors="replace"))
    except OSError:
        return seen
    if on_round is not None:
        for r, total, accuracy in rounds[seen:]:
            on_round(r, total, accuracy)
    return len(rounds)
