"""The batched engine's shared types: the experiment a driver runs (:class:`Setup`), what a
round leaves (:class:`RoundOutcome`), the driver protocol (and ``resolve_device``, the device
check of ``flwr_byz.simulations.devices``). Imported by
``batched`` and by every driver module (``methods``, ``byzsgd``,
``fedavg``); it imports none of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import torch
from flwr.app import ArrayRecord

from ...attacks import Attack, BadNets, LabelFlip, Neurotoxin, get_attack, is_backdoor
from ...protocol.records import Layout, flatten, layout_of
from ..config import ExperimentConfig
from ..datasets import Dataset, load_dataset
from ..devices import resolve_device
from ..models import build_model_for
from ..runner import byzantine_partitions
from ..training import derive_seed
from .backdoor import Backdoor
from .data import StackedData
from .grads import FunctionalModel

__all__ = [
    "BACKDOOR_METHODS",
    "Driver",
    "RoundOutcome",
    "Setup",
    "batched_attack",
    "resolve_device",
]


#: The methods whose batched drivers run backdoor attacks (``fedavg.RobustFedAvgDriver``).
BACKDOOR_METHODS = ("fedavg", "robust-fedavg")


def batched_attack(cfg: ExperimentConfig) -> Attack | LabelFlip | BadNets | None:
    """The attack the batched engine applies in ``cfg``'s run (None: no attack). The backdoor
    attacks BadNets, DBA and model replacement run with the methods of
    :data:`BACKDOOR_METHODS` (``backdoor``); a ``ValueError`` naming ``--engine local`` for
    Neurotoxin (it masks the clients' local SGD steps) and for a backdoor with any other
    method (a method strategy's ops, Flower's ``flower-*`` strategies)."""
    if cfg.byzantine <= 0 or cfg.attack.strip().lower() in ("none", ""):
        return None
    attack = get_attack(cfg.attack, seed=cfg.seed)
    if is_backdoor(attack):
        if isinstance(attack, Neurotoxin):
            raise ValueError(
                f"the batched engine runs no backdoor attack {cfg.attack!r} (Neurotoxin masks "
                "the clients' local SGD steps); use --engine local or simulation"
            )
        if cfg.method not in BACKDOOR_METHODS:
            raise ValueError(
                f"the batched engine runs no backdoor attack ({cfg.attack!r}) with method "
                f"{cfg.method!r} (only with {', '.join(BACKDOOR_METHODS)}); use --engine local "
                "or simulation"
            )
    return cast(Attack | LabelFlip | BadNets, attack)


@dataclass
class RoundOutcome:
    """What a round left: the global model ``vector`` ``[d]``, the strategy's numeric
    metrics, and the bytes the round's Messages would take up and down."""

    vector: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0


class Driver(Protocol):
    """One method's rounds (``fedavg``, ``methods``)."""

    def round(self, server_round: int) -> RoundOutcome: ...


@dataclass
class Setup:
    """Everything a driver needs: the resolved config, the device, the data, the model as a
    function, the initial model ``x0`` (``arrays``: as the ServerApp holds it), the Byzantine
    partitions and the attack (None: no attack; a backdoor attack's halves: ``backdoor``)."""

    cfg: ExperimentConfig
    device: torch.device
    dataset: Dataset
    data: StackedData
    fm: FunctionalModel
    arrays: ArrayRecord
    layout: Layout
    x0: torch.Tensor
    byzantine: list[int]
    attack: Attack | LabelFlip | BadNets | None
    backdoor: Backdoor | None = None

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
        """The attack on reply vectors (None for none and for the data attacks: LabelFlip and
        the backdoors, whose model replacement boosts the updates through ``backdoor``)."""
        if self.attack is None or isinstance(self.attack, (LabelFlip, BadNets)):
            return None
        return self.attack

    @classmethod
    def build(cls, cfg: ExperimentConfig) -> Setup:
        """Load the data, seed and build the model as ``train_on_grid`` does."""
        device = resolve_device(cfg.device)
        byz = byzantine_partitions(cfg)
        attack = batched_attack(cfg)
        flipped = byz if isinstance(attack, LabelFlip) else []
        dataset = load_dataset(cfg.dataset)
        data = StackedData.load(
            cfg.dataset, cfg.partition, cfg.clients, cfg.seed, flipped=flipped, device=device
        )
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = build_model_for(cfg.model, dataset)
        arrays = ArrayRecord(model.state_dict())
        layout = layout_of(arrays)
        if layout.floating() != layout:
            raise ValueError("the batched engine trains models without integer arrays")
        fm = FunctionalModel(model.to(device), layout)
        x0 = flatten(arrays, layout).to(device)
        backdoor = Backdoor(attack, byz, dataset.x_train) if isinstance(attack, BadNets) else None
        return cls(cfg, device, dataset, data, fm, arrays, layout, x0, byz, attack, backdoor)
