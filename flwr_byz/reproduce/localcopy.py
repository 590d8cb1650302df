"""A locally prepared copy of a "Real workloads" data set for ``flwr-byz reproduce``.

The real MNIST (``hf:ylecun/mnist``) needs the network. ``prepared_copy(root)`` writes, once,
a data set in MNIST's hub format instead (what ``datasets``' ``save_to_disk`` of
``ylecun/mnist`` holds: ``train`` and ``test`` splits, an ``image`` column of 28x28 8-bit grey
PIL images and a ``label`` ``ClassLabel`` ``"0"``..``"9"``), built from real handwritten digits
that ship with scikit-learn: its 1,797 8x8 digits (values 0..16), each scaled to 0..255,
upscaled (bilinear) to 20x20 and centred in a 28x28 frame, as MNIST centres its digits in a
20x20 box. The split is stratified 80/20 with a fixed seed (1,437 train / 360 test rows). It
returns the spec ``"local:<dir>"``, which every engine loads like a saved copy of MNIST.

With ``FLWR_BYZ_MNIST_COPY=<dir>`` set (a ``save_to_disk`` of ``ylecun/mnist`` a user made
where the network is), that directory is used instead and nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "CANVAS",
    "COPY_ENV",
    "DIRNAME",
    "TEST_FRACTION",
    "describe",
    "digit_images",
    "prepared_copy",
]

#: Environment variable naming a real copy of MNIST (``save_to_disk`` of ``ylecun/mnist``).
COPY_ENV = "FLWR_BYZ_MNIST_COPY"
#: The folder under ``root`` the copy is written to (versioned: a changed recipe is a new one).
DIRNAME = "digits-mnist28-v1"
#: Side of MNIST's images and of the box its digits are centred in.
CANVAS = 28
BOX = 20
#: Share of the digits held out as the test split (stratified, seed ``_SPLIT_SEED``).
TEST_FRACTION = 0.2
_SPLIT_SEED = 0


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as MNIST-like images: ``(1797, 28, 28)`` uint8 pixels (the 8x8
    image scaled to 0..255, upscaled bilinearly to 20x20, centred on a black 28x28 canvas) and
    ``(1797,)`` int64 labels, in the bundled order."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.clip(np.rint(np.asarray(bunch.images) * (255 / 16)), 0, 255).astype(np.uint8)
    pad = (CANVAS - BOX) // 2
    out = np.zeros((len(small), CANVAS, CANVAS), dtype=np.uint8)
    for i, img in enumerate(small):
        big = Image.fromarray(img, mode="L").resize((BOX, BOX), Image.Resampling.BILINEAR)
        out[i, pad : pad + BOX, pad : pad + BOX] = np.asarray(big, dtype=np.uint8)
    return out, np.asarray(bunch.target, dtype=np.int64)


def _write(target: Path) -> None:
    """Write the copy (``DatasetDict`` of ``train``/``test``) to ``target`` (must not exist)."""
    import datasets as hf
    from PIL import Image
    from sklearn.model_selection import train_test_split

    pixels, labels = digit_images()
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)),
        test_size=TEST_FRACTION,
        random_state=_SPLIT_SEED,
        shuffle=True,
        stratify=labels,
    )
    features = hf.Features(
        {"image": hf.Image(), "label": hf.ClassLabel(names=[str(k) for k in range(10)])}
    )
    splits = {
        name: hf.Dataset.from_dict(
            {
                "image": [Image.fromarray(pixels[i], mode="L") for i in idx],
                "label": labels[idx].tolist(),
            },
            features=features,
        )
        for name, idx in (("train", np.sort(idx_train)), ("test", np.sort(idx_test)))
    }
    quiet = hf.utils.are_progress_bars_disabled()
    hf.utils.disable_progress_bars()
    try:
        hf.DatasetDict(splits).save_to_disk(str(target))
    finally:
        if not quiet:
            hf.utils.enable_progress_bars()


def prepared_copy(root: Path) -> str:
    """The spec ``"local:<dir>"`` of the MNIST-format copy: ``$FLWR_BYZ_MNIST_COPY`` when set
    (a directory; ``ValueError`` otherwise), else ``<root>/digits-mnist28-v1``, written on the
    first call (built in a temporary folder next to it and renamed into place, so a reader
    never sees half a copy and concurrent callers agree) and reused afterwards."""
    env = os.environ.get(COPY_ENV, "").strip()
    if env:
        real = Path(env).expanduser()
        if not real.is_dir():
            raise ValueError(
                f"{COPY_ENV}={env!r} is not a directory (it names a save_to_disk copy of "
                "ylecun/mnist)"
            )
        return f"local:{real.resolve()}"
    target = (Path(root) / DIRNAME).resolve()
    if not (target / "dataset_dict.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DIRNAME}-", dir=target.parent))
        try:
            _write(tmp / "data")
            if target.exists():  # a half-written folder of an older version, or a race
                if (target / "dataset_dict.json").is_file():
                    return f"local:{target}"
                shutil.rmtree(target)
            with contextlib.suppress(OSError):  # another process renamed its copy first
                os.rename(tmp / "data", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "dataset_dict.json").is_file():
            raise OSError(f"could not write the data set copy to {target}")
    return f"local:{target}"


def describe() -> str:
    """One sentence for a section's setup text: which copy the spec reads."""
    env = os.environ.get(COPY_ENV, "").strip()
    if env:
        return f"MNIST from a local copy ({COPY_ENV}={env}, a save_to_disk of ylecun/mnist)"
    return (
        "a locally prepared copy in MNIST's hub format (no network here): scikit-learn's 1,797 "
        "real handwritten 8x8 digits, upscaled to 20x20 and centred in 28x28 like MNIST's, "
        "1,437 train / 360 test images; set "
        f"{COPY_ENV}=<dir> (a save_to_disk of ylecun/mnist) to run on MNIST itself"
    )
