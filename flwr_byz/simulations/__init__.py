"""Experiments on Flower's simulation engine: offline datasets and partitions, models, the
runner (``run_experiment``), the engines, result files, plots and the Flower App (the
``flwr-byz`` command line sits above, in ``flwr_byz.cli``).

The names below are imported on first use (PEP 562), not with the package: the ClientApp
process of a deployment imports ``flwr_byz.simulations.app`` once per message, and must not
pay for the engines, the strategies or the runner it does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .datasets import DATASETS, Dataset, client_data, load_dataset, partition_indices
    from .engines import run_experiment, run_experiments
    from .models import MODELS, build_model, default_model
    from .result import Result, RoundRecord
    from .runner import train_on_grid

#: Each public name and the submodule that defines it.
_SOURCES = {
    "DATASETS": "datasets",
    "MODELS": "models",
    "Dataset": "datasets",
    "ExperimentConfig": "config",
    "Result": "result",
    "RoundRecord": "result",
    "build_model": "models",
    "client_data": "datasets",
    "default_model": "models",
    "load_dataset": "datasets",
    "partition_indices": "datasets",
    "run_experiment": "engines",
    "run_experiments": "engines",
    "train_on_grid": "runner",
}

__all__ = [
    "DATASETS",
    "MODELS",
    "Dataset",
    "ExperimentConfig",
    "Result",
    "RoundRecord",
    "build_model",
    "client_data",
    "default_model",
    "load_dataset",
    "partition_indices",
    "run_experiment",
    "run_experiments",
    "train_on_grid",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{source}", __name__), name)
    globals()[name] = value  # the next access does not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])
