"""flwr_byz.bench.presets: each stand-in has its hub set's columns, shapes, classes and ids
(what the preset's model and partition see), and a quick run writes the documented JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from flwr_byz.bench import presets as bench
from flwr_byz.simulations import datasets as ds
from flwr_byz.simulations.models import REFERENCE_INPUTS
from flwr_byz.simulations.presets import PRESETS

REFERENCE = {r.dataset: r for r in REFERENCE_INPUTS}


@pytest.fixture(autouse=True)
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("FLWR_BYZ_CACHE", str(tmp_path / "cache"))
    ds._load.cache_clear()
    ds._partitions.cache_clear()
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    ds._load.cache_clear()
    ds._partitions.cache_clear()


def test_every_preset_has_a_stand_in() -> None:
    assert set(bench.STANDINS) == set(PRESETS)


@pytest.mark.parametrize("name", list(PRESETS))
def test_stand_in_has_the_real_shapes(name: str, tmp_path: Path) -> None:
    root = bench.write_standin(name, tmp_path / name, clients=3, per_client=4, test_rows=5)
    data = ds.load_dataset(f"local:{root}")
    preset = PRESETS[name]
    ref = REFERENCE[str(preset.setup["dataset"])]
    assert data.input_shape == ref.shape
    assert (len(data.x_train), len(data.x_test)) == (12, 5)
    if data.vocab_size is None:
        assert data.num_classes == ref.classes
    else:  # LEAF's 80 characters and one for any other: labels are next characters
        assert data.num_classes == data.vocab_size >= ref.classes
    partition = str(preset.setup["partition"])
    if partition.startswith("natural:"):
        ids = data.natural_ids[partition.split(":", 1)[1]]
        assert sorted(np.bincount(ids).tolist()) == [4, 4, 4]


def test_quick_run_writes_the_documented_json(tmp_path: Path) -> None:
    out = tmp_path / "presets.json"
    before = os.environ.get("FLWR_BYZ_CACHE")
    bench.main(["--presets", "mnist-lenet", "--quick", "--rounds", "2", "--out", str(out)])
    assert os.environ.get("FLWR_BYZ_CACHE") == before  # restored
    data = json.loads(out.read_text())
    row = data["presets"]["mnist-lenet"]
    assert data["suite"] == "presets" and data["machine"]["torch_threads"] == 1
    assert (row["clients_per_round"], row["samples_per_client"], row["test_rows"]) == (10, 20, 200)
    assert len(row["train_seconds_per_round"]) == 2
    assert row["train_seconds_mean"] == row["train_seconds_per_round"][1]
    assert row["config"]["preset"] == "mnist-lenet" and row["config"]["model"] == "lenet"
    scale = 600 / 20  # the real mean per client over the stand-in's
    assert row["train_seconds_real_size_estimated"] == pytest.approx(
        row["train_seconds_mean"] * scale
    )
    assert row["eval_seconds_real_test_estimated"] == pytest.approx(
        row["eval_seconds_mean"] * 10_000 / 200
    )


def test_unknown_preset_fails_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'nope'; known: cifar10-resnet20"):
        bench.main(["--presets", "nope", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
