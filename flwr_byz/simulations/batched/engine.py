"""The ``batched`` engine: every client of a round at once, on one CPU or CUDA device.

It runs the same experiment as ``train_on_grid`` on the ``local`` engine, with the same numbers
for the same seed (the same nodes, minibatches, coins and attack noise; in float64 the global
models agree to rounding), without a Message per client:

- node IDs are 1..n for partitions 0..n-1, as on the local engine; Flower's samplers are
  reseeded from (seed, round) like there;
- the clients' gradients are one ``torch.func`` call per round (``grads``), FedAvg's
  local epochs one per SGD step; the per-client state lives in ``[n, d]`` tensors;
- the attack rewrites the Byzantine rows of the stacked replies (``attack``); a backdoor
  attack (BadNets, DBA, model replacement; ``fedavg`` and ``robust-fedavg`` only) trains the
  Byzantine clients on their ClientApp's poisoned copy of their partition each round, model
  replacement boosts their updates as ``ByzantineGrid`` does (``backdoor``), and the attack
  success rate is measured after every round as the local engine measures it
  (``simulations.asr``);
- the method strategies' rules are the pure functions of ``flwr_byz.methods``
  (``methods``, ``byzsgd``); RobustFedAvg and FedAvg too (``fedavg``),
  while Flower's ``flower-*`` strategies aggregate real reply Messages themselves;
- bytes per round are the sizes of the Messages the local engine would exchange
  (``bytes``).

:data:`DRIVERS` names each method's driver; the types the drivers share (``Setup``,
``RoundOutcome``, ``Driver``) live in ``setup``, which imports no driver (no cycle).

Not supported (a clear error names ``--engine local``): ``injection="nodes"`` (a deployment's
SuperNodes attack), checkpoints, the Neurotoxin backdoor (it masks the clients' local SGD
steps), backdoor attacks with any method but ``fedavg`` and ``robust-fedavg`` (a method
strategy's ops, Flower's ``flower-*`` strategies).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..asr import attack_success_rate, backdoor_eval_set
from ..config import ExperimentConfig
from ..datasets import eval_split
from ..devices import device_name
from ..local import ensure_task_identity
from ..result import Result, RoundRecord
from ..runner import OnRound, Prepared, prepare
from ..threads import torch_threads
from ..training import TrainingObjective, derive_seed, evaluate
from .byzsgd import ByzSGDDriver
from .fedavg import FedAvgDriver, RobustFedAvgDriver
from .methods import METHOD_DRIVERS
from .setup import Driver, RoundOutcome, Setup, batched_attack, resolve_device

__all__ = [
    "DRIVERS",
    "RoundOutcome",
    "Setup",
    "check_batched",
    "make_driver",
    "resolve_device",
    "run_batched",
]

#: method name -> its driver. The FedAvg family: ``robust-fedavg`` and ``fedavg`` (Flower's
#: mean) without Messages, Flower's ``flower-*`` strategy objects on real reply Messages.
DRIVERS: dict[str, Callable[[Setup], Driver]] = {
    "fedavg": lambda setup: RobustFedAvgDriver(setup, mean=True),
    "robust-fedavg": RobustFedAvgDriver,
    **dict.fromkeys(
        (
            "flower-krum",
            "flower-multikrum",
            "flower-bulyan",
            "flower-median",
            "flower-trimmedavg",
        ),
        FedAvgDriver,
    ),
    **METHOD_DRIVERS,
    "byzsgd": ByzSGDDriver,
}


def check_batched(cfg: ExperimentConfig) -> None:
    """Raise ``ValueError`` for the options the batched engine does not support."""
    if cfg.injection != "server":
        raise ValueError(
            f"the batched engine makes the Byzantine replies on the server; injection="
            f"{cfg.injection!r} needs SuperNodes (--engine local or simulation)"
        )
    if cfg.checkpoint or cfg.resume:
        raise ValueError("the batched engine writes no checkpoints; use --engine local")
    if cfg.method not in DRIVERS:
        raise ValueError(
            f"method {cfg.method!r} does not run on the batched engine; use --engine local"
        )
    batched_attack(cfg)  # a backdoor attack it does not run: its error
    resolve_device(cfg.device)


def make_driver(setup: Setup) -> Driver:
    """The driver of ``setup.cfg.method``."""
    check_batched(setup.cfg)
    return DRIVERS[setup.cfg.method](setup)


def run_batched(
    configs: Sequence[ExperimentConfig], on_round: OnRound | None = None
) -> list[Result]:
    """Run ``configs`` (raw or prepared) one after the other on the batched engine (module
    doc), each with its ``threads`` torch threads; each result is written to its config's
    ``out`` (when set) as soon as it is done."""
    prepared = [prepare(c) for c in configs]  # as they are when prepared already
    for cfg in prepared:  # every config before the first one runs
        check_batched(cfg)
    results = []
    for cfg in prepared:
        assert cfg.threads is not None  # resolved
        with torch_threads(cfg.threads):
            result = _run(cfg, on_round)
        if cfg.out:
            result.save(cfg.out)
        results.append(result)
    return results


def _run(cfg: Prepared, on_round: OnRound | None) -> Result:
    ensure_task_identity()
    setup = Setup.build(cfg)
    attacked = setup.attack is not None
    meta = cfg.to_dict() | {
        "byzantine_partitions": setup.byzantine if attacked else [],
        "device_name": device_name(setup.device),
    }
    driver: Driver = make_driver(setup)
    dataset = setup.dataset
    objective = TrainingObjective(
        dataset.x_train, dataset.y_train, cfg.weight_decay, convex=cfg.model == "logreg"
    )
    x_eval, y_eval = eval_split(dataset, cfg.eval_samples)
    triggered = backdoor_eval_set(cfg, dataset, x_eval, y_eval, setup.device)  # as the runner
    x_test, y_test = x_eval.to(setup.device), y_eval.to(setup.device)
    if len(setup.data.y):
        setup.fm.warm_up(setup.data.x, setup.data.y, setup.x0)
    records: list[RoundRecord] = []
    for server_round in range(1, cfg.rounds + 1):
        random.seed(derive_seed(cfg.seed, "sample", server_round))  # as train_on_grid
        clock = time.perf_counter()
        outcome = driver.round(server_round)
        seconds = time.perf_counter() - clock
        model = setup.fm.load(outcome.vector)
        loss, accuracy = evaluate(model, x_test, y_test)
        record = RoundRecord(
            server_round, loss, accuracy, 0, outcome.bytes_up, outcome.bytes_down, seconds
        )
        record.asr = attack_success_rate(model, triggered)  # NaN without a backdoor attack
        record.train_loss, record.gap = _objective(objective, model)
        if "rejected" in outcome.metrics:
            record.rejected = int(outcome.metrics["rejected"])
        record.metrics = dict(outcome.metrics)
        records.append(record)
        if on_round is not None:
            on_round(cfg, record)
    return Result(config=meta, rounds=records).finish()


def _objective(objective: TrainingObjective, model: torch.nn.Module) -> tuple[float, float]:
    """``(f(x), gap)`` (convex models only; evaluated on a CPU copy)."""
    if not objective.convex:
        return math.nan, math.nan
    device = next(model.parameters()).device
    return objective(model if device.type == "cpu" else _cpu_copy(model))


def _cpu_copy(model: torch.nn.Module) -> Any:
    import copy

    return copy.deepcopy(model).cpu()
