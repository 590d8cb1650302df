"""standard-app: A Flower / PyTorch app (the ``flwr new`` PyTorch template, offline data).

The template's ``load_data`` downloads CIFAR-10 through ``FederatedDataset``; here the data is
scikit-learn's bundled digits (8x8 images, 10 classes), partitioned IID with flwr-datasets.
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from flwr_datasets.partitioner import IidPartitioner
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """Small MLP for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    mean, std = x[:1400].mean(axis=0), x[:1400].std(axis=0)
    x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)  # standardised pixels
    return x[:1400], y[:1400], x[1400:], y[1400:]


_partitioners: dict[int, IidPartitioner] = {}


@cache
def _partition(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's IID partition of the digits' training split (cached: the process answers
    every message of its node, or of every node in an in-process simulation)."""
    if num_partitions not in _partitioners:
        x_train, y_train, _, _ = _digits()
        partitioner = IidPartitioner(num_partitions=num_partitions)
        partitioner.dataset = Dataset.from_dict({"x": x_train, "label": y_train})
        _partitioners[num_partitions] = partitioner
    part = _partitioners[num_partitions].load_partition(partition_id).with_format("numpy")[:]
    return torch.from_numpy(part["x"]), torch.from_numpy(part["label"])


def load_data(partition_id: int, num_partitions: int) -> tuple[DataLoader, DataLoader]:
    """Load this node's IID partition of digits (train) and the shared test split."""
    train = TensorDataset(*_partition(partition_id, num_partitions))
    _, _, x_test, y_test = _digits()
    test = TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    return DataLoader(train, batch_size=16, shuffle=True), DataLoader(test, batch_size=128)


def train(net: Net, trainloader: DataLoader, epochs: int, lr: float, device: torch.device) -> float:
    """Train the model on the training set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for x, y in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net: Net, testloader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    net.eval()
    with torch.no_grad():
        for x, y in testloader:
            outputs = net(x.to(device))
            loss += criterion(outputs, y.to(device)).item()
            correct += (torch.max(outputs.data, 1)[1] == y.to(device)).sum().item()
    return loss / len(testloader), correct / len(testloader.dataset)
