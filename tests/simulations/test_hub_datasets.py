"""``hf:`` and ``local:`` data sets (``flwr_byz.simulations.hub``): the real loading path
(flwr-datasets' ``FederatedDataset`` -> ``datasets.load_dataset``; ``load_from_disk``) on tiny
sets the tests write in the hub's formats (``hubdata``): decoding, normalisation, labels,
vocabulary, held-out test splits, natural-id partitions, the ``.npz`` cache and the offline
error."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from flwr_byz.simulations import datasets as ds
from flwr_byz.simulations import hub
from flwr_byz.simulations.datasets import (
    canonical_spec,
    check_partition,
    client_data,
    load_dataset,
    partition_indices,
)

from . import hubdata
from .hubdata import caches  # noqa: F401  (autouse fixture: fresh caches per test)


def _normalised(pixels: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(N, H, W[, C])`` uint8 -> ``(N, C, H, W)`` as the loader should make them."""
    x = torch.from_numpy(pixels).to(torch.float64) / 255
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return (x - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


def _train_stats(pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(pixels).to(torch.float64) / 255
    flat = x.reshape(-1, 1) if x.dim() == 3 else x.reshape(-1, x.shape[-1])
    return flat.mean(0), flat.std(0, unbiased=False)


# --- hub layouts through hf:<dir> ----------------------------------------------------------


def test_cifar_like_images_labels_and_per_channel_normalisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flwr_datasets

    made: list[dict[str, Any]] = []
    real = flwr_datasets.FederatedDataset

    def spy(**kwargs: Any) -> Any:
        made.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(flwr_datasets, "FederatedDataset", spy)
    raw = hubdata.cifar_like(tmp_path / "cifar10")
    data = load_dataset(f"hf:{tmp_path / 'cifar10'}")
    assert [m["dataset"] for m in made] == [str(tmp_path.resolve() / "cifar10")]  # the real path
    (px, labels), (px_test, labels_test) = raw["train"], raw["test"]
    assert data.x_train.shape == (30, 3, 32, 32) and data.x_train.dtype == torch.float32
    assert data.x_test.shape == (10, 3, 32, 32)
    assert data.num_classes == 10 and data.vocab_size is None
    assert data.y_train.tolist() == labels.tolist()  # hub order kept
    assert data.y_test.tolist() == labels_test.tolist()
    assert data.input_shape == (3, 32, 32)
    # per channel: the train split has mean 0 and std 1; test uses the train statistics
    per_channel = data.x_train.to(torch.float64).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(
        per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        per_channel.std(1, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    mean, std = _train_stats(px)
    torch.testing.assert_close(data.x_train.double(), _normalised(px, mean, std), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        data.x_test.double(), _normalised(px_test, mean, std), atol=1e-5, rtol=0
    )
    assert data.natural_ids == {}  # no id column next to img and label


def test_mnist_like_is_one_channel(tmp_path: Path) -> None:
    raw = hubdata.mnist_like(tmp_path / "mnist")
    data = load_dataset(f"hf:{tmp_path / 'mnist'}")
    assert data.x_train.shape == (60, 1, 28, 28) and data.x_test.shape == (30, 1, 28, 28)
    assert data.num_classes == 10  # the ClassLabel's 10 names, 3 of them used
    assert data.y_train.tolist() == raw["train"][1].tolist()
    mean, std = _train_stats(raw["train"][0])
    torch.testing.assert_close(
        data.x_test.double(), _normalised(raw["test"][0], mean, std), atol=1e-5, rtol=0
    )


def test_femnist_like_holds_out_a_fixed_test_split_and_keeps_the_writers(tmp_path: Path) -> None:
    rows = hubdata.femnist_like(tmp_path / "femnist", writers=4, per_writer=10)
    data = load_dataset(f"hf:{tmp_path / 'femnist'}")
    assert (len(data.x_train), len(data.x_test)) == (32, 8)  # 20% held out
    assert data.input_shape == (1, 28, 28) and data.num_classes == 62  # character
    assert set(data.natural_ids) == {"writer_id", "hsf_id"}
    # the held-out rows are the ones numpy's default_rng(0) permutation puts first
    order = np.random.default_rng(0).permutation(40)
    test_rows, train_rows = np.sort(order[:8]), np.sort(order[8:])
    assert data.y_train.tolist() == [rows["character"][i] for i in train_rows]
    assert data.y_test.tolist() == [rows["character"][i] for i in test_rows]
    writers = sorted(set(rows["writer_id"]))
    assert data.natural_ids["writer_id"].tolist() == [
        writers.index(rows["writer_id"][i]) for i in train_rows
    ]
    # pixel [0, 0] encodes the writer: one normalised value per writer code
    corner = data.x_train[:, 0, 0, 0]
    for code in range(4):
        assert len(set(corner[data.natural_ids["writer_id"] == code].tolist())) == 1


def test_natural_partitions_give_each_client_one_writer(tmp_path: Path) -> None:
    hubdata.femnist_like(tmp_path / "femnist", writers=4, per_writer=10)
    spec = f"hf:{tmp_path / 'femnist'}"
    data = load_dataset(spec)
    writer = data.natural_ids["writer_id"]
    parts = partition_indices(data, "natural:writer_id", 4, seed=0)
    assert [len(set(writer[p].tolist())) for p in parts] == [1, 1, 1, 1]
    assert sorted(int(writer[p[0]]) for p in parts) == [0, 1, 2, 3]  # all writers, disjoint
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(writer)))
    # fewer clients: a seeded choice of writers, each client still one writer
    two = partition_indices(data, "natural:writer_id", 2, seed=0)
    again = partition_indices(data, "natural:writer_id", 2, seed=0)
    assert [p.tolist() for p in two] == [p.tolist() for p in again]
    chosen = [int(writer[p[0]]) for p in two]
    expected = np.random.default_rng(0).permutation(4)[:2].tolist()
    assert chosen == expected
    assert {frozenset(writer[p].tolist()) for p in two} == {frozenset([c]) for c in chosen}
    # client_data follows the same partitions
    _, y = client_data(spec, "natural:writer_id", 1, 4, seed=0)
    assert torch.equal(y, data.y_train[torch.from_numpy(parts[1].copy())])
    # by the other id column
    hsf = partition_indices(data, "natural:hsf_id", 2, seed=1)
    assert [len(set(data.natural_ids["hsf_id"][p].tolist())) for p in hsf] == [1, 1]


def test_natural_partition_errors(tmp_path: Path) -> None:
    hubdata.femnist_like(tmp_path / "femnist", writers=3, per_writer=5)
    data = load_dataset(f"hf:{tmp_path / 'femnist'}")
    with pytest.raises(ValueError, match=r"3 ids, fewer than the 4 clients; use at most 3"):
        partition_indices(data, "natural:writer_id", 4)
    with pytest.raises(ValueError, match=r"3 ids, fewer than the 5 clients"):
        check_partition("natural:writer_id", data, 5)
    check_partition("natural:writer_id", data, 3)
    with pytest.raises(
        ValueError, match=r"no id column 'author'; its id columns: writer_id, hsf_id"
    ):
        check_partition("natural:author", data)
    with pytest.raises(
        ValueError, match=r"dataset 'digits' has no id column 'writer_id'; it has none"
    ):
        partition_indices(load_dataset("digits"), "natural:writer_id", 2)
    for spec in ("natural", "natural:a,b"):
        with pytest.raises(
            ValueError, match=r"natural needs one id column, e.g. natural:writer_id"
        ):
            check_partition(spec)


def test_shakespeare_like_tokens_over_the_leaf_alphabet(tmp_path: Path) -> None:
    rows = hubdata.shakespeare_like(tmp_path / "shakespeare", roles=3, per_role=10)
    data = load_dataset(f"hf:{tmp_path / 'shakespeare'}")
    assert len(hub.LEAF_CHARACTERS) == 80 and hub.UNKNOWN_TOKEN == 80 and hub.VOCAB_SIZE == 81
    assert data.vocab_size == 81 and data.num_classes == 81
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (24, 80)
    assert data.x_test.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.input_shape == (80,)
    order = np.random.default_rng(0).permutation(30)
    train_rows = np.sort(order[6:])

    def ids(text: str) -> list[int]:
        return [hub.LEAF_CHARACTERS.find(c) if c in hub.LEAF_CHARACTERS else 80 for c in text]

    assert data.x_train.tolist() == [ids(rows[i]["x"]) for i in train_rows]
    assert data.y_train.tolist() == [ids(rows[i]["y"])[0] for i in train_rows]
    assert 80 in data.x_train  # "~" and "é" are outside the alphabet
    assert hub.LEAF_CHARACTERS[int(data.x_train[0, 0])] == rows[train_rows[0]]["x"][0]
    # client_data keeps uint8 token ids (int64 labels); natural partitions by role
    x, y = client_data(f"hf:{tmp_path / 'shakespeare'}", "natural:character_id", 0, 3)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    role = data.natural_ids["character_id"]
    parts = partition_indices(data, "natural:character_id", 3)
    assert [len(set(role[p].tolist())) for p in parts] == [1, 1, 1]


def test_tokenize() -> None:
    assert hub.tokenize(["ab}", "\n é"]).tolist() == [[53, 54, 79], [0, 1, 80]]
    with pytest.raises(ValueError, match=r"text inputs of different lengths \(1 to 2 characters\)"):
        hub.tokenize(["a", "bc"])


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5"])
def test_iid_and_dirichlet_partitions_cover_a_hub_set(tmp_path: Path, spec: str) -> None:
    hubdata.mnist_like(tmp_path / "mnist", n_train=60)
    data = load_dataset(f"hf:{tmp_path / 'mnist'}")
    parts = partition_indices(data, spec, 4, seed=2)
    assert sorted(np.concatenate(parts).tolist()) == list(range(60))


# --- local: save_to_disk -------------------------------------------------------------------


def _saved_dict(root: Path, image: str = "img", label: str = "y") -> dict[str, Any]:
    import datasets as hf
    from PIL import Image

    out = {}
    splits = {}
    for split, n, seed in (("train", 45, 0), ("test", 30, 1)):
        pixels, labels = hubdata.easy_images(n, 3, 12, 3, seed)
        rows = {image: [Image.fromarray(p, mode="RGB") for p in pixels], label: labels.tolist()}
        splits[split] = hf.Dataset.from_dict(
            rows, features=hf.Features({image: hf.Image(), label: hf.Value("int64")})
        )
        out[split] = (pixels, labels)
    hf.DatasetDict(splits).save_to_disk(str(root))
    return out


def test_local_dataset_dict(tmp_path: Path) -> None:
    raw = _saved_dict(tmp_path / "saved")
    data = load_dataset(f"local:{tmp_path / 'saved'}")
    assert data.x_train.shape == (45, 3, 12, 12) and data.x_test.shape == (30, 3, 12, 12)
    assert data.num_classes == 3  # plain integers: max + 1
    assert data.y_test.tolist() == raw["test"][1].tolist()
    mean, std = _train_stats(raw["train"][0])
    torch.testing.assert_close(
        data.x_test.double(), _normalised(raw["test"][0], mean, std), atol=1e-5, rtol=0
    )


def test_local_single_dataset_numeric_features_and_string_labels(tmp_path: Path) -> None:
    import datasets as hf

    rng = np.random.default_rng(0)
    features = rng.normal(5.0, 3.0, size=(50, 4)).astype(np.float32)
    names = np.array(["cat", "dog", "ant"])[np.arange(50) % 3]
    hf.Dataset.from_dict({"features": features.tolist(), "kind": names.tolist()}).save_to_disk(
        str(tmp_path / "table")
    )
    data = load_dataset(f"local:{tmp_path / 'table'},label=kind")
    assert (len(data.x_train), len(data.x_test)) == (40, 10)  # a single Dataset: 20% held out
    assert data.input_shape == (4,) and data.x_train.dtype == torch.float32
    torch.testing.assert_close(data.x_train.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        data.x_train.std(0, unbiased=False), torch.ones(4), atol=1e-5, rtol=0
    )
    order = np.random.default_rng(0).permutation(50)
    sorted_names = ["ant", "cat", "dog"]  # strings are numbered in sorted order
    assert data.y_train.tolist() == [sorted_names.index(names[i]) for i in np.sort(order[10:])]
    assert data.num_classes == 3


def test_column_overrides_and_their_errors(tmp_path: Path) -> None:
    _saved_dict(tmp_path / "saved", image="picture", label="answer")
    base = f"local:{tmp_path / 'saved'}"
    no_label = r"no ClassLabel column and none named label/.*\(columns: picture, answer\); name"
    with pytest.raises(ValueError, match=no_label + r" the label with label=<column>"):
        load_dataset(base)
    data = load_dataset(f"{base},label=answer")  # the Image column is found by its type
    assert data.input_shape == (3, 12, 12)
    with pytest.raises(ValueError, match=r"has no image column 'img' \(columns: picture, answer\)"):
        load_dataset(f"{base},image=img,label=answer")
    with pytest.raises(ValueError, match=r"has no label column 'y' \(columns: picture, answer\)"):
        load_dataset(f"{base},image=picture,label=y")


def test_spec_errors_and_canonical_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"hf: needs a hub data set name, e.g. hf:uoft-cs/cifar10"):
        load_dataset("hf:")
    with pytest.raises(
        ValueError, match=r"no directory '/nonexistent/x' \(local: reads a data set saved"
    ):
        load_dataset("local:/nonexistent/x")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match=r"revision= is for hf: data sets only"):
        load_dataset(f"local:{tmp_path / 'd'},revision=main")
    with pytest.raises(ValueError, match=r"unknown parameter 'colour'"):
        load_dataset("hf:uoft-cs/cifar10,colour=red")
    with pytest.raises(
        ValueError, match=r"unknown dataset 'cifar10'; known: .*hf:<name>, local:<dir>"
    ):
        load_dataset("cifar10")
    monkeypatch.chdir(tmp_path)
    assert canonical_spec("local:d,label=y") == f"local:{tmp_path.resolve() / 'd'},label=y"
    assert canonical_spec("hf:uoft-cs/cifar10") == "hf:uoft-cs/cifar10"
    # options are text, verbatim (no number parsing), in a fixed order
    assert canonical_spec("hf:a/b,revision=1.10,label=007") == "hf:a/b,label=007,revision=1.10"
    with pytest.raises(
        ValueError, match=r"options are key=value \(image, label, subset, revision\)"
    ):
        canonical_spec("hf:a/b,img")
    assert canonical_spec("mnist1d:samples=1000") == "mnist1d:samples=1000"
    with pytest.raises(ValueError, match=r"not a data set saved with datasets' save_to_disk"):
        load_dataset("local:d")


# --- cache, offline --------------------------------------------------------------------------


def test_decoded_arrays_are_cached_without_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "flwr-byz-cache"  # the autouse fixture's
    hubdata.mnist_like(tmp_path / "mnist")
    spec = f"hf:{tmp_path / 'mnist'}"
    first = load_dataset(spec)
    (cached,) = cache_dir.glob("hub-hf-mnist-*.npz")
    with np.load(cached, allow_pickle=False) as npz:  # plain arrays only
        assert npz["x"].dtype == np.uint8 and npz["x"].shape == (60, 28, 28, 1)
        assert json.loads(str(npz["meta"]))["kind"] == "image"
    ds._load.cache_clear()

    def no_decoding(*args: Any) -> Any:
        raise AssertionError("decoded again")

    monkeypatch.setattr(hub, "_build", no_decoding)
    again = load_dataset(spec)
    assert torch.equal(again.x_train, first.x_train) and torch.equal(again.y_test, first.y_test)
    # a rewritten data set has another key: decoded again
    hubdata.mnist_like(tmp_path / "mnist", seed=5)
    ds._load.cache_clear()
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(spec)


def test_an_uncached_hub_name_fails_at_once_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    attempts: list[Any] = []

    def no_network(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1
    with pytest.raises(ValueError) as info:
        load_dataset("hf:nobody/not-cached-set")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("dataset 'hf:nobody/not-cached-set' is not in the Hugging Face cache")
    assert "offline mode is on (HF_HUB_OFFLINE)" in message
    assert message.endswith(
        "fill the caches beforehand where the hub is reachable (same HF_HOME and "
        "FLWR_BYZ_CACHE): flwr-byz data fetch hf:nobody/not-cached-set"
    )
    assert attempts == []  # offline: not even a probe
    # without the variable the hub is probed once; unreachable -> the same line at once
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with pytest.raises(
        ValueError,
        match=r"not in the Hugging Face cache .* and the hub is unreachable; fill the caches",
    ):
        load_dataset("hf:nobody/not-cached-set,revision=v1")
    assert len(attempts) == 1
    assert datasets.config.HF_HUB_OFFLINE is False  # restored


# --- end to end ------------------------------------------------------------------------------


def test_a_run_on_a_saved_set_learns(tmp_path: Path) -> None:
    from flwr_byz.simulations.config import ExperimentConfig
    from flwr_byz.simulations.engines import run_experiment

    _saved_dict(tmp_path / "saved")
    cfg = ExperimentConfig(
        dataset=f"local:{tmp_path / 'saved'},image=img,label=y",
        model="mlp",
        rounds=2,
        clients=3,
        seed=0,
    )
    result = run_experiment(cfg, engine="local")
    assert result.config["dataset"] == f"local:{tmp_path / 'saved'},image=img,label=y"
    assert result.accuracy > 0.6  # 3 classes: chance is 1/3


# --- CLI -------------------------------------------------------------------------------------


def _invoke(*args: object) -> Any:
    from typer.testing import CliRunner

    from flwr_byz.cli import app

    runner = CliRunner(env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    return runner.invoke(app, [str(a) for a in args])


def test_cli_data_fetch(tmp_path: Path) -> None:
    cache_dir = tmp_path / "flwr-byz-cache"  # the autouse fixture's
    hubdata.femnist_like(tmp_path / "femnist", writers=3, per_writer=5)
    result = _invoke("data", "fetch", f"hf:{tmp_path / 'femnist'}")
    assert result.exit_code == 0, result.output
    assert "12 train / 3 test samples, input (1, 28, 28), 62 classes" in result.output
    assert "id columns (natural:<column>): writer_id, hsf_id; cached" in result.output
    assert list(cache_dir.glob("hub-hf-femnist-*.npz"))
    bad = _invoke("data", "pull", "hf:x/y")
    assert bad.exit_code == 2 and "unknown data action 'pull'; known: fetch" in bad.output


def test_cli_run_fails_in_one_line_before_any_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    result = _invoke(
        "run", "--engine", "local", "--dataset", "hf:nobody/not-cached-set", "--model", "mlp",
        "--rounds", 1, "--clients", 2,
    )  # fmt: skip
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "flwr-byz data fetch hf:nobody/not-cached-set" in errors[0]
    assert not any(mark in result.output for mark in ("━", "acc —", "0/1"))


def test_prepare_checks_a_natural_partition_against_the_clients(tmp_path: Path) -> None:
    from flwr_byz.simulations.config import ExperimentConfig
    from flwr_byz.simulations.runner import prepare

    hubdata.femnist_like(tmp_path / "femnist", writers=3, per_writer=5)
    cfg = ExperimentConfig(
        dataset=f"hf:{tmp_path / 'femnist'}", partition="natural:writer_id", clients=4,
        model="mlp", rounds=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"has 3 ids, fewer than the 4 clients; use at most 3"):
        prepare(cfg)
    with pytest.raises(ValueError, match=r"no id column 'writer'; its id columns: writer_id"):
        prepare(dataclasses.replace(cfg, partition="natural:writer", clients=3))
    prepare(dataclasses.replace(cfg, clients=3))


def test_a_fetched_hub_name_loads_offline_from_the_npz_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data fetch hf:<name>`` with network, then runs without: the name resolves to a local
    copy of the repository for the fetch (the only thing patched), then nothing is opened."""
    import datasets

    hubdata.mnist_like(tmp_path / "mnist")
    real_open = hub._open
    opened: list[str] = []

    def hub_copy(source: Any) -> Any:
        opened.append(source.location)
        return real_open(dataclasses.replace(source, location=str(tmp_path / "mnist")))

    monkeypatch.setattr(hub, "_open", hub_copy)
    fetched = _invoke("data", "fetch", "hf:ylecun/mnist")
    assert fetched.exit_code == 0, fetched.output
    assert "hf:ylecun/mnist: 60 train / 30 test samples, input (1, 28, 28), 10 classes" in (
        fetched.output
    )
    assert opened == ["ylecun/mnist"]
    ds._load.cache_clear()
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    data = load_dataset("hf:ylecun/mnist")
    assert opened == ["ylecun/mnist"]  # from the .npz: the hub copy was not opened again
    assert data.name == "hf:ylecun/mnist" and data.x_train.shape == (60, 1, 28, 28)
