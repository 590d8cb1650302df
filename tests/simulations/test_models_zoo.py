"""The benchmark networks: LeNet, ResNet-20 (GroupNorm), the Shakespeare character LSTM;
``--model auto`` on hub and local data; ``flwr-byz models``."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from flwr_byz.cli import app
from flwr_byz.protocol.records import flatten, layout_of
from flwr_byz.simulations import datasets
from flwr_byz.simulations.batched.grads import FunctionalModel
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.models import (
    HUB_MODELS,
    LSTM,
    MODELS,
    REFERENCE_INPUTS,
    CharLSTM,
    auto_model,
    build_model,
    build_model_for,
    count_parameters,
    default_model,
    format_model_table,
    model_table,
)
from flwr_byz.simulations.training import (
    TrainingObjective,
    evaluate,
    float_precision,
    objective,
    train_epochs,
)

VOCAB = 80
# (model, input shape, classes, vocab_size): the real shapes of MNIST, CIFAR-10, Shakespeare
CASES = [
    ("lenet", (1, 28, 28), 10, None),
    ("lenet", (3, 32, 32), 10, None),
    ("resnet20", (1, 28, 28), 10, None),
    ("resnet20", (3, 32, 32), 10, None),
    ("charlstm", (80,), VOCAB, VOCAB),
]
IDS = [f"{m}-{'x'.join(map(str, s))}" for m, s, _, _ in CASES]


def _inputs(shape: tuple[int, ...], vocab: int | None, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if vocab is not None:
        return torch.randint(0, vocab, (n, *shape), generator=gen)
    return torch.randn(n, *shape, generator=gen)


def _conv(cin: int, cout: int, k: int = 3, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


# --- parameter counts against a hand count ----------------------------------------------------
def _lenet_count(channels: int, side: int, classes: int) -> int:
    flat = 16 * ((side // 2 - 4) // 2) ** 2
    return (
        _conv(channels, 6, 5, bias=True)
        + _conv(6, 16, 5, bias=True)
        + (flat * 120 + 120)
        + (120 * 84 + 84)
        + (84 * classes + classes)
    )


def test_lenet_parameter_counts() -> None:
    assert _lenet_count(1, 28, 10) == 156 + 2416 + 48120 + 10164 + 850 == 61_706
    assert count_parameters(build_model("lenet", (1, 28, 28), 10)) == 61_706  # 400 features
    assert count_parameters(build_model("lenet", (3, 32, 32), 10)) == _lenet_count(3, 32, 10)
    assert _lenet_count(3, 32, 10) == 83_126  # 16 x 6 x 6 = 576 features
    assert count_parameters(build_model("lenet", (1, 28, 28), 62)) == _lenet_count(1, 28, 62)


def test_resnet20_parameter_count_is_he_et_al_s_0_27m() -> None:
    gn = 2  # a GroupNorm's weight and bias per channel (what a BatchNorm has: no buffers)
    stem = _conv(3, 16) + gn * 16
    stage1 = 3 * 2 * (_conv(16, 16) + gn * 16)
    stage2 = (
        (_conv(16, 32) + gn * 32) + (_conv(32, 32) + gn * 32) + 2 * 2 * (_conv(32, 32) + gn * 32)
    )
    stage3 = (
        (_conv(32, 64) + gn * 64) + (_conv(64, 64) + gn * 64) + 2 * 2 * (_conv(64, 64) + gn * 64)
    )
    head = 64 * 10 + 10
    hand = stem + stage1 + stage2 + stage3 + head
    assert hand == 269_722  # option-A shortcuts: no projection parameters
    model = build_model("resnet20", (3, 32, 32), 10)
    assert count_parameters(model) == hand
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(convs) == 19 and len(norms) == 19  # + the linear head: 20 layers
    assert all(m.num_groups == 2 for m in norms)
    assert all(m.kernel_size == (3, 3) and m.bias is None for m in convs)


def test_charlstm_parameter_count_matches_torch_lstm() -> None:
    per_layer = [4 * 256 * (8 + 256) + 2 * 4 * 256, 4 * 256 * (256 + 256) + 2 * 4 * 256]
    hand = VOCAB * 8 + sum(per_layer) + (256 * VOCAB + VOCAB)
    assert hand == 819_920
    model = build_model("charlstm", (80,), VOCAB, vocab_size=VOCAB)
    assert isinstance(model, CharLSTM) and count_parameters(model) == hand
    assert count_parameters(model.lstm) == count_parameters(nn.LSTM(8, 256, 2))


def test_lstm_initialises_as_torch_lstm() -> None:
    torch.manual_seed(4)
    ours = LSTM(8, 256, 2)
    torch.manual_seed(4)
    reference = nn.LSTM(8, 256, 2)
    expected = reference.state_dict()
    assert list(ours.state_dict()) == list(expected)
    assert all(torch.equal(v, expected[k]) for k, v in ours.state_dict().items())


def test_charlstm_equals_torch_lstm_with_the_same_weights() -> None:
    torch.manual_seed(0)
    model = build_model("charlstm", (12,), 20, vocab_size=20)
    assert isinstance(model, CharLSTM)
    reference = nn.LSTM(8, 256, 2, batch_first=True)
    reference.load_state_dict(model.lstm.state_dict())  # same names, shapes and gate order
    x = _inputs((12,), 20, 3)
    expected = model.head(reference(model.embed(x))[0][:, -1])
    assert torch.allclose(model(x), expected, atol=1e-5)


# --- forward shapes, training, federated-friendly layers ---------------------------------------
@pytest.mark.parametrize(("name", "shape", "classes", "vocab"), CASES, ids=IDS)
def test_forward_shape_dtype_and_determinism(
    name: str, shape: tuple[int, ...], classes: int, vocab: int | None
) -> None:
    torch.manual_seed(3)
    model = build_model(name, shape, classes, vocab)
    torch.manual_seed(3)
    twin = build_model(name, shape, classes, vocab)
    x = _inputs(shape, vocab, 4)
    out = model(x)
    assert out.shape == (4, classes) and out.dtype == torch.float32
    assert torch.equal(out, model(x)) and torch.equal(out, twin(x))  # train mode: no dropout
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(("name", "shape", "classes", "vocab"), CASES, ids=IDS)
def test_state_dict_is_the_parameters(
    name: str, shape: tuple[int, ...], classes: int, vocab: int | None
) -> None:
    model = build_model(name, shape, classes, vocab)
    assert not list(model.buffers())
    assert list(model.state_dict()) == [k for k, _ in model.named_parameters()]
    bad = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.LSTM, nn.RNNBase)
    assert not any(isinstance(m, bad) for m in model.modules())


@pytest.mark.parametrize(("name", "shape", "classes", "vocab"), CASES, ids=IDS)
def test_local_training_lowers_the_loss(
    name: str, shape: tuple[int, ...], classes: int, vocab: int | None
) -> None:
    """``train_epochs`` and ``evaluate`` as the clients run them (token ids stay int64)."""
    if vocab:
        shape = (20,)  # a short window keeps the per-step loop quick
    torch.manual_seed(0)
    model = build_model(name, shape, classes, vocab)
    x = _inputs(shape, vocab, 8)
    y = torch.randint(0, classes, (8,), generator=torch.Generator().manual_seed(1))
    before, _ = evaluate(model, x, y)
    lr = 1.0 if name == "charlstm" else 0.1
    train_epochs(model, x, y, epochs=20, batch_size=4, lr=lr, seed=0)
    after, _ = evaluate(model, x, y)
    assert math.isfinite(after) and after < 0.8 * before
    assert x.dtype == (torch.int64 if vocab else torch.float32)


def test_grey_images_without_channel_axis() -> None:
    for name in ("lenet", "resnet20"):
        model = build_model(name, (28, 28), 10)
        assert model(torch.randn(2, 28, 28)).shape == (2, 10)


def test_float64_precision() -> None:
    with float_precision(torch.float64):
        for name, shape, classes, vocab in CASES[1:]:
            model = build_model(name, shape, classes, vocab)
            assert all(p.dtype == torch.float64 for p in model.parameters())
            x = _inputs(shape, vocab, 2)
            assert model(x if vocab else x.double()).dtype == torch.float64


def test_wrong_inputs_fail_with_one_line() -> None:
    cases = [
        (("lenet", (64,), 10), "lenet needs an image"),
        (("lenet", (1, 8, 8), 10), "at least 10x10"),
        (("resnet20", (40,), 10), "resnet20 needs an image"),
        (("resnet20", (1, 40), 10), "takes cnn1d"),  # MNIST-1D's (C, L)
        (("charlstm", (80,), 80), "vocab_size"),
        (("charlstm", (1, 28, 28), 10, 80), r"\(L,\)"),
        (("charlstm", (80,), 80, 1), "vocab_size must be"),
        (("mlp", (80,), 80, 80), "token ids"),
        (("lenet", (1, 28, 28), 80, 80), "charlstm"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            build_model(*args)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)


def test_build_model_for_reads_the_vocabulary() -> None:
    tokens = types.SimpleNamespace(input_shape=(80,), num_classes=VOCAB, vocab_size=VOCAB)
    assert isinstance(build_model_for("charlstm", tokens), nn.Module)  # type: ignore[arg-type]
    images = types.SimpleNamespace(input_shape=(3, 32, 32), num_classes=10)  # no such field
    model = build_model_for("resnet20", images)  # type: ignore[arg-type]
    assert count_parameters(model) == 269_722


def test_training_objective_keeps_token_ids_and_copies_only_for_convex_models() -> None:
    tokens = torch.randint(0, VOCAB, (6, 80))
    y = torch.randint(0, VOCAB, (6,))
    kept = TrainingObjective(tokens, y, 0.0, convex=False)
    assert kept.x is tokens and kept.x.dtype == torch.int64
    images = torch.randn(6, 3, 32, 32)
    assert TrainingObjective(images, y, 0.0, convex=False).x is images  # no float64 copy
    assert TrainingObjective(images, y, 0.0, convex=True).x.dtype == torch.float64


# --- the batched engine (torch.func.vmap over the models) ---------------------------------------
@pytest.mark.parametrize(("name", "shape", "classes", "vocab"), CASES[1:], ids=IDS[1:])
def test_batched_gradients_equal_autograd(
    name: str, shape: tuple[int, ...], classes: int, vocab: int | None
) -> None:
    """In float64 (as the engine tests compare), so that only a wrong gradient can differ."""
    torch.manual_seed(0)
    if vocab:
        shape = (10,)  # a short window keeps the per-step loop quick
    with float_precision(torch.float64):
        model = build_model(name, shape, classes, vocab)
    arrays = ArrayRecord(model.state_dict())
    layout = layout_of(arrays).floating()
    assert layout == layout_of(arrays)  # every array is a float parameter
    fm = FunctionalModel(model, layout)
    x = _inputs(shape, vocab, 4)
    x = x if vocab else x.double()
    y = torch.randint(0, classes, (4,), generator=torch.Generator().manual_seed(2))
    index = torch.tensor([[0, 1], [2, 3]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    point = flatten(arrays, layout)
    grads, losses = fm.gradients(point, x[index], y[index], mask)
    for i in range(2):
        model.zero_grad()
        loss = objective(model, x[index[i]], y[index[i]])
        loss.backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]
        assert float((grads[i] - expected).norm() / expected.norm()) < 1e-10
        assert torch.isclose(losses[i], loss.detach(), rtol=1e-12)


# --- --model auto ------------------------------------------------------------------------------
def test_auto_for_the_known_hub_data_sets() -> None:
    assert default_model("hf:uoft-cs/cifar10") == "resnet20"
    assert default_model("hf:ylecun/mnist") == "lenet"
    assert default_model("hf:zalando-datasets/fashion_mnist") == "lenet"
    assert default_model("hf:flwrlabs/femnist") == "lenet"
    assert default_model("hf:flwrlabs/shakespeare") == "charlstm"
    assert default_model("hf:uoft-cs/cifar10,image=img,label=label") == "resnet20"
    assert set(HUB_MODELS.values()) <= set(MODELS)


@pytest.mark.parametrize(
    ("shape", "vocab", "model"),
    [
        ((80,), 80, "charlstm"),
        ((1, 28, 28), None, "lenet"),
        ((1, 10, 12), None, "lenet"),
        ((3, 32, 32), None, "resnet20"),
        ((3, 64, 64), None, "resnet20"),
        ((1, 8, 8), None, "mlp"),  # too small for LeNet's two poolings
        ((1, 40), None, "cnn1d"),
        ((28, 28), None, "lenet"),  # a grey image without its channel axis
        ((32, 32), None, "resnet20"),
        ((30,), None, "mlp"),
    ],
)
def test_auto_by_the_loaded_data(
    shape: tuple[int, ...],
    vocab: int | None,
    model: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert auto_model(shape, vocab) == model
    loaded = []

    def load(spec: str, seed: int = 0) -> object:
        loaded.append(spec)
        return types.SimpleNamespace(input_shape=shape, num_classes=10, vocab_size=vocab)

    monkeypatch.setattr(datasets, "load_dataset", load)
    assert default_model("local:/data/set,image=img") == model
    assert default_model("hf:someone/else") == model
    assert loaded == ["local:/data/set,image=img", "hf:someone/else"]
    # the resolved (and recorded) config names the model
    cfg = ExperimentConfig(dataset=f"local:{tmp_path}", model="auto").resolved()
    assert cfg.model == model and cfg.to_dict()["model"] == model
    assert loaded[-1] == f"local:{tmp_path.resolve()}"
    build_model(model, shape, 10, vocab)  # and it builds for that input


@pytest.mark.parametrize(
    ("build", "model", "classes"),
    [
        ("cifar_like", "resnet20", 10),
        ("mnist_like", "lenet", 10),
        ("shakespeare_like", "charlstm", 81),
    ],
)
def test_auto_on_data_in_the_hub_formats(
    build: str, model: str, classes: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real loading path (hub layouts read through ``hf:<dir>``): the model auto picks
    builds for the loaded data and runs on its inputs."""
    import datasets as hf

    from . import hubdata

    monkeypatch.setenv("FLWR_BYZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    getattr(hubdata, build)(tmp_path / "set")
    spec = f"hf:{tmp_path / 'set'}"
    assert default_model(spec) == model
    data = datasets.load_dataset(spec)
    net = build_model_for(model, data)
    assert net(data.x_train[:2]).shape == (2, data.num_classes) and data.num_classes >= classes
    cfg = ExperimentConfig(dataset=spec, model="auto").resolved()
    assert cfg.model == model


# --- flwr-byz models -----------------------------------------------------------------------------
def test_model_table_rows() -> None:
    rows = {(m, d): (s, p, a) for m, d, s, p, a in model_table()}
    assert {m for m, _ in rows} == set(MODELS)
    assert rows["resnet20", "hf:uoft-cs/cifar10"] == ("(3, 32, 32)", 269_722, True)
    assert rows["lenet", "hf:ylecun/mnist"] == ("(1, 28, 28)", 61_706, True)
    # LEAF's 80 characters and an unknown-character token: 81 embeddings and logits
    assert rows["charlstm", "hf:flwrlabs/shakespeare"] == ("(80,) uint8", 819_920 + 265, True)
    assert rows["mlp", "digits"][1:] == (64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10, True)
    assert ("charlstm", "digits") not in rows and ("lenet", "digits") not in rows
    assert ("resnet20", "mnist1d") not in rows
    assert ("mlp", "hf:flwrlabs/shakespeare") not in rows  # float models refuse token ids
    for ref in REFERENCE_INPUTS:  # one auto choice per data set, and it fits
        assert [m for (m, d), (_, _, a) in rows.items() if d == ref.dataset and a] == [
            default_model(ref.dataset)
        ]


@pytest.mark.parametrize("name", ["digits", "breast-cancer", "synthetic-logreg"])
def test_reference_inputs_match_the_offline_data(name: str) -> None:
    data = datasets.load_dataset(name)
    ref = next(r for r in REFERENCE_INPUTS if r.dataset == name)
    assert (ref.shape, ref.classes) == (data.input_shape, data.num_classes)


def test_models_command_prints_the_table() -> None:
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == format_model_table()
    lines = result.output.splitlines()
    assert lines[0].split() == ["model", "data", "set", "input", "parameters", "auto"]
    resnet = next(line for line in lines if "resnet20" in line and "cifar10" in line)
    assert resnet.split()[-2:] == ["269,722", "*"]


def test_run_help_lists_the_models() -> None:
    env = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
    result = CliRunner(env=env).invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    for name in MODELS:
        assert name in text
    assert "flwr-byz models" in text


def test_cross_entropy_over_the_vocabulary() -> None:
    """The LSTM predicts the character after the last position: a constant next character is
    learnt (the loss falls well below log(vocab))."""
    torch.manual_seed(0)
    model = build_model("charlstm", (6,), 12, vocab_size=12)
    x = _inputs((6,), 12, 16)
    y = x[:, -1]  # "repeat the last character"
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * math.log(12)
