"""Small models for the offline datasets: logistic regression, an MLP and a 1-D CNN.

No batch norm and no dropout: parameters are plain tensors that federated averaging and the
robust aggregators can combine, and a forward pass is deterministic.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..specs import split_part, unknown
from .training import float_dtype

__all__ = ["MODELS", "build_model", "default_model"]

MODELS: tuple[str, ...] = ("logreg", "mlp", "cnn1d")
"""Model names accepted by ``build_model``."""

_DEFAULT_MODELS = {
    "mnist1d": "cnn1d",
    "digits": "mlp",
    "breast-cancer": "logreg",
    "synthetic-logreg": "logreg",
}

_MLP_HIDDEN = 64
_CNN_CHANNELS = (16, 32, 32)
_CNN_KERNEL = 5
_CNN_STRIDES = (1, 2, 2)


class CNN1d(nn.Module):
    """Three 1-D convolutions (ReLU, strides 1-2-2) and a linear head; input ``(B, C, L)``.

    A ``(B, L)`` input is read as one channel.
    """

    def __init__(self, in_channels: int, length: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, out_len = in_channels, length
        for width, stride in zip(_CNN_CHANNELS, _CNN_STRIDES, strict=True):
            pad = _CNN_KERNEL // 2
            layers += [nn.Conv1d(channels, width, _CNN_KERNEL, stride, pad), nn.ReLU()]
            channels = width
            out_len = (out_len + 2 * pad - _CNN_KERNEL) // stride + 1
        self.in_channels = in_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and self.in_channels == 1:
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A fresh ``name`` model (one of ``MODELS``) for inputs ``input_shape`` (no batch axis).

    ``logreg`` and ``mlp`` flatten any input; ``cnn1d`` needs ``(L,)`` or ``(C, L)``. Weights
    follow torch's default initialisation (seed it with ``torch.manual_seed`` beforehand), in
    float32 (or the dtype a test set with ``training.float_precision``).
    """
    return _build(name, input_shape, num_classes).to(float_dtype())


def _build(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    key = name.strip().lower()
    if key not in MODELS:
        raise unknown("model", name, MODELS)
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be non-empty with positive sizes, got {input_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    features = math.prod(shape)
    if key == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
    if key == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, _MLP_HIDDEN),
            nn.ReLU(),
            nn.Linear(_MLP_HIDDEN, _MLP_HIDDEN),
            nn.ReLU(),
            nn.Linear(_MLP_HIDDEN, num_classes),
        )
    if len(shape) == 1:
        return CNN1d(1, shape[0], num_classes)
    if len(shape) == 2:
        return CNN1d(shape[0], shape[1], num_classes)
    raise ValueError(f"cnn1d needs a 1-D sequence input (L,) or (C, L), got {input_shape}")


def default_model(dataset: str) -> str:
    """The default model for a dataset name or spec (``"synthetic-logreg:groups=5"`` works)."""
    name = split_part(dataset)[0].lower()
    if name not in _DEFAULT_MODELS:
        raise unknown("dataset", name, list(_DEFAULT_MODELS), dataset)
    return _DEFAULT_MODELS[name]
