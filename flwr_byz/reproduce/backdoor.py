"""The backdoor matrix: every backdoor attack against FedAvg, the robust rules and the backdoor
defences, on the digits images (8x8, flattened to 64 features), IID and Dirichlet(0.5), at 10%
and 20% Byzantine clients of 20, several seeds.

Each cell is the mean +- std over the seeds of the final clean accuracy and the final attack
success rate (ASR: the share of triggered test inputs of the non-target classes that the
model classifies as the target). The 'none' column is the run where the Byzantine clients
run BadNets with a poisoned fraction of 0 (honest training, the same f for every rule), so its
ASR is the trigger's success on a model trained without a backdoor: the floor the other ASRs
are measured against. The rules of the section (``ACC_MARGIN``, ``ASR_MARGIN``, ``WORKS``) are
computed from these numbers, never typed by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..attacks import DBA, BadNets, Neurotoxin, get_attack
from ..files import atomic_write
from ..simulations.config import ExperimentConfig
from ..simulations.plots import plot_heatmap
from ..simulations.report import Cell
from ..simulations.result import Result
from ..simulations.root import ROOT_SIZE
from .matrix import Defence
from .pool import mean_std
from .section import Budget, Section, table
from .workspace import Workspace

__all__ = [
    "ATTACKS",
    "CLAIMS",
    "DEFENCES",
    "FRACTIONS",
    "PARTITIONS",
    "PaperClaim",
    "Setting",
    "Stats",
    "backdoor_matrix",
    "settings",
]

#: FedAvg-like training: two local epochs of SGD (momentum 0.9, batch 32) per round.
_LOCAL = {"local_epochs": 2, "lr": 0.1}


def _rule(label: str, spec: str) -> Defence:
    return Defence(label, "robust-fedavg", _LOCAL | {"aggregator": spec})


#: The rows: FedAvg, the robust rules of the attack matrix (RobustFedAvg), the backdoor
#: defences (RobustFedAvg with the rule) and FLTrust (its own strategy, 100 root samples).
DEFENCES: tuple[Defence, ...] = (
    Defence("FedAvg", "fedavg", _LOCAL),
    _rule("Median", "median"),
    _rule("Krum", "krum"),
    _rule("NNM+Krum", "nnm+krum"),
    _rule("CClip", "cc"),
    _rule("NormClip", "normclip"),
    _rule("FLAME", "flame"),
    _rule("FoolsGold", "foolsgold"),
    _rule("DnC", "dnc"),
    _rule("SignGuard", "signguard"),
    Defence("FLTrust", "fltrust", _LOCAL),
)

#: column -> attack spec, at the attacks' defaults (docs/ALGORITHMS.md, Backdoor attacks; the
#: section's text reads them from the attack objects). 'none': BadNets poisoning nothing, so
#: the run is clean and the server still measures the trigger.
ATTACKS: dict[str, str] = {
    "none": "badnets:fraction=0",
    "badnets": "badnets",
    "model-replacement": "model-replacement",
    "dba": "dba",
    "neurotoxin": "neurotoxin",
}

PARTITIONS: tuple[tuple[str, str], ...] = (("iid", "IID"), ("dirichlet:0.5", "Dirichlet(0.5)"))
FRACTIONS: tuple[float, ...] = (0.1, 0.2)
CLIENTS = 20
ROUNDS = 30  # full budget: 660 runs, about 15 min on 2 cores (docs/EXPERIMENTS.md)
QUICK_ROUNDS = 2  # the quick budget checks the pipeline (55 runs), not the numbers

ACC_MARGIN = 0.05  # "keeps accuracy": at most 5 points below attack-free FedAvg's
ASR_MARGIN = 0.10  # "stops the backdoor": ASR at most 10 points above the clean model's
WORKS = 0.5  # an attack "works" in a setting when FedAvg's ASR under it is at least 50%


@dataclass(frozen=True)
class Setting:
    """A partition and a Byzantine fraction: the tables of one part of the section."""

    partition: str
    label: str
    fraction: float

    @property
    def byzantine(self) -> int:
        return round(self.fraction * CLIENTS)

    @property
    def key(self) -> str:
        return f"{self.partition}|{self.fraction}"

    @property
    def title(self) -> str:
        pct = round(100 * self.fraction)
        return f"{self.label}, {pct}% Byzantine ({self.byzantine} of {CLIENTS})"


def settings(budget: Budget) -> list[Setting]:
    """Every partition x fraction; the quick budget: IID at 20% only."""
    parts = PARTITIONS[:1] if budget.quick else PARTITIONS
    fracs = FRACTIONS[-1:] if budget.quick else FRACTIONS
    return [Setting(p, label, f) for p, label in parts for f in fracs]


@dataclass(frozen=True)
class PaperClaim:
    """A published claim checked cell by cell: ``defence`` holds (``_holds``) against each of
    ``attacks`` in every setting where the attack works."""

    defence: str
    attacks: tuple[str, ...]
    statement: str


CLAIMS: tuple[PaperClaim, ...] = (
    PaperClaim(
        "FLAME",
        ("model-replacement", "dba"),
        "FLAME (Nguyen et al., USENIX Security 2022, Sec. 7): the backdoor is removed (its "
        "success rate near 0%) while the main-task accuracy stays, against model replacement "
        "(Bagdasaryan et al.'s constrain-and-scale; here unconstrained) and DBA, among the "
        "attacks of its evaluation",
    ),
    PaperClaim(
        "FLTrust",
        ("model-replacement",),
        "FLTrust (Cao et al., NDSS 2021, Sec. 6): under the Scaling attack (trigger and "
        "boosted updates: our model replacement) the attack success rate stays near 0 and the "
        "test error near FedAvg's without attack",
    ),
)


def _config(s: Setting, d: Defence, attack: str, seed: int, rounds: int) -> ExperimentConfig:
    base = ExperimentConfig(
        method=d.method, attack=ATTACKS[attack], byzantine=s.byzantine, clients=CLIENTS,
        rounds=rounds, dataset="digits", partition=s.partition, model="mlp", batch_size=32,
        seed=seed,
    )  # fmt: skip
    return replace(base, **d.fields)


def _setup_text(sets: Sequence[Setting]) -> str:
    """The rows and the attacks' parameters, read from the objects the runs build."""
    bad = get_attack(ATTACKS["badnets"])
    dba = get_attack(ATTACKS["dba"])
    toxin = get_attack(ATTACKS["neurotoxin"])
    assert isinstance(bad, BadNets) and isinstance(dba, DBA) and isinstance(toxin, Neurotoxin)
    size = int(bad.mask((64,)).sum())
    counts = sorted({s.byzantine for s in sets})
    boosts = ", ".join(f"x{CLIENTS / m:g} with {m} Byzantine" for m in counts)
    return (
        "Rows: FedAvg, RobustFedAvg with Median, Krum, NNM + Krum, CClip and the backdoor "
        "defences NormClip, FLAME, FoolsGold, DnC, SignGuard (at their defaults, f the "
        f"Byzantine count), and the FLTrust strategy ({ROOT_SIZE} root samples the server "
        f"trains on). Attacks at their defaults: target class {bad.target}, "
        f"{100 * bad.fraction:g}% of each Byzantine client's data poisoned, the trigger on the "
        f"last {size} of the 64 features (the last pixels, row-major) set to the 99th "
        f"percentile of the training values; DBA splits it into {dba.parts} local triggers; "
        "model replacement boosts each "
        f"Byzantine update by n/(eta m) for m Byzantine clients of n, so that together they "
        f"replace the model ({boosts}; no norm constraint), every round; Neurotoxin "
        f"trains off the top {100 * toxin.ratio:g}% coordinates of the benign gradient. "
        "'none': the Byzantine clients run BadNets with nothing poisoned (honest), so its ASR "
        "is the trigger's success on a clean model."
    )


def _asr(r: Result) -> float:
    value = r.final.get("asr")
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Stats:
    """One cell: clean accuracy and ASR, mean and std over the seeds."""

    acc: float
    acc_std: float
    asr: float
    asr_std: float

    @classmethod
    def of(cls, results: Sequence[Result]) -> Stats:
        acc = mean_std([r.accuracy for r in results])
        asr = mean_std([_asr(r) for r in results])
        return cls(acc[0], acc[1], asr[0], asr[1])


def _fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _holds(cell: Stats, clean: Stats) -> bool:
    """Accuracy within ``ACC_MARGIN`` of attack-free FedAvg's and ASR within ``ASR_MARGIN`` of
    the clean model's (False when either is unknown)."""
    return cell.acc >= clean.acc - ACC_MARGIN - 1e-12 and cell.asr <= clean.asr + ASR_MARGIN + 1e-12


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def backdoor_matrix(ws: Workspace) -> Section:
    """The section: run (or reuse) every cell, then the tables, figures and rules."""
    b = ws.budget
    seeds = b.seeds
    rounds = b.rounds(ROUNDS, QUICK_ROUNDS)
    sets = settings(b)
    attacks = list(ATTACKS)
    backdoors = attacks[1:]
    keys = {
        (s.key, d.label, a, seed): _config(s, d, a, seed, rounds)
        for s in sets
        for d in DEFENCES
        for a in attacks
        for seed in seeds
    }
    named = {"|".join(map(str, k)): c for k, c in keys.items()}
    results = ws.run(named)
    stats = {
        (s.key, d.label, a): Stats.of(
            [results["|".join(map(str, (s.key, d.label, a, sd)))] for sd in seeds]
        )
        for s in sets
        for d in DEFENCES
        for a in attacks
    }
    clean = {s.key: stats[(s.key, "FedAvg", "none")] for s in sets}
    holds = {k: _holds(v, clean[k[0]]) for k, v in stats.items() if k[2] != "none"}

    body: list[str] = [
        f"{len(DEFENCES)} defences x {len(attacks)} attacks ('none' and {len(backdoors)} "
        f"backdoors) x {len(sets)} settings x {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}) = {len(named)} runs, local engine, {rounds} rounds. "
        f"Digits (scikit-learn's 8x8 images, flattened to 64 features, standardised), MLP, "
        f"{CLIENTS} clients, all sampled every round; FedAvg-like training: "
        f"{_LOCAL['local_epochs']} local epochs per round, lr {_LOCAL['lr']}, momentum 0.9, "
        f"batch 32. {_setup_text(sets)}",
        "",
        "Cells: clean accuracy and attack success rate (ASR: the share of triggered test "
        "inputs of the classes other than the target classified as the target) after the "
        "last round, in %, mean ± std over the seeds.",
    ]
    cells: dict[str, list[Cell]] = {}
    for s in sets:
        acc_rows, asr_rows = [], []
        for d in DEFENCES:
            row = [stats[(s.key, d.label, a)] for a in attacks]
            acc_rows.append([d.label, *[_fmt(c.acc, c.acc_std) for c in row]])
            asr_rows.append([d.label, *[_fmt(c.asr, c.asr_std) for c in row]])
            cells.setdefault(s.partition, []).extend(
                Cell(d.label, a, s.byzantine, c.acc, c.asr)
                for a, c in zip(attacks, row, strict=True)
            )
        body += ["", f"### {s.title}", "",
                 f"Attack-free FedAvg: accuracy {_pct(clean[s.key].acc)}, ASR of the trigger "
                 f"{_pct(clean[s.key].asr)}.", "",
                 "**Clean accuracy (%)**", "", table(["defence", *attacks], acc_rows), "",
                 "**Attack success rate (%)**", "",
                 table(["defence", *attacks], asr_rows)]  # fmt: skip

    figures: list[str] = []
    body += ["", "### Figures", ""]
    for partition, label in PARTITIONS:
        if partition not in cells:
            continue
        fig = ws.figure(f"backdoor_asr_{partition.split(':')[0]}")
        if any(not math.isnan(c.asr) for c in cells[partition]):
            plot_heatmap(
                cells[partition], fig, metric="asr",
                title=f"Digits, {label}: final ASR (%), mean of {len(seeds)} seed(s)",
            )  # fmt: skip
            figures.append(ws.link(fig))
            body += [f"![ASR, {label}]({ws.link(fig)})", ""]
    fig = scatter_figure(
        {s.title: {(d.label, a): stats[(s.key, d.label, a)] for d in DEFENCES for a in backdoors}
         for s in sets},
        [d.label for d in DEFENCES], backdoors, ws.figure("backdoor_scatter"),
    )  # fmt: skip
    figures.append(ws.link(fig))
    body += [
        f"![clean accuracy vs ASR]({ws.link(fig)})",
        "",
        "Clean accuracy against ASR, one point per defence and attack (mean over the seeds); "
        "the good corner is the bottom right.",
    ]

    rules, verdicts = _rules(sets, stats, clean, holds, backdoors)
    body += rules
    summary = f"{len(named)} runs; {verdicts}"
    return Section(
        key="backdoor",
        title="Backdoor matrix: clean accuracy and attack success rate",
        markdown="\n".join(body),
        summary=summary,
        figures=figures,
    )


def _rules(
    sets: Sequence[Setting],
    stats: Mapping[tuple[str, str, str], Stats],
    clean: Mapping[str, Stats],
    holds: Mapping[tuple[str, str, str], bool],
    backdoors: Sequence[str],
) -> tuple[list[str], str]:
    """The rules' lines (which attacks work, which defences hold where they do, the papers'
    claims) and the section's summary of them."""
    n = len(sets)
    lines = [
        "",
        "### Rules",
        "",
        f"An attack **works** in a setting when FedAvg's mean ASR under it is at least "
        f"{100 * WORKS:.0f}%. A defence **holds** against an attack in a setting where it works "
        f"when its mean clean accuracy is at most {100 * ACC_MARGIN:.0f} points below "
        f"attack-free FedAvg's and its mean ASR at most {100 * ASR_MARGIN:.0f} points above "
        "attack-free FedAvg's (the trigger's success on a clean model).",
        "",
    ]
    works = {a: [s for s in sets if stats[(s.key, "FedAvg", a)].asr >= WORKS] for a in backdoors}
    lines.append(
        "FedAvg under each attack (ASR and clean accuracy, means over the settings; the "
        "settings where the attack works): "
        + "; ".join(
            f"{a} {_pct(_mean([stats[(s.key, 'FedAvg', a)].asr for s in sets]))} / "
            f"{_pct(_mean([stats[(s.key, 'FedAvg', a)].acc for s in sets]))}, {len(works[a])}/{n}"
            for a in backdoors
        )
        + "."
    )
    tested = sum(len(w) for w in works.values())
    rows, every = [], []
    for d in DEFENCES[1:]:
        counts = [sum(holds[(s.key, d.label, a)] for s in works[a]) for a in backdoors]
        shown = [
            f"{k}/{len(works[a])}" if works[a] else "—"
            for k, a in zip(counts, backdoors, strict=True)
        ]
        rows.append([d.label, *shown, f"{sum(counts)}/{tested}"])
        if tested and sum(counts) == tested:
            every.append(d.label)
    lines += ["", "**Settings where each defence holds, of those where the attack works**", "",
              table(["defence", *backdoors, "all"], rows), ""]  # fmt: skip
    against = {
        a: [d.label for d in DEFENCES[1:] if all(holds[(s.key, d.label, a)] for s in works[a])]
        for a in backdoors
        if works[a]
    }
    lines.append(
        f"Hold wherever the attacks work: {', '.join(every) or 'none'}. "
        + " ".join(f"Against {a}: {', '.join(d) or 'none'}." for a, d in against.items())
    )
    lines += ["", "**The papers' claims**", ""]
    matched = []
    for c in CLAIMS:
        cells = [(s, a) for a in c.attacks for s in works[a]]
        ok = [(s, a) for s, a in cells if holds[(s.key, c.defence, a)]]
        missed = [
            f"{a} in {s.title} (accuracy {_pct(stats[(s.key, c.defence, a)].acc)} vs "
            f"{_pct(clean[s.key].acc)}, ASR {_pct(stats[(s.key, c.defence, a)].asr)})"
            for s, a in cells
            if not holds[(s.key, c.defence, a)]
        ]
        untested = len(c.attacks) * n - len(cells)
        if not cells:
            lines.append(
                f"- {c.statement}. Here: **not tested**, the attack works in none of the "
                f"{untested} cells."
            )
        else:
            verdict = "matched" if ok == cells else "partly matched" if ok else "not matched"
            lines.append(
                f"- {c.statement}. Here (the rules above): **{verdict}**, in {len(ok)} of "
                f"{len(cells)} cells where the attack works"
                + (f" ({untested} where it does not)" if untested else "")
                + (f"; not in: {'; '.join(missed)}." if missed else ".")
            )
        matched.append(f"{c.defence}'s in {len(ok)}/{len(cells)}")
    summary = (
        f"{len(every)} of {len(DEFENCES) - 1} defences hold wherever the attacks work "
        f"({tested} of {n * len(backdoors)} cells); claims matched: {', '.join(matched)}"
    )
    return lines, summary


def _mean(values: Sequence[float]) -> float:
    return mean_std(values)[0]


def scatter_figure(
    panels: Mapping[str, Mapping[tuple[str, str], Stats]],
    defences: Sequence[str],
    attacks: Sequence[str],
    out: Path,
) -> Path:
    """One panel per setting: clean accuracy (x, %) against ASR (y, %), a point per
    (defence, attack) (colour: defence, marker: attack); NaN points are left out."""
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    tab = [colormaps["tab20"](k) for k in range(20)]
    colours = [*tab[::2], *tab[1::2]]  # the ten dark hues first, then their light ones
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols + 2.0, 3.6 * rows), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    axes = list(grid.flat)
    for ax, (title, points) in zip(axes, panels.items(), strict=False):
        for i, d in enumerate(defences):
            for j, a in enumerate(attacks):
                st = points.get((d, a))
                if st is None or math.isnan(st.acc) or math.isnan(st.asr):
                    continue
                ax.scatter(100 * st.acc, 100 * st.asr, color=colours[i % len(colours)],
                           marker=markers[j % len(markers)], s=28, alpha=0.85)  # fmt: skip
        ax.set_title(title, fontsize="small")
        ax.set_ylim(-3, 103)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in grid[-1]:
        ax.set_xlabel("clean accuracy (%)")
    for ax in grid[:, 0]:
        ax.set_ylabel("attack success rate (%)")
    handles = [
        Line2D([], [], color=colours[i % len(colours)], marker="o", linestyle="", label=d)
        for i, d in enumerate(defences)
    ] + [
        Line2D([], [], color="black", marker=markers[j % len(markers)], linestyle="", label=a)
        for j, a in enumerate(attacks)
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize="x-small")
    FigureCanvasAgg(fig)
    with atomic_write(out) as fh:  # parents created
        fig.savefig(fh, dpi=110, format="png")
    return out
