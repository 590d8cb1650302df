"""Seconds per round of each preset (``flwr-byz run --preset``) on stand-in data.

The real data sets need the network; this benchmark needs none. For each preset it writes a
stand-in data set with the hub set's columns and shapes (random pixels or characters, random
labels; ``save_to_disk``, read through ``--dataset local:<dir>``) and runs the preset's own
config on it: its model, partition, method (robust-fedavg, the default), local training and
clients per round, with ``clients = clients per round`` (every client trains every round,
each on the real data set's mean number of training samples per client, ``STANDINS``).

Per round it records the engine's own ``RoundRecord.seconds`` (sampling, the clients' local
training, aggregation) and the central evaluation on the test split, timed between rounds.
The stand-in test split is at most ``--test-rows`` rows; the evaluation of the real test split
is reported as that measurement scaled linearly to the real number of rows (labelled
``estimated``); with the preset's ``eval_samples`` the server evaluates that many rows of
either split, and the scaling is to that number. With ``--per-client N`` (or ``--quick``) the
clients hold N samples instead, with ``--max-per-client N`` at most N, and the training figure
is also given scaled linearly to the real mean (``estimated``).

Rounds after the first are averaged (the first carries one-time costs). One torch thread by
default. Results: JSON (``--out``); run ``python -m flwr_byz.bench.presets`` or ``flwr-byz
bench presets``. docs/PRESETS.md quotes the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flwr_byz.files import write_text
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.presets import PRESETS, get_preset

from .machine import engine_machine

__all__ = ["STANDINS", "StandIn", "main", "measure", "parse_args", "write_standin"]


@dataclass(frozen=True)
class StandIn:
    """The real data set's sizes a stand-in copies: the mean training samples per client of
    the preset's partition and the rows of the test split (``source``: where they come from)."""

    per_client: int
    test_rows: int
    source: str


#: preset -> the real data set's sizes (flwr-byz holds out 20 % of a train-only hub set).
STANDINS: dict[str, StandIn] = {
    "cifar10-resnet20": StandIn(
        500, 10_000, "CIFAR-10: 50,000 train / 10,000 test images; 100 clients"
    ),
    "femnist-lenet": StandIn(
        184,
        162_855,
        "flwrlabs/femnist: 814,277 rows, 20 % held out; ~3,550 writers (LEAF's count)",
    ),
    "shakespeare-lstm": StandIn(
        2_995,
        845_232,
        "flwrlabs/shakespeare: 4,226,158 rows (LEAF), 20 % held out; 1,129 roles (LEAF)",
    ),
    "mnist-lenet": StandIn(600, 10_000, "MNIST: 60,000 train / 10,000 test images; 100 clients"),
}

_LEAF_CHARACTERS = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)


def _images(rng: np.random.Generator, n: int, side: int, channels: int) -> list[Any]:
    from PIL import Image

    shape = (n, side, side) if channels == 1 else (n, side, side, channels)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"
    return [Image.fromarray(p, mode=mode) for p in pixels]


def _split(hub: str, rng: np.random.Generator, clients: int, rows: int, test: bool) -> Any:
    """One split of the stand-in of hub set ``hub``: ``rows`` rows, the hub's columns."""
    import datasets as hf

    if hub in ("uoft-cs/cifar10", "ylecun/mnist"):
        column, side, channels = ("img", 32, 3) if hub == "uoft-cs/cifar10" else ("image", 28, 1)
        features = hf.Features(
            {column: hf.Image(), "label": hf.ClassLabel(names=[str(k) for k in range(10)])}
        )
        labels = rng.integers(0, 10, size=rows).tolist()
        return hf.Dataset.from_dict(
            {column: _images(rng, rows, side, channels), "label": labels}, features=features
        )
    owner = np.arange(rows) % clients  # each client (writer, role) the same number of rows
    if hub == "flwrlabs/femnist":
        features = hf.Features(
            {
                "image": hf.Image(),
                "writer_id": hf.Value("string"),
                "hsf_id": hf.Value("int64"),
                "character": hf.ClassLabel(names=[str(k) for k in range(62)]),
            }
        )
        values = {
            "image": _images(rng, rows, 28, 1),
            "writer_id": [f"f{w:04d}_{'t' if test else 'w'}" for w in owner],
            "hsf_id": (owner % 8).tolist(),
            "character": rng.integers(0, 62, size=rows).tolist(),
        }
        return hf.Dataset.from_dict(values, features=features)
    if hub == "flwrlabs/shakespeare":
        alphabet = np.array(list(_LEAF_CHARACTERS))
        chars = alphabet[rng.integers(0, len(alphabet), size=(rows, 81))]
        values = {
            "character_id": [f"ROLE{r}" for r in owner],
            "x": ["".join(row[:80]) for row in chars],
            "y": [str(row[80]) for row in chars],
        }
        return hf.Dataset.from_dict(values)
    raise ValueError(f"no stand-in for hub data set {hub!r}")


def write_standin(
    preset: str, root: Path, clients: int, per_client: int, test_rows: int, seed: int = 0
) -> Path:
    """Write the stand-in of ``preset``'s data set to ``root`` (``save_to_disk``, ``train``
    and ``test`` splits): ``clients * per_client`` training rows, ``test_rows`` test rows,
    the hub set's columns, shapes and label counts. Returns ``root``."""
    import datasets as hf

    spec = str(get_preset(preset).setup["dataset"])
    hub = spec.removeprefix("hf:").split(",")[0]
    rng = np.random.default_rng(seed)
    splits = {
        "train": _split(hub, rng, clients, clients * per_client, test=False),
        "test": _split(hub, rng, clients, test_rows, test=True),
    }
    hf.DatasetDict(splits).save_to_disk(str(root))
    return root


def measure(
    preset: str,
    work: Path,
    rounds: int,
    per_client: int | None = None,
    test_rows: int = 10_000,
    max_per_client: int | None = None,
    device: str = "cpu",
    engine: str = "local",
) -> dict[str, Any]:
    """Seconds per round of ``preset`` on its stand-in (module doc): a JSON-ready dict."""
    from flwr_byz.simulations.engines import run_experiment

    real = STANDINS[preset]
    cfg0 = get_preset(preset).options()
    per_round = int(cfg0["clients_per_round"])
    n = real.per_client if per_client is None else per_client
    n = n if max_per_client is None else min(n, max_per_client)
    rows = min(test_rows, real.test_rows)
    data = write_standin(preset, work / preset, per_round, n, rows)
    cfg = ExperimentConfig.from_preset(
        preset,
        dataset=f"local:{data}",
        clients=per_round,
        rounds=rounds,
        threads=1,
        device=device,
    )
    stamps: list[float] = []
    start = time.perf_counter()
    result = run_experiment(cfg, on_round=lambda c, r: stamps.append(time.perf_counter()),
                            engine=engine)  # fmt: skip
    total = time.perf_counter() - start
    train = [r.seconds for r in result.rounds]
    walls = [b - a for a, b in itertools.pairwise(stamps)]
    kept = train[1:] or train  # after the first round, when there are several
    evals = [w - s for w, s in zip(walls, train[1:], strict=True)]
    train_s = statistics.fmean(kept)
    eval_s = statistics.fmean(evals) if evals else None
    scale = real.per_client / n
    evaluated = min(rows, cfg.eval_samples or rows)  # --eval-samples: a subset of the split
    real_evaluated = min(real.test_rows, cfg.eval_samples or real.test_rows)
    eval_real = None if eval_s is None else eval_s * real_evaluated / evaluated
    return {
        "preset": preset,
        "config": {k: v for k, v in result.config.items() if k not in ("out", "checkpoint")},
        "clients_per_round": per_round,
        "samples_per_client": n,
        "real_samples_per_client": real.per_client,
        "test_rows": rows,
        "real_test_rows": real.test_rows,
        "eval_samples": cfg.eval_samples,
        "evaluated_rows": evaluated,
        "real_evaluated_rows": real_evaluated,
        "sizes_source": real.source,
        "rounds": rounds,
        "train_seconds_per_round": train,
        "train_seconds_mean": train_s,
        "train_seconds_real_size_estimated": train_s * scale if scale != 1 else train_s,
        "eval_seconds_mean": eval_s,
        "eval_seconds_real_test_estimated": eval_real,
        "round_seconds_real_estimated": (
            None if eval_real is None else train_s * scale + eval_real
        ),
        "total_seconds": total,
        "final_accuracy_standin": result.rounds[-1].accuracy,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/presets.json", help="JSON output")
    p.add_argument("--presets", help=f"comma list of {','.join(PRESETS)} (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per preset (first dropped)")
    p.add_argument("--per-client", type=int, help="samples per client (default: the real mean)")
    p.add_argument("--max-per-client", type=int, help="at most this many samples per client")
    p.add_argument("--test-rows", type=int, default=10_000, help="stand-in test rows (at most)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--engine", default="local", help="local or batched")
    p.add_argument("--quick", action="store_true", help="20 samples per client, 200 test rows")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    names = [n.strip() for n in (args.presets or ",".join(PRESETS)).split(",") if n.strip()]
    for name in names:
        get_preset(name)  # unknown preset 'x'; known: ... before anything runs
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise SystemExit(f"--device must be cpu or cuda[:N], got {args.device!r}")
    per_client = 20 if args.quick and args.per_client is None else args.per_client
    test_rows = 200 if args.quick else args.test_rows
    torch.set_num_threads(args.threads)
    import datasets

    datasets.disable_progress_bars()
    out: dict[str, Any] = {
        "suite": "presets",
        "machine": engine_machine([args.device]) | {"torch_threads": args.threads},
        "standin": "random data of the real shapes (module doc); accuracy means nothing",
        "presets": {},
    }
    saved = os.environ.get("FLWR_BYZ_CACHE")
    with tempfile.TemporaryDirectory(prefix="flwr-byz-presets-") as tmp:
        os.environ["FLWR_BYZ_CACHE"] = str(Path(tmp) / "cache")  # the stand-ins' arrays
        try:
            _run(names, Path(tmp), args, per_client, test_rows, out)
        finally:
            if saved is None:
                os.environ.pop("FLWR_BYZ_CACHE", None)
            else:
                os.environ["FLWR_BYZ_CACHE"] = saved
    return out


def _run(
    names: list[str],
    tmp: Path,
    args: argparse.Namespace,
    per_client: int | None,
    test_rows: int,
    out: dict[str, Any],
) -> None:
    """Measure ``names`` one after the other, rewriting ``args.out`` after each."""
    for name in names:
        row = measure(
            name,
            tmp,
            args.rounds,
            per_client=per_client,
            test_rows=test_rows,
            max_per_client=args.max_per_client,
            device=args.device,
            engine=args.engine,
        )
        out["presets"][name] = row
        est = row["round_seconds_real_estimated"]
        print(
            f"{name}: train+aggregate {row['train_seconds_mean']:.2f} s/round "
            f"({row['clients_per_round']} clients x {row['samples_per_client']} samples), "
            f"eval {row['eval_seconds_mean'] or 0:.2f} s ({row['evaluated_rows']} rows); "
            f"real sizes: {'-' if est is None else f'{est:.1f}'} s/round (estimated)",
            flush=True,
        )
        write_text(args.out, json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
