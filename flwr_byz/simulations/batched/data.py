"""Every client's training data in one tensor, and its minibatches, for the batched engine.

:class:`StackedData` holds the partitions of all clients concatenated in partition order (the
rows ``client_data`` gives each ClientApp, LabelFlip applied to the Byzantine partitions as
their ClientApp applies it) on the engine's device. :meth:`StackedData.minibatches` draws each
client's minibatch exactly as ``GradientClient`` does (``randperm`` of a CPU generator seeded
with the client's ``batch-seed``; batch size 0 or at least the partition: all rows in order).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from ...attacks import LabelFlip
from ..datasets import client_data, load_dataset
from .grads import ClientBatches

__all__ = ["StackedData", "minibatch_rows"]


def minibatch_rows(n: int, size: int, seed: int) -> torch.Tensor:
    """``GradientClient``'s minibatch of ``size`` of ``n`` rows from ``seed`` (``size`` 0 or
    ``>= n``: all rows in order). ``n`` must be >= 1."""
    if size <= 0 or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


@dataclass
class StackedData:
    """The clients' training rows ``x`` ``[N, ...]``, ``y`` ``[N]`` (partition ``p`` is rows
    ``offsets[p] : offsets[p] + sizes[p]``) and the number of classes."""

    x: torch.Tensor
    y: torch.Tensor
    offsets: list[int]
    sizes: list[int]
    num_classes: int

    @classmethod
    def load(
        cls,
        dataset: str,
        partition: str,
        clients: int,
        seed: int,
        flipped: Collection[int] = (),
        device: torch.device | str = "cpu",
    ) -> StackedData:
        """The partitions of ``clients`` clients; the labels of the partitions in ``flipped``
        flipped (LabelFlip)."""
        classes = load_dataset(dataset).num_classes
        xs, ys = [], []
        for p in range(clients):
            x, y = client_data(dataset, partition, p, clients, seed)
            if p in flipped and len(y):
                y = LabelFlip(num_classes=classes)(y)
            xs.append(x)
            ys.append(y)
        sizes = [len(y) for y in ys]
        offsets = [sum(sizes[:p]) for p in range(clients)]
        return cls(
            x=torch.cat(xs).to(device),
            y=torch.cat(ys).to(device),
            offsets=offsets,
            sizes=sizes,
            num_classes=classes,
        )

    def minibatches(
        self, partitions: Sequence[int], size: int, seeds: Sequence[int]
    ) -> ClientBatches:
        """One minibatch per partition (see :func:`minibatch_rows`), padded to one width. A
        partition without data gets one masked slot (its ClientApp would fail)."""
        rows = [
            minibatch_rows(self.sizes[p], size, s)
            if self.sizes[p]
            else torch.zeros(0, dtype=torch.long)
            for p, s in zip(partitions, seeds, strict=True)
        ]
        width = max((len(r) for r in rows), default=0) or 1
        index = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (p, r) in enumerate(zip(partitions, rows, strict=True)):
            index[i] = self.offsets[p] if self.sizes[p] else 0
            index[i, : len(r)] += r
            mask[i, : len(r)] = True
        device = self.x.device
        return ClientBatches(index.to(device), mask.to(device))

    def empty(self, partitions: Sequence[int]) -> torch.Tensor:
        """``[n]`` bool: which of ``partitions`` hold no data."""
        return torch.tensor([self.sizes[p] == 0 for p in partitions], dtype=torch.bool)
