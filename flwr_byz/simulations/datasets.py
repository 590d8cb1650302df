"""Offline datasets and their client partitions.

A dataset spec is ``name`` or ``name:key=value,...`` (see ``flwr_byz.specs``):

* ``mnist1d[:samples=5000]``: the MNIST-1D benchmark generated locally with the ``mnist1d``
  package (its own default generator seed, 42; 80/20 train/test), input ``(1, 40)``. Cached on
  disk as ``.npz`` under ``$FLWR_BYZ_CACHE`` (else ``~/.cache/flwr-byz``).
* ``digits``: scikit-learn's bundled 8x8 digits, input ``(64,)``, 10 classes.
* ``breast-cancer``: scikit-learn's bundled Wisconsin breast cancer data, input ``(30,)``.
* ``synthetic-logreg[:samples=5000,dim=20,classes=2,groups=10,heterogeneity=1.0]``: a
  mixture of ``groups`` logistic-regression tasks whose feature means and weights drift apart
  as ``heterogeneity`` grows (0: all groups identical).
* ``hf:<name>[,image=<col>,label=<col>,subset=<config>,revision=<rev>]``: a Hugging Face hub
  data set loaded through flwr-datasets' ``FederatedDataset`` (e.g. ``hf:uoft-cs/cifar10``,
  ``hf:flwrlabs/femnist``, ``hf:flwrlabs/shakespeare``), and
  ``local:<dir>[,image=<col>,label=<col>]``: one saved with ``datasets``' ``save_to_disk``.
  Images become normalised ``(C, H, W)`` floats, text uint8 token ids (``vocab_size`` set);
  see ``flwr_byz.simulations.hub`` (loaded only for these specs).

Every spec also takes ``validation=<fraction>`` (``mnist1d:validation=0.2``,
``digits:validation=0.2``, ``local:<dir>,validation=0.2``): a fixed holdout of that share of
the *training* split, stratified by label (``VALIDATION_SEED``, not the experiment seed),
becomes the evaluation split (``x_test``/``y_test``) and training uses the rest, so
hyperparameters can be tuned without the real test split ever being seen.

The data never depend on the experiment seed: a dataset is the benchmark, only its options
change it. The sklearn sets are split 80/20 (stratified, fixed seed) and standardised with the
train split's statistics. ``groups_train`` is what label-skewed partitions are drawn over: the
labels, or the group ids for ``synthetic-logreg``.

A partition spec is ``iid``, ``full`` (every client holds all the data),
``dirichlet:<alpha>`` (also ``dirichlet:alpha=<a>,min_size=<k>``) or ``natural:<column>``
(one natural id per client, e.g. ``natural:writer_id`` for FEMNIST); partitions are computed
with flwr-datasets' ``IidPartitioner``/``DirichletPartitioner``/``NaturalIdPartitioner``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
import os
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import write_npz_cache
from ..specs import build, parse_value, split_part, unknown
from .training import derive_seed, float_dtype

__all__ = [
    "DATASETS",
    "DATASET_SOURCES",
    "Dataset",
    "canonical_spec",
    "check_partition",
    "client_data",
    "eval_split",
    "load_dataset",
    "partition_indices",
    "split_validation",
]

DATASETS: tuple[str, ...] = ("mnist1d", "digits", "breast-cancer", "synthetic-logreg")
"""Built-in dataset names accepted by ``load_dataset``."""

DATASET_SOURCES: tuple[str, ...] = ("hf:<name>", "local:<dir>")
"""The data set sources ``load_dataset`` also reads (see ``flwr_byz.simulations.hub``)."""

PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "full", "natural")
"""Partition scheme names accepted by ``partition_indices``."""

_SPLIT_SEED = 0  # fixed train/test split of the sklearn datasets (not the experiment seed)
_CACHE_VERSION = 1  # bump when the cached mnist1d arrays change meaning
#: Seed of the evaluation subset (``eval_split``): fixed, not the experiment's seed, so every
#: run and every round of a setup is scored on the same test samples.
EVAL_SEED = 0
#: Seed of the validation holdout (``validation=<fraction>``): fixed, so every run, process
#: and engine holds out the same training rows.
VALIDATION_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """Train/test tensors of one dataset; do not modify them in place (they are shared).

    ``vocab_size`` is set for token inputs (uint8 ids in ``[0, vocab_size)``; models cast
    them), None otherwise;
    ``natural_ids`` maps an id column (e.g. ``writer_id``) to each train sample's id as int64
    codes (the ids in sorted order), for ``natural:<column>`` partitions.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    groups_train: torch.Tensor
    vocab_size: int | None = None
    natural_ids: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, m = len(self.x_train), len(self.x_test)
        if len(self.y_train) != n or len(self.groups_train) != n or len(self.y_test) != m:
            raise ValueError(f"dataset {self.name!r}: inconsistent sample counts")
        if any(len(ids) != n for ids in self.natural_ids.values()):
            raise ValueError(f"dataset {self.name!r}: inconsistent id column lengths")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (no batch axis)."""
        return tuple(self.x_train.shape[1:])


# ---------------------------------------------------------------------------------- options


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class _NoOptions:
    pass


@dataclass(frozen=True)
class _Mnist1dOptions:
    samples: int = 5000

    def __post_init__(self) -> None:
        _check_int("mnist1d samples", self.samples, 10)
        if self.samples % 10:
            raise ValueError(f"mnist1d samples must be a multiple of 10, got {self.samples}")


@dataclass(frozen=True)
class _SyntheticOptions:
    samples: int = 5000
    dim: int = 20
    classes: int = 2
    groups: int = 10
    heterogeneity: float = 1.0

    def __post_init__(self) -> None:
        _check_int("synthetic-logreg samples", self.samples, 10)
        _check_int("synthetic-logreg dim", self.dim, 1)
        _check_int("synthetic-logreg classes", self.classes, 2)
        _check_int("synthetic-logreg groups", self.groups, 1)
        h = self.heterogeneity
        if isinstance(h, bool) or not isinstance(h, int | float) or not 0 <= h < math.inf:
            raise ValueError(
                f"synthetic-logreg heterogeneity must be a finite number >= 0, got {h!r}"
            )
        object.__setattr__(self, "heterogeneity", float(h))


_OPTIONS: dict[str, type] = {
    "mnist1d": _Mnist1dOptions,
    "digits": _NoOptions,
    "breast-cancer": _NoOptions,
    "synthetic-logreg": _SyntheticOptions,
}


def _validation_arg(args: list[str], spec: str, first: int) -> tuple[list[str], float | None]:
    """``args`` without a ``validation=<fraction>`` option (searched from ``args[first]``:
    an ``hf:``/``local:`` location is never an option), and the fraction (None: absent)."""
    keep, fraction = list(args[:first]), None
    for arg in args[first:]:
        key, sep, value = arg.partition("=")
        if not sep or key.strip().replace("-", "_").lower() != "validation":
            keep.append(arg)
            continue
        if fraction is not None:
            raise ValueError(f"dataset spec {spec.strip()!r}: validation= given twice")
        number = parse_value(value.strip())
        if isinstance(number, bool) or not isinstance(number, int | float) or not 0 < number < 1:
            raise ValueError(
                f"dataset spec {spec.strip()!r}: validation must be a fraction of the training "
                f"split strictly between 0 and 1 (e.g. validation=0.2), got {value.strip()!r}"
            )
        fraction = float(number)
    return keep, fraction


def _parse_dataset(spec: str) -> tuple[str, Any, float | None]:
    name, args = split_part(spec)
    key = name.lower()
    if key in ("hf", "local"):
        from .hub import parse_source

        args, validation = _validation_arg(args, spec, 1)
        return key, parse_source(key, args, spec), validation
    if key not in _OPTIONS:
        raise unknown("dataset", name, [*DATASETS, *DATASET_SOURCES], spec)
    args, validation = _validation_arg(args, spec, 0)
    return key, build(_OPTIONS[key], args, spec.strip(), "dataset"), validation


def canonical_spec(spec: str) -> str:
    """``spec`` as every process reads it alike: an ``hf:``/``local:`` directory made absolute
    (options in a fixed order, ``validation=`` last); other specs unchanged. Raises
    ``ValueError`` like ``load_dataset`` for a bad spec (nothing is loaded)."""
    key, options, validation = _parse_dataset(spec)
    if key not in ("hf", "local"):
        return spec
    return str(options.spec) + (f",validation={validation}" if validation is not None else "")


# ---------------------------------------------------------------------------------- loading


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """Load the dataset described by ``spec`` (see module doc); memoised per process.

    ``seed`` is accepted for symmetry with the other builders and ignored: the data are the
    same for every experiment seed. Raises ``ValueError`` for an unknown name or option, and
    with one line for an ``hf:``/``local:`` data set that cannot load (e.g. a hub name that
    is not cached, without network).
    """
    del seed
    return _load(*_parse_dataset(spec))


def _held_out(full: Dataset, validation: float) -> Dataset:
    """``full`` with a ``validation`` holdout of its training split as its evaluation split."""
    train, held = split_validation(full.y_train, validation)
    if len(train) == 0 or len(held) == 0:
        raise ValueError(
            f"dataset {full.name!r}: validation={validation} of its {len(full.y_train)} "
            f"training samples leaves {len(held)} held out and {len(train)} to train on"
        )
    rows, out = torch.from_numpy(train), torch.from_numpy(held)
    return replace(
        full,
        x_train=full.x_train[rows],
        y_train=full.y_train[rows],
        x_test=full.x_train[out],
        y_test=full.y_train[out],
        groups_train=full.groups_train[rows],
        natural_ids={column: np.asarray(ids)[train] for column, ids in full.natural_ids.items()},
    )


def split_validation(labels: torch.Tensor, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)`` sorted int64 row indices of a ``fraction`` holdout of the rows
    with ``labels``, stratified: of each label's ``n`` rows, ``round(fraction * n)`` chosen
    at random (``VALIDATION_SEED``) are held out."""
    y = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels)
    rng = np.random.default_rng(VALIDATION_SEED)
    held = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        k = round(fraction * len(rows))
        held[rng.permutation(rows)[:k]] = True
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


@functools.lru_cache(maxsize=16)
def _load(name: str, options: Any, validation: float | None = None) -> Dataset:
    if validation is not None:
        return _held_out(_load(name, options), validation)
    if name == "mnist1d":
        return _mnist1d(options)
    if name == "synthetic-logreg":
        return _synthetic(options)
    if name in ("hf", "local"):
        from .hub import load_source

        return Dataset(**load_source(options, _cache_dir()))
    return _sklearn(name)


def _cache_dir() -> Path:
    """Directory of the on-disk dataset cache: ``$FLWR_BYZ_CACHE`` or ``~/.cache/flwr-byz``."""
    env = os.environ.get("FLWR_BYZ_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "flwr-byz"


def _mnist1d(options: _Mnist1dOptions) -> Dataset:
    arrays = _cached(
        f"mnist1d-samples{options.samples}", _SPLIT_KEYS, lambda: _generate_mnist1d(options.samples)
    )
    y = torch.from_numpy(arrays["y"].astype(np.int64))
    return Dataset(
        name="mnist1d",
        x_train=torch.from_numpy(arrays["x"].astype(np.float32)).unsqueeze(1),
        y_train=y,
        x_test=torch.from_numpy(arrays["x_test"].astype(np.float32)).unsqueeze(1),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=10,
        groups_train=y,
    )


def _generate_mnist1d(samples: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = samples  # everything else (seed 42, train_split 0.8) stays the default
    # make_dataset reseeds the global ``random``/``numpy.random`` state: restore the caller's.
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
    return {
        "x": np.asarray(data["x"], dtype=np.float32),
        "y": np.asarray(data["y"], dtype=np.int64),
        "x_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
    }


_SPLIT_KEYS = ("x", "y", "x_test", "y_test")


def _cached(
    stem: str, keys: Sequence[str], build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of ``<cache>/<stem>-v<version>.npz``; built with ``build`` and
    written there when the file is absent, unreadable or stale."""
    path = _cache_dir() / f"{stem}-v{_CACHE_VERSION}.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                return {k: data[k] for k in keys}
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale: rebuild and overwrite
    arrays = build()
    write_npz_cache(path, arrays)
    return arrays


def _sklearn(name: str) -> Dataset:
    """A bundled scikit-learn set, split and standardised; cached on disk like MNIST-1D (the
    sklearn import alone costs each ClientApp process of a deployment about 2 s)."""
    arrays = _cached(name, _SPLIT_KEYS, lambda: _split_sklearn(name))
    y_train = torch.from_numpy(arrays["y"].astype(np.int64))
    return Dataset(
        name,
        torch.from_numpy(arrays["x"].astype(np.float32)),
        y_train,
        torch.from_numpy(arrays["x_test"].astype(np.float32)),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
        max(int(y_train.max()), int(arrays["y_test"].max())) + 1,
        y_train,
    )


def _split_sklearn(name: str) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits() if name == "digits" else load_breast_cancer()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, random_state=_SPLIT_SEED, shuffle=True, stratify=y
    )
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return {
        "x": ((x_tr - mean) / std).astype(np.float32),
        "y": y_tr,
        "x_test": ((x_te - mean) / std).astype(np.float32),
        "y_test": y_te,
    }


def _synthetic(o: _SyntheticOptions) -> Dataset:
    """Mixture of logistic-regression tasks (see module doc).

    Group ``g`` has feature mean ``v_g = h * N(0, I)`` and weights ``W_g = W + h * N(0, I)``,
    ``b_g = b + h * N(0, 1)``; a sample picks ``g`` uniformly, ``x ~ N(v_g, I)`` and its label
    is drawn from ``softmax(W_g x + b_g)`` (Gumbel-max). The generator seed depends on every
    option but ``heterogeneity``, so a sweep over ``h`` reuses the same random draws.
    """
    seed = derive_seed("synthetic-logreg", o.samples, o.dim, o.classes, o.groups)
    rng = np.random.default_rng(seed)
    h, n, d, c, g = o.heterogeneity, o.samples, o.dim, o.classes, o.groups
    group = rng.integers(g, size=n)
    means = h * rng.standard_normal((g, d))
    weights = rng.standard_normal((c, d)) + h * rng.standard_normal((g, c, d))
    biases = rng.standard_normal(c) + h * rng.standard_normal((g, c))
    x = means[group] + rng.standard_normal((n, d))
    all_logits = (x @ weights.reshape(g * c, d).T).reshape(n, g, c)  # every group's logits
    logits = all_logits[np.arange(n), group] + biases[group]
    y = np.argmax(logits + rng.gumbel(size=(n, c)), axis=1)
    n_train = n * 4 // 5
    xt = torch.from_numpy(x.astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    return Dataset(
        name="synthetic-logreg",
        x_train=xt[:n_train],
        y_train=yt[:n_train],
        x_test=xt[n_train:],
        y_test=yt[n_train:],
        num_classes=c,
        groups_train=torch.from_numpy(group[:n_train].astype(np.int64)),
    )


# ------------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class _Dirichlet:
    alpha: float
    min_size: int | None = None

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, int | float) or not 0 < a < math.inf:
            raise ValueError(f"dirichlet alpha must be a finite number > 0, got {a!r}")
        object.__setattr__(self, "alpha", float(a))
        if self.min_size is not None:
            _check_int("dirichlet min_size", self.min_size, 0)


@dataclass(frozen=True)
class _Natural:
    column: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "column", str(self.column).strip())


def check_partition(
    spec: str, dataset: Dataset | None = None, num_partitions: int | None = None
) -> None:
    """Raise ``ValueError`` when ``spec`` is not a valid partition spec (nothing computed);
    with ``dataset`` (and ``num_partitions``), also when a ``natural:<column>`` partition
    names no id column of it (or has fewer ids than partitions)."""
    opts = _parse_partition(spec)
    if isinstance(opts, _Natural) and dataset is not None:
        ids = _natural_ids(dataset, opts, spec)
        if num_partitions is not None:
            _check_natural_count(dataset, opts, len(np.unique(ids)), num_partitions)


def _natural_ids(dataset: Dataset, opts: _Natural, spec: str) -> np.ndarray:
    ids = dataset.natural_ids.get(opts.column)
    if ids is None:
        have = ", ".join(dataset.natural_ids)
        columns = (
            f"its id columns: {have}"
            if have
            else "it has none (natural partitions need an hf: or local: data set with an id "
            "column, e.g. writer_id)"
        )
        raise ValueError(
            f"partition spec {spec!r}: dataset {dataset.name!r} has no id column "
            f"{opts.column!r}; {columns}"
        )
    return np.asarray(ids)


def _check_natural_count(dataset: Dataset, opts: _Natural, count: int, clients: int) -> None:
    if clients > count:
        raise ValueError(
            f"natural:{opts.column} gives one id per client and {dataset.name!r} has "
            f"{count} ids, fewer than the {clients} clients; use at most {count} clients"
        )


def _parse_partition(spec: str) -> _Dirichlet | _Natural | None:
    """``None`` for ``iid``/``full``, the Dirichlet or natural-id options otherwise."""
    name, args = split_part(spec)
    key = name.lower()
    if key in ("iid", "full"):
        if any(a.strip() for a in args):
            raise ValueError(f"partition spec {spec!r}: {key} takes no options")
        return None
    if key == "dirichlet":
        if not any(a.strip() for a in args):
            raise ValueError(f"partition spec {spec!r}: dirichlet needs alpha, e.g. dirichlet:0.5")
        try:
            opts: _Dirichlet = build(_Dirichlet, args, spec.strip(), "partition")
        except TypeError as exc:  # alpha missing
            raise ValueError(f"partition spec {spec!r}: {exc}") from exc
        return opts
    if key == "natural":
        columns = [a.strip() for a in args if a.strip()]
        if len(columns) != 1 or ("=" in columns[0] and not columns[0].startswith("column=")):
            raise ValueError(
                f"partition spec {spec!r}: natural needs one id column, e.g. natural:writer_id"
            )
        return _Natural(columns[0].removeprefix("column=").strip())
    raise unknown("partition", name, PARTITIONS, spec)


def partition_indices(
    dataset: Dataset, spec: str, num_partitions: int, seed: int = 0
) -> list[np.ndarray]:
    """Split the train indices of ``dataset`` into ``num_partitions`` disjoint int64 arrays.

    ``iid``: rows shuffled with ``seed``, then ``IidPartitioner`` (equal contiguous shards).
    ``full``: every partition is the whole training set (the Byz-VR-MARINA-PP paper's
    homogeneous setting, f_i = f; not disjoint).
    ``natural:<column>``: ``NaturalIdPartitioner`` over the id column ``column`` of
    ``dataset.natural_ids``: partition ``i`` holds the samples of one id, the ``i``-th of a
    seeded random permutation of the ids (all ids when ``num_partitions`` equals their count,
    else a random subset; the other ids' samples are unused). ``ValueError`` when there are
    fewer ids than partitions.
    ``dirichlet:<alpha>``: ``DirichletPartitioner`` over ``groups_train`` (``self_balancing``
    off, shuffled, seeded). Without ``min_size`` it asks for
    ``max(1, min(10, N // (2 * num_partitions)))`` samples per partition, then 1, then 0 when
    that is infeasible (many clients, small alpha) - so with ~N/num_partitions of a few samples
    some partitions may be empty (a warning says how many). An explicit ``min_size`` is used
    as is and a failure raises ``ValueError``. Together the partitions cover ``range(N)``.
    """
    _check_int("num_partitions", num_partitions, 1)
    opts = _parse_partition(spec)
    n = len(dataset.groups_train)
    if num_partitions > n:
        raise ValueError(
            f"num_partitions ({num_partitions}) exceeds the {n} training samples of "
            f"{dataset.name!r}"
        )
    import datasets as hf
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if split_part(spec)[0].strip().lower() == "full":  # every client holds the whole set
        return [np.arange(n, dtype=np.int64) for _ in range(num_partitions)]
    if isinstance(opts, _Natural):
        return _natural_partitions(dataset, opts, spec, num_partitions, seed)
    groups = dataset.groups_train.numpy()
    if opts is None:
        order = np.random.default_rng(seed).permutation(n)
        table = hf.Dataset.from_dict({"group": groups[order], "index": order})
        iid = IidPartitioner(num_partitions)
        iid.dataset = table.with_format("arrow")
        return [_indices(iid.load_partition(i)) for i in range(num_partitions)]

    table = hf.Dataset.from_dict({"group": groups, "index": np.arange(n)}).with_format("arrow")
    if opts.min_size is not None:
        sizes = [opts.min_size]
    else:
        sizes = sorted({max(1, min(10, n // (2 * num_partitions))), 1, 0}, reverse=True)
    for k, min_size in enumerate(sizes):
        part = DirichletPartitioner(
            num_partitions,
            partition_by="group",
            alpha=opts.alpha,
            min_partition_size=min_size,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
        part.dataset = table
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The specified min_partition_size")
                result = [_indices(part.load_partition(i)) for i in range(num_partitions)]
        except ValueError as exc:
            if k + 1 < len(sizes):
                continue
            raise ValueError(
                f"dirichlet partition failed for alpha={opts.alpha}, "
                f"num_partitions={num_partitions}, {n} samples of {dataset.name!r} "
                f"(min_size={min_size}): {exc}; use a larger alpha, fewer clients or a "
                f"smaller min_size"
            ) from exc
        empty = sum(len(r) == 0 for r in result)
        if empty:
            warnings.warn(
                f"dirichlet:{opts.alpha} over {num_partitions} partitions of {n} samples of "
                f"{dataset.name!r}: {empty} partitions are empty",
                stacklevel=2,
            )
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _natural_partitions(
    dataset: Dataset, opts: _Natural, spec: str, num_partitions: int, seed: int
) -> list[np.ndarray]:
    import contextlib
    import io

    import datasets as hf
    from flwr_datasets.partitioner import NaturalIdPartitioner

    ids = _natural_ids(dataset, opts, spec)
    table = hf.Dataset.from_dict({"natural_id": ids, "index": np.arange(len(ids))})
    part = NaturalIdPartitioner(partition_by="natural_id")
    part.dataset = table.with_format("arrow")
    _check_natural_count(dataset, opts, part.num_partitions, num_partitions)
    chosen = np.random.default_rng(seed).permutation(part.num_partitions)[:num_partitions]
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar over every sample
        return [_indices(part.load_partition(int(p))) for p in chosen]


def _indices(partition: Any) -> np.ndarray:
    return np.asarray(partition["index"], dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _partitions(
    dataset_spec: str, partition_spec: str, num_partitions: int, seed: int
) -> tuple[np.ndarray, ...]:
    """The partitions, memoised here and cached on disk (``partitions-<hash>.npz`` in the
    dataset cache): each ClientApp process of a deployment would otherwise import
    flwr-datasets and repartition (seconds per message)."""
    dataset = load_dataset(dataset_spec)
    digest = hashlib.blake2b(digest_size=12)
    for part in (dataset_spec, partition_spec, str(num_partitions), str(seed)):
        digest.update(part.encode() + b"\0")
    digest.update(np.ascontiguousarray(dataset.groups_train.numpy()).tobytes())
    for column, ids in sorted(dataset.natural_ids.items()):
        digest.update(column.encode() + b"\0" + np.ascontiguousarray(ids).tobytes())
    keys = tuple(f"p{i}" for i in range(num_partitions))

    def build() -> dict[str, np.ndarray]:
        parts = partition_indices(dataset, partition_spec, num_partitions, seed)
        return dict(zip(keys, parts, strict=True))

    arrays = _cached(f"partitions-{digest.hexdigest()}", keys, build)
    parts = [np.asarray(arrays[k], dtype=np.int64) for k in keys]
    for p in parts:
        p.flags.writeable = False
    return tuple(parts)


def eval_split(dataset: Dataset, samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` the server evaluates the global model on: the whole test split (``samples``
    None, or at least its size), else a fixed subset of ``samples`` rows (``EVAL_SEED``, not
    the experiment's seed; in test-split order)."""
    n = len(dataset.y_test)
    if samples is None or samples >= n:
        return dataset.x_test, dataset.y_test
    if isinstance(samples, bool) or samples < 1:
        raise ValueError(f"eval samples must be a positive integer or None, got {samples!r}")
    rows = np.random.default_rng(EVAL_SEED).choice(n, size=samples, replace=False)
    idx = torch.from_numpy(np.sort(rows))
    return dataset.x_test[idx], dataset.y_test[idx]


def client_data(
    dataset_spec: str, partition_spec: str, partition_id: int, num_partitions: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` train tensors of partition ``partition_id`` (copies; floating inputs in
    ``training.float_dtype()``).

    All partitions are computed once per ``(dataset_spec, partition_spec, num_partitions,
    seed)`` and memoised, so calling this for every client costs one partitioning.
    """
    _check_int("num_partitions", num_partitions, 1)
    if isinstance(partition_id, bool) or not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    data = load_dataset(dataset_spec)
    idx = torch.from_numpy(
        _partitions(dataset_spec, partition_spec, num_partitions, seed)[partition_id].copy()
    )
    x = data.x_train[idx]
    return (x.to(float_dtype()) if x.is_floating_point() else x), data.y_train[idx]
