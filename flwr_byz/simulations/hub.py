"""Data sets from the Hugging Face hub (through flwr-datasets) or saved with ``datasets``.

A source spec is ``hf:<name>[,options]`` or ``local:<dir>[,options]``:

* ``hf:<name>``: a hub data set loaded with flwr-datasets' ``FederatedDataset`` (which calls
  ``datasets.load_dataset``), e.g. ``hf:uoft-cs/cifar10``, ``hf:ylecun/mnist``,
  ``hf:zalando-datasets/fashion_mnist``, ``hf:flwrlabs/femnist``, ``hf:flwrlabs/shakespeare``.
  ``<name>`` may also be a local directory laid out as a hub repository (data files, an
  optional ``README.md`` with the ``configs`` metadata). Options ``subset=<config>`` and
  ``revision=<branch, tag or commit>`` go to ``load_dataset``.
* ``local:<dir>``: a ``DatasetDict`` (``train`` and optionally ``test`` splits) or a single
  ``Dataset`` saved with ``save_to_disk``.

Both take ``image=<column>`` and ``label=<column>`` to name the input and label columns;
otherwise the input is the first ``Image`` column, else the first of ``IMAGE_COLUMNS``, and
the label the first ``ClassLabel`` column, else the first of ``LABEL_COLUMNS``.

What the columns become:

* an image column: float ``(C, H, W)`` tensors (8-bit grey ``C = 1`` or RGB ``C = 3``; every
  image of a set must have one size), scaled to [0, 1] and normalised per channel with the
  train split's mean and standard deviation;
* a text column (strings of one length ``L``, e.g. Shakespeare's 80-character ``x``):
  uint8 ``(L,)`` token ids over ``LEAF_CHARACTERS`` (LEAF's 80-character set: id ``i`` is
  ``LEAF_CHARACTERS[i]``), any other character is ``UNKNOWN_TOKEN`` (80); ``vocab_size`` 81
  (uint8: 1/8 of int64's memory, e.g. ~340 MB instead of 2.7 GB for Shakespeare's windows;
  the models cast a batch's ids to int64 themselves, ``CharLSTM``);
* numeric columns (numbers or equal-shape arrays): float32, standardised per element with the
  train split's statistics;
* labels: a ``ClassLabel`` or non-negative integers as they are; one-character strings next to
  a text input are token ids of the same vocabulary (next-character prediction, ``num_classes
  = vocab_size``); other strings are numbered in sorted order.

The other scalar columns (``writer_id``, ``hsf_id``, ``character_id``) are kept as id columns
for ``natural:<column>`` partitions. Without a ``test`` split a fixed 20% of the rows (numpy
``default_rng(0)`` permutation) is held out as the test split, e.g. for FEMNIST and
Shakespeare, whose hub versions have a train split only.

The decoded arrays are cached once per data set as ``.npz`` (never pickle) under the
flwr-byz cache directory, so that each process (pool worker, Ray actor, ClientApp) loads
arrays instead of decoding images again. The key of a hub name is the name, ``subset``,
``revision`` and column options (delete ``hub-*.npz`` there to reload a hub set that
changed); the key of a directory also covers its files' sizes and modification times.

Without network a hub name that is in neither cache fails at once with one line (no retries:
the hub is probed first; ``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1`` skip the probe).
``flwr-byz data fetch hf:<name>`` run with network fills both caches beforehand.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from ..files import write_npz_cache

__all__ = [
    "IMAGE_COLUMNS",
    "LABEL_COLUMNS",
    "LEAF_CHARACTERS",
    "SOURCES",
    "TEST_FRACTION",
    "UNKNOWN_TOKEN",
    "VOCAB_SIZE",
    "Source",
    "load_source",
    "parse_source",
    "tokenize",
]

SOURCES: tuple[str, ...] = ("hf", "local")
"""Spec prefixes of the data sets this module loads."""

LEAF_CHARACTERS = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
"""LEAF's Shakespeare alphabet (80 characters); token id ``i`` is ``LEAF_CHARACTERS[i]``."""

UNKNOWN_TOKEN = len(LEAF_CHARACTERS)
"""Token id of every character outside ``LEAF_CHARACTERS``."""

VOCAB_SIZE = len(LEAF_CHARACTERS) + 1
assert VOCAB_SIZE <= 256, "token ids are stored as uint8"
"""Number of token ids of text data (the alphabet and ``UNKNOWN_TOKEN``)."""

IMAGE_COLUMNS: tuple[str, ...] = (
    "img",
    "image",
    "pixel_values",
    "x",
    "features",
    "feature",
    "input",
    "inputs",
)
"""Input column names tried in order when no column is an ``Image`` (case-insensitive)."""

LABEL_COLUMNS: tuple[str, ...] = ("label", "labels", "y", "character", "target", "targets")
"""Label column names tried in order when no column is a ``ClassLabel`` (case-insensitive)."""

TEST_FRACTION = 0.2
"""Share of the rows held out as the test split of a set without one."""

_HOLDOUT_SEED = 0
_CACHE_VERSION = 1  # bump when the cached arrays change meaning
_BATCH = 1000  # rows decoded per batch
_PROBE_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
_TOKEN_TABLE = np.full(128, UNKNOWN_TOKEN, dtype=np.int64)
_TOKEN_TABLE[[ord(c) for c in LEAF_CHARACTERS]] = np.arange(len(LEAF_CHARACTERS))


# ------------------------------------------------------------------------------------ specs


@dataclass(frozen=True)
class Source:
    """Where a data set comes from and which columns to read (hashable: ``load`` memoises)."""

    kind: str  # "hf" or "local"
    location: str  # hub name, or an absolute directory
    image: str | None = None
    label: str | None = None
    subset: str | None = None
    revision: str | None = None

    @property
    def spec(self) -> str:
        """The canonical spec (absolute directories, options in a fixed order)."""
        options = [
            f"{name}={value}" for name in _OPTIONS if (value := getattr(self, name)) is not None
        ]
        return ",".join([f"{self.kind}:{self.location}", *options])

    @property
    def name(self) -> str:
        """``<kind>:<location>``: how messages name the data set."""
        return f"{self.kind}:{self.location}"

    @property
    def is_directory(self) -> bool:
        return self.kind == "local" or os.path.isdir(self.location)


_OPTIONS = ("image", "label", "subset", "revision")


def _options(args: Sequence[str], spec: str) -> dict[str, str | None]:
    """``key=value`` options kept verbatim (a revision ``1.10`` or a column ``007`` is text,
    not a number)."""
    values: dict[str, str | None] = dict.fromkeys(_OPTIONS)
    for arg in (a.strip() for a in args if a.strip()):
        key, sep, value = arg.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not value.strip():
            raise ValueError(
                f"dataset spec {spec!r}: options are key=value ({', '.join(_OPTIONS)}), got {arg!r}"
            )
        if key not in values:
            raise ValueError(
                f"dataset spec {spec!r}: unknown parameter {key!r} (has {list(_OPTIONS)})"
            )
        values[key] = value.strip()
    return values


def parse_source(kind: str, args: Sequence[str], spec: str) -> Source:
    """The ``Source`` of ``<kind>:<location>[,key=value...]`` (``args`` as ``split_part``
    returns them). The location is read verbatim (no literal parsing); a ``local:`` or an
    existing ``hf:`` directory is made absolute, so every process reads the same files."""
    kind = kind.strip().lower()
    location = args[0].strip() if args else ""
    if not location or ("=" in location and not os.path.exists(location)):
        example = "hf:uoft-cs/cifar10" if kind == "hf" else "local:./my-data"
        what = "a hub data set name" if kind == "hf" else "a directory"
        raise ValueError(f"dataset spec {spec.strip()!r}: {kind}: needs {what}, e.g. {example}")
    values = _options(args[1:], spec.strip())
    if kind == "local":
        for name in ("subset", "revision"):
            if values[name] is not None:
                raise ValueError(
                    f"dataset spec {spec.strip()!r}: {name}= is for hf: data sets only"
                )
        path = Path(location).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"dataset spec {spec.strip()!r}: no directory {location!r} (local: reads a "
                f"data set saved with datasets' save_to_disk)"
            )
        location = str(path.resolve())
    elif os.path.isdir(os.path.expanduser(location)):
        location = str(Path(location).expanduser().resolve())
    return Source(kind, location, **values)


# ---------------------------------------------------------------------------------- loading


def load_source(source: Source, cache_dir: Path) -> dict[str, Any]:
    """The ``flwr_byz.simulations.datasets.Dataset`` fields of ``source``: from the ``.npz``
    cache in ``cache_dir``, else loaded, decoded and cached there (see module doc). Raises
    ``ValueError`` with one line for a data set that cannot load."""
    path = cache_dir / f"{_cache_stem(source)}.npz"
    arrays = _read_cache(path)
    if arrays is None:
        arrays = _build(source, cache_dir)
        write_npz_cache(path, arrays)
    return _fields(source, arrays)


def _cache_stem(source: Source) -> str:
    digest = hashlib.blake2b(digest_size=10)
    digest.update(json.dumps([_CACHE_VERSION, source.spec]).encode())
    if source.is_directory:  # the files themselves: a rewritten data set is decoded again
        root = Path(source.location)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for filename in sorted(filenames):
                with contextlib.suppress(OSError):
                    stat = (Path(dirpath) / filename).stat()
                    rel = os.path.relpath(os.path.join(dirpath, filename), root)
                    digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.location).name)[:40]
    return f"hub-{source.kind}-{slug}-{digest.hexdigest()}"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError):
        return None  # unreadable or stale: rebuild and overwrite
    return arrays


def _fields(source: Source, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    meta = json.loads(str(arrays["meta"]))
    kind = meta["kind"]
    x_train, x_test = arrays["x"], arrays["x_test"]
    if kind == "image":
        mean = torch.tensor(meta["mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(meta["std"], dtype=torch.float32).view(-1, 1, 1)
        xt, xs = (  # in place: one float copy of the pixels at a time
            torch.from_numpy(a)
            .permute(0, 3, 1, 2)
            .contiguous()
            .to(torch.float32)
            .div_(255)
            .sub_(mean)
            .div_(std)
            for a in (x_train, x_test)
        )
    elif kind == "tokens":
        xt, xs = (  # uint8 ids (VOCAB_SIZE <= 256): 1/8 of int64's memory; models cast
            torch.from_numpy(x_train.astype(np.uint8)),
            torch.from_numpy(x_test.astype(np.uint8)),
        )
    else:
        xt, xs = (
            torch.from_numpy(x_train.astype(np.float32)),
            torch.from_numpy(x_test.astype(np.float32)),
        )
    y_train = torch.from_numpy(arrays["y"].astype(np.int64))
    ids = {
        column: np.asarray(arrays[f"id{i}"], dtype=np.int64)
        for i, column in enumerate(meta["id_columns"])
    }
    for a in ids.values():
        a.flags.writeable = False
    return dict(
        name=source.name,
        x_train=xt.contiguous(),
        y_train=y_train,
        x_test=xs.contiguous(),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=int(meta["num_classes"]),
        groups_train=y_train,
        vocab_size=meta.get("vocab_size"),
        natural_ids=ids,
    )


def _build(source: Source, cache_dir: Path) -> dict[str, np.ndarray]:
    """Load ``source``'s splits and decode them into the cached arrays."""
    train, test = _open(source)
    features = train.features
    x_col, y_col = _columns(source, features)
    id_columns = [c for c in features if c not in (x_col, y_col) and _is_scalar_id(features[c])]
    n = len(train)
    if n == 0:
        raise ValueError(f"dataset {source.name!r}: the train split is empty")
    print(
        f"flwr-byz: decoding {source.name} ({n} train rows) once; cached in {cache_dir}",
        file=sys.stderr,
    )
    x_kind, mode = _input_kind(source, features[x_col], train, x_col)
    x = _decode(source, train, x_col, x_kind, mode)
    y_raw = _column(train, y_col)
    ids = [_column(train, c) for c in id_columns]
    if test is None:
        order = np.random.default_rng(_HOLDOUT_SEED).permutation(n)
        n_test = max(1, round(n * TEST_FRACTION))
        if n_test >= n:
            raise ValueError(
                f"dataset {source.name!r}: {n} rows and no test split: too few to hold out "
                f"{TEST_FRACTION:.0%} as the test split"
            )
        te, tr = np.sort(order[:n_test]), np.sort(order[n_test:])
        x, x_test = x[tr], x[te]
        y_raw, y_test_raw = y_raw[tr], y_raw[te]
        ids = [a[tr] for a in ids]
    else:
        missing = [c for c in (x_col, y_col) if c not in test.features]
        if missing:
            raise ValueError(
                f"dataset {source.name!r}: the test split has no column {missing[0]!r} "
                f"(columns: {', '.join(test.features)})"
            )
        x_test = _decode(source, test, x_col, x_kind, mode)
        y_test_raw = _column(test, y_col)
    y, y_test, num_classes, vocab = _labels(
        source, features[y_col], y_col, y_raw, y_test_raw, x_kind
    )
    meta: dict[str, Any] = {
        "kind": x_kind,
        "input_column": x_col,
        "label_column": y_col,
        "num_classes": num_classes,
        "vocab_size": vocab,
        "id_columns": id_columns,
    }
    if x_kind == "image":
        mean, std = _channel_stats(x)
        meta["mean"] = mean.tolist()
        meta["std"] = np.where(std > 0, std, 1.0).tolist()
    elif x_kind == "features":
        mean, std = x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        x = ((x - mean) / std).astype(np.float32)
        x_test = ((x_test - mean) / std).astype(np.float32)
    arrays = {
        "x": x,
        "y": y,
        "x_test": x_test,
        "y_test": y_test,
        "meta": np.array(json.dumps(meta)),
    }
    for i, values in enumerate(ids):
        arrays[f"id{i}"] = np.unique(values, return_inverse=True)[1].astype(np.int64).ravel()
    return arrays


def _channel_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of ``(N, H, W, C)`` uint8 pixels
    scaled to [0, 1], in float64 chunks (no float copy of the whole set)."""
    total = np.zeros(pixels.shape[-1])
    squares = np.zeros(pixels.shape[-1])
    for start in range(0, len(pixels), 4096):
        chunk = pixels[start : start + 4096].reshape(-1, pixels.shape[-1]).astype(np.float64)
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
    count = pixels.size // pixels.shape[-1]
    mean = total / count
    var = np.maximum(squares / count - mean**2, 0.0)
    return mean / 255, np.sqrt(var) / 255


# ------------------------------------------------------------------------------ opening


def _open(source: Source) -> tuple[Any, Any]:
    """``(train, test or None)`` ``datasets.Dataset`` splits of ``source``."""
    if source.kind == "local":
        return _open_saved(source)
    from flwr_datasets import FederatedDataset

    kwargs: dict[str, Any] = {}
    if source.revision is not None:
        kwargs["revision"] = source.revision
    fds = FederatedDataset(
        dataset=source.location, subset=source.subset, partitioners={}, shuffle=False, **kwargs
    )
    with _hub_access(source), _no_telemetry():
        try:
            train = fds.load_split("train")
        except ValueError as exc:
            if "is not present in the dataset's splits" not in str(exc):
                raise
            raise ValueError(f"dataset {source.name!r} has no 'train' split: {exc}") from None
        try:
            test = fds.load_split("test")
        except ValueError:
            test = None
    return train, test


def _open_saved(source: Source) -> tuple[Any, Any]:
    import datasets as hf

    try:
        saved = hf.load_from_disk(source.location)
    except FileNotFoundError as exc:
        raise ValueError(
            f"dataset {source.name!r}: not a data set saved with datasets' save_to_disk ({exc})"
        ) from None
    if isinstance(saved, hf.DatasetDict):
        if "train" not in saved:
            raise ValueError(
                f"dataset {source.name!r} has no 'train' split (splits: {', '.join(saved)})"
            )
        return saved["train"], saved.get("test")
    return saved, None


@contextlib.contextmanager
def _hub_access(source: Source) -> Iterator[None]:
    """Around a hub load: offline (cache only) when ``HF_HUB_OFFLINE`` is set or the hub does
    not answer at once (no retries), and a load that needs the missing hub fails in one line."""
    if source.is_directory:
        yield
        return
    import datasets
    import huggingface_hub

    offline = bool(datasets.config.HF_HUB_OFFLINE)
    unreachable = not offline and not _hub_reachable()
    patches = [(datasets.config, "HF_HUB_OFFLINE"), (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved = [getattr(module, name) for module, name in patches]
    if unreachable:
        for module, name in patches:
            setattr(module, name, True)
    try:
        yield
    except (ConnectionError, FileNotFoundError) as exc:
        if not (offline or unreachable):
            raise ValueError(f"dataset {source.name!r} could not be loaded: {exc}") from None
        why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the hub is unreachable"
        raise ValueError(
            f"dataset {source.name!r} is not in the Hugging Face cache "
            f"({datasets.config.HF_DATASETS_CACHE}) and {why}; fill the caches beforehand "
            f"where the hub is reachable (same HF_HOME and FLWR_BYZ_CACHE): "
            f"flwr-byz data fetch {source.spec}"
        ) from None
    finally:
        for (module, name), value in zip(patches, saved, strict=True):
            setattr(module, name, value)


def _hub_reachable() -> bool:
    """Whether the hub endpoint accepts a TCP connection within a few seconds (assumed when a
    proxy is configured)."""
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    import datasets

    url = urlparse(datasets.config.HF_ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "", port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _no_telemetry() -> Iterator[None]:
    """flwr-datasets' usage events (an HTTP POST from a background thread) skipped for our
    loads unless ``FLWR_TELEMETRY_ENABLED`` is set: runs make no network calls of their own."""
    from flwr_datasets import federated_dataset

    if "FLWR_TELEMETRY_ENABLED" in os.environ:
        yield
        return
    saved = federated_dataset.event
    federated_dataset.event = lambda *args, **kwargs: None
    try:
        yield
    finally:
        federated_dataset.event = saved


# ------------------------------------------------------------------------------ columns


def _columns(source: Source, features: Any) -> tuple[str, str]:
    import datasets as hf

    names = list(features)
    available = ", ".join(names)

    def given(column: str, what: str) -> str:
        if column not in features:
            raise ValueError(
                f"dataset {source.name!r} has no {what} column {column!r} (columns: {available})"
            )
        return column

    def named(candidates: Sequence[str], exclude: str | None = None) -> str | None:
        lower = {n.lower(): n for n in names if n != exclude}
        return next((lower[c] for c in candidates if c in lower), None)

    if source.image is not None:
        x_col = given(source.image, "image")
    else:
        images = [n for n in names if isinstance(features[n], hf.Image)]
        found = images[0] if images else named(IMAGE_COLUMNS)
        if found is None:
            raise ValueError(
                f"dataset {source.name!r}: no Image column and none named "
                f"{'/'.join(IMAGE_COLUMNS)} (columns: {available}); name the input with "
                f"image=<column>"
            )
        x_col = found
    if source.label is not None:
        y_col = given(source.label, "label")
    else:
        labels = [n for n in names if n != x_col and isinstance(features[n], hf.ClassLabel)]
        found = labels[0] if labels else named(LABEL_COLUMNS, exclude=x_col)
        if found is None:
            raise ValueError(
                f"dataset {source.name!r}: no ClassLabel column and none named "
                f"{'/'.join(LABEL_COLUMNS)} (columns: {available}); name the label with "
                f"label=<column>"
            )
        y_col = found
    if x_col == y_col:
        raise ValueError(f"dataset {source.name!r}: image and label are both column {x_col!r}")
    return x_col, y_col


def _is_scalar_id(feature: Any) -> bool:
    import datasets as hf

    if isinstance(feature, hf.ClassLabel):
        return True
    if not isinstance(feature, hf.Value):
        return False
    dtype = str(feature.dtype)
    return dtype.startswith(("int", "uint")) or dtype in ("string", "large_string")


def _input_kind(source: Source, feature: Any, split: Any, column: str) -> tuple[str, str | None]:
    """``("image", "L" or "RGB")``, ``("tokens", None)`` (strings) or ``("features", None)``
    (anything else: numbers or arrays of numbers, checked when decoded)."""
    import datasets as hf

    if isinstance(feature, hf.Image):
        first = _open_image(split.cast_column(column, hf.Image(decode=False))[0][column])
        return "image", "L" if first.mode in _GREY_MODES else "RGB"
    if isinstance(feature, hf.Value) and str(feature.dtype) in ("string", "large_string"):
        return "tokens", None
    return "features", None


def _open_image(item: Any) -> Any:
    from PIL import Image

    if item.get("bytes"):
        return Image.open(io.BytesIO(item["bytes"]))
    return Image.open(item["path"])


def _decode(source: Source, split: Any, column: str, kind: str, mode: str | None) -> np.ndarray:
    if kind == "image":
        return _decode_images(source, split, column, str(mode))
    if kind == "tokens":
        return _decode_tokens(source, split, column)
    values = split.select_columns([column]).with_format("numpy")[:][column]
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"dataset {source.name!r}: input column {column!r} does not hold equal-shape "
            f"numbers ({exc})"
        ) from None
    return array.reshape(len(split), -1) if array.ndim == 1 else array


def _decode_images(source: Source, split: Any, column: str, mode: str) -> np.ndarray:
    """``(N, H, W, C)`` uint8 pixels, every image converted to ``mode`` (``L`` or ``RGB``)."""
    import datasets as hf

    raw = split.select_columns([column]).cast_column(column, hf.Image(decode=False))
    n, out = len(raw), None
    for start in range(0, n, _BATCH):
        for j, item in enumerate(raw[start : start + _BATCH][column]):
            image = _open_image(item)
            pixels = np.asarray(image if image.mode == mode else image.convert(mode), np.uint8)
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            if out is None:
                out = np.empty((n, *pixels.shape), dtype=np.uint8)
            elif pixels.shape != out.shape[1:]:
                raise ValueError(
                    f"dataset {source.name!r}: images of different sizes in column "
                    f"{column!r} ({out.shape[2]}x{out.shape[1]} and "
                    f"{pixels.shape[1]}x{pixels.shape[0]}); resize them to one size first"
                )
            out[start + j] = pixels
    if out is None:
        raise ValueError(f"dataset {source.name!r}: a split has no rows")
    return out


def _column(split: Any, column: str) -> np.ndarray:
    """A scalar column as one numpy array (through Arrow: no per-row formatting)."""
    table = split.select_columns([column]).with_format("arrow")[:]
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False))


def _decode_tokens(source: Source, split: Any, column: str) -> np.ndarray:
    """``(N, L)`` uint8 token ids of a string column, tokenised in batches."""
    parts = [
        tokenize(batch[column], source.name).astype(np.uint8)
        for batch in split.select_columns([column]).iter(batch_size=65536)
    ]
    lengths = {p.shape[1] for p in parts}
    if not parts:
        raise ValueError(f"dataset {source.name!r}: a split has no rows")
    if len(lengths) > 1:
        raise ValueError(
            f"dataset {source.name!r}: text inputs of different lengths ({min(lengths)} to "
            f"{max(lengths)} characters); they must share one length"
        )
    return np.concatenate(parts)


def tokenize(texts: Sequence[str] | np.ndarray, name: str = "text") -> np.ndarray:
    """``(N, L)`` int64 token ids of ``N`` strings of length ``L`` (see ``LEAF_CHARACTERS``;
    other characters are ``UNKNOWN_TOKEN``)."""
    strings = [str(t) for t in texts]
    lengths = {len(s) for s in strings}
    if len(lengths) > 1:
        raise ValueError(
            f"dataset {name!r}: text inputs of different lengths ({min(lengths)} to "
            f"{max(lengths)} characters); they must share one length"
        )
    length = lengths.pop() if lengths else 0
    codes = np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32)
    ids = _TOKEN_TABLE[np.minimum(codes, 127)]
    ids[codes > 127] = UNKNOWN_TOKEN
    return ids.reshape(len(strings), length)


def _labels(
    source: Source,
    feature: Any,
    column: str,
    train: np.ndarray,
    test: np.ndarray,
    x_kind: str,
) -> tuple[np.ndarray, np.ndarray, int, int | None]:
    """``(y_train, y_test, num_classes, vocab_size)`` of the raw label values."""
    import datasets as hf

    vocab = VOCAB_SIZE if x_kind == "tokens" else None
    if train.dtype.kind in "US" or train.dtype == object:
        tr, te = train.astype(str), test.astype(str)
        if x_kind == "tokens" and all(len(s) == 1 for s in np.concatenate([tr, te])):
            return (
                tokenize(tr, source.name)[:, 0],
                tokenize(te, source.name)[:, 0],
                VOCAB_SIZE,
                vocab,
            )
        names, codes = np.unique(np.concatenate([tr, te]), return_inverse=True)
        codes = codes.astype(np.int64).ravel()
        return codes[: len(tr)], codes[len(tr) :], len(names), vocab
    if train.dtype.kind not in "iub" or train.ndim != 1:
        raise ValueError(
            f"dataset {source.name!r}: label column {column!r} must hold class ids (integers, "
            f"a ClassLabel or strings), got {train.dtype} values of shape {train.shape[1:]}"
        )
    tr, te = train.astype(np.int64), test.astype(np.int64)
    both = np.concatenate([tr, te])
    if both.size and both.min() < 0:
        raise ValueError(
            f"dataset {source.name!r}: label column {column!r} has negative values "
            f"(e.g. {int(both.min())}); class ids must be >= 0"
        )
    if isinstance(feature, hf.ClassLabel):
        classes = int(feature.num_classes)
    else:
        classes = int(both.max()) + 1 if both.size else 0
    return tr, te, max(classes, 2), vocab
