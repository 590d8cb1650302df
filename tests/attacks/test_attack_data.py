"""LabelFlip: y' = C - 1 - y on torch tensors and NumPy arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_byz.attacks import LabelFlip


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_label_flip_torch(dtype: torch.dtype) -> None:
    y = torch.tensor([0, 1, 2, 9, 5], dtype=dtype)
    out = LabelFlip(10)(y)
    assert out.dtype == dtype
    assert out.tolist() == [9, 8, 7, 0, 4]
    assert torch.equal(LabelFlip()(y, num_classes=10), out)
    assert torch.equal(LabelFlip(10)(out), y)  # an involution


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_label_flip_numpy(dtype: type) -> None:
    y: np.ndarray = np.array([0, 1, 2, 3], dtype=dtype)
    out = LabelFlip(4)(y)
    assert isinstance(out, np.ndarray) and out.dtype == dtype
    assert out.tolist() == [3, 2, 1, 0]


def test_label_flip_attributes() -> None:
    assert LabelFlip.data_attack is True
    assert LabelFlip.omniscient is False
    assert LabelFlip(2)(torch.empty(0, dtype=torch.int64)).numel() == 0


def test_label_flip_errors() -> None:
    y = torch.tensor([0, 3])
    with pytest.raises(ValueError, match="number of classes"):
        LabelFlip()(y)
    with pytest.raises(ValueError, match="num_classes"):
        LabelFlip(4)(y, num_classes=5)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        LabelFlip(3)(y)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        LabelFlip(4)(np.array([-1, 2]))
    with pytest.raises(ValueError, match="integers"):
        LabelFlip(4)(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="integers"):
        LabelFlip(4)(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"torch\.Tensor or numpy"):
        LabelFlip(4)([0, 1])  # type: ignore[type-var]
    with pytest.raises(ValueError, match="num_classes >= 1"):
        LabelFlip(0)
