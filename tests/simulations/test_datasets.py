"""Offline datasets and flwr-datasets partitions."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import flwr_datasets.partitioner as fdp
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from flwr_byz.simulations import datasets as ds
from flwr_byz.simulations.datasets import (
    DATASETS,
    Dataset,
    client_data,
    load_dataset,
    partition_indices,
)


@pytest.fixture(scope="module", autouse=True)
def _cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the mnist1d disk cache out of the home directory (one per test session)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLWR_BYZ_CACHE", str(tmp_path_factory.getbasetemp() / "flwr-byz-cache"))
        yield


def _tensors(d: Dataset) -> list[torch.Tensor]:
    return [d.x_train, d.y_train, d.x_test, d.y_test, d.groups_train]


# (input shape, train size, test size, classes)
EXPECTED = {
    "mnist1d": ((1, 40), 4000, 1000, 10),
    "digits": ((64,), 1437, 360, 10),
    "breast-cancer": ((30,), 455, 114, 2),
    "synthetic-logreg": ((20,), 4000, 1000, 2),
}


def test_expected_covers_all_datasets() -> None:
    assert set(EXPECTED) == set(DATASETS)


@pytest.mark.parametrize("name", DATASETS)
def test_shapes_dtypes_and_labels(name: str) -> None:
    d = load_dataset(name)
    shape, n, m, classes = EXPECTED[name]
    assert d.name == name
    assert d.input_shape == shape
    assert d.x_train.shape == (n, *shape) and d.x_test.shape == (m, *shape)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_test.dtype == d.groups_train.dtype == torch.int64
    assert d.y_train.shape == d.groups_train.shape == (n,) and d.y_test.shape == (m,)
    assert d.num_classes == classes
    # every class occurs in both splits, and nothing else does
    assert set(d.y_train.tolist()) == set(d.y_test.tolist()) == set(range(classes))
    assert torch.isfinite(d.x_train).all() and torch.isfinite(d.x_test).all()
    if name != "synthetic-logreg":
        assert torch.equal(d.groups_train, d.y_train)


@pytest.mark.parametrize("name", DATASETS)
def test_identical_across_loads_and_experiment_seeds(name: str) -> None:
    first = load_dataset(name, seed=0)
    ds._load.cache_clear()  # a real reload (mnist1d: from the disk cache)
    second = load_dataset(name, seed=123)
    assert second is not first
    for a, b in zip(_tensors(first), _tensors(second), strict=True):
        assert torch.equal(a, b)


def test_memoised_in_process() -> None:
    assert load_dataset("digits") is load_dataset("digits", seed=5)
    assert load_dataset("synthetic-logreg") is load_dataset("synthetic-logreg:heterogeneity=1.0")


@pytest.mark.parametrize("name", ["digits", "breast-cancer"])
def test_sklearn_features_standardised_on_train(name: str) -> None:
    d = load_dataset(name)
    x = d.x_train.double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    assert mean.abs().max() < 1e-5
    constant = std < 1e-6  # digits has always-blank pixels: they stay 0, not NaN
    assert torch.allclose(std[~constant], torch.ones_like(std[~constant]), atol=1e-4)
    assert (x[:, constant] == 0).all()
    assert (name == "digits") == bool(constant.any())
    # the test split uses the train statistics, so it is close to but not exactly standard
    assert 0 < d.x_test.double().mean(0).abs().max() < 1.0


def test_digits_train_and_test_share_one_affine_map() -> None:
    """Undoing one per-pixel affine map turns train + test back into sklearn's raw pixels."""
    from sklearn.datasets import load_digits

    raw = load_digits().data
    d = load_dataset("digits")
    full = torch.cat([d.x_train, d.x_test]).double().numpy()
    lo, hi = full.min(0), full.max(0)
    varying = hi > lo
    scale = (raw.max(0) - raw.min(0))[varying] / (hi - lo)[varying]
    recon = (full[:, varying] - lo[varying]) * scale + raw.min(0)[varying]
    assert np.allclose(np.sort(recon, axis=0), np.sort(raw[:, varying], axis=0), atol=1e-3)


def test_mnist1d_is_the_standard_benchmark() -> None:
    d = load_dataset("mnist1d")
    # roughly balanced, globally standardised by mnist1d itself
    assert torch.bincount(d.y_train).min() > 350
    assert abs(float(d.x_train.mean())) < 0.05 and abs(float(d.x_train.std()) - 1) < 0.05


def test_mnist1d_disk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mnist1d.data

    monkeypatch.setenv("FLWR_BYZ_CACHE", str(tmp_path))
    ds._load.cache_clear()
    calls: list[int] = []
    real = mnist1d.data.make_dataset

    def counting(args=None, template=None):
        calls.append(args.num_samples)
        return real(args, template)

    monkeypatch.setattr(mnist1d.data, "make_dataset", counting)
    np.random.seed(7)  # noqa: NPY002 - mnist1d reseeds the legacy global state; it is restored
    expected_draw = np.random.rand()  # noqa: NPY002
    np.random.seed(7)  # noqa: NPY002
    first = load_dataset("mnist1d:samples=1000")
    assert np.random.rand() == expected_draw  # noqa: NPY002
    assert calls == [1000]
    assert first.x_train.shape == (800, 1, 40) and first.x_test.shape == (200, 1, 40)
    files = [p.name for p in tmp_path.iterdir()]
    assert len(files) == 1 and "samples1000" in files[0] and files[0].endswith(".npz")

    def boom(*args, **kwargs):
        raise AssertionError("make_dataset called despite the disk cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    ds._load.cache_clear()
    second = load_dataset("mnist1d:1000")  # positional option, same cache file
    for a, b in zip(_tensors(first), _tensors(second), strict=True):
        assert torch.equal(a, b)

    # a corrupt cache file is regenerated, not trusted
    (tmp_path / files[0]).write_bytes(b"not a zip file")
    monkeypatch.setattr(mnist1d.data, "make_dataset", counting)
    ds._load.cache_clear()
    third = load_dataset("mnist1d:samples=1000")
    assert calls == [1000, 1000]
    assert torch.equal(third.x_train, first.x_train)
    ds._load.cache_clear()


@pytest.mark.parametrize(
    "spec",
    [
        "cifar10",
        "mnist1d:samples=15",
        "mnist1d:samples=0",
        "mnist1d:samples=abc",
        "mnist1d:size=100",
        "digits:5",
        "breast-cancer:foo=1",
        "synthetic-logreg:heterogeneity=-1",
        "synthetic-logreg:heterogeneity=inf",
        "synthetic-logreg:heterogeneity=abc",
        "synthetic-logreg:classes=1",
        "synthetic-logreg:dim=0",
        "synthetic-logreg:groups=0",
        "synthetic-logreg:samples=5",
        "synthetic-logreg:samples=100.5",
        "synthetic-logreg:noise=1",
        "synthetic-logreg:1000,10,2,5,1.0,extra",
    ],
)
def test_bad_dataset_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=r"dataset|mnist1d|synthetic-logreg"):
        load_dataset(spec)


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        load_dataset("mnist")
    for name in DATASETS:
        assert name in str(info.value)


# ---------------------------------------------------------------------------- synthetic


def _transfer_gap(d: Dataset) -> float:
    """Mean over group pairs (a, b) of acc(fit on a, held-out a) - acc(fit on a, group b)."""
    x, y, g = d.x_train.numpy(), d.y_train.numpy(), d.groups_train.numpy()
    gaps = []
    for a, b in [(0, 1), (2, 3), (4, 5)]:
        xa, ya = x[g == a], y[g == a]
        half = len(ya) // 2
        clf = LogisticRegression(max_iter=1000).fit(xa[:half], ya[:half])
        gaps.append(clf.score(xa[half:], ya[half:]) - clf.score(x[g == b], y[g == b]))
    return float(np.mean(gaps))


def test_synthetic_zero_heterogeneity_groups_are_identical() -> None:
    d = load_dataset("synthetic-logreg:heterogeneity=0")
    y, g = d.y_train.numpy(), d.groups_train.numpy()
    assert sorted(set(g.tolist())) == list(range(10))
    shares = np.array([y[g == k].mean() for k in range(10)])
    assert np.abs(shares - y.mean()).max() < 0.1
    # feature means coincide (within sampling noise: ~400 samples per group)
    means = np.stack([d.x_train.numpy()[g == k].mean(0) for k in range(10)])
    assert np.abs(means).max() < 0.25
    assert abs(_transfer_gap(d)) < 0.05


def test_synthetic_heterogeneity_separates_groups() -> None:
    gaps = [_transfer_gap(load_dataset(f"synthetic-logreg:heterogeneity={h}")) for h in (0, 0.5, 2)]
    assert gaps[0] < 0.05
    assert gaps[1] > gaps[0] + 0.05
    assert gaps[2] > gaps[1] + 0.1
    d = load_dataset("synthetic-logreg:heterogeneity=2")
    y, g = d.y_train.numpy(), d.groups_train.numpy()
    shares = np.array([y[g == k].mean() for k in range(10)])
    assert shares.max() - shares.min() > 0.5  # label mix depends strongly on the group


def test_synthetic_heterogeneity_sweep_shares_the_random_draws() -> None:
    a = load_dataset("synthetic-logreg:heterogeneity=0")
    b = load_dataset("synthetic-logreg:heterogeneity=2")
    assert torch.equal(a.groups_train, b.groups_train)
    assert not torch.equal(a.x_train, b.x_train)
    c = load_dataset("synthetic-logreg:groups=5,heterogeneity=0")
    assert set(c.groups_train.tolist()) == set(range(5))


def test_synthetic_options() -> None:
    d = load_dataset("synthetic-logreg:samples=500,dim=7,classes=4,groups=3")
    assert d.x_train.shape == (400, 7) and d.x_test.shape == (100, 7)
    assert d.num_classes == 4 and set(d.y_train.tolist()) == set(range(4))
    assert set(d.groups_train.tolist()) == {0, 1, 2}
    # feature scale ~1 around the group means, no standardisation
    assert 0.8 < float(d.x_train.std()) < 2.5


# ---------------------------------------------------------------------------- partitions


def _check_cover(parts: list[np.ndarray], n: int, k: int) -> None:
    assert len(parts) == k
    assert all(p.dtype == np.int64 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))


def _label_skew(d: Dataset, parts: list[np.ndarray]) -> float:
    """Mean over non-empty partitions of the largest group's share."""
    g = d.groups_train.numpy()
    shares = [np.bincount(g[p]).max() / len(p) for p in parts if len(p)]
    return float(np.mean(shares))


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "dirichlet:alpha=0.5", "DIRICHLET:1"])
def test_partitions_are_disjoint_and_cover(spec: str) -> None:
    d = load_dataset("mnist1d")
    _check_cover(partition_indices(d, spec, 10, seed=0), 4000, 10)


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5"])
def test_partitions_depend_on_seed_only(spec: str) -> None:
    d = load_dataset("digits")
    a = partition_indices(d, spec, 8, seed=1)
    b = partition_indices(d, spec, 8, seed=1)
    c = partition_indices(d, spec, 8, seed=2)
    _check_cover(a, 1437, 8)  # 1437 is not a multiple of 8
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_iid_partitions_are_shuffled_and_balanced() -> None:
    d = load_dataset("mnist1d")
    parts = partition_indices(d, "iid", 10, seed=0)
    assert [len(p) for p in parts] == [400] * 10
    assert not np.array_equal(np.sort(parts[0]), np.arange(400))  # not contiguous rows
    assert _label_skew(d, parts) < 0.2  # 10 balanced classes: ~0.13


def test_dirichlet_alpha_controls_label_skew() -> None:
    d = load_dataset("mnist1d")
    skewed = _label_skew(d, partition_indices(d, "dirichlet:0.1", 20, seed=0))
    mild = _label_skew(d, partition_indices(d, "dirichlet:100", 20, seed=0))
    assert skewed > 0.5
    assert mild < 0.2
    assert skewed > mild + 0.3


def test_dirichlet_partitions_over_synthetic_groups() -> None:
    d = load_dataset("synthetic-logreg:heterogeneity=0")
    parts = partition_indices(d, "dirichlet:0.1", 10, seed=0)
    _check_cover(parts, 4000, 10)
    assert _label_skew(d, parts) > 0.5  # skewed in groups, the column partitions use
    y = d.y_train.numpy()
    label_share = np.mean([np.bincount(y[p], minlength=2).max() / len(p) for p in parts])
    assert label_share < 0.7  # while labels stay mixed: groups are identical at h=0


def test_flwr_datasets_partitioners_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, dict[str, object]]] = []
    loaded: list[int] = []

    def spy(cls: type) -> type:
        class Spy(cls):
            def __init__(self, *args: object, **kwargs: object) -> None:
                made.append((cls.__name__, kwargs))
                super().__init__(*args, **kwargs)

            def load_partition(self, partition_id: int):
                loaded.append(partition_id)
                return super().load_partition(partition_id)

        return Spy

    monkeypatch.setattr(fdp, "IidPartitioner", spy(fdp.IidPartitioner))
    monkeypatch.setattr(fdp, "DirichletPartitioner", spy(fdp.DirichletPartitioner))
    d = load_dataset("breast-cancer")
    partition_indices(d, "iid", 5)
    assert [m[0] for m in made] == ["IidPartitioner"] and loaded == list(range(5))
    made.clear()
    loaded.clear()
    partition_indices(d, "dirichlet:0.3", 4, seed=3)
    assert [m[0] for m in made] == ["DirichletPartitioner"] and loaded == list(range(4))
    kwargs = made[0][1]
    assert kwargs["partition_by"] == "group" and kwargs["alpha"] == 0.3 and kwargs["seed"] == 3


def test_dirichlet_default_min_size_falls_back_but_keeps_clients_non_empty() -> None:
    # 100 clients, alpha 0.1: the first min size (10) is infeasible, 1 works
    d = load_dataset("mnist1d")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither flwr-datasets' retries nor empties warn
        parts = partition_indices(d, "dirichlet:0.1", 100, seed=0)
    _check_cover(parts, 4000, 100)
    assert min(len(p) for p in parts) >= 1


def test_dirichlet_explicit_min_size_failure_is_explained() -> None:
    d = load_dataset("mnist1d")
    with pytest.raises(ValueError) as info:
        partition_indices(d, "dirichlet:alpha=0.01,min_size=100", 20, seed=0)
    msg = str(info.value)
    for part in ("alpha=0.01", "num_partitions=20", "4000 samples", "larger alpha", "fewer"):
        assert part in msg
    parts = partition_indices(d, "dirichlet:alpha=1.0,min_size=50", 20, seed=0)
    assert min(len(p) for p in parts) >= 50


@pytest.mark.parametrize("spec", ["iid", "dirichlet:1.0"])
def test_one_thousand_clients(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every client reads its data; the partitioning runs once for all of them."""
    calls: list[str] = []
    real = ds.partition_indices

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(ds, "partition_indices", counting)
    ds._partitions.cache_clear()
    d = load_dataset("mnist1d")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sizes = [len(client_data("mnist1d", spec, i, 1000, seed=0)[1]) for i in range(1000)]
    assert calls == [spec]
    assert sum(sizes) == 4000
    if spec == "iid":
        assert sizes == [4] * 1000 and not caught
    else:
        # ~4 samples per client: a few clients get nothing, and a warning says so
        empty = sizes.count(0)
        assert 0 < empty < 50
        assert any(f"{empty} partitions are empty" in str(w.message) for w in caught)
        x, y = client_data("mnist1d", spec, sizes.index(0), 1000, seed=0)
        assert x.shape == (0, *d.input_shape) and y.shape == (0,)
    ds._partitions.cache_clear()


def test_client_data_matches_partition_indices() -> None:
    d = load_dataset("digits")
    parts = partition_indices(d, "dirichlet:0.5", 6, seed=4)
    for i, idx in enumerate(parts):
        x, y = client_data("digits", "dirichlet:0.5", i, 6, seed=4)
        assert torch.equal(x, d.x_train[idx]) and torch.equal(y, d.y_train[idx])
    x, _ = client_data("digits", "dirichlet:0.5", 0, 6, seed=4)
    x.fill_(123.0)  # a copy: the shared dataset is untouched
    assert not torch.equal(client_data("digits", "dirichlet:0.5", 0, 6, seed=4)[0], x)


@pytest.mark.parametrize("partition_id", [-1, 6, 100])
def test_client_data_partition_id_out_of_range(partition_id: int) -> None:
    with pytest.raises(ValueError, match="partition_id"):
        client_data("digits", "iid", partition_id, 6)


@pytest.mark.parametrize(
    "spec",
    [
        "zipf:1.0",
        "iid:3",
        "dirichlet",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:abc",
        "dirichlet:inf",
        "dirichlet:min_size=3",
        "dirichlet:alpha=1,min_size=-1",
        "dirichlet:alpha=1,beta=2",
    ],
)
def test_bad_partition_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=r"partition|dirichlet|alpha"):
        partition_indices(load_dataset("breast-cancer"), spec, 4)


def test_unknown_partition_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"iid.*dirichlet"):
        partition_indices(load_dataset("breast-cancer"), "shards:2", 4)


@pytest.mark.parametrize("num_partitions", [0, -3, 456, 10_000])
def test_bad_num_partitions(num_partitions: int) -> None:
    d = load_dataset("breast-cancer")  # 455 train samples
    with pytest.raises(ValueError, match="num_partitions"):
        partition_indices(d, "iid", num_partitions)


def test_numpy_integers_are_accepted() -> None:
    x, y = client_data("breast-cancer", "iid", np.int64(2), np.int64(5))
    assert len(x) == len(y) == 91


def test_as_many_partitions_as_samples() -> None:
    d = load_dataset("breast-cancer")
    parts = partition_indices(d, "iid", 455)
    _check_cover(parts, 455, 455)
    assert {len(p) for p in parts} == {1}
