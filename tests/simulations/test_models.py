"""Model builders: shapes, sizes, federated-friendly layers, names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flwr_byz.simulations.models import MODELS, build_model, default_model

SHAPES = {"mnist1d": (1, 40), "digits": (64,), "breast-cancer": (30,), "synthetic-logreg": (20,)}
CLASSES = {"mnist1d": 10, "digits": 10, "breast-cancer": 2, "synthetic-logreg": 2}
FLAT_MODELS = ("logreg", "mlp", "cnn1d")  # the offline datasets' models


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("dataset", list(SHAPES))
@pytest.mark.parametrize("name", FLAT_MODELS)
def test_output_shape_and_size(name: str, dataset: str) -> None:
    shape, classes = SHAPES[dataset], CLASSES[dataset]
    torch.manual_seed(0)
    model = build_model(name, shape, classes)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, classes) and out.dtype == torch.float32
    assert 0 < _params(model) <= 20_000


def test_parameter_counts() -> None:
    assert _params(build_model("logreg", (30,), 2)) == 30 * 2 + 2
    assert _params(build_model("mlp", (64,), 10)) == (64 * 64 + 64) + (64 * 64 + 64) + (
        64 * 10 + 10
    )
    # cnn1d on mnist1d: convs 1->16->32->32 (kernel 5), head 32 channels x 10 positions -> 10
    conv = (1 * 16 * 5 + 16) + (16 * 32 * 5 + 32) + (32 * 32 * 5 + 32)
    assert _params(build_model("cnn1d", (1, 40), 10)) == conv + 32 * 10 * 10 + 10


def test_no_batchnorm_or_dropout() -> None:
    for name in FLAT_MODELS:
        model = build_model(name, (1, 40), 10)
        bad = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.LayerNorm, nn.GroupNorm)
        assert not any(isinstance(m, bad) for m in model.modules())
        assert not list(model.buffers())


def test_cnn1d_accepts_with_and_without_channel_axis() -> None:
    torch.manual_seed(0)
    model = build_model("cnn1d", (1, 40), 10)
    x = torch.randn(3, 1, 40)
    assert torch.equal(model(x), model(x.squeeze(1)))
    flat = build_model("cnn1d", (40,), 10)
    assert flat(torch.randn(3, 40)).shape == (3, 10)


def test_cnn1d_odd_lengths_and_channels() -> None:
    for shape in [(7,), (1, 41), (3, 13), (1, 1)]:
        model = build_model("cnn1d", shape, 4)
        assert model(torch.randn(2, *shape)).shape == (2, 4)


@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 3, 4, 5)])
def test_cnn1d_rejects_non_sequence_inputs(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="cnn1d"):
        build_model("cnn1d", shape, 10)


def test_flat_models_accept_any_input_rank() -> None:
    for name in ("logreg", "mlp"):
        assert build_model(name, (1, 8, 8), 3)(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        build_model("resnet18", (64,), 10)
    for name in MODELS:
        assert name in str(info.value)
    assert {"lenet", "resnet20", "charlstm"} <= set(MODELS)


@pytest.mark.parametrize(
    ("shape", "classes"), [((), 10), ((0,), 10), ((64, -1), 10), ((64,), 1), ((64,), 0)]
)
def test_bad_shapes_and_classes(shape: tuple[int, ...], classes: int) -> None:
    with pytest.raises(ValueError):
        build_model("mlp", shape, classes)


def test_names_are_case_insensitive() -> None:
    assert isinstance(build_model("LogReg", (4,), 2), nn.Module)
    assert isinstance(build_model(" ResNet20 ", (3, 8, 8), 2), nn.Module)


def test_default_models() -> None:
    expected = {
        "mnist1d": "cnn1d",
        "digits": "mlp",
        "breast-cancer": "logreg",
        "synthetic-logreg": "logreg",
    }
    assert {d: default_model(d) for d in expected} == expected
    assert default_model("synthetic-logreg:heterogeneity=2") == "logreg"
    assert default_model("mnist1d:samples=1000") == "cnn1d"
    assert all(m in MODELS for m in expected.values())
    with pytest.raises(ValueError, match="mnist1d") as info:
        default_model("cifar10")
    assert "hf:<name>" in str(info.value) and "local:<dir>" in str(info.value)
