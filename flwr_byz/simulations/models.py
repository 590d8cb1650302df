"""Models in pure torch: the small ones of the offline datasets and the standard federated
benchmark networks.

* ``logreg``, ``mlp`` (two hidden layers of 64), ``cnn1d`` (three 1-D convolutions): the
  offline datasets (MNIST-1D, digits, breast-cancer, synthetic).
* ``lenet``: a LeNet-5-style CNN for ``(C, H, W)`` images (MNIST, Fashion-MNIST, FEMNIST;
  CIFAR-10 too); the flatten size follows the input shape.
* ``resnet20``: the CIFAR ResNet-20 of He et al. (2016), with GroupNorm instead of BatchNorm
  (Hsieh et al. 2020, "The Non-IID Data Quagmire of Decentralized Machine Learning").
* ``charlstm``: the character LSTM of the LEAF / FedAvg Shakespeare benchmark (integer token
  ids in, uint8 as the data sets hold them or int64; the next character's logits out).

No batch norm, no dropout and no buffers: every array in a model's ``state_dict`` is a
parameter, a plain tensor that federated averaging and the robust aggregators combine, and a
forward pass is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from ..specs import split_part, unknown
from .hub import VOCAB_SIZE
from .training import float_dtype

if TYPE_CHECKING:
    from .datasets import Dataset

__all__ = [
    "HUB_MODELS",
    "MODELS",
    "REFERENCE_INPUTS",
    "ReferenceInput",
    "auto_model",
    "build_model",
    "build_model_for",
    "count_parameters",
    "default_model",
    "format_model_table",
    "model_table",
]

MODELS: tuple[str, ...] = ("logreg", "mlp", "cnn1d", "lenet", "resnet20", "charlstm")
"""Model names accepted by ``build_model``."""

_DEFAULT_MODELS = {
    "mnist1d": "cnn1d",
    "digits": "mlp",
    "breast-cancer": "logreg",
    "synthetic-logreg": "logreg",
}

#: ``--model auto`` for the hub data sets it knows by name (``hf:<name>``).
HUB_MODELS = {
    "uoft-cs/cifar10": "resnet20",
    "ylecun/mnist": "lenet",
    "zalando-datasets/fashion_mnist": "lenet",
    "flwrlabs/femnist": "lenet",
    "flwrlabs/shakespeare": "charlstm",
}

_MLP_HIDDEN = 64
_CNN_CHANNELS = (16, 32, 32)
_CNN_KERNEL = 5
_CNN_STRIDES = (1, 2, 2)

_MAX_SEQUENCE_CHANNELS = 4  # a 2-D input (C, L) with more "channels" is an (H, W) image

_LENET_CHANNELS = (6, 16)
_LENET_HIDDEN = (120, 84)
_LENET_MIN_SIDE = 10  # conv5 (same) -> pool2 -> conv5 (valid) -> pool2 leaves >= 1 pixel

_RESNET_WIDTHS = (16, 32, 64)
_RESNET_BLOCKS = 3  # per stage: 6 * 3 + 2 = 20 layers
_GN_GROUPS = 2  # GroupNorm groups per layer

_LSTM_EMBED = 8
_LSTM_HIDDEN = 256
_LSTM_LAYERS = 2


# ------------------------------------------------------------------------------ 1-D models


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


# ------------------------------------------------------------------------------ images


class LeNet(nn.Module):
    """LeNet-5-style CNN (LeCun et al. 1998) with ReLU and max-pooling: conv 5x5 (6 channels,
    padding 2) - pool 2 - conv 5x5 (16, no padding) - pool 2 - linear 120 - 84 - classes.

    Input ``(B, C, H, W)`` (``(B, H, W)`` when built for a ``(H, W)`` shape). 28x28 gives the
    classic 16 x 5 x 5 = 400 features, 32x32 gives 16 x 6 x 6 = 576.
    """

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        c1, c2 = _LENET_CHANNELS
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side_h, side_w = (height // 2 - 4) // 2, (width // 2 - 4) // 2
        h1, h2 = _LENET_HIDDEN
        self.head = nn.Sequential(
            nn.Linear(c2 * side_h * side_w, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, num_classes),
        )
        self.add_channel = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel:
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm; the option-A shortcut of He et al. (2016): the
    identity, subsampled by the stride and zero-padded in channels (no parameters)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(_GN_GROUPS, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(_GN_GROUPS, channels)
        self.stride = stride
        self.extra = channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        shortcut = x
        if self.stride != 1:
            shortcut = shortcut[:, :, :: self.stride, :: self.stride]
        if self.extra:
            front = self.extra // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, front, self.extra - front))
        return F.relu(out + shortcut)


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 of He et al. (2016, section 4.2): a 3x3 convolution (16 channels),
    three stages of three basic blocks (16, 32, 64 channels; the second and third start with
    stride 2), global average pooling and a linear head; 0.27M parameters for CIFAR-10.

    Federated changes: every BatchNorm is a ``GroupNorm`` with two groups (Hsieh et al. 2020
    replace BN by GN for non-IID data; two groups per layer as in Reddi et al. 2021's
    federated CIFAR ResNet), so there are no running statistics. Shortcuts are option A
    (parameter-free), as in the paper's CIFAR networks. Convolutions start from He's normal
    initialisation (fan-out); the norms from weight 1, bias 0.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        first = _RESNET_WIDTHS[0]
        self.conv = nn.Conv2d(in_channels, first, 3, 1, 1, bias=False)
        self.norm = nn.GroupNorm(_GN_GROUPS, first)
        blocks: list[nn.Module] = []
        channels = first
        for stage, width in enumerate(_RESNET_WIDTHS):
            for block in range(_RESNET_BLOCKS):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(_BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)
        self.add_channel = False
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel:
            x = x.unsqueeze(1)
        out = self.blocks(F.relu(self.norm(self.conv(x))))
        return self.head(out.mean(dim=(-2, -1)))  # a mean: deterministic on CUDA too


# ------------------------------------------------------------------------------ text


class LSTM(nn.Module):
    """A multi-layer LSTM (batch first) written with plain tensor ops, with ``nn.LSTM``'s
    parameters (names, shapes, gate order i, f, g, o, and initialisation U(-1/sqrt(H),
    1/sqrt(H))), so that ``torch.func.vmap`` (the batched engine) can run it.

    ``forward`` takes ``(B, L, input_size)`` and returns the top layer's last hidden state
    ``(B, hidden_size)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size
            shapes = {
                "weight_ih": (4 * hidden_size, size),
                "weight_hh": (4 * hidden_size, hidden_size),
                "bias_ih": (4 * hidden_size,),
                "bias_hh": (4 * hidden_size,),
            }
            for name, shape in shapes.items():
                param = nn.Parameter(torch.empty(shape))
                nn.init.uniform_(param, -bound, bound)
                self.register_parameter(f"{name}_l{layer}", param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, size = x.shape[0], self.hidden_size
        h = x.new_zeros(batch, size)
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = (
                getattr(self, f"{name}_l{layer}")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            # every step's input part at once, time first: (L, B, 4H)
            inputs = F.linear(x.transpose(0, 1), w_ih, b_ih + b_hh)
            w_hh_t = w_hh.t()
            h = c = x.new_zeros(batch, size)
            outputs = []
            for step in inputs.unbind(0):
                gates = torch.addmm(step, h, w_hh_t)
                sig = torch.sigmoid(gates)  # i, f, o (the g slice unused)
                g = torch.tanh(gates[:, 2 * size : 3 * size])
                c = torch.addcmul(sig[:, size : 2 * size] * c, sig[:, :size], g)
                h = sig[:, 3 * size :] * torch.tanh(c)
                outputs.append(h)
            if layer + 1 < self.num_layers:
                x = torch.stack(outputs, dim=1)
        return h


class CharLSTM(nn.Module):
    """The Shakespeare next-character model of LEAF (Caldas et al. 2018) and FedAvg (McMahan
    et al. 2017): an embedding of 8, a 2-layer LSTM of 256 and a linear head; input integer
    token ids ``(B, L)`` (the data sets' uint8, or int64), output the logits of the character
    after the last position."""

    def __init__(self, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, _LSTM_EMBED)
        self.lstm = LSTM(_LSTM_EMBED, _LSTM_HIDDEN, _LSTM_LAYERS)
        self.head = nn.Linear(_LSTM_HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(x.long())))  # the data's ids are uint8


# ------------------------------------------------------------------------------ building


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None
) -> nn.Module:
    """A fresh ``name`` model (one of ``MODELS``) for inputs ``input_shape`` (no batch axis).

    ``logreg`` and ``mlp`` flatten any float input; ``cnn1d`` needs ``(L,)`` or ``(C, L)``;
    ``lenet`` and ``resnet20`` images ``(C, H, W)`` (or ``(H, W)`` with ``H > 4``);
    ``charlstm`` token ids ``(L,)`` with ``vocab_size`` (the dataset's; token data need
    ``charlstm``). Weights follow torch's default initialisation (seed it with
    ``torch.manual_seed`` beforehand), in float32 (or the dtype a test set with
    ``training.float_precision``).
    """
    return _build(name, input_shape, num_classes, vocab_size).to(float_dtype())


def build_model_for(name: str, dataset: Dataset) -> nn.Module:
    """``build_model`` for ``dataset``'s inputs, classes and vocabulary (token data)."""
    vocab_size = getattr(dataset, "vocab_size", None)
    return build_model(name, dataset.input_shape, dataset.num_classes, vocab_size)


def _build(
    name: str, input_shape: Sequence[int], num_classes: int, vocab_size: int | None
) -> nn.Module:
    key = name.strip().lower()
    if key not in MODELS:
        raise unknown("model", name, MODELS)
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be non-empty with positive sizes, got {input_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if key == "charlstm":
        return _charlstm(shape, num_classes, vocab_size)
    if vocab_size is not None:
        raise ValueError(
            f"model {key!r} takes float features, but the data are token ids "
            f"(vocab_size={vocab_size}): use --model charlstm (or auto)"
        )
    if key in ("lenet", "resnet20"):
        return _image_model(key, shape, num_classes)
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


def _image_model(key: str, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(shape) not in (2, 3) or (len(shape) == 2 and shape[0] <= _MAX_SEQUENCE_CHANNELS):
        raise ValueError(
            f"{key} needs an image input (C, H, W) or (H, W) with H > "
            f"{_MAX_SEQUENCE_CHANNELS}, got {shape} (a (C, L) sequence takes cnn1d)"
        )
    channels, height, width = shape if len(shape) == 3 else (1, *shape)
    model: LeNet | ResNet20
    if key == "lenet":
        if min(height, width) < _LENET_MIN_SIDE:
            raise ValueError(
                f"lenet needs images of at least {_LENET_MIN_SIDE}x{_LENET_MIN_SIDE}, got {shape}"
            )
        model = LeNet(channels, height, width, num_classes)
    else:
        model = ResNet20(channels, num_classes)
    model.add_channel = len(shape) == 2
    return model


def _charlstm(shape: tuple[int, ...], num_classes: int, vocab_size: int | None) -> nn.Module:
    if vocab_size is None:
        raise ValueError(
            "charlstm needs token data with a vocabulary (vocab_size), "
            "e.g. --dataset hf:flwrlabs/shakespeare"
        )
    if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    if len(shape) != 1:
        raise ValueError(f"charlstm needs a sequence of token ids (L,), got {shape}")
    return CharLSTM(int(vocab_size), num_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ auto


def auto_model(input_shape: Sequence[int], vocab_size: int | None = None) -> str:
    """``--model auto`` for data known only by their shape: token ids (a ``vocab_size``) ->
    ``charlstm``; images ``(C, H, W)`` (or ``(H, W)`` with ``H > 4``) -> ``lenet`` up to
    28x28, ``resnet20`` above, ``mlp`` below 10x10; ``(C, L)`` sequences with ``C <= 4`` ->
    ``cnn1d``; anything else -> ``mlp``."""
    shape = tuple(int(s) for s in input_shape)
    if vocab_size is not None:
        return "charlstm"
    if len(shape) == 2 and shape[0] > _MAX_SEQUENCE_CHANNELS:
        shape = (1, *shape)  # a grey image without its channel axis
    if len(shape) == 3:
        side = min(shape[1:])
        if side < _LENET_MIN_SIDE:
            return "mlp"
        return "lenet" if max(shape[1:]) <= 28 else "resnet20"
    if len(shape) == 2:
        return "cnn1d"
    return "mlp"


def _hub_name(args: Sequence[str]) -> str:
    """The data set name of an ``hf:<name>[,key=value...]`` spec's arguments."""
    return args[0].strip().lower() if args else ""


def default_model(dataset: str) -> str:
    """The default model (``--model auto``) for a dataset name or spec
    (``"synthetic-logreg:groups=5"`` works): the offline sets and the known hub sets
    (``HUB_MODELS``) by name; any other ``hf:``/``local:`` set by its loaded data
    (:func:`auto_model` of its input shape and vocabulary)."""
    name, args = split_part(dataset)
    key = name.lower()
    if key in _DEFAULT_MODELS:
        return _DEFAULT_MODELS[key]
    if key == "hf" and _hub_name(args) in HUB_MODELS:
        return HUB_MODELS[_hub_name(args)]
    if key in ("hf", "local"):
        from . import datasets

        data = datasets.load_dataset(dataset)
        return auto_model(data.input_shape, getattr(data, "vocab_size", None))
    raise unknown("dataset", name, [*_DEFAULT_MODELS, "hf:<name>", "local:<dir>"], dataset)


# ------------------------------------------------------------------------------ listing


@dataclass(frozen=True)
class ReferenceInput:
    """A data set's input as ``build_model`` sees it, for the ``flwr-byz models`` table."""

    dataset: str
    shape: tuple[int, ...]
    classes: int
    vocab_size: int | None = None


#: The inputs of the offline data sets and of the hub sets ``--model auto`` knows (Shakespeare:
#: 80-character windows over LEAF's 80 characters plus an unknown-character token).
REFERENCE_INPUTS: tuple[ReferenceInput, ...] = (
    ReferenceInput("mnist1d", (1, 40), 10),
    ReferenceInput("digits", (64,), 10),
    ReferenceInput("breast-cancer", (30,), 2),
    ReferenceInput("synthetic-logreg", (20,), 2),
    ReferenceInput("hf:ylecun/mnist", (1, 28, 28), 10),
    ReferenceInput("hf:zalando-datasets/fashion_mnist", (1, 28, 28), 10),
    ReferenceInput("hf:flwrlabs/femnist", (1, 28, 28), 62),
    ReferenceInput("hf:uoft-cs/cifar10", (3, 32, 32), 10),
    ReferenceInput("hf:flwrlabs/shakespeare", (80,), VOCAB_SIZE, vocab_size=VOCAB_SIZE),
)


def model_table() -> list[tuple[str, str, str, int, bool]]:
    """``(model, data set, input shape, parameters, auto)`` for every model and every
    reference input it accepts (``auto``: ``--model auto`` picks it there). Built on the meta
    device: no memory, no initialisation cost."""
    rows = []
    for name in MODELS:
        for ref in REFERENCE_INPUTS:
            try:
                with torch.device("meta"):
                    model = _build(name, ref.shape, ref.classes, ref.vocab_size)
            except ValueError:
                continue
            shape = "(" + ", ".join(map(str, ref.shape)) + ("," if len(ref.shape) == 1 else "")
            shape += ") uint8" if ref.vocab_size is not None else ")"
            auto = default_model(ref.dataset) == name
            rows.append((name, ref.dataset, shape, count_parameters(model), auto))
    return rows


def format_model_table() -> str:
    """The text of ``flwr-byz models``: one row per model and data set, ``*`` marking the
    ``--model auto`` choice."""
    rows = model_table()
    header = ("model", "data set", "input", "parameters", "auto")
    cells = [header] + [(m, d, s, f"{p:,}", "*" if a else "") for m, d, s, p, a in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(w) if i == 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
