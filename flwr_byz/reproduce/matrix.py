"""The attack x defence matrix: every method against every attack, on MNIST-1D (Dirichlet 0.5
and IID) and synthetic logistic regression, at 10% and 20% Byzantine clients, several seeds.

Each cell is the mean +- std over the seeds of the final accuracy, and the megabytes each
client sent (uplink, cumulative) until the global model first reached the attack-free FedAvg
accuracy minus 5 points. The 'none' column of a Byzantine fraction is the run where those
clients behave honestly, so each rule is set for the same f as under attack.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..simulations.config import ExperimentConfig
from ..simulations.plots import plot_heatmap
from ..simulations.report import Cell
from ..simulations.result import Result
from .pool import first_reaching, mean_std
from .section import Section, table
from .workspace import Workspace

__all__ = ["ATTACKS", "DEFENCES", "SETTINGS", "Defence", "Setting", "attack_matrix"]


@dataclass(frozen=True)
class Defence:
    """A row of the matrix: a label and the config fields of its method."""

    label: str
    method: str
    fields: dict[str, Any] = field(default_factory=dict)


_FEDAVG = {"local_epochs": 1, "lr": 0.2}  # local SGD (momentum 0.9), restarted every round
_BYZSGD = {
    "n_servers": 5, "f_servers": 1, "server_attack": "random", "gather_period": 5,
}  # fmt: skip

#: The rows: FedAvg-like methods train one local epoch per round; the method strategies take
#: one server step per round (their lr is the server's; tuned in the claim experiments).
DEFENCES: tuple[Defence, ...] = (
    Defence("FedAvg", "fedavg", _FEDAVG),
    Defence("Flower Krum", "flower-krum", _FEDAVG),
    Defence("Flower Bulyan", "flower-bulyan", _FEDAVG),
    Defence("RobustFedAvg CWMed", "robust-fedavg", _FEDAVG | {"aggregator": "cwmed"}),
    Defence("RobustFedAvg TrMean", "robust-fedavg", _FEDAVG | {"aggregator": "trmean"}),
    Defence("RobustFedAvg GeoMed", "robust-fedavg", _FEDAVG | {"aggregator": "geomed"}),
    Defence("RobustFedAvg Krum", "robust-fedavg", _FEDAVG | {"aggregator": "krum"}),
    Defence("RobustFedAvg NNM+Krum", "robust-fedavg", _FEDAVG | {"aggregator": "nnm+krum"}),
    Defence("RobustFedAvg CClip", "robust-fedavg", _FEDAVG | {"aggregator": "cc"}),
    Defence("RobustFedAvg CTMA+CWMed", "robust-fedavg", _FEDAVG | {"aggregator": "ctma+cwmed"}),
    Defence(
        "Byz-VR-MARINA-PP", "byz-vr-marina-pp",
        {"aggregator": "bucketing:2+median", "lr": 0.1, "compressor": "randk:0.1",
         "clients_per_round": 4, "params": {"alpha": 10.0}},
    ),
    Defence(
        "Byz-EF21-SGDM (TopK 10%)", "byz-ef21-sgdm",
        {"aggregator": "nnm+cwtm", "lr": 1.0, "compressor": "topk:0.1", "momentum": 0.9},
    ),
    Defence("mu2-SGD + CTMA", "mu2sgd", {"aggregator": "ctma+median", "lr": 0.1}),
    Defence("ByzSGD (1 of 5 servers Byzantine)", "byzsgd",
            {"aggregator": "mda", "lr": 0.5, "params": _BYZSGD}),
)  # fmt: skip

ATTACKS: tuple[str, ...] = (
    "none", "sign-flip", "gaussian", "label-flip", "ipm", "alie", "min-max", "mimic",
)  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """A group of tables: dataset, partition, model, rounds (full budget, quick budget)."""

    key: str
    label: str
    dataset: str
    partition: str
    model: str
    rounds: int
    quick_rounds: int = 2  # the quick budget checks the pipeline (672 runs), not the numbers


SETTINGS: tuple[Setting, ...] = (
    Setting("mnist1d-dirichlet", "MNIST-1D, Dirichlet(0.5)", "mnist1d", "dirichlet:0.5", "mlp", 15),
    Setting("mnist1d-iid", "MNIST-1D, IID", "mnist1d", "iid", "mlp", 15),
    Setting("synthetic-logreg", "synthetic logistic regression, IID", "synthetic-logreg", "iid",
            "logreg", 20),
)  # fmt: skip

CLIENTS = 20
FRACTIONS: tuple[float, ...] = (0.1, 0.2)
TARGET_MARGIN = 0.05  # bytes to reach attack-free FedAvg accuracy minus 5 points


def _config(
    s: Setting, d: Defence, attack: str, byz: int, seed: int, rounds: int
) -> ExperimentConfig:
    base = ExperimentConfig(
        method=d.method, attack=attack, byzantine=byz, clients=CLIENTS, rounds=rounds,
        dataset=s.dataset, partition=s.partition, model=s.model, batch_size=32, seed=seed,
    )  # fmt: skip
    return replace(base, **d.fields)


def _cell(results: Sequence[Result], target: float) -> tuple[float, float, list[float]]:
    accs = [r.accuracy for r in results]
    mean, std = mean_std(accs)
    reached = []
    for r in results:
        i = first_reaching(r, target)
        if i is not None:
            reached.append(sum(rec.bytes_up for rec in r.rounds[: i + 1]) / CLIENTS / 1e6)
    return mean, std, reached


def _fmt_acc(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _fmt_mb(reached: list[float], seeds: int) -> str:
    if not reached:
        return "never"
    text = f"{statistics.fmean(reached):.2f}"
    return text if len(reached) == seeds else f"{text} ({len(reached)}/{seeds})"


def attack_matrix(ws: Workspace) -> Section:
    b = ws.budget
    seeds = b.seeds
    body: list[str] = [
        f"{len(DEFENCES)} defences x {len(ATTACKS)} attacks x {len(FRACTIONS)} Byzantine "
        f"fractions of {CLIENTS} clients x {len(SETTINGS)} settings x {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}), local engine. Cells: final accuracy (%), mean ± std "
        "over the seeds; the second table of each setting gives the MB each client sent until "
        "the model first reached the attack-free FedAvg accuracy minus 5 points ('never', or "
        "'(k/n)' when only k of the n seeds got there).",
        "",
        "FedAvg-like rows (FedAvg, Flower's, RobustFedAvg) train one local epoch per round "
        "(lr 0.2, momentum 0.9, batch 32); the method strategies take one server step per round "
        "with their own lr (MARINA-PP 0.1 with RandK 10% and 4 of 20 clients per round, "
        "Byz-EF21-SGDM 1.0 with TopK 10% and NNM + CWTM, mu2-SGD 0.1 with CTMA + Median, "
        "ByzSGD 0.5 with MDA and one of its 5 server replicas Byzantine, sending a different "
        "random model to each worker). At equal rounds the one-step methods are far behind "
        "one local epoch: compare them with their own 'none' column, and see the claims for "
        "their long runs. Attacks at their defaults (ALIE's z from n and b, IPM eps 0.1, "
        "Gaussian sigma 1). Flower's Bulyan runs with Flower's per-reply `gc.collect()` "
        "skipped (time only; the performance section times it as shipped).",
    ]
    figures: list[str] = []
    runs = 0
    for s in SETTINGS:
        rounds = b.rounds(s.rounds, s.quick_rounds)
        keys: dict[tuple[str, str, float, int], ExperimentConfig] = {}
        for frac in FRACTIONS:
            byz = round(frac * CLIENTS)
            for d in DEFENCES:
                for a in ATTACKS:
                    for seed in seeds:
                        keys[(d.label, a, frac, seed)] = _config(s, d, a, byz, seed, rounds)
        named = {"|".join(map(str, k)): c for k, c in keys.items()}
        results = ws.run(named)
        runs += len(named)
        res = {k: results["|".join(map(str, k))] for k in keys}
        ref = [res[("FedAvg", "none", FRACTIONS[0], seed)].accuracy for seed in seeds]
        target = mean_std(ref)[0] - TARGET_MARGIN
        body += ["", f"### {s.label} ({rounds} rounds)", "",
                 f"Attack-free FedAvg: {100 * (target + TARGET_MARGIN):.1f}%; bytes target "
                 f"{100 * target:.1f}%."]  # fmt: skip
        cells = []
        for frac in FRACTIONS:
            acc_rows, mb_rows = [], []
            for d in DEFENCES:
                acc_row, mb_row = [d.label], [d.label]
                for a in ATTACKS:
                    mean, std, reached = _cell(
                        [res[(d.label, a, frac, sd)] for sd in seeds], target
                    )
                    acc_row.append(_fmt_acc(mean, std))
                    mb_row.append(_fmt_mb(reached, len(seeds)))
                    cells.append(Cell(d.label, a, round(frac * CLIENTS), mean))
                acc_rows.append(acc_row)
                mb_rows.append(mb_row)
            pct_label = f"{round(100 * frac)}% Byzantine ({round(frac * CLIENTS)} of {CLIENTS})"
            body += ["", f"**{pct_label}: final accuracy (%)**", "",
                     table(["defence", *list(ATTACKS)], acc_rows),
                     "", f"**{pct_label}: MB sent per client to reach {100 * target:.1f}%**", "",
                     table(["defence", *list(ATTACKS)], mb_rows)]  # fmt: skip
        fig = ws.figure(f"matrix_{s.key}")
        plot_heatmap(
            cells, fig, title=f"{s.label}: final accuracy (%), mean of {len(seeds)} seed(s)"
        )
        figures.append(ws.link(fig))
        body += ["", f"![{s.label}]({ws.link(fig)})"]
    return Section(
        key="matrix",
        title="Attack x defence matrix",
        markdown="\n".join(body),
        summary=f"{runs} runs",
        figures=figures,
    )
