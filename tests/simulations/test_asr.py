"""The attack success rate (ASR): its triggered set and value against brute force, the runs
without a backdoor (NaN), the round loop recording it, and the batched engine refusing
the backdoor attacks it does not run in one line."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from flwr_byz.simulations.asr import attack_success_rate, backdoor_eval_set
from flwr_byz.simulations.batched.engine import check_batched
from flwr_byz.simulations.batched.setup import Setup
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.datasets import Dataset, eval_split, load_dataset
from flwr_byz.simulations.engines import check_engine
from flwr_byz.simulations.runner import train_on_grid

from ..clients.nodes import ShuffledGrid

DIGITS = ExperimentConfig(
    method="fedavg", dataset="digits", clients=6, rounds=2, lr=0.1, byzantine=2, attack="badnets"
)


class Constant(nn.Module):
    """Predicts class ``label`` of ``classes`` for every input."""

    def __init__(self, label: int, classes: int = 10) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), classes) * 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def _tiny(classes: int = 4, m: int = 40, d: int = 6, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        name="tiny",
        x_train=torch.randn(3 * m, d, generator=g),
        y_train=torch.randint(0, classes, (3 * m,), generator=g),
        x_test=torch.randn(m, d, generator=g),
        y_test=torch.randint(0, classes, (m,), generator=g),
        num_classes=classes,
        groups_train=torch.zeros(3 * m, dtype=torch.int64),
    )


@pytest.mark.parametrize("target", [0, 3])
def test_asr_is_one_for_the_target_and_zero_for_another_class(target: int) -> None:
    cfg = dataclasses.replace(DIGITS, attack=f"badnets:target={target}")
    dataset = load_dataset("digits")
    x, y = eval_split(dataset)
    triggered = backdoor_eval_set(cfg, dataset, x, y)
    assert triggered is not None
    xs, ys = triggered
    assert len(xs) == int((y != target).sum()) > 0  # the target's own rows are left out
    assert bool((ys == target).all())
    assert attack_success_rate(Constant(target), triggered) == 1.0
    assert attack_success_rate(Constant((target + 1) % 10), triggered) == 0.0


def test_asr_against_a_brute_force_count() -> None:
    """A random linear model on a tiny set: ASR = the triggered non-target rows it labels
    ``target``, counted one row at a time (BadNets on flat inputs: the last ``size`` features
    set to the 99th percentile of ``x_train``'s values)."""
    dataset, target, size = _tiny(), 2, 2
    cfg = dataclasses.replace(DIGITS, attack=f"badnets:target={target},size={size}")
    torch.manual_seed(1)
    model = nn.Linear(6, 4)
    with torch.no_grad():
        model.weight[target, -size:] += 0.05  # the trigger pulls towards the target, partly
    triggered = backdoor_eval_set(cfg, dataset, dataset.x_test, dataset.y_test)

    hits = rows = 0
    for x, y in zip(dataset.x_test, dataset.y_test, strict=True):
        if int(y) == target:
            continue
        stamped = x.clone()
        for j in range(6 - size, 6):  # the 99th percentile of every training value
            stamped[j] = float(np.quantile(dataset.x_train.double().numpy(), 0.99))
        rows += 1
        hits += int(int(model(stamped[None]).argmax()) == target)
    assert 0 < hits < rows  # neither trivially 0 nor 1
    assert attack_success_rate(model, triggered) == pytest.approx(hits / rows)


def test_asr_of_an_empty_set_is_nan() -> None:
    dataset = _tiny()
    only_target = torch.full_like(dataset.y_test, 1)
    cfg = dataclasses.replace(DIGITS, attack="badnets:target=1")
    triggered = backdoor_eval_set(cfg, dataset, dataset.x_test, only_target)
    assert triggered is not None and len(triggered[0]) == 0
    assert math.isnan(attack_success_rate(nn.Linear(6, 4), triggered))


@pytest.mark.parametrize(
    ("attack", "byzantine"),
    [("none", 2), ("alie", 2), ("label-flip", 2), ("sign-flip", 1), ("badnets", 0)],
)
def test_no_backdoor_no_asr(attack: str, byzantine: int) -> None:
    cfg = dataclasses.replace(DIGITS, attack=attack, byzantine=byzantine)
    dataset = _tiny()
    assert backdoor_eval_set(cfg, dataset, dataset.x_test, dataset.y_test) is None
    assert math.isnan(attack_success_rate(nn.Linear(6, 4), None))


def test_the_round_loop_records_asr_under_a_backdoor_only() -> None:
    """The local federation (the real ClientApp handlers): every round of a BadNets run has
    an ASR in [0, 1], high once the Byzantine clients poison (the server stamps the trigger
    they train with) and near 0 when they poison nothing; the final one is the last round's.
    A run without a backdoor has none (JSON null)."""
    backdoor = train_on_grid(ShuffledGrid(6, 0), DIGITS)
    asr = [r.asr for r in backdoor.rounds]
    assert len(asr) == 2 and all(0.0 <= a <= 1.0 for a in asr), asr
    assert backdoor.final["asr"] == asr[-1] == backdoor.asr
    assert backdoor.to_dict()["rounds"][0]["asr"] == asr[0]
    clean = train_on_grid(
        ShuffledGrid(6, 0), dataclasses.replace(DIGITS, attack="badnets:fraction=0")
    )
    assert max(asr) > 0.3 > 0.1 > max(r.asr for r in clean.rounds), (asr, clean.rounds)

    other = train_on_grid(ShuffledGrid(6, 0), dataclasses.replace(DIGITS, attack="sign-flip"))
    assert all(math.isnan(r.asr) for r in other.rounds) and math.isnan(other.asr)
    data = other.to_dict()
    assert data["final"]["asr"] is None and all(r["asr"] is None for r in data["rounds"])


@pytest.mark.parametrize(
    ("method", "attack"),
    [
        ("fedavg", "neurotoxin"),
        ("robust-fedavg", "neurotoxin"),
        ("robust-momentum", "badnets"),
        ("flower-median", "dba:parts=2"),
    ],
)
def test_the_batched_engine_refuses_a_backdoor_in_one_line(method: str, attack: str) -> None:
    """Neurotoxin, and a backdoor with any method but fedavg and robust-fedavg
    (tests/simulations/test_batched_backdoor.py runs the others)."""
    cfg = dataclasses.replace(DIGITS, method=method, attack=attack)
    for check in (check_batched, lambda c: check_engine("batched", [c]), Setup.build):
        with pytest.raises(ValueError, match="batched engine runs no backdoor") as info:
            check(cfg)
        assert "\n" not in str(info.value) and "--engine local" in str(info.value)
    check_batched(dataclasses.replace(cfg, byzantine=0))  # no Byzantine client: no attack
