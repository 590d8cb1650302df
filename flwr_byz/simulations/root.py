"""The server's root data set and its training for the ``fltrust`` method (Cao et al., NDSS
2021: the server holds a small clean data set, 100 examples by default, drawn from the
training data, and trains on it as the clients do).

``root_trainer(cfg, size)`` is the ``root_train_fn`` the runner gives ``strategies.FLTrust``:
``size`` training examples drawn once with a seed of their own (``derive_seed(seed,
"fltrust-root")``), trained on each round from the model sent with the run's ``lr``,
``batch_size``, ``momentum`` and ``weight_decay`` (the clients' local SGD,
``training.train_epochs``) for as many SGD steps as a client of the mean partition size takes
in ``local_epochs`` epochs (:func:`root_steps`): the paper's server and clients take the same
number R of local iterations (Alg. 1, ModelUpdate), and ||g_0|| sets the norm of the
aggregate. Its steps x batch_size rows come from consecutive fresh permutations of the root
set (every example equally often, to within one), shuffled and trained on for one epoch; the
draws and any dropout are seeded from (seed, round): the same config gives the same reference
updates, in a fresh or a resumed run, and the global torch random state is left as it was.
"""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord, ConfigRecord

from ..protocol.records import to_state_dict
from ..strategies.fltrust import RootTrainFn
from .config import ExperimentConfig
from .datasets import load_dataset
from .devices import resolve_device
from .models import build_model_for
from .training import derive_seed, float_dtype, train_epochs

__all__ = ["ROOT_SIZE", "root_indices", "root_steps", "root_trainer"]

#: The root data set's size when ``--param root_size`` is not given (the paper's default).
ROOT_SIZE = 100


def root_indices(num_train: int, size: int, seed: int) -> torch.Tensor:
    """``size`` distinct indices into a training split of ``num_train`` examples, uniformly
    at random (a CPU generator seeded with ``seed``), in the order drawn."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= num_train:
        raise ValueError(
            f"root_size must be an int in [1, {num_train}] (the training examples the server "
            f"holds for FLTrust; --param root_size=100), got {size!r}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(num_train, generator=gen)[:size]


def root_steps(num_train: int, clients: int, epochs: int, batch_size: int) -> int:
    """The SGD steps of the server's root training: those of a client holding the mean
    partition, ``num_train / clients`` examples, in ``epochs`` epochs of ``batch_size``."""
    return int(epochs) * math.ceil(num_train / clients / batch_size)


def root_trainer(cfg: ExperimentConfig, size: int = ROOT_SIZE) -> RootTrainFn:
    """FLTrust's ``root_train_fn`` for the resolved ``cfg`` (module doc)."""
    dataset = load_dataset(cfg.dataset)
    idx = root_indices(len(dataset.y_train), size, derive_seed(cfg.seed, "fltrust-root"))
    device = resolve_device(cfg.device)
    x, y = dataset.x_train[idx], dataset.y_train[idx]
    x = (x.to(float_dtype()) if x.is_floating_point() else x).to(device)
    y = y.to(device)
    batch = int(cfg.batch_size)
    rows = batch * root_steps(len(dataset.y_train), cfg.clients, int(cfg.local_epochs), batch)
    models: list[torch.nn.Module] = []  # built at the first call, in a forked random state

    def train_on_root(server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> ArrayRecord:
        """The model ``arrays`` after local SGD on the root data set (``config`` unused: the
        run's options are ``cfg``'s)."""
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):
            r = int(server_round)
            torch.manual_seed(derive_seed(cfg.seed, "fltrust-root-train", r))
            if not models:
                models.append(build_model_for(cfg.model, dataset).to(device))
            model = models[0]
            model.load_state_dict(to_state_dict(arrays))
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "fltrust-root-order", r))
            cycles = [torch.randperm(size, generator=gen) for _ in range(-(-rows // size))]
            order = torch.cat(cycles)[:rows].to(device)  # steps x batch rows, one epoch
            train_epochs(
                model,
                x[order],
                y[order],
                epochs=1,
                batch_size=batch,
                lr=float(cfg.lr),
                momentum=float(cfg.momentum),
                weight_decay=float(cfg.weight_decay),
                seed=derive_seed(cfg.seed, "fltrust-root-batches", r),
            )
        return ArrayRecord(model.state_dict())

    return train_on_root
