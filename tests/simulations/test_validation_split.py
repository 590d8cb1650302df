"""``validation=<fraction>``: a fixed, stratified holdout of the training split becomes the
evaluation split of every dataset spec (built-in and ``local:``), training uses the rest, the
real test split is never seen, every engine reads it alike; bad values are one clear error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from flwr_byz.simulations import datasets as ds
from flwr_byz.simulations import runner
from flwr_byz.simulations.batched import engine as batched_engine
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.datasets import canonical_spec, client_data, load_dataset
from flwr_byz.simulations.engines import run_experiment

from . import hubdata


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FLWR_BYZ_CACHE", str(tmp_path / "flwr-byz-cache"))
    ds._load.cache_clear()
    ds._partitions.cache_clear()
    yield
    ds._load.cache_clear()
    ds._partitions.cache_clear()


def _rows(x: torch.Tensor) -> list[bytes]:
    return [row.numpy().tobytes() for row in x]


@pytest.mark.parametrize("name", ["digits", "mnist1d:samples=1000"])
def test_holdout_is_a_stratified_part_of_the_training_split(name: str) -> None:
    full = load_dataset(name)
    val = load_dataset(f"{name}{',' if ':' in name else ':'}validation=0.2")
    assert val.name == full.name and val.num_classes == full.num_classes
    # per label, round(0.2 * n) rows held out, the rest trained on
    counts = torch.bincount(full.y_train, minlength=full.num_classes)
    held = torch.bincount(val.y_test, minlength=full.num_classes)
    assert held.tolist() == [round(0.2 * int(c)) for c in counts]
    assert (torch.bincount(val.y_train, minlength=full.num_classes) + held).tolist() == (
        counts.tolist()
    )
    assert torch.equal(val.groups_train, val.y_train)
    # disjoint, together exactly the training split; the real test split is not used
    train_rows, held_rows, full_rows = _rows(val.x_train), _rows(val.x_test), _rows(full.x_train)
    assert not set(train_rows) & set(held_rows)
    assert sorted(train_rows + held_rows) == sorted(full_rows)
    assert not set(held_rows) & set(_rows(full.x_test))
    # rows keep their labels
    label = dict(zip(full_rows, full.y_train.tolist(), strict=True))
    assert [label[r] for r in held_rows] == val.y_test.tolist()


def test_holdout_is_fixed_across_loads_and_independent_of_the_seed() -> None:
    first = load_dataset("digits:validation=0.25", seed=1)
    ds._load.cache_clear()
    again = load_dataset("digits:validation=0.25", seed=7)
    assert first is not again
    assert torch.equal(first.x_test, again.x_test) and torch.equal(first.x_train, again.x_train)
    other = load_dataset("digits:validation=0.2")
    assert len(other.y_test) < len(first.y_test)  # the fraction sets the size
    train, held = ds.split_validation(torch.tensor([0] * 10 + [1] * 5), 0.4)
    assert (len(held), len(train)) == (6, 9)  # 4 of 10 and 2 of 5
    assert sorted([*train.tolist(), *held.tolist()]) == list(range(15))


def test_options_combine_and_clients_train_on_the_rest() -> None:
    val = load_dataset("synthetic-logreg:dim=5,validation=0.25,groups=2")
    assert val.input_shape == (5,) and (len(val.y_train), len(val.y_test)) == (3000, 1000)
    parts = [client_data("digits:validation=0.2", "iid", i, 4)[1] for i in range(4)]
    assert sum(len(p) for p in parts) == len(load_dataset("digits:validation=0.2").y_train)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("digits:validation=0", "strictly between 0 and 1"),
        ("digits:validation=1", "strictly between 0 and 1"),
        ("digits:validation=-0.1", "strictly between 0 and 1"),
        ("mnist1d:validation=abc", "got 'abc'"),
        ("digits:validation=true", "strictly between 0 and 1"),
        ("digits:validation=0.2,validation=0.3", "given twice"),
        ("digits:validation=0.0001", "leaves 0 held out"),
        ("digits:valdation=0.2", "unknown parameter"),
    ],
)
def test_a_bad_validation_value_is_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_dataset(spec)
    assert "\n" not in str(info.value)


def test_hub_and_local_sets_take_the_option_and_keep_it_canonical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets as hf

    monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    hubdata.femnist_like(tmp_path / "femnist", writers=4, per_writer=10)
    full = load_dataset("hf:femnist")
    val = load_dataset("hf:femnist,validation=0.25")
    assert len(val.y_train) + len(val.y_test) == len(full.y_train)
    # the writer ids follow the training rows that remain
    keep, _ = ds.split_validation(full.y_train, 0.25)
    assert val.natural_ids["writer_id"].tolist() == full.natural_ids["writer_id"][keep].tolist()
    rng = np.random.default_rng(0)
    table = {"features": rng.normal(size=(50, 4)).tolist(), "label": (np.arange(50) % 2).tolist()}
    hf.Dataset.from_dict(table).save_to_disk(str(tmp_path / "table"))
    spec = "local:table,validation=0.25"
    assert canonical_spec(spec) == f"local:{tmp_path / 'table'},validation=0.25"
    local = load_dataset(spec)
    assert (len(local.y_train), len(local.y_test)) == (30, 10)  # 40 train rows: 10 held out
    assert torch.equal(local.x_test, load_dataset(canonical_spec(spec)).x_test)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        load_dataset("local:table,validation=2")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["batched", "local"])
def test_engines_evaluate_on_the_holdout(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []

    def record(dataset: Any, samples: Any = None) -> Any:
        x, y = ds.eval_split(dataset, samples)
        seen.append(y)
        return x, y

    monkeypatch.setattr(runner, "eval_split", record)
    monkeypatch.setattr(batched_engine, "eval_split", record)
    cfg = ExperimentConfig(
        method="fedavg", dataset="digits:validation=0.2", partition="iid", clients=3,
        rounds=1, batch_size=32, local_epochs=1, lr=0.1, seed=0,
    )  # fmt: skip
    result = run_experiment(cfg, engine=engine)
    held = load_dataset("digits:validation=0.2").y_test
    assert [len(y) for y in seen] == [len(held)] and torch.equal(seen[0].cpu(), held)
    assert len(held) != len(load_dataset("digits").y_test)
    assert result.config["dataset"] == "digits:validation=0.2"
    assert np.isfinite(result.accuracy)
