"""``methods.fedavg``: the local SGD epochs as a masked, row-batched step equal
``simulations.training.train_epochs`` (torch.optim.SGD) bit for bit, and the robust server step
(with the Eq. (10) clipping) against its formula."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from flwr_byz.aggregators import Mean, Median
from flwr_byz.methods.common import clip_rows, guarded
from flwr_byz.methods.fedavg import (
    FedAvgState,
    LocalSGDState,
    attack_surface,
    batch_schedule,
    client_step,
    plan_round,
    server_step,
    shift_back_target,
)
from flwr_byz.simulations.training import train_epochs


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_batch_schedule_is_train_epochs_order() -> None:
    gen = torch.Generator().manual_seed(4)
    want = []
    for _ in range(3):
        order = torch.randperm(11, generator=gen)
        want.append([order[s : s + 4] for s in range(0, 11, 4)])
    got = batch_schedule(11, 3, 4, seed=4)
    assert [[b.tolist() for b in e] for e in got] == [[b.tolist() for b in e] for e in want]
    assert batch_schedule(0, 3, 4, 0) == [] and batch_schedule(5, 0, 4, 0) == []


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
def test_masked_row_steps_equal_train_epochs(momentum: float, weight_decay: float) -> None:
    """Clients with unequal data sizes (so unequal step counts) trained together, one masked
    step at a time, end exactly where ``train_epochs`` (torch.optim.SGD) takes each alone."""
    sizes, seeds, epochs, batch, lr = [9, 4, 13, 1], [3, 8, 1, 5], 2, 4, 0.1
    base = _model()
    names = [k for k, _ in base.named_parameters()]
    shapes = [p.shape for p in base.parameters()]
    want = []
    for n, s in zip(sizes, seeds, strict=True):
        model = _model()
        x, y = _data(n, s)
        train_epochs(
            model,
            x,
            y,
            epochs=epochs,
            batch_size=batch,
            lr=lr,
            seed=s,
            momentum=momentum,
            weight_decay=weight_decay,
        )
        want.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    flat0 = torch.cat([p.detach().reshape(-1) for p in base.parameters()])
    state = LocalSGDState.start(flat0.expand(len(sizes), -1))
    schedules = [
        [b for ep in batch_schedule(n, epochs, batch, s) for b in ep]
        for n, s in zip(sizes, seeds, strict=True)
    ]
    for t in range(max(len(sc) for sc in schedules)):
        mask = torch.tensor([t < len(sc) for sc in schedules])
        grads = torch.zeros_like(state.params)
        for i, sc in enumerate(schedules):
            if t >= len(sc):
                continue
            x, y = _data(sizes[i], seeds[i])
            params, start = {}, 0
            for name, shape in zip(names, shapes, strict=True):
                size = shape.numel()
                params[name] = state.params[i, start : start + size].reshape(shape).clone()
                params[name].requires_grad_(True)
                start += size
            loss = F.cross_entropy(functional_call(base, params, (x[sc[t]],)), y[sc[t]])
            grads[i] = torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))]
            )
        state = client_step(state, grads, mask, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for i in range(len(sizes)):
        assert torch.equal(state.params[i], want[i]), f"client {i}"


def test_masked_rows_are_left_alone() -> None:
    state = LocalSGDState.start(torch.ones(3, 4))
    grads = torch.full((3, 4), 2.0)
    out = client_step(state, grads, torch.tensor([True, False, True]), lr=0.5, momentum=0.9)
    assert torch.equal(out.params[1], torch.ones(4)) and torch.equal(out.buffer[1], torch.zeros(4))
    assert out.started.tolist() == [True, False, True]
    assert torch.equal(out.params[0], torch.zeros(4)) and torch.equal(out.buffer[0], grads[0])
    again = client_step(out, grads, None, lr=0.5, momentum=0.9)  # buffer: 0.9 b + d for row 0
    assert torch.equal(again.buffer[0], 0.9 * grads[0] + grads[0])
    assert torch.equal(again.buffer[1], grads[1])  # row 1's first step


def test_plan_round_is_flowers_fedavg_sample() -> None:
    nodes = list(range(1, 13))
    random.seed(77)  # what the runner does before Flower's sample_nodes
    want = random.sample(nodes, 5)
    assert plan_round(random.Random(77), nodes, 5) == want


def test_server_step_is_x_plus_the_robust_update() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, generator=g, dtype=torch.float64)
    replies = x + torch.randn(5, 6, generator=g, dtype=torch.float64)
    state, stats = server_step(FedAvgState(x), replies, guarded(Median()))
    u = Median()(replies - x)
    assert torch.equal(state.x, x + u) and torch.equal(state.last_update, u)
    assert stats == {"skipped": 0, "non_finite": 0, "clip_level": None, "clipped": 0}


def test_server_step_clips_around_the_last_update_eq10() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, generator=g, dtype=torch.float64)
    last = torch.randn(6, generator=g, dtype=torch.float64)
    replies = x + 5 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([True] * 5 + [False])  # the last coordinate is an integer array
    state, stats = server_step(
        FedAvgState(x, last), replies, guarded(Mean()), clip_alpha=0.5, norm_mask=mask
    )
    level = 0.5 * float(last[:5].norm())
    clipped, count = clip_rows(replies - x - last, level)
    want = Mean()(clipped) + last
    assert stats["clip_level"] == level and stats["clipped"] == count > 0
    assert torch.equal(state.x, x + want) and torch.equal(state.last_update, want)
    # without clip_alpha the anchor is ignored
    plain, _ = server_step(FedAvgState(x, last), replies, guarded(Mean()))
    assert torch.equal(plain.x, x + Mean()(replies - x))


def test_server_step_keeps_the_model_when_it_cannot_step() -> None:
    x = torch.zeros(3)
    state0 = FedAvgState(x, torch.ones(3))
    inf = torch.full((2, 3), float("inf"))
    state, stats = server_step(state0, inf, lambda u: u[0], clip_alpha=1.0)  # an inf step
    assert state is state0 and stats["skipped"] == 1 and stats["non_finite"] == 1
    state, stats = server_step(state0, torch.ones(0, 3), guarded(Mean()))  # no reply
    assert state is state0 and stats["skipped"] == 1 and stats["non_finite"] == 0


def test_attack_surface_is_the_update_and_shift_back() -> None:
    x, x0 = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    s = attack_surface(lambda: x, lambda: x0)
    reply = torch.tensor([3.0, 3.0])
    assert torch.equal(s.aggregated(1, reply), reply - x)
    assert torch.equal(s.to_wire(1, s.aggregated(1, reply)), reply)
    assert torch.equal(s.shift_back_target(None), x0 - x)
    assert torch.equal(shift_back_target(x, x0, 0.5), -0.5 * (x - x0))
