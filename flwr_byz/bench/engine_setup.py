"""What the engine benchmark runs: the data set, models, client counts, methods (each one an
:class:`~flwr_byz.simulations.config.ExperimentConfig`) and rounds per cell."""

from __future__ import annotations

import argparse
from typing import Any

from flwr_byz.simulations.config import ExperimentConfig

__all__ = [
    "CLIENTS",
    "DATASET",
    "ENGINES",
    "METHODS",
    "MODELS",
    "QUICK_CLIENTS",
    "QUICK_MODELS",
    "QUICK_ROUNDS",
    "ROUNDS",
    "experiment",
    "rounds_for",
]

DATASET = "mnist1d"
MODELS = ("mlp", "cnn1d")
CLIENTS = (20, 100, 1000)
QUICK_CLIENTS = (20,)
QUICK_MODELS = ("mlp",)
ENGINES = ("plain", "batched", "local", "simulation")

#: method key -> (label, ExperimentConfig fields). FedAvg-like methods train one local epoch
#: of batch 32; the one-step methods take one minibatch gradient of batch 8 per client and
#: round. The robust rules tolerate f = max(1, clients // 10) (no Byzantine client: the rules
#: still do all their work). ByzSGD's servers use CWTM: its paper's MDA enumerates C(n, f)
#: subsets, infeasible beyond 20 clients.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "fedavg": ("FedAvg", {"method": "fedavg", "local_epochs": 1, "batch_size": 32}),
    "robust-fedavg": (
        "RobustFedAvg NNM+Krum",
        {"method": "robust-fedavg", "aggregator": "nnm+krum", "local_epochs": 1, "batch_size": 32},
    ),
    "byz-ef21-sgdm": (
        "Byz-EF21-SGDM TopK NNM+CWTM",
        {
            "method": "byz-ef21-sgdm",
            "aggregator": "nnm+cwtm",
            "compressor": "topk:0.1",
            "batch_size": 8,
        },
    ),
    "mu2sgd": (
        "mu2-SGD CTMA+Median",
        {"method": "mu2sgd", "aggregator": "ctma+median", "batch_size": 8},
    ),
    "byzsgd": ("ByzSGD CWTM", {"method": "byzsgd", "aggregator": "cwtm", "batch_size": 8}),
}

#: Rounds per cell by engine and client count (``--rounds`` overrides them all).
ROUNDS: dict[str, dict[int, int]] = {
    "plain": {20: 6, 100: 4, 1000: 3},
    "batched": {20: 11, 100: 6, 1000: 4},
    "local": {20: 6, 100: 3, 1000: 2},
    "simulation": {20: 4, 100: 3, 1000: 2},
}
QUICK_ROUNDS = 3


def rounds_for(engine: str, clients: int, args: argparse.Namespace) -> int:
    """Rounds of a cell: ``--rounds``, else ``QUICK_ROUNDS`` with ``--quick``, else
    :data:`ROUNDS` (the entry of the nearest client count at or above ``clients``)."""
    if args.rounds:
        return int(args.rounds)
    if args.quick:
        return QUICK_ROUNDS
    table = ROUNDS[engine.split("-")[0]]
    for n in sorted(table):
        if clients <= n:
            return table[n]
    return table[max(table)]


def experiment(
    method: str, model: str, clients: int, rounds: int, threads: int, seed: int = 0
) -> ExperimentConfig:
    """The benchmark's experiment of ``method`` (no Byzantine client; f = clients // 10)."""
    return ExperimentConfig(
        dataset=DATASET,
        model=model,
        clients=clients,
        rounds=rounds,
        f=max(1, clients // 10),
        seed=seed,
        threads=threads,
        **METHODS[method][1],
    )
