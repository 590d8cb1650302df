"""``eval_samples`` (the server evaluates on a fixed test subset) and uint8 token data sets."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from flwr_byz.simulations import datasets as ds
from flwr_byz.simulations import hub, runner
from flwr_byz.simulations.batched import engine as batched_engine
from flwr_byz.simulations.batched.grads import FunctionalModel
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.datasets import EVAL_SEED, eval_split, load_dataset
from flwr_byz.simulations.engines import run_experiment
from flwr_byz.simulations.models import build_model
from flwr_byz.simulations.presets import PRESETS
from flwr_byz.simulations.training import evaluate, float_precision, objective, train_epochs

from . import hubdata
from .hubdata import caches  # noqa: F401  (autouse fixture: fresh caches per test)

BASE = ExperimentConfig(
    dataset="digits", method="fedavg", clients=3, rounds=2, lr=0.1, batch_size=32, threads=1
)


# --- eval_split -------------------------------------------------------------------------------
def test_eval_split_is_the_whole_test_split_without_a_size() -> None:
    data = load_dataset("digits")
    n = len(data.y_test)
    for samples in (None, n, n + 1):
        x, y = eval_split(data, samples)
        assert x is data.x_test and y is data.y_test  # no copy: numbers as before


def test_eval_split_is_a_fixed_subset_of_the_test_split() -> None:
    data = load_dataset("digits")
    n = len(data.y_test)
    x, y = eval_split(data, 50)
    rows = np.sort(np.random.default_rng(EVAL_SEED).choice(n, size=50, replace=False))
    assert len(set(rows.tolist())) == 50 and EVAL_SEED == 0
    assert torch.equal(x, data.x_test[rows]) and torch.equal(y, data.y_test[rows])
    x2, y2 = eval_split(data, 50)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # the same rows at every call
    assert not torch.equal(eval_split(data, 49)[1], y[:49])  # a draw, not the first rows
    with pytest.raises(ValueError, match="eval samples must be a positive integer"):
        eval_split(data, 0)


def _recorded(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[tuple[Any, ...]]:
    """The ``(x, y, loss, accuracy)`` of every ``evaluate`` call of ``module``'s round loop."""
    calls: list[tuple[Any, ...]] = []

    def spy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        loss, acc = evaluate(model, x, y)
        calls.append((x.clone(), y.clone(), loss, acc))
        return loss, acc

    monkeypatch.setattr(module, "evaluate", spy)
    return calls


@pytest.mark.parametrize(("engine", "module"), [("local", runner), ("batched", batched_engine)])
def test_every_run_and_round_is_scored_on_the_same_subset(
    engine: str, module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _recorded(monkeypatch, module)
    data = load_dataset("digits")
    x_sub, y_sub = eval_split(data, 40)
    results = [
        run_experiment(dataclasses.replace(BASE, eval_samples=40, seed=s), engine=engine)
        for s in (0, 1)
    ]
    assert len(calls) == 4  # 2 seeds x 2 rounds
    for x, y, _, _ in calls:  # the experiment seed does not choose the rows
        assert torch.equal(x, x_sub) and torch.equal(y, y_sub)
    records = [r for result in results for r in result.rounds]
    assert [(r.loss, r.accuracy) for r in records] == [(c[2], c[3]) for c in calls]
    assert all(result.config["eval_samples"] == 40 for result in results)
    calls.clear()
    whole = run_experiment(BASE, engine=engine)  # the default: the whole test split
    assert all(torch.equal(x, data.x_test) and torch.equal(y, data.y_test) for x, y, *_ in calls)
    assert whole.config["eval_samples"] is None
    assert [r.loss for r in whole.rounds] != [r.loss for r in results[0].rounds]


def test_eval_samples_option_checks_and_round_trips() -> None:
    cfg = dataclasses.replace(BASE, eval_samples=100)
    assert cfg.resolved().eval_samples == 100
    assert dataclasses.replace(BASE, eval_samples=0).resolved().eval_samples is None  # 0: all
    run_config = cfg.to_run_config()
    assert run_config["eval-samples"] == 100
    assert ExperimentConfig.from_run_config(run_config, clients=3) == cfg
    assert BASE.to_run_config()["eval-samples"] == 0
    assert ExperimentConfig.from_run_config(BASE.to_run_config(), clients=3) == BASE
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match=r"eval_samples must be an int >= 0"):
            dataclasses.replace(BASE, eval_samples=bad).validate()


def test_presets_with_a_large_test_split_evaluate_a_subset() -> None:
    assert PRESETS["shakespeare-lstm"].setup["eval_samples"] == 10_000
    assert PRESETS["femnist-lenet"].setup["eval_samples"] == 10_000
    for name in ("cifar10-resnet20", "mnist-lenet"):  # the standard 10,000 test images
        assert "eval_samples" not in PRESETS[name].setup
        assert ExperimentConfig.from_preset(name).eval_samples is None
    # a gradient method keeps the preset's evaluation subset (a setup option)
    assert ExperimentConfig.from_preset("shakespeare-lstm", method="byz-ef21-sgdm").eval_samples


# --- uint8 token data sets --------------------------------------------------------------------
def _shakespeare(root: Path) -> str:
    hubdata.shakespeare_like(root / "shk", roles=3, per_role=10)
    return f"hf:{root / 'shk'}"


def test_token_data_sets_hold_uint8_ids_and_int64_labels(tmp_path: Path) -> None:
    data = load_dataset(_shakespeare(tmp_path))
    assert data.x_train.dtype == torch.uint8 and data.x_test.dtype == torch.uint8
    assert data.y_train.dtype == torch.int64 and data.y_test.dtype == torch.int64
    assert data.x_train.nbytes * 8 == data.x_train.long().nbytes == 8 * 24 * 80
    assert int(data.x_train.max()) < hub.VOCAB_SIZE <= 256
    assert hub.VOCAB_SIZE == 81


def test_uint8_ids_train_and_evaluate_as_int64_ids(tmp_path: Path) -> None:
    data = load_dataset(_shakespeare(tmp_path))
    x8, y = data.x_train, data.y_train
    models = []
    for x in (x8, x8.long()):
        torch.manual_seed(0)
        model = build_model("charlstm", (80,), data.num_classes, data.vocab_size)
        train_epochs(model, x, y, epochs=1, batch_size=8, lr=0.8, seed=0)
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert evaluate(models[0], data.x_test, data.y_test) == evaluate(
        models[0], data.x_test.long(), data.y_test
    )
    model = models[0]  # the clients' gradients (GradientClient's objective)
    grads = []
    for x in (x8[:6], x8[:6].long()):
        model.zero_grad()
        objective(model, x, y[:6]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))  # type: ignore[union-attr]
    assert torch.equal(grads[0], grads[1])


def test_batched_gradients_of_uint8_ids(tmp_path: Path) -> None:
    from flwr.app import ArrayRecord

    from flwr_byz.protocol.records import flatten, layout_of

    data = load_dataset(_shakespeare(tmp_path))
    torch.manual_seed(0)
    with float_precision(torch.float64):
        model = build_model("charlstm", (80,), data.num_classes, data.vocab_size)
    arrays = ArrayRecord(model.state_dict())
    fm = FunctionalModel(model, layout_of(arrays))
    index, mask = torch.tensor([[0, 1], [2, 3]]), torch.ones(2, 2, dtype=torch.bool)
    point = flatten(arrays, layout_of(arrays))
    x, y = data.x_train[:4], data.y_train[:4]
    g8, l8 = fm.gradients(point, x[index], y[index], mask)
    g64, l64 = fm.gradients(point, x.long()[index], y[index], mask)
    assert torch.equal(g8, g64) and torch.equal(l8, l64)


@pytest.mark.parametrize("engine", ["local", "batched"])
def test_a_token_run_gives_the_numbers_of_int64_ids(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _shakespeare(tmp_path)
    cfg = ExperimentConfig(
        dataset=spec, method="fedavg", clients=3, rounds=1, lr=0.8, batch_size=8, threads=1
    )
    uint8 = run_experiment(cfg, engine=engine)
    loaded = load_dataset(spec)
    assert loaded.x_train.dtype == torch.uint8
    original = hub.load_source

    def as_int64(*args: Any, **kwargs: Any) -> dict[str, Any]:
        values = original(*args, **kwargs)
        return values | {"x_train": values["x_train"].long(), "x_test": values["x_test"].long()}

    monkeypatch.setattr(hub, "load_source", as_int64)
    ds._load.cache_clear()
    ds._partitions.cache_clear()
    assert load_dataset(spec).x_train.dtype == torch.int64
    int64 = run_experiment(cfg, engine=engine)
    assert uint8.config["model"] == "charlstm"
    assert [(r.loss, r.accuracy, r.bytes_up) for r in uint8.rounds] == [
        (r.loss, r.accuracy, r.bytes_up) for r in int64.rounds
    ]
