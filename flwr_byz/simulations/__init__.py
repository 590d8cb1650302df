"""Experiments on Flower's simulation engine: offline datasets and partitions, models, the
runner (``run_experiment``), the engines, result files, plots and the Flower App (the
``flwr-byz`` command line sits above, in ``flwr_byz.cli``)."""

from .config import ExperimentConfig
from .datasets import DATASETS, Dataset, client_data, load_dataset, partition_indices
from .engines import run_experiment, run_experiments
from .models import MODELS, build_model, default_model
from .result import Result, RoundRecord
from .runner import train_on_grid

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
