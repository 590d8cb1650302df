"""The ``batched`` engine: every client of a round at once, on one CPU or CUDA device.

It runs the same experiment as ``train_on_grid`` on the ``local`` engine, with the same numbers
for the same seed (the same nodes, minibatches, coins and attack noise; in float64 the global
models agree to rounding), without a Message per client:

- node IDs are 1..n for partitions 0..n-1, as on the local engine; Flower's samplers are
  reseeded from (seed, round) like there;
- the clients' gradients are one ``torch.func`` call per round (``batched_grads``), FedAvg's
  local epochs one per SGD step; the per-client state lives in ``[n, d]`` tensors;
- the attack rewrites the Byzantine rows of the stacked replies (``batched_attack``);
- the method strategies' rules are the pure functions of ``flwr_byz.methods``
  (``batched_methods``, ``batched_byzsgd``); RobustFedAvg and FedAvg too (``batched_fedavg``),
  while Flower's ``flower-*`` strategies aggregate real reply Messages themselves;
- bytes per round are the sizes of the Messages the local engine would exchange
  (``batched_bytes``).

Not supported (a clear error names ``--engine local``): ``injection="nodes"`` (a deployment's
SuperNodes attack), checkpoints.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord

from ..attacks import Attack, LabelFlip, get_attack
from ..protocol.records import Layout, flatten, layout_of
from .batched_data import StackedData
from .batched_grads import FunctionalModel
from .config import ExperimentConfig
from .datasets import Dataset, load_dataset
from .local import ensure_task_identity
from .models import build_model
from .result import Result, RoundRecord
from .runner import OnRound, byzantine_partitions, prepare
from .training import TrainingObjective, derive_seed, evaluate

__all__ = ["RoundOutcome", "Setup", "check_batched", "resolve_device", "run_batched"]


def resolve_device(name: str) -> torch.device:
    """The torch device of ``--device``; ``ValueError`` when CUDA is asked for and absent."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {name!r}") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine (use cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    return device


def check_batched(cfg: ExperimentConfig) -> None:
    """Raise ``ValueError`` for the options the batched engine does not support."""
    if cfg.injection != "server":
        raise ValueError(
            f"the batched engine makes the Byzantine replies on the server; injection="
            f"{cfg.injection!r} needs SuperNodes (--engine local or simulation)"
        )
    if cfg.checkpoint or cfg.resume:
        raise ValueError("the batched engine writes no checkpoints; use --engine local")
    from .batched_methods import check_method

    check_method(cfg)
    resolve_device(cfg.device)


@dataclass
class RoundOutcome:
    """What a round left: the global model ``vector`` ``[d]``, the strategy's numeric
    metrics, and the bytes the round's Messages would take up and down."""

    vector: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0


class Driver(Protocol):
    """One method's rounds (``batched_fedavg``, ``batched_methods``)."""

    def round(self, server_round: int) -> RoundOutcome: ...


@dataclass
class Setup:
    """Everything a driver needs: the resolved config, the device, the data, the model as a
    function, the initial model ``x0`` (``arrays``: as the ServerApp holds it), the Byzantine
    partitions and the attack (None: no attack)."""

    cfg: ExperimentConfig
    device: torch.device
    dataset: Dataset
    data: StackedData
    fm: FunctionalModel
    arrays: ArrayRecord
    layout: Layout
    x0: torch.Tensor
    byzantine: list[int]
    attack: Attack | LabelFlip | None

    @property
    def node_ids(self) -> list[int]:
        """The federation's node IDs in partition order (1..n, as on the local engine)."""
        return list(range(1, self.cfg.clients + 1))

    def byzantine_mask(self, partitions: Sequence[int]) -> torch.Tensor:
        """``[m]`` bool: which of ``partitions`` are Byzantine (and attack replies)."""
        bad = set(self.byzantine) if self.attack is not None else set()
        return torch.tensor([p in bad for p in partitions], dtype=torch.bool)

    @property
    def vector_attack(self) -> Attack | None:
        """The attack on reply vectors (None for none and for LabelFlip)."""
        if self.attack is None or isinstance(self.attack, LabelFlip):
            return None
        return self.attack

    @classmethod
    def build(cls, cfg: ExperimentConfig) -> Setup:
        """Load the data, seed and build the model as ``train_on_grid`` does."""
        device = resolve_device(cfg.device)
        byz = byzantine_partitions(cfg)
        attacked = cfg.byzantine > 0 and cfg.attack.strip().lower() not in ("none", "")
        attack = get_attack(cfg.attack, seed=cfg.seed) if attacked else None
        flipped = byz if isinstance(attack, LabelFlip) else []
        dataset = load_dataset(cfg.dataset)
        data = StackedData.load(
            cfg.dataset, cfg.partition, cfg.clients, cfg.seed, flipped=flipped, device=device
        )
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = build_model(cfg.model, dataset.input_shape, dataset.num_classes)
        arrays = ArrayRecord(model.state_dict())
        layout = layout_of(arrays)
        if layout.floating() != layout:
            raise ValueError("the batched engine trains models without integer arrays")
        fm = FunctionalModel(model.to(device), layout)
        x0 = flatten(arrays, layout).to(device)
        return cls(cfg, device, dataset, data, fm, arrays, layout, x0, byz, attack)


def run_batched(
    configs: Sequence[ExperimentConfig], on_round: OnRound | None = None
) -> list[Result]:
    """Run ``configs`` one after the other on the batched engine (module doc); each result is
    written to its config's ``out`` (when set) as soon as it is done."""
    resolved = [prepare(c) for c in configs]
    for cfg in resolved:
        check_batched(cfg)
    results = []
    for cfg in resolved:
        result = _run(cfg, on_round)
        if cfg.out:
            result.save(cfg.out)
        results.append(result)
    return results


def _run(cfg: ExperimentConfig, on_round: OnRound | None) -> Result:
    from .batched_methods import make_driver

    ensure_task_identity()
    setup = Setup.build(cfg)
    attacked = setup.attack is not None
    meta = cfg.to_dict() | {"byzantine_partitions": setup.byzantine if attacked else []}
    driver: Driver = make_driver(setup)
    dataset = setup.dataset
    objective = TrainingObjective(
        dataset.x_train, dataset.y_train, cfg.weight_decay, convex=cfg.model == "logreg"
    )
    x_test, y_test = dataset.x_test.to(setup.device), dataset.y_test.to(setup.device)
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
