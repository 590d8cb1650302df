"""The locally prepared MNIST-format copy (``flwr_byz.reproduce.localcopy``): MNIST's hub
columns and image size, real digits in the frame, one write, reuse, the ``local:`` spec every
engine loads, and a user's real copy through ``$FLWR_BYZ_MNIST_COPY``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flwr_byz.reproduce import localcopy as lc
from flwr_byz.simulations import datasets as ds


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh decode cache and no user copy configured."""
    monkeypatch.setenv("FLWR_BYZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(lc.COPY_ENV, raising=False)
    ds._load.cache_clear()


def test_digit_images_are_mnist_shaped_and_centred() -> None:
    from sklearn.datasets import load_digits

    pixels, labels = lc.digit_images()
    assert pixels.shape == (1797, 28, 28) and pixels.dtype == np.uint8
    assert labels.tolist() == load_digits().target.tolist()
    # the digit lies in the central 20x20 box; the 4-pixel border is black like MNIST's
    inner = np.zeros((28, 28), dtype=bool)
    inner[4:24, 4:24] = True
    assert pixels[:, ~inner].max() == 0 and pixels[:, inner].max() == 255
    # upscaled, not made up: shrinking back to 8x8 recovers the original image
    from PIL import Image

    back = np.asarray(Image.fromarray(pixels[7, 4:24, 4:24]).resize((8, 8), Image.BOX), float)
    original = load_digits().images[7] * 255 / 16
    assert np.abs(back - original).mean() < 25


def test_prepared_copy_written_once_loads_like_mnist(tmp_path: Path) -> None:
    import datasets as hf

    spec = lc.prepared_copy(tmp_path / "work")
    target = (tmp_path / "work" / lc.DIRNAME).resolve()
    assert spec == f"local:{target}"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [lc.DIRNAME]  # no temp left
    saved = hf.load_from_disk(str(target))
    assert set(saved) == {"train", "test"}
    assert isinstance(saved["train"].features["image"], hf.Image)
    assert saved["train"].features["label"].names == [str(k) for k in range(10)]
    first = saved["test"][0]["image"]
    assert (first.mode, first.size) == ("L", (28, 28))
    stamp = (target / "dataset_dict.json").stat().st_mtime_ns
    assert lc.prepared_copy(tmp_path / "work") == spec  # reused, not written again
    assert (target / "dataset_dict.json").stat().st_mtime_ns == stamp

    data = ds.load_dataset(spec)
    assert data.x_train.shape == (1437, 1, 28, 28) and data.x_test.shape == (360, 1, 28, 28)
    assert data.num_classes == 10
    # stratified: each class keeps 20% of its digits in the test split
    assert np.bincount(data.y_test.numpy()).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    assert ds.canonical_spec(spec) == spec


def test_a_half_written_folder_is_replaced(tmp_path: Path) -> None:
    broken = tmp_path / lc.DIRNAME / "train"
    broken.mkdir(parents=True)
    (broken / "junk").write_text("x")
    spec = lc.prepared_copy(tmp_path)
    assert (tmp_path / lc.DIRNAME / "dataset_dict.json").is_file()
    assert not (broken / "junk").exists() and spec.endswith(lc.DIRNAME)


def test_a_real_copy_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "mnist"
    real.mkdir()
    monkeypatch.setenv(lc.COPY_ENV, str(real))
    assert lc.prepared_copy(tmp_path / "work") == f"local:{real.resolve()}"
    assert not (tmp_path / "work").exists()  # nothing written
    assert lc.COPY_ENV in lc.describe() and "MNIST from a local copy" in lc.describe()
    monkeypatch.setenv(lc.COPY_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"FLWR_BYZ_MNIST_COPY=.*missing.* is not a directory"):
        lc.prepared_copy(tmp_path / "work")
    monkeypatch.delenv(lc.COPY_ENV)
    assert "1,797" in lc.describe() and "28x28" in lc.describe()
