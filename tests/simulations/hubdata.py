"""Tiny data sets in the formats of the hub sets flwr-byz reads, built offline for the tests.

Each ``*_like(root)`` writes a directory that ``datasets.load_dataset(<dir>)`` (and so
flwr-datasets' ``FederatedDataset(dataset=<dir>)``) reads as it reads the hub repository:

* ``cifar_like``: ``uoft-cs/cifar10``: config ``plain_text``, parquet ``train``/``test``,
  ``img`` (``Image``, 32x32 RGB), ``label`` (``ClassLabel``, 10 names);
* ``mnist_like``: ``ylecun/mnist`` / ``zalando-datasets/fashion_mnist``: config ``mnist``,
  ``image`` (28x28 ``L``), ``label`` (``ClassLabel``, 10);
* ``femnist_like``: ``flwrlabs/femnist``: ``data/train-*.parquet`` only, ``image`` (28x28),
  ``writer_id`` (string), ``hsf_id`` (int64), ``character`` (``ClassLabel``, 62);
* ``shakespeare_like``: ``flwrlabs/shakespeare``: one ``shakespeare.csv`` (train only),
  ``character_id``, ``x`` (80 characters), ``y`` (the next one).

The images carry their facts in their pixels (see each builder), so that a test can check
what the loader made of them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flwr_byz.simulations import datasets as ds

CIFAR_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@pytest.fixture(autouse=True)
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Fresh flwr-byz and Hugging Face caches, and no memoised loads, for every test of a module
    that imports this fixture; yields the flwr-byz cache directory."""
    import datasets

    monkeypatch.setenv("FLWR_BYZ_CACHE", str(tmp_path / "flwr-byz-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    ds._load.cache_clear()
    ds._partitions.cache_clear()
    yield tmp_path / "flwr-byz-cache"
    ds._load.cache_clear()
    ds._partitions.cache_clear()


def _readme(path: Path, config: str, files: dict[str, str]) -> None:
    """A dataset card with the hub's ``configs`` metadata (split -> file pattern)."""
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, pattern in files.items():
        lines += [f"  - split: {split}", f"    path: {pattern}"]
    path.write_text("\n".join([*lines, "---", "", "A tiny test copy.", ""]))


def _write(rows: dict[str, list[Any]], features: Any, path: Path) -> None:
    import datasets as hf

    path.parent.mkdir(parents=True, exist_ok=True)
    hf.Dataset.from_dict(rows, features=features).to_parquet(str(path))


def easy_images(n: int, classes: int, size: int, channels: int, seed: int) -> tuple[Any, Any]:
    """``(N, H, W[, C])`` uint8 images whose class ``k`` lights band ``k`` of the rows (noise
    elsewhere), and their labels: a set a small MLP learns in a round or two."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    shape = (n, size, size) if channels == 1 else (n, size, size, channels)
    pixels = rng.integers(0, 60, size=shape, dtype=np.uint8)
    band = size // classes
    for i, k in enumerate(labels):
        pixels[i, k * band : (k + 1) * band] = 220
    return pixels, labels


def cifar_like(root: Path, n_train: int = 30, n_test: int = 10) -> dict[str, Any]:
    """Labels ``i % 10``; pixel ``[0, 0]`` of image ``i`` is ``(i, 2 i, 255 - i)``."""
    import datasets as hf
    from PIL import Image

    features = hf.Features({"img": hf.Image(), "label": hf.ClassLabel(names=CIFAR_NAMES)})
    out: dict[str, Any] = {}
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 100)):
        rng = np.random.default_rng(offset)
        pixels = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        for i in range(n):
            pixels[i, 0, 0] = (offset + i, 2 * i, 255 - i)
        labels = [(offset + i) % 10 for i in range(n)]
        images = [Image.fromarray(p, mode="RGB") for p in pixels]
        _write({"img": images, "label": labels}, features,
               root / "plain_text" / f"{split}-00000-of-00001.parquet")  # fmt: skip
        out[split] = (pixels, np.asarray(labels))
    _readme(root / "README.md", "plain_text", {s: f"plain_text/{s}-*" for s in ("train", "test")})
    return out


def mnist_like(
    root: Path, n_train: int = 60, n_test: int = 30, classes: int = 3, seed: int = 0
) -> dict[str, Any]:
    """28x28 ``L`` images of ``easy_images`` (``classes`` of the 10 names used)."""
    import datasets as hf
    from PIL import Image

    features = hf.Features(
        {"image": hf.Image(), "label": hf.ClassLabel(names=[str(d) for d in range(10)])}
    )
    out: dict[str, Any] = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        pixels, labels = easy_images(n, classes, 28, 1, s)
        images = [Image.fromarray(p, mode="L") for p in pixels]
        _write({"image": images, "label": labels.tolist()}, features,
               root / "mnist" / f"{split}-00000-of-00001.parquet")  # fmt: skip
        out[split] = (pixels, labels)
    _readme(root / "README.md", "mnist", {s: f"mnist/{s}-*" for s in ("train", "test")})
    return out


def femnist_like(root: Path, writers: int = 4, per_writer: int = 10) -> dict[str, Any]:
    """Writer ``w < 13`` (``writer_id`` ``f000w_00``, ``hsf_id`` ``w % 2``) wrote images whose
    pixel ``[0, 0]`` is ``20 w``; character ``(w + j) % 62``."""
    import datasets as hf
    from PIL import Image

    features = hf.Features(
        {
            "image": hf.Image(),
            "writer_id": hf.Value("string"),
            "hsf_id": hf.Value("int64"),
            "character": hf.ClassLabel(names=[f"c{k}" for k in range(62)]),
        }
    )
    rng = np.random.default_rng(3)
    rows: dict[str, list[Any]] = {"image": [], "writer_id": [], "hsf_id": [], "character": []}
    for w in range(writers):
        for j in range(per_writer):
            pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
            pixels[0, 0] = 20 * w
            rows["image"].append(Image.fromarray(pixels, mode="L"))
            rows["writer_id"].append(f"f{w:04d}_00")
            rows["hsf_id"].append(w % 2)
            rows["character"].append((w + j) % 62)
    _write(rows, features, root / "data" / "train-00000-of-00001.parquet")
    return rows


#: Characters of the LEAF alphabet and two outside it ("~" and "é").
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler ~ in the mind é to suffer"


def shakespeare_like(root: Path, roles: int = 3, per_role: int = 8) -> list[dict[str, str]]:
    """Rows ``x`` = 80 characters of ``TEXT`` from offset ``o``, ``y`` the next one;
    ``character_id`` ``ROLE<r>_PLAY``. Written as the hub's one CSV file and dataset card."""
    text = TEXT * 3
    rows = []
    for r in range(roles):
        for j in range(per_role):
            o = (r * per_role + j) % len(TEXT)
            rows.append({"character_id": f"ROLE{r}_PLAY", "x": text[o : o + 80], "y": text[o + 80]})
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "shakespeare.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["character_id", "x", "y"])
        writer.writeheader()
        writer.writerows(rows)
    _readme(root / "README.md", "default", {"train": "shakespeare.csv"})
    return rows
