"""Issue 9 experiments: mu2-SGD vs worker momentum, each with base aggregators with and
without CTMA (ALGORITHMS.md claims C3.1, C3.2), on the ``local`` engine.

    .venv/bin/python experiments/mu2sgd_ctma.py [--jobs 2] [--only digits|mnist1d] \
        [--byzantine 8 --byzantine 4] [--out results/issue9]

17 clients (the paper's), IID split, batch 4, one minibatch per client per round. Runs whose
JSON exists are not run again. Writes ``table.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from common import pct, run_all, tail_acc  # type: ignore[import-not-found]

from flwr_byz.aggregators import get_aggregator
from flwr_byz.files import write_text
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

ATTACKS = ("none", "sign-flip", "label-flip", "alie", "ipm:eps=0.5")
BASES = ("median", "trimmedmean", "krum", "geomed")
METHODS = ("mu2sgd", "robust-momentum")
SETTINGS = {
    "digits": {"model": "logreg", "rounds": 150},
    "mnist1d": {"model": "mlp", "rounds": 200},
}
CLIENTS = 17


def runs(
    dataset: str,
    byzantine: int,
    lr: float,
    metas: tuple[str, ...] = ("", "ctma"),
    bases: tuple[str, ...] = BASES,
) -> list[ExperimentConfig]:
    """attack x base x meta-aggregator (default: none and CTMA) x {mu2-SGD, momentum}; bases
    whose rule cannot take ``byzantine`` of 17 inputs (Krum needs n >= 2f + 3) are left out."""
    s = SETTINGS[dataset]
    out = []
    for base in bases:
        if not _takes(base, byzantine):
            continue  # e.g. Krum with f = 8 of 17
        for agg in (f"{meta}+{base}" if meta else base for meta in metas):
            for method in METHODS:
                for attack in ATTACKS:
                    out.append(
                        ExperimentConfig(
                            method=method, aggregator=agg, attack=attack, byzantine=byzantine,
                            clients=CLIENTS, dataset=dataset, model=str(s["model"]),
                            partition="iid", rounds=int(s["rounds"]), lr=lr, batch_size=4,
                            momentum=0.9, seed=0,
                        )
                    )  # fmt: skip
    return out


def _takes(spec: str, f: int) -> bool:
    """Whether the rule ``spec`` with ``f`` runs on ``CLIENTS`` inputs."""
    try:
        get_aggregator(spec, f=f)(torch.zeros(CLIENTS, 2))
    except ValueError:
        return False
    return True


def name_of(cfg: ExperimentConfig) -> str:
    """A file name for a run."""
    agg = cfg.aggregator.replace("+", "_").replace(":", "")
    attack = cfg.attack.replace(":", "_").replace("=", "")
    return f"{cfg.dataset}-{cfg.method}-{agg}-{attack}-b{cfg.byzantine}-lr{cfg.lr:g}"


def tables(results: list[Result]) -> str:
    """Per dataset and Byzantine count: rows attack x base, columns {mu2-SGD, momentum} x
    {none, CTMA}; mean accuracy of the last rounds."""
    out = []
    keys = sorted({(str(r.config["dataset"]), int(r.config["byzantine"])) for r in results})
    for dataset, b in keys:
        group = [r for r in results if (r.config["dataset"], r.config["byzantine"]) == (dataset, b)]
        metas = sorted({_meta(str(r.config["aggregator"])) for r in group})
        cols = [(m, meta) for m in METHODS for meta in metas]
        out.append(f"\n### {dataset}, {b} of {CLIENTS} Byzantine: accuracy (%)\n")
        out.append(
            "| attack | base | "
            + " | ".join(f"{m}{' + ' + meta.upper() if meta else ''}" for m, meta in cols)
            + " |"
        )
        out.append("|---|---" + "|---" * len(cols) + "|")
        for attack in ATTACKS:
            for base in BASES:
                cells = []
                for method, meta in cols:
                    agg = f"{meta}+{base}" if meta else base
                    hit = [
                        r for r in group
                        if r.config["method"] == method and r.config["aggregator"] == agg
                        and r.config["attack"] == attack
                    ]  # fmt: skip
                    cells.append(pct(tail_acc(hit[0])) if hit else "")
                if any(cells):
                    out.append(f"| {attack} | {base} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _meta(spec: str) -> str:
    return spec.split("+")[0] if "+" in spec else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/issue9"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", choices=tuple(SETTINGS), default=None)
    parser.add_argument("--byzantine", type=int, action="append", default=None)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--meta", action="append", default=None, help="meta-aggregators (none, ctma, nnm)"
    )
    parser.add_argument("--base", action="append", default=None, help="base rules")
    args = parser.parse_args()
    configs = []
    for dataset in [args.only] if args.only else list(SETTINGS):
        for b in args.byzantine or [8]:
            metas = tuple("" if m == "none" else m for m in args.meta or ["none", "ctma"])
            configs += runs(dataset, b, args.lr, metas, tuple(args.base or BASES))
    configs = [dataclasses.replace(c, out=str(args.out / f"{name_of(c)}.json")) for c in configs]
    run_all(configs, args.jobs)
    results = [Result.load(c.out) for c in configs if c.out and Path(c.out).exists()]
    text = tables(results)
    write_text(args.out / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
