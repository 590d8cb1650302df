"""Issue 8 experiments: Byz-EF21-SGDM against Byz-EF21, BR-CSGD, RobustFedAvg(Median) and
Byz-VR-MARINA-PP (ALGORITHMS.md claims C2.1 and C2.2), on the ``local`` engine (the production
strategies and ClientApp handlers in one process; ``flwr-byz run --engine local``).

    .venv/bin/python experiments/byz_ef21_sgdm.py [--rounds 300] [--jobs 2] [--out results/issue8]
    .venv/bin/python experiments/byz_ef21_sgdm.py --only key --seed 1 --out results/issue8-seed1

Every run is one ``flwr-byz run`` configuration (its JSON holds the config); runs whose JSON
exists already are not run again (delete the folder to start over). Writes ``table.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from pathlib import Path

from common import TAIL, pct, run_all, tail_acc  # type: ignore[import-not-found]

from flwr_byz.files import write_text
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

ATTACKS = ("none", "sign-flip", "label-flip", "alie", "ipm", "min-max")
EF_METHODS = ("byz-ef21-sgdm", "byz-ef21", "br-csgd")
TOPK = ("topk:0.1", "topk:0.01")
AGGREGATOR = "nnm+cwtm"
MARINA_LR = 0.1  # issue 7's tuned value for MNIST-1D


@dataclasses.dataclass(frozen=True)
class Setting:
    """The shared part of a group of runs."""

    dataset: str
    model: str
    lr: float
    batch_size: int
    rounds: int


MNIST = Setting("mnist1d", "mlp", 1.0, 8, 300)
LOGREG = Setting("synthetic-logreg", "logreg", 0.5, 4, 200)


def base(s: Setting, **kw: object) -> ExperimentConfig:
    """20 clients, Dirichlet(1) split, full participation, NNM + CWTM, eta = 0.1."""
    return dataclasses.replace(
        ExperimentConfig(
            dataset=s.dataset, model=s.model, partition="dirichlet:1.0", clients=20,
            rounds=s.rounds, lr=s.lr, batch_size=s.batch_size, aggregator=AGGREGATOR,
            momentum=0.9, seed=0,
        ),
        **kw,
    )  # fmt: skip


def c21(
    s: Setting, byzantine: Iterable[int], topk: Iterable[str], baselines: bool = True
) -> list[ExperimentConfig]:
    """attack x compression x method (EF family), and (``baselines``) the uncompressed
    RobustFedAvg(Median) and the unbiased-compression Byz-VR-MARINA-PP."""
    runs = []
    for b in byzantine:
        for attack in ATTACKS:
            for comp in topk:
                for method in EF_METHODS:
                    runs.append(base(s, method=method, attack=attack, byzantine=b, compressor=comp))
                if not baselines:
                    continue
                # MARINA-PP needs an unbiased compressor: RandK at twice TopK's fraction sends
                # the same bytes (K values vs K values + K int32 indices).
                frac = 2 * float(comp.split(":")[1])
                runs.append(
                    base(s, method="byz-vr-marina-pp", attack=attack, byzantine=b,
                         compressor=f"randk:{frac:g}", clients_per_round=4, lr=MARINA_LR,
                         aggregator="bucketing:2+median", params={"alpha": 10.0})
                )  # fmt: skip
            if baselines:
                runs.append(
                    base(s, method="robust-fedavg", attack=attack, byzantine=b,
                         aggregator="median", local_epochs=1, lr=0.05, batch_size=32)
                )  # fmt: skip
    return runs


def c22(s: Setting, batches: Iterable[int]) -> list[ExperimentConfig]:
    """Batch sizes 1..32, TopK(0.1), no attack and SignFlip (4 Byzantine): SGDM vs EF21."""
    return [
        base(s, method=m, attack=a, byzantine=4, compressor="topk:0.1", batch_size=bs)
        for bs in batches
        for a in ("none", "sign-flip")
        for m in ("byz-ef21-sgdm", "byz-ef21")
    ]


def key_runs(s: Setting) -> list[ExperimentConfig]:
    """The EF family under no attack, SignFlip and LabelFlip, 4 Byzantine, both TopK levels
    (the cells of the 3-point criterion; rerun with ``--seed`` to see the seed noise)."""
    return [
        base(s, method=m, attack=a, byzantine=4, compressor=comp)
        for comp in TOPK
        for a in ("none", "sign-flip", "label-flip")
        for m in EF_METHODS
    ]


def name_of(cfg: ExperimentConfig) -> str:
    """A file name for a run."""
    agg = cfg.aggregator.replace("+", "_").replace(":", "")
    return (
        f"{cfg.dataset}-{cfg.method}-{cfg.compressor.replace(':', '')}-{agg}-{cfg.attack}"
        f"-b{cfg.byzantine}-bs{cfg.batch_size}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/issue8"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="override every setting's")
    parser.add_argument("--only", choices=("mnist", "logreg", "batch", "key"), default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    args = parser.parse_args()
    mnist, logreg = MNIST, LOGREG
    if args.rounds:
        mnist = dataclasses.replace(mnist, rounds=args.rounds)
        logreg = dataclasses.replace(logreg, rounds=args.rounds)
    configs: list[ExperimentConfig] = []
    if args.only == "key":
        configs += key_runs(mnist)
    if args.only in (None, "mnist"):
        configs += c21(mnist, (4,), TOPK)
    if args.only in (None, "logreg"):
        configs += c21(logreg, (4,), ("topk:0.1",))
    if args.only in (None, "batch"):
        configs += c22(mnist, (1, 4, 32))
    if args.only in (None, "mnist"):
        configs += c21(mnist, (2,), ("topk:0.1",), baselines=False)  # 10%: the EF family
    suffix = f"-s{args.seed}" if args.seed else ""
    configs = [
        dataclasses.replace(c, seed=args.seed, out=str(args.out / f"{name_of(c)}{suffix}.json"))
        for c in configs
    ]
    run_all(configs, args.jobs)
    results = [Result.load(c.out) for c in configs if c.out and Path(c.out).exists()]
    text = tables(results)
    write_text(args.out / "table.md", text)
    print(text)


# --- tables ------------------------------------------------------------------------------------
def _cfg(r: Result) -> dict[str, object]:
    return r.config


def _label(r: Result) -> str:
    c = _cfg(r)
    return f"{c['method']} {c['compressor']}" if c["compressor"] != "none" else str(c["method"])


def _cum_up(r: Result) -> list[float]:
    total, out = 0.0, []
    for rec in r.rounds:
        total += rec.bytes_up
        out.append(total)
    return out


def acc_at_bytes(r: Result, budget: float) -> float:
    """``tail_acc`` at the last round whose cumulative uplink is within ``budget``."""
    last = None
    for i, up in enumerate(_cum_up(r)):
        if up <= budget * 1.0001:
            last = i
    return float("nan") if last is None else tail_acc(r, last)


def mb_to_reach(r: Result, target: float) -> float:
    """Uplink MB until the accuracy first reaches ``target`` (inf: never)."""
    for rec, up in zip(r.rounds, _cum_up(r), strict=True):
        if rec.accuracy >= target:
            return up / 1e6
    return float("inf")


def tables(results: list[Result]) -> str:
    """The markdown tables of the issue-8 note (see main)."""
    out = []
    for dataset in sorted({str(_cfg(r)["dataset"]) for r in results}):
        runs = [r for r in results if _cfg(r)["dataset"] == dataset]
        main_batch = {MNIST.dataset: MNIST.batch_size, LOGREG.dataset: LOGREG.batch_size}
        main_runs = [
            r for r in runs
            if _cfg(r)["method"] == "robust-fedavg"
            or int(_cfg(r)["batch_size"]) == main_batch.get(dataset)
        ]  # fmt: skip
        out.append(_attack_tables(dataset, main_runs))
        batch_runs = [r for r in runs if _cfg(r)["method"] in ("byz-ef21-sgdm", "byz-ef21")]
        if len({int(_cfg(r)["batch_size"]) for r in batch_runs}) > 2:
            out.append(_batch_table(dataset, batch_runs))
    return "\n".join(out)


def _attack_tables(dataset: str, runs: list[Result]) -> str:
    lines = []
    for b in sorted({int(_cfg(r)["byzantine"]) for r in runs}):
        group = [r for r in runs if int(_cfg(r)["byzantine"]) == b]
        labels = sorted({_label(r) for r in group}, key=_order)
        lines.append(
            f"\n### {dataset}: accuracy (%, mean of the last {TAIL} rounds), {b} of 20 Byzantine\n"
        )
        lines.append("| attack | " + " | ".join(labels) + " |")
        lines.append("|---" * (len(labels) + 1) + "|")
        for attack in ATTACKS:
            cells = []
            for label in labels:
                hit = [r for r in group if _label(r) == label and _cfg(r)["attack"] == attack]
                cells.append(pct(tail_acc(hit[0])) if hit else "")
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        lines.append(f"\nChange vs the attack-free run (points), {b} Byzantine\n")
        lines.append("| attack | " + " | ".join(labels) + " |")
        lines.append("|---" * (len(labels) + 1) + "|")
        for attack in ATTACKS[1:]:
            cells = []
            for label in labels:
                hit = [r for r in group if _label(r) == label and _cfg(r)["attack"] == attack]
                ref = [r for r in group if _label(r) == label and _cfg(r)["attack"] == "none"]
                diff = 100 * (tail_acc(hit[0]) - tail_acc(ref[0])) if hit and ref else None
                cells.append("" if diff is None else f"{diff:+.1f}")
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        lines.append(_bytes_table(dataset, b, group))
    return "\n".join(lines)


def _bytes_table(dataset: str, b: int, group: list[Result]) -> str:
    """Bytes to accuracy: per method (no attack and sign-flip), uplink MB of the run, accuracy
    at Byz-EF21-SGDM TopK(0.1)'s uplink, MB until 90% of that run's accuracy."""
    ref = [
        r for r in group
        if _cfg(r)["method"] == "byz-ef21-sgdm" and _cfg(r)["compressor"] == "topk:0.1"
    ]  # fmt: skip
    lines = [f"\n{dataset}, {b} Byzantine: bytes to accuracy (uplink of all clients)\n"]
    lines.append(
        "| attack | run | uplink MB | accuracy at Byz-EF21-SGDM TopK(0.1)'s uplink | "
        "MB to reach the target |"
    )
    lines.append("|---|---|---|---|---|")
    for attack in ("none", "sign-flip"):
        base_run = [r for r in ref if _cfg(r)["attack"] == attack]
        if not base_run:
            continue
        budget = _cum_up(base_run[0])[-1]
        target = 0.9 * tail_acc(base_run[0])
        for r in sorted(
            (r for r in group if _cfg(r)["attack"] == attack), key=lambda r: _order(_label(r))
        ):
            lines.append(
                f"| {attack} | {_label(r)} | {_cum_up(r)[-1] / 1e6:.1f} | "
                f"{pct(acc_at_bytes(r, budget))} | {mb_to_reach(r, target):.1f} |"
            )
        lines.append(f"| {attack} | (target: {100 * target:.1f}% accuracy) | | | |")
    return "\n".join(lines)


def _batch_table(dataset: str, runs: list[Result]) -> str:
    lines = [
        f"\n### {dataset}: accuracy (%, last {TAIL} rounds) by batch size "
        "(TopK(0.1), 4 Byzantine)\n"
    ]
    sizes = sorted({int(_cfg(r)["batch_size"]) for r in runs})
    lines.append("| method | attack | " + " | ".join(f"b={s}" for s in sizes) + " |")
    lines.append("|---|---" + "|---" * len(sizes) + "|")
    for method in ("byz-ef21-sgdm", "byz-ef21"):
        for attack in ("none", "sign-flip"):
            cells = []
            for size in sizes:
                hit = [
                    r for r in runs
                    if _cfg(r)["method"] == method and _cfg(r)["attack"] == attack
                    and int(_cfg(r)["batch_size"]) == size and int(_cfg(r)["byzantine"]) == 4
                    and _cfg(r)["compressor"] == "topk:0.1"
                ]  # fmt: skip
                cells.append(pct(tail_acc(hit[0])) if hit else "")
            lines.append(f"| {method} | {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _order(label: str) -> tuple[int, str]:
    for i, m in enumerate((*EF_METHODS, "byz-vr-marina-pp", "robust-fedavg")):
        if label.split()[0] == m:
            return i, label
    return 99, label


if __name__ == "__main__":
    main()
