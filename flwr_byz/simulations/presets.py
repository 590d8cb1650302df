"""Presets: standard federated setups as named sets of ``ExperimentConfig`` options.

``flwr-byz run --preset cifar10-resnet20`` (or ``preset = "cifar10-resnet20"`` in a
``--config`` file, or ``ExperimentConfig.from_preset(name, **options)``) starts from a preset's
options; every option given as well (a flag, a file value, a keyword) overrides it: preset <
``--config`` file < flags. The config records the preset's name (``ExperimentConfig.preset``).

A preset has two parts:

* ``setup``: the data, its partition, the model, the clients, the rounds and, for a large test
  split, the evaluation subset (``eval_samples``); for every method;
* ``local_sgd``: the local-training recipe (lr, batch size, local epochs, momentum) of the
  paper the setup comes from; for the methods that train locally (fedavg, robust-fedavg,
  fltrust, flower-*: ``trains_locally``). The other methods take server steps from their clients'
  gradients, where ``lr`` and ``momentum`` mean something else: they keep their own defaults
  (docs/DEFAULTS.md).

docs/PRESETS.md gives each value's source, the accuracy the literature reports and the
seconds per round we measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..methods.fedavg import DEFAULTS as _LOCAL_SGD_DEFAULTS
from ..specs import unknown

__all__ = ["PRESETS", "Preset", "get_preset", "preset_options", "trains_locally"]


def trains_locally(method: str) -> bool:
    """Whether ``method`` trains locally for ``local_epochs`` (the FedAvg-like methods)."""
    return method in _LOCAL_SGD_DEFAULTS


@dataclass(frozen=True)
class Preset:
    """One standard setup: ``setup`` for every method, ``local_sgd`` for the methods that
    train locally (``trains_locally``); ``summary`` is the line ``--help`` shows."""

    name: str
    summary: str
    setup: Mapping[str, Any]
    local_sgd: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "setup", MappingProxyType(dict(self.setup)))
        object.__setattr__(self, "local_sgd", MappingProxyType(dict(self.local_sgd)))

    def options(self, method: str = "robust-fedavg") -> dict[str, Any]:
        """The ``ExperimentConfig`` options this preset sets for a run of ``method``."""
        local = dict(self.local_sgd) if trains_locally(method) else {}
        return {"preset": self.name, **self.setup, **local}


def _preset(name: str, summary: str, setup: dict[str, Any], local: dict[str, Any]) -> Preset:
    return Preset(name, summary, setup, local)


#: name -> preset (docs/PRESETS.md: where each value comes from).
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _preset(
            "cifar10-resnet20",
            "CIFAR-10, ResNet-20 (GroupNorm), Dirichlet(0.5) label skew over 100 clients, "
            "10 per round",
            {
                "dataset": "hf:uoft-cs/cifar10",
                "partition": "dirichlet:0.5",
                "model": "resnet20",
                "clients": 100,
                "clients_per_round": 10,
                "rounds": 200,
                "weight_decay": 1e-4,
            },
            {"lr": 0.025, "batch_size": 32, "local_epochs": 1, "momentum": 0.9},
        ),
        _preset(
            "femnist-lenet",
            "FEMNIST (LEAF), LeNet-5-style CNN, one client per writer (3500 writers), 35 per round",
            {
                "dataset": "hf:flwrlabs/femnist",
                "partition": "natural:writer_id",
                "model": "lenet",
                "clients": 3500,
                "clients_per_round": 35,
                "rounds": 2000,
                "eval_samples": 10_000,
            },
            {"lr": 0.004, "batch_size": 10, "local_epochs": 1, "momentum": 0.0},
        ),
        _preset(
            "shakespeare-lstm",
            "Shakespeare (LEAF), next-character LSTM, one client per speaking role (1000 "
            "roles), 10 per round",
            {
                "dataset": "hf:flwrlabs/shakespeare",
                "partition": "natural:character_id",
                "model": "charlstm",
                "clients": 1000,
                "clients_per_round": 10,
                "rounds": 80,
                "eval_samples": 10_000,
            },
            {"lr": 0.8, "batch_size": 10, "local_epochs": 1, "momentum": 0.0},
        ),
        _preset(
            "mnist-lenet",
            "MNIST, LeNet-5-style CNN, IID over 100 clients, 10 per round (the FedAvg paper's "
            "setup)",
            {
                "dataset": "hf:ylecun/mnist",
                "partition": "iid",
                "model": "lenet",
                "clients": 100,
                "clients_per_round": 10,
                "rounds": 100,
            },
            {"batch_size": 10, "local_epochs": 5, "momentum": 0.0},
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset ``name``; ``ValueError`` ``unknown preset 'x'; known: ...`` otherwise."""
    if name not in PRESETS:
        raise unknown("preset", name, list(PRESETS))
    return PRESETS[name]


def preset_options(name: str, method: str = "robust-fedavg") -> dict[str, Any]:
    """The options preset ``name`` sets for a run of ``method`` (``Preset.options``)."""
    return get_preset(name).options(method)
