"""Local training and evaluation loops (plain SGD, cross-entropy) and stable seed derivation."""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from ..attacks.backdoor import neurotoxin_mask

__all__ = [
    "TrainingObjective",
    "derive_seed",
    "evaluate",
    "float_dtype",
    "float_precision",
    "gradient_masks",
    "objective",
    "train_epochs",
]

_FLOAT = [torch.float32]


def float_dtype() -> torch.dtype:
    """The floating dtype of the simulations' models and data: float32, unless a test switches
    it with :func:`float_precision`."""
    return _FLOAT[0]


@contextmanager
def float_precision(dtype: torch.dtype) -> Iterator[None]:
    """Within the block, ``build_model`` makes ``dtype`` models and ``client_data`` returns
    ``dtype`` inputs (a test-only switch: the local and batched engines compare their models
    in float64, in this process; Ray's workers do not see it)."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"float_precision takes torch.float32 or torch.float64, got {dtype}")
    saved = _FLOAT[0]
    _FLOAT[0] = dtype
    try:
        yield
    finally:
        _FLOAT[0] = saved


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def train_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    grad_mask: Sequence[torch.Tensor] | None = None,
) -> float:
    """Train ``model`` in place with minibatch SGD on cross-entropy; mean loss of the last epoch.

    ``grad_mask`` (one 0/1 or bool tensor per ``model.parameters()``, e.g.
    :func:`gradient_masks`): every step's gradient, weight decay included, is multiplied by
    it, so the masked-out coordinates never move (Neurotoxin's projection).

    Each epoch visits every sample once in an order drawn from a CPU ``torch.Generator`` seeded
    with ``seed`` (the last batch may be smaller), so the same model, data and seed give
    bit-identical parameters. A fresh optimizer is made per call (no momentum carried over).
    Returns ``nan`` without touching the model when ``x`` is empty or ``epochs`` is 0.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if momentum < 0 or weight_decay < 0:
        raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    n = len(x)
    if n == 0 or epochs == 0:
        return math.nan
    device = _device(model)
    gen = torch.Generator().manual_seed(int(seed))
    params = list(model.parameters())
    masks = None if grad_mask is None else _masks(params, grad_mask)
    decay = weight_decay if masks is None else 0.0  # masked: added to the gradient below
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    there = x.device == device and y.device == device  # moved once (the ClientApp does)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)  # on the CPU: the same order on any device
        if there:
            order = order.to(device)  # the batches are indexed on the device
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if masks is not None:
                _project(params, masks, weight_decay)
            opt.step()
            total += loss.detach().to(torch.float64) * len(idx)  # no sync per batch on a GPU
    return float(total) / n


def _masks(params: list[nn.Parameter], grad_mask: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if len(grad_mask) != len(params):
        raise ValueError(f"grad_mask has {len(grad_mask)} tensors, the model {len(params)}")
    out = []
    for p, m in zip(params, grad_mask, strict=True):
        if m.shape != p.shape:
            raise ValueError(f"grad_mask shape {tuple(m.shape)} != parameter {tuple(p.shape)}")
        out.append(m.to(device=p.device, dtype=p.dtype))
    return out


def _project(params: list[nn.Parameter], masks: list[torch.Tensor], weight_decay: float) -> None:
    """``grad <- mask * (grad + weight_decay * p)``: SGD's decayed gradient, projected."""
    for p, m in zip(params, masks, strict=True):
        if p.grad is None:
            continue
        if weight_decay:
            p.grad.add_(p.detach(), alpha=weight_decay)
        p.grad.mul_(m)


def gradient_masks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ratio: float,
    weight_decay: float = 0.0,
    batch_size: int = 1024,
) -> list[torch.Tensor]:
    """Neurotoxin's masks (Zhang et al., ICML 2022, Alg. 1): the gradient of ``objective`` on
    all of ``(x, y)`` at ``model`` (eval mode, in batches of ``batch_size``), then False on the
    ``ceil(ratio * d)`` coordinates of largest magnitude over all ``d`` parameters
    (``attacks.backdoor.neurotoxin_mask``), True elsewhere; one bool tensor per
    ``model.parameters()``."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"gradient_masks needs matching, non-empty x and y, got {len(x)}, {len(y)}"
        )
    params = list(model.parameters())
    device = _device(model)
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()  # BatchNorm's running statistics stay as received; no dropout draws
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        (F.cross_entropy(model(xb), yb, reduction="sum") / len(x)).backward()
    model.train(was_training)
    grads = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach()
        + (weight_decay * p.detach() if weight_decay else 0.0)
        for p in params
    ]
    model.zero_grad(set_to_none=True)
    flat = neurotoxin_mask(torch.cat([g.flatten() for g in grads]), ratio)
    return [
        m.reshape(p.shape)
        for m, p in zip(flat.split([p.numel() for p in params]), params, strict=True)
    ]


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy in [0, 1])`` in eval mode without gradients.

    Returns ``(nan, nan)`` for empty data. Floating inputs are cast to the model's dtype.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    device = _device(model)
    param = next(model.parameters(), None)
    if param is not None and x.is_floating_point() and param.is_floating_point():
        x = x.to(param.dtype)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").to("cpu", torch.float64)
            correct += (logits.argmax(dim=1) == yb).sum().cpu()
    model.train(was_training)
    return float(loss_sum) / n, int(correct) / n


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from ``parts`` (blake2b, the same in every process and platform).

    Ints and strings are tagged, so ``derive_seed(1)`` and ``derive_seed("1")`` differ.
    """
    h = hashlib.blake2b(digest_size=8, person=b"flwr-byz-seed")
    for part in parts:
        if isinstance(part, int):
            tag, text = b"i", str(int(part))
        elif isinstance(part, str):
            tag, text = b"s", part
        else:
            raise TypeError(f"derive_seed parts must be int or str, got {type(part).__name__}")
        data = text.encode()
        h.update(tag + len(data).to_bytes(8, "little") + data)
    return int.from_bytes(h.digest(), "little") >> 1


def objective(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight_decay: float = 0.0
) -> torch.Tensor:
    """The training objective ``f(w) = mean cross-entropy + (weight_decay/2) ||w||^2`` (the
    loss every gradient method of the runner minimises; ``w`` all the model's parameters)."""
    loss = F.cross_entropy(model(x), y)
    if weight_decay:
        loss = loss + 0.5 * weight_decay * sum(p.pow(2).sum() for p in model.parameters())
    return loss


class TrainingObjective:
    """For the convex ``logreg`` model: ``f(x)`` on the whole training set (float64) and the
    optimality gap ``f(x) - f*`` (``f*`` from full-batch L-BFGS, computed once, lazily)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, weight_decay: float, convex: bool) -> None:
        # the float64 copy only where it is used (a CIFAR-10 copy is 1.2 GB; token ids stay int)
        self.x = x.to(torch.float64) if convex and x.is_floating_point() else x
        self.y = y
        self.weight_decay = float(weight_decay)
        self.convex = convex
        self._f_star: float | None = None

    def value(self, model: nn.Module) -> float:
        """``f`` at ``model`` (evaluated on a float64 copy, gradients off)."""
        twin = copy.deepcopy(model).to(torch.float64).eval()
        with torch.no_grad():
            return float(objective(twin, self.x, self.y, self.weight_decay))

    def f_star(self, model: nn.Module) -> float:
        """``min f`` over the model's parameters, by L-BFGS from ``model`` (convex only)."""
        if self._f_star is None:
            twin = copy.deepcopy(model).to(torch.float64).train()
            opt = torch.optim.LBFGS(
                twin.parameters(),
                lr=1.0,
                max_iter=2000,
                tolerance_grad=1e-12,
                tolerance_change=1e-15,
                history_size=50,
                line_search_fn="strong_wolfe",
            )

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = objective(twin, self.x, self.y, self.weight_decay)
                loss.backward()
                return loss

            opt.step(closure)
            self._f_star = min(self.value(twin), self.value(model))
        return self._f_star

    def __call__(self, model: nn.Module) -> tuple[float, float]:
        """``(f(x), f(x) - f*)`` for a convex model; ``(nan, nan)`` otherwise (a pass over the
        whole training set every round costs more than the round itself for a CNN)."""
        if not self.convex:
            return math.nan, math.nan
        value = self.value(model)
        if not math.isfinite(value):
            return value, math.nan
        return value, value - self.f_star(model)
