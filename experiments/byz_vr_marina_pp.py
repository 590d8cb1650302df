"""Issue 7 experiments: Byz-VR-MARINA-PP and the Eq. (10) clipping heuristic (ALGORITHMS.md
claims C1.1 and C1.2), through the Flower simulation engine (one Ray start per group).

    .venv/bin/python experiments/byz_vr_marina_pp.py [--rounds 200] [--out results/issue7]

Writes one result JSON per run and ``table.md`` (final accuracy or optimality gap, bytes sent);
runs whose JSON exists already are not run again (delete the folder to start over).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from flwr_byz.files import write_text
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiments
from flwr_byz.simulations.result import Result

ATTACKS = ("bit-flip", "label-flip", "alie", "shift-back")
MARINA_LR = 0.1
MARINA_ALPHA = 10.0


def c12(
    rounds: int, lr: float = 1.0, partial_only: bool = False
) -> list[tuple[str, ExperimentConfig]]:
    """MNIST-1D, 20 clients (5 Byzantine), Dirichlet(1) split: RobustMomentum (worker momentum
    0.9) with and without Eq. (10) clipping, partial (4 sampled) and full participation."""
    base = ExperimentConfig(
        method="robust-momentum", dataset="mnist1d", partition="dirichlet:1.0", clients=20,
        byzantine=5, rounds=rounds, lr=lr, batch_size=32, aggregator="bucketing:2+median",
    )  # fmt: skip
    runs = []
    for attack in ATTACKS:
        for per_round, part in ((4, "partial"), (20, "full")):
            if part == "full" and partial_only:
                continue
            for clip in (None, 1 / lr):  # level ||x^k - x^{k-1}|| / lr = ||g^{k-1}||
                name = f"mnist1d robust-momentum lr={lr} {attack} {part} clip={clip is not None}"
                cfg = dataclasses.replace(
                    base, attack=attack, clients_per_round=per_round, params={"clip_alpha": clip}
                )
                runs.append((name, cfg))
    return runs


def marina(rounds: int) -> list[tuple[str, ExperimentConfig]]:
    """MNIST-1D: Byz-VR-MARINA-PP (4 sampled, clipping) and Byz-VR-MARINA (all, no clipping)
    under ShiftBack and BitFlip, and RandK(0.1) for the bytes."""
    base = ExperimentConfig(
        method="byz-vr-marina-pp", dataset="mnist1d", partition="dirichlet:1.0", clients=20,
        byzantine=5, rounds=rounds, lr=MARINA_LR, batch_size=32,
        aggregator="bucketing:2+median",
    )  # fmt: skip
    runs = []
    for attack in ("shift-back", "bit-flip"):
        runs.append(
            (
                f"mnist1d byz-vr-marina-pp {attack} partial alpha={MARINA_ALPHA}",
                dataclasses.replace(
                    base, attack=attack, clients_per_round=4, params={"alpha": MARINA_ALPHA}
                ),
            )
        )
        runs.append(
            (
                f"mnist1d byz-vr-marina-pp {attack} partial no clipping",
                dataclasses.replace(
                    base, attack=attack, clients_per_round=4, params={"alpha": None}
                ),
            )
        )
        runs.append(
            (
                f"mnist1d byz-vr-marina {attack} full no clipping",
                dataclasses.replace(
                    base, attack=attack, clients_per_round=20, params={"alpha": None}
                ),
            )
        )
    runs.append(
        (
            f"mnist1d byz-vr-marina-pp randk:0.1 shift-back partial alpha={MARINA_ALPHA}",
            dataclasses.replace(
                base,
                attack="shift-back",
                clients_per_round=4,
                compressor="randk:0.1",
                params={"alpha": MARINA_ALPHA},
            ),
        )
    )
    return runs  # fmt: skip


def c11(rounds: int) -> list[tuple[str, ExperimentConfig]]:
    """Logistic regression (l2 0.01), 15 good + 5 Byzantine clients holding the whole data set,
    Bucketing(2)+Median, ShiftBack, C = 4: alpha in {0.1, 1, 10} and no clipping."""
    base = ExperimentConfig(
        method="byz-vr-marina-pp", dataset="breast-cancer", partition="full", model="logreg",
        clients=20, byzantine=5, clients_per_round=4, rounds=rounds, lr=0.5, batch_size=32,
        weight_decay=0.01, aggregator="bucketing:2+median", attack="shift-back",
    )  # fmt: skip
    runs = []
    for alpha in (0.1, 1.0, 10.0, None):
        runs.append((f"breast-cancer byz-vr-marina-pp alpha={alpha}",
                     dataclasses.replace(base, params={"alpha": alpha})))  # fmt: skip
    runs.append(("breast-cancer byz-vr-marina-pp alpha=1.0 no attack",
                 dataclasses.replace(base, attack="none", params={"alpha": 1.0})))  # fmt: skip
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--mnist-rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("results/issue7"))
    parser.add_argument("--only", choices=("c11", "c12", "marina"), default=None)
    parser.add_argument("--momentum-lr", type=float, default=1.0)
    parser.add_argument("--partial-only", action="store_true")
    args = parser.parse_args()
    runs = []
    if args.only in (None, "c11"):
        runs += c11(args.rounds)
    if args.only in (None, "c12"):
        runs += c12(args.mnist_rounds, args.momentum_lr, args.partial_only)
    if args.only in (None, "marina"):
        runs += marina(args.mnist_rounds)
    configs = []
    for name, cfg in runs:
        slug = "-".join(name.replace("=", "").replace(":", "").split())
        configs.append(dataclasses.replace(cfg, out=str(args.out / f"{slug}.json")))
    todo = [c for c in configs if not (c.out and Path(c.out).exists())]  # resume
    run_experiments(todo)
    results = [Result.load(c.out) for c in configs if c.out]
    lines = ["| run | final accuracy (%) | optimality gap | bytes up (MB) | bytes down (MB) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for (name, _), result in zip(runs, results, strict=True):
        lines.append(_row(name, result))
    table = "\n".join(lines) + "\n"
    write_text(args.out / "table.md", table)
    print(table)


def _row(name: str, result: Result) -> str:
    f = result.final
    gap = f.get("gap")
    gap_text = "" if gap is None or gap != gap else f"{gap:.2e}"
    return (
        f"| {name} | {100 * result.accuracy:.1f} | {gap_text} | "
        f"{f['bytes_up'] / 1e6:.2f} | {f['bytes_down'] / 1e6:.2f} |"
    )


if __name__ == "__main__":
    main()
