"""Byz-EF21-SGDM (Rammal et al.): C2.1, it beats Byz-EF21 and BR-CSGD at the same rounds and
bytes; C2.2, it needs no large batches."""

from __future__ import annotations

import statistics
from dataclasses import replace

from ...simulations.config import ExperimentConfig
from ..claim import NO_NUMBER, Claim, Evidence, Figure, Outcome, Panels
from ..pool import TAIL, pct
from ..section import Budget, table

__all__ = ["C2_1", "C2_2"]

PAPER = "Byz-EF21-SGDM"

EF_METHODS = (("byz-ef21-sgdm", "Byz-EF21-SGDM"), ("byz-ef21", "Byz-EF21"), ("br-csgd", "BR-CSGD"))


def _base(b: Budget) -> ExperimentConfig:
    """MNIST-1D MLP, Dirichlet(1), 20 clients (4 Byzantine), TopK 10%, NNM + CWTM, eta 0.1."""
    return ExperimentConfig(
        method="byz-ef21-sgdm", dataset="mnist1d", partition="dirichlet:1.0", model="mlp",
        clients=20, byzantine=4, rounds=b.rounds(200, 6), lr=1.0, batch_size=8, momentum=0.9,
        aggregator="nnm+cwtm", compressor="topk:0.1",
    )  # fmt: skip


# ----------------------------------------------------------------------------- C2.1

C21_ATTACKS = ("none", "sign-flip", "label-flip")


def _c21_runs(b: Budget) -> dict[str, ExperimentConfig]:
    base = _base(b)
    return {
        f"{m} {a}": replace(base, method=m, attack=a) for m, _ in EF_METHODS for a in C21_ATTACKS
    }


def _c21_assess(ev: Evidence) -> Outcome:
    acc = {k: ev.acc(k) for k in ev.runs}
    mb = {k: statistics.fmean(r.final["bytes_up"] for r in rs) / 1e6 for k, rs in ev.runs.items()}
    rows = [
        [label] + [pct(acc[f"{m} {a}"]) for a in C21_ATTACKS] + [f"{mb[f'{m} none']:.1f}"]
        for m, label in EF_METHODS
    ]
    attacked = C21_ATTACKS[1:]
    passed = [
        acc[f"byz-ef21-sgdm {a}"] >= max(acc[f"byz-ef21 {a}"], acc[f"br-csgd {a}"])
        for a in attacked
    ]
    caveat = None
    if not all(passed):
        lost = [a for a, ok in zip(attacked, passed, strict=True) if not ok]
        caveat = (
            f"Not reproduced under {', '.join(lost)}. Most likely reason: at this short budget "
            "the momentum (eta = 0.1) still lags the raw gradients, and the gap between methods "
            "is within seed noise (2-3 points on MNIST-1D)."
        )
    return Outcome(
        checks=passed,
        summary="SGDM vs EF21 / BR-CSGD under SignFlip: "
        f"{pct(acc['byz-ef21-sgdm sign-flip'])} vs {pct(acc['byz-ef21 sign-flip'])} / "
        f"{pct(acc['br-csgd sign-flip'])}",
        setup="Setup: MNIST-1D MLP, Dirichlet(1) split, 20 clients of which 4 Byzantine, full "
        "participation, TopK 10%, NNM + CWTM (f = 4), batch 8, lr 1.0, eta = 0.1, "
        f"{_base(ev.budget).rounds} rounds, {ev.seeds_note}; accuracy = mean of the last {TAIL} "
        "rounds (%).",
        results=[table(["method", *list(C21_ATTACKS), "MB up (all clients)"], rows), ""],
        caveat=caveat,
    )


def _bytes_curve(ev: Evidence, name: str) -> tuple[list[float], list[float]]:
    """Accuracy against the MB all clients sent (seed 0's bytes)."""
    xs, ys = ev.curve(name)
    total, cum = 0.0, []
    for rec in ev.runs[name][0].rounds[: len(xs)]:
        total += rec.bytes_up / 1e6
        cum.append(total)
    return cum, ys


def _c21_panels(ev: Evidence) -> Panels:
    return [
        (
            f"MNIST-1D, {a}, TopK 10%",
            {label: _bytes_curve(ev, f"{m} {a}") for m, label in EF_METHODS},
        )
        for a in C21_ATTACKS[1:]
    ]


C2_1 = Claim(
    key="c2.1",
    paper=PAPER,
    title="C2.1 Byz-EF21-SGDM beats Byz-EF21 and BR-CSGD at the same rounds and bytes",
    statement="with TopK, small batches, non-IID data, under SignFlip and LabelFlip, "
    "Byz-EF21-SGDM is more accurate than Byz-EF21 and BR-CSGD",
    runs=_c21_runs,
    rule="Rule: under SignFlip and under LabelFlip, Byz-EF21-SGDM's accuracy is at least that of "
    "Byz-EF21 and of BR-CSGD, at the same rounds and bytes. " + NO_NUMBER,
    assess=_c21_assess,
    figure=Figure(
        "c2_1_bytes", "C2.1 accuracy vs bytes", _c21_panels, xlabel="MB sent by all clients"
    ),
)

# ----------------------------------------------------------------------------- C2.2

C22_BATCHES = (1, 4, 64)
C22_METHODS = EF_METHODS[:2]


def _c22_runs(b: Budget) -> dict[str, ExperimentConfig]:
    base = replace(_base(b), attack="sign-flip")
    return {
        f"{m} b={bs}": replace(base, method=m, batch_size=bs)
        for m, _ in C22_METHODS
        for bs in C22_BATCHES
    }


def _c22_assess(ev: Evidence) -> Outcome:
    acc = {k: ev.acc(k) for k in ev.runs}
    rows = [[label] + [pct(acc[f"{m} b={bs}"]) for bs in C22_BATCHES] for m, label in C22_METHODS]
    big = C22_BATCHES[-1]
    drop = {m: acc[f"{m} b={big}"] - min(acc[f"{m} b={bs}"] for bs in C22_BATCHES[:-1])
            for m, _ in C22_METHODS}  # fmt: skip
    close = drop["byz-ef21-sgdm"] <= 0.05
    better = drop["byz-ef21-sgdm"] < drop["byz-ef21"]
    caveat = None
    if not close:
        caveat = (
            "Not within 5 points. Most likely reason: batch 1 at the same lr (1.0) and step "
            "count as batch 64 sees 64x fewer samples; the paper's claim is about the rate in "
            "steps with a step size tuned per batch size (not tuned here)."
        )
    return Outcome(
        checks=[close, better],
        summary=f"drop batch {big} -> 1-4: SGDM {100 * drop['byz-ef21-sgdm']:.1f}, "
        f"EF21 {100 * drop['byz-ef21']:.1f} points",
        setup="Setup: as C2.1 under SignFlip (4 of 20 Byzantine, TopK 10%, NNM + CWTM, lr 1.0, "
        f"{_base(ev.budget).rounds} rounds, {ev.seeds_note}), batch size per client in "
        f"{C22_BATCHES}.",
        results=[
            table(["method"] + [f"batch {bs} (%)" for bs in C22_BATCHES], rows),
            "",
            f"Largest drop from batch {big} to batch 1-4: Byz-EF21-SGDM "
            f"{100 * drop['byz-ef21-sgdm']:.1f} points, Byz-EF21 {100 * drop['byz-ef21']:.1f}.",
        ],
        caveat=caveat,
    )


def _c22_panels(ev: Evidence) -> Panels:
    return [
        (label, {f"batch {bs}": ev.curve(f"{m} b={bs}") for bs in C22_BATCHES})
        for m, label in C22_METHODS
    ]


C2_2 = Claim(
    key="c2.2",
    paper=PAPER,
    title="C2.2 Byz-EF21-SGDM needs no large batches",
    statement="accuracy at batch 1-4 stays close to that at batch 64, unlike Byz-EF21",
    runs=_c22_runs,
    rule="Rule: SGDM loses at most 5 points from batch 64 to batch 1-4, and less than Byz-EF21. "
    + NO_NUMBER,
    assess=_c22_assess,
    figure=Figure("c2_2_batch", "C2.2 batch size", _c22_panels),
)
