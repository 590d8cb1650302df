"""ByzSGD's steps (``flwr_byz.methods.byzsgd``): scheduling draws, the replicas' MDA steps, DMC,
the observer's model and the worker's step (median or filters), against brute force."""

from __future__ import annotations

import random

import pytest
import torch

from flwr_byz.aggregators import Mean, Median
from flwr_byz.methods.byzsgd import (
    HISTORY,
    ByzSGDState,
    WorkerState,
    arrival_order,
    draw_quorums,
    gather,
    lipschitz_coefficient,
    median_models,
    median_state,
    observed_model,
    outlier_bound,
    round_robin,
    server_step,
    worker_step,
)
from flwr_byz.methods.common import guarded


def test_arrival_order_byzantine_first_then_shuffled_honest() -> None:
    ref = random.Random(4)
    honest = [0, 1, 3, 4]
    ref.shuffle(honest)
    assert arrival_order(random.Random(4), 7, 2, exclude=2) == ([5, 6], honest)


def test_round_robin_and_quorums() -> None:
    assert round_robin(1, 3, 5) == [4, 0, 1, 2, 3]
    ref = random.Random(2)
    want = [sorted(ref.sample(range(6), 4)) for _ in range(3)]
    assert draw_quorums(random.Random(2), 6, 4, 3) == want
    rng = random.Random(2)
    before = rng.getstate()
    assert draw_quorums(rng, 4, 4, 2) == [[0, 1, 2, 3]] * 2 and rng.getstate() == before


def test_server_step_per_replica_quorum() -> None:
    gen = torch.Generator().manual_seed(0)
    replicas = torch.randn(3, 4, generator=gen)
    grads = torch.randn(5, 4, generator=gen)
    quorums = [[0, 1, 2], [1, 3, 4], []]
    out, skipped = server_step(replicas, grads, quorums, guarded(Mean()), lr=0.1)
    for s in range(2):
        assert torch.equal(out[s], replicas[s] - 0.1 * Mean()(grads[quorums[s]]))
    assert torch.equal(out[2], replicas[2]) and skipped == 1


def test_gather_is_the_median_of_own_and_first_valid_models() -> None:
    gen = torch.Generator().manual_seed(1)
    replicas = torch.randn(4, 3, generator=gen)  # 3 honest, 1 Byzantine
    bad = torch.full((3,), float("nan"))
    received = [
        [bad, replicas[1], replicas[2], replicas[3]],
        [replicas[0], torch.zeros(5), replicas[2]],
        [replicas[1], replicas[0]],
    ]
    new, dropped = gather(replicas, 3, received)
    assert dropped == 2
    assert torch.equal(new[0], Median()(torch.stack([replicas[0], replicas[1], replicas[2]])))
    assert torch.equal(new[1], Median()(torch.stack([replicas[1], replicas[0], replicas[2]])))
    assert torch.equal(new[2], Median()(torch.stack([replicas[2], replicas[1], replicas[0]])))
    assert torch.equal(new[3], Median()(new[:3]))


def test_observed_model_drops_bad_models() -> None:
    a, b, c = torch.ones(3), 2 * torch.ones(3), 7 * torch.ones(3)
    out = observed_model([a, torch.full((3,), float("inf")), torch.ones(2), b, c], a.shape)
    assert torch.equal(out, Median()(torch.stack([a, b, c])))


@pytest.mark.parametrize("q", [1, 2, 3, 4, 5, 8, 9])
def test_median_models_batched_equals_median_per_worker(q: int) -> None:
    models = torch.randn(5, q, 7, generator=torch.Generator().manual_seed(q))
    models[0, :, 0] = 0.5  # ties
    out = median_models(models)
    for i in range(5):
        assert torch.equal(out[i], Median()(models[i]))
    assert torch.equal(median_models(models[0]), Median()(models[0]))


def test_median_models_sorting_network_matches_sort_with_nan_inf_and_ties() -> None:
    """The min/max network (q <= 8) gives torch.sort's medians bit for bit, infinities and
    ties included; with a NaN the sort path keeps NaN's place (sorted last)."""
    g = torch.Generator().manual_seed(0)
    for q in range(1, 9):
        models = torch.randint(-3, 4, (6, q, 50), generator=g).double()
        models[1, 0] = float("inf")
        models[2, -1] = -float("inf")
        ref = torch.sort(models, dim=1).values
        want = ref[:, q // 2] if q % 2 else (ref[:, q // 2 - 1] + ref[:, q // 2]) / 2
        assert torch.equal(median_models(models), want)
    models = torch.randn(4, 3, 5, generator=g)
    models[0, 1, 2] = float("nan")
    want = torch.sort(models, dim=1).values[:, 1]
    torch.testing.assert_close(median_models(models), want, rtol=0, atol=0, equal_nan=True)


def test_state_start() -> None:
    x0 = torch.arange(3.0)
    state = ByzSGDState.start(x0, 4)
    assert state.replicas.shape == (4, 3) and bool((state.replicas == x0).all())
    assert state.t == 0 and torch.equal(state.x, x0)


def _quadratic(model: torch.Tensor, index: int | None) -> tuple[torch.Tensor, float]:
    return 2.0 * model, float((model**2).sum())  # f = ||theta||^2


def _constant(model: torch.Tensor, index: int | None) -> tuple[torch.Tensor, float]:
    return torch.ones_like(model), 0.0  # a linear loss: the bound does not grow with the model


FILTER = dict(lr=0.1, period=5, n_servers=5, f_servers=1, n_workers=7, f_workers=2)


def test_worker_median_step() -> None:
    models = [torch.tensor([1.0, 5.0]), torch.tensor([3.0, 1.0]), torch.tensor([2.0, 2.0])]
    grad, _, state, counts = worker_step(
        models, _quadratic, WorkerState(), rule="median", step=1, **FILTER
    )
    theta = Median()(torch.stack(models))
    assert torch.equal(grad, 2 * theta) and torch.equal(state.x, theta)
    assert (
        state.step == 1 and state.history.numel() == 0 and counts == {"rejected": 0, "fallback": 0}
    )
    # continuing: the coefficient is recorded
    grad2, _, state2, _ = worker_step(
        models[:2], _quadratic, state, rule="median", step=2, **FILTER
    )
    theta2 = Median()(torch.stack(models[:2]))
    k = lipschitz_coefficient(grad2, grad, theta2, theta)
    assert state2.history.tolist() == [k]


def test_worker_filter_takes_the_first_model_that_passes() -> None:
    prev_x, prev_g = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])
    state = WorkerState(prev_x, prev_g, 3, torch.tensor([10.0, 10.0, 10.0], dtype=torch.float64))
    estimate = prev_x - 0.1 * prev_g
    far = estimate + 100.0  # fails the Outliers filter
    near = estimate + 0.01
    calls: list[int | None] = []

    def gradient(model: torch.Tensor, index: int | None) -> tuple[torch.Tensor, float]:
        calls.append(index)
        return _constant(model, index)

    grad, _, new, counts = worker_step(
        [far, near, near], gradient, state, rule="filter", step=4, **FILTER
    )
    assert calls == [0, 1]  # lazy: stops at the first accepted model
    assert torch.equal(new.x, near) and torch.equal(grad, torch.ones(2))
    assert counts == {"rejected": 1, "fallback": 0}
    bound = outlier_bound(0.1, float(torch.ones(2).norm()), 5, 7, 2, 3)
    assert float((far - estimate).norm()) > bound >= float((near - estimate).norm())
    k = lipschitz_coefficient(torch.ones(2), prev_g, near, prev_x)
    assert new.history.tolist() == [10.0, 10.0, 10.0, k]


def test_worker_filter_fallback_and_refusal() -> None:
    prev_x, prev_g = torch.zeros(2), torch.ones(2)
    state = WorkerState(prev_x, prev_g, 1)
    a, b = torch.tensor([50.0, 0.0]), torch.tensor([0.0, 20.0])
    _, _, new, counts = worker_step([a, b], _constant, state, rule="filter", step=2, **FILTER)
    assert counts == {"rejected": 2, "fallback": 1}
    assert torch.equal(new.x, b)  # neither is within the bound: the closest to the estimate
    with pytest.raises(ValueError, match="state from step"):
        worker_step([a], _quadratic, state, rule="filter", step=5, **FILTER)
    with pytest.raises(ValueError, match="unknown byzsgd-rule"):
        worker_step([a], _quadratic, state, rule="mean", step=2, **FILTER)


def test_worker_history_is_bounded() -> None:
    state = WorkerState(
        torch.zeros(2), torch.ones(2), 1, torch.arange(HISTORY, dtype=torch.float64)
    )
    _, _, new, _ = worker_step([torch.ones(2)], _quadratic, state, rule="median", step=2, **FILTER)
    assert new.history.numel() == HISTORY and new.history[0] == 1.0


def test_median_state_equals_the_median_step() -> None:
    gen = torch.Generator().manual_seed(3)
    models = [torch.randn(3, generator=gen) for _ in range(3)]
    history = torch.arange(HISTORY, dtype=torch.float64)
    for state in (
        WorkerState(),  # no previous step: nothing recorded
        WorkerState(torch.zeros(3), torch.ones(3), 4, history),  # continuing: k recorded
        WorkerState(torch.zeros(3), torch.ones(3), 2, history),  # not from step 4
    ):
        grad, _, new, _ = worker_step(models, _quadratic, state, rule="median", step=5, **FILTER)
        theta = Median()(torch.stack(models))
        direct = median_state(state, theta, grad, 5)
        assert torch.equal(direct.x, new.x) and torch.equal(direct.g, new.g)
        assert direct.step == new.step == 5 and torch.equal(direct.history, new.history)
    assert new.history.numel() == HISTORY and torch.equal(new.history, history)
    k = lipschitz_coefficient(grad, torch.ones(3), theta, torch.zeros(3))
    continuing = median_state(
        WorkerState(torch.zeros(3), torch.ones(3), 4, history), theta, grad, 5
    )
    assert continuing.history.tolist() == [*history.tolist()[1:], k]
