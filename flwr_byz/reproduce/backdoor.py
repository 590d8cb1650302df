"""The backdoor matrix: backdoor attacks against FedAvg, robust rules and the backdoor
defences, in the attack matrix's MNIST-1D setting (its CNN, 20 clients, IID, 4
Byzantine; ``setting``), at the matrix's horizon and tuned FedAvg lr, on several seeds.

Each cell gives the clean accuracy and the attack success rate (ASR: the share of triggered
test inputs of the non-target classes that the model classifies as the target), each the mean
of the last 10% of a run's rounds (``tuning.TAIL_FRACTION``), as the mean over the seeds and
its 95% interval (``stats.interval``). The 'none' run is FedAvg with the Byzantine clients
running BadNets with a poisoned fraction of 0 (honest training): its accuracy is the
attack-free reference and its ASR the trigger's success on a model trained without a backdoor
(the floor the other ASRs are measured against); its plateau gain is the horizon's check. The
rules (``ACC_MARGIN``, ``ASR_MARGIN``, ``WORKS``) are applied to the intervals through
``stats.Check``: in each cell a defence holds, fails or is within noise.

The runs take the budget's engine (batched by default: it runs BadNets, DBA and model
replacement for FedAvg and RobustFedAvg), except FLTrust's, which need the local engine (the
batched engine has no FLTrust driver: ``LOCAL_ONLY``).
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

from ..attacks import DBA, BadNets, get_attack
from ..files import atomic_write
from ..simulations.config import ExperimentConfig
from ..simulations.plots import plot_heatmap
from ..simulations.report import Cell
from ..simulations.result import Result
from ..simulations.root import ROOT_SIZE
from . import matrix
from .matrix import Defence
from .section import Section, table
from .stats import (
    PLATEAU_FRACTION,
    PLATEAU_POINTS,
    Check,
    Interval,
    interval,
    plateau_gain,
    verdict_of,
)
from .tuning import TAIL_FRACTION
from .workspace import Workspace

__all__ = [
    "ATTACKS",
    "CLAIMS",
    "DEFENCES",
    "LOCAL_ONLY",
    "PaperClaim",
    "Setting",
    "Stats",
    "backdoor_matrix",
    "engine_of",
    "setting",
]

#: The methods whose runs take the local engine whatever the budget's (no batched driver).
LOCAL_ONLY = frozenset({"fltrust"})


def engine_of(method: str, budget_engine: str) -> str:
    """The engine of a run of ``method``: the budget's, or local for ``LOCAL_ONLY``."""
    return "local" if method in LOCAL_ONLY else budget_engine


@dataclass(frozen=True)
class Setting:
    """The data, model, partition, Byzantine count, local training and horizon of the matrix
    (``label`` in words); ``setting(ws)`` takes them from the attack matrix."""

    label: str
    dataset: str
    model: str
    partition: str
    clients: int
    byzantine: int
    lr: float  # local SGD step size of every row (FedAvg-like training)
    rounds: int
    local_epochs: int = 1
    batch_size: int = 32
    eval_samples: int | None = None

    @property
    def title(self) -> str:
        pct = round(100 * self.byzantine / self.clients)
        return f"{self.label}, {pct}% Byzantine ({self.byzantine} of {self.clients})"


def setting(ws: Workspace) -> Setting:
    """The attack matrix's MNIST-1D CNN setting (``matrix.MNIST1D_CNN``): its data, model,
    partition, clients, Byzantine count, evaluation samples and FedAvg-family horizon, and the
    lr the matrix tunes for its FedAvg row there (``matrix.fedavg_lr``: its tuning runs are
    shared with the matrix section)."""
    s = matrix.MNIST1D_CNN
    fedavg = next(r for r in s.rows if r.method == "fedavg")
    return Setting(
        label=s.label,
        dataset=s.dataset,
        model=s.model,
        partition=s.partition,
        clients=matrix.CLIENTS,
        byzantine=matrix.BYZANTINE,
        lr=matrix.fedavg_lr(ws, s),
        rounds=s.horizon(fedavg, ws.budget),
        local_epochs=int(fedavg.fields.get("local_epochs", 1)),
        batch_size=s.batch_size,
        eval_samples=s.eval_samples,
    )


def _rule(label: str, spec: str) -> Defence:
    return Defence(label, "robust-fedavg", {"aggregator": spec})


#: The rows: FedAvg, a robust rule of the attack matrix (RobustFedAvg NNM + Krum), backdoor
#: defences (RobustFedAvg with the rule) and FLTrust (its own strategy, ``ROOT_SIZE`` root
#: samples). Left out to fit the time budget (each row costs 3 runs per attack and seed):
#: CWMed, FoolsGold and DnC (``LEFT_OUT``).
DEFENCES: tuple[Defence, ...] = (
    Defence("FedAvg", "fedavg"),
    _rule("NNM+Krum", "nnm+krum"),
    _rule("NormClip", "normclip"),
    _rule("FLAME", "flame"),
    _rule("SignGuard", "signguard"),
    Defence("FLTrust", "fltrust"),
)

#: column -> attack spec, at the attacks' defaults (the section's text reads them from the
#: attack objects). 'none' (FedAvg only): BadNets poisoning nothing, so the run is clean and
#: the server still measures the trigger.
ATTACKS: dict[str, str] = {
    "none": "badnets:fraction=0",
    "badnets": "badnets",
    "dba": "dba",
    "model-replacement": "model-replacement",
}

#: Rows and attacks the library has but the section leaves out to fit the time budget (named
#: in its text). Neurotoxin's point is a backdoor that outlasts the attackers' last round;
#: here they attack every round.
LEFT_OUT = {"rows": ("CWMed", "FoolsGold", "DnC"), "attacks": ("neurotoxin",)}

ACC_MARGIN = 0.05  # "keeps accuracy": at most 5 points below attack-free FedAvg's
ASR_MARGIN = 0.10  # "stops the backdoor": ASR at most 10 points above the clean model's
WORKS = 0.5  # an attack "works" when FedAvg's mean ASR under it is at least 50%
_EPS = 1e-9  # the bounds are inclusive: a value on one (up to rounding) keeps to it


@dataclass(frozen=True)
class PaperClaim:
    """A published claim checked cell by cell: ``defence`` holds against each of ``attacks``
    where the attack works."""

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


def _config(d: Defence, attack: str, seed: int, s: Setting) -> ExperimentConfig:
    base = ExperimentConfig(
        method=d.method, attack=ATTACKS[attack], byzantine=s.byzantine, clients=s.clients,
        rounds=s.rounds, dataset=s.dataset, partition=s.partition, model=s.model,
        batch_size=s.batch_size, local_epochs=s.local_epochs, lr=s.lr, seed=seed,
        eval_samples=s.eval_samples,
    )  # fmt: skip
    return replace(base, **d.fields)


def _cells(attacks: Sequence[str]) -> list[tuple[str, str]]:
    """(row, column) of every cell: 'none' for FedAvg, the backdoors for every row."""
    backdoors = [a for a in attacks if a != "none"]
    return [("FedAvg", "none")] * ("none" in attacks) + [
        (d.label, a) for d in DEFENCES for a in backdoors
    ]


def _setup_text(s: Setting) -> str:
    """The rows and the attacks' parameters, read from the objects the runs build."""
    bad = get_attack(ATTACKS["badnets"])
    dba = get_attack(ATTACKS["dba"])
    assert isinstance(bad, BadNets) and isinstance(dba, DBA)
    size = int(bad.mask((1, 40)).sum())
    boost = s.clients / s.byzantine
    return (
        "Rows: FedAvg, RobustFedAvg with NNM + Krum (a rule of the attack matrix), the "
        "backdoor defences NormClip, FLAME and SignGuard (RobustFedAvg with the rule, at their "
        f"defaults, f the Byzantine count), and the FLTrust strategy ({ROOT_SIZE} root samples "
        f"the server trains on). Attacks at their defaults: target class {bad.target}, "
        f"{100 * bad.fraction:g}% of each Byzantine client's data poisoned, the trigger on the "
        f"last {size} of the 40 signal positions set to the 99th percentile of the training "
        f"values; DBA splits it into {dba.parts} local triggers; model replacement boosts "
        f"each Byzantine update by n/(eta m) for m Byzantine clients of n (x{boost:g} here), "
        "so that together they replace the model (no norm constraint); every attack runs "
        "every round. 'none': FedAvg with the Byzantine clients running BadNets with nothing "
        "poisoned (honest), so its ASR is the trigger's success on a clean model. Left out to "
        f"fit the time budget: the rows {', '.join(LEFT_OUT['rows'])} and the attack "
        f"{', '.join(LEFT_OUT['attacks'])} (its point, a backdoor that outlasts the attackers' "
        "last round, needs attackers that stop; here they never do)."
    )


def _tail(values: Sequence[float | None]) -> float:
    """Mean of the last ``TAIL_FRACTION`` of the values (at least one; the attack matrix's
    tail accuracy); NaN when one is unknown or there are none."""
    k = max(1, int(len(values) * TAIL_FRACTION))
    last = [math.nan if v is None else float(v) for v in values[-k:]]
    return math.fsum(last) / len(last) if last else math.nan


@dataclass(frozen=True)
class Stats:
    """One cell: clean accuracy and ASR (each a run's tail mean, ``_tail``), their seed means
    and 95% intervals."""

    acc: Interval
    asr: Interval

    @classmethod
    def of(cls, results: Sequence[Result]) -> Stats:
        accs = [_tail([r.accuracy for r in res.rounds]) for res in results]
        asrs = [_tail([r.asr for r in res.rounds]) for res in results]
        return cls(interval(accs), interval(asrs))


def _checks(cell: Stats, clean: Stats) -> tuple[Check, Check]:
    """A defence's two checks in a cell: clean accuracy at least attack-free FedAvg's minus
    ``ACC_MARGIN`` (parity: it fails only when the intervals separate below), and ASR at most
    the clean model's plus ``ASR_MARGIN`` (it holds when the ASR's interval lies wholly below
    that bound, fails when wholly above, within noise otherwise)."""
    return (
        Check.at_least("clean accuracy", cell.acc, clean.acc, ACC_MARGIN + _EPS),
        Check.above("ASR", clean.asr, cell.asr, -(ASR_MARGIN + _EPS)),
    )


def _state(cell: Stats, clean: Stats) -> bool | None:
    """True: the defence holds in the cell; False: it fails; None: within noise (or a number
    is unknown)."""
    if math.isnan(cell.acc.mean) or math.isnan(cell.asr.mean):
        return None
    return {"reproduced": True, "within noise": None}.get(verdict_of(_checks(cell, clean)), False)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


_MARK = {True: "holds", False: "fails", None: "noise"}


def backdoor_matrix(ws: Workspace) -> Section:
    """The section: run (or reuse) every cell, then the tables, figures, rules and data."""
    s = setting(ws)
    seeds = ws.budget.seeds
    rounds = s.rounds
    attacks = list(ATTACKS)
    backdoors = attacks[1:]
    cells = _cells(attacks)
    named = {
        f"{d}|{a}|{seed}": _config(_defence(d), a, seed, s) for d, a in cells for seed in seeds
    }
    engines = {k: engine_of(c.method, ws.budget.engine) for k, c in named.items()}
    results: dict[str, Result] = {}
    for engine in sorted(set(engines.values())):  # one batch of runs per engine
        results |= ws.run({k: c for k, c in named.items() if engines[k] == engine}, engine)
    local = [d.label for d in DEFENCES if engine_of(d.method, ws.budget.engine) == "local"]
    where = f"{ws.budget.engine} engine" + (
        f" ({', '.join(local)} on the local engine: the batched engine has no driver for it)"
        if local and ws.budget.engine != "local"
        else ""
    )
    runs = {(d, a): [results[f"{d}|{a}|{seed}"] for seed in seeds] for d, a in cells}
    stats = {k: Stats.of(v) for k, v in runs.items()}
    clean = stats[("FedAvg", "none")]
    gains = [plateau_gain([r.accuracy for r in res.rounds]) for res in runs[("FedAvg", "none")]]
    states = {(d.label, a): _state(stats[(d.label, a)], clean) for d in DEFENCES for a in backdoors}

    body: list[str] = [
        f"{len(DEFENCES)} rows x {len(backdoors)} backdoors, and attack-free FedAvg, x "
        f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}) = {len(named)} runs, {where}, "
        f"{rounds} rounds. {s.title}: the attack matrix's MNIST-1D setting, every "
        f"client sampled every round; FedAvg-like training in every row: {s.local_epochs} "
        f"local epoch{'s' * (s.local_epochs != 1)} per round, lr {s.lr:g} (the lr the attack "
        f"matrix tuned for its FedAvg row in this setting), momentum 0.9, batch "
        f"{s.batch_size}"
        + (f", {s.eval_samples} test samples scored per round" if s.eval_samples else "")
        + ". "
        f"{_setup_text(s)}",
        "",
        _horizon_text(rounds, gains, seeds),
        "",
        f"Cells: clean accuracy and ASR, each the mean of a run's last "
        f"{100 * TAIL_FRACTION:.0f}% of the rounds, in %: "
        "mean ± 95% half-width over the seeds (Student t).",
        "",
        f"Attack-free FedAvg: clean accuracy {clean.acc.fmt()}, ASR of the trigger on the "
        f"clean model {clean.asr.fmt()}.",
    ]
    acc_rows = [[d.label, *[stats[(d.label, a)].acc.fmt() for a in backdoors]] for d in DEFENCES]
    asr_rows = [[d.label, *[stats[(d.label, a)].asr.fmt() for a in backdoors]] for d in DEFENCES]
    header = ["defence", *backdoors]
    body += ["", "**Clean accuracy (%)**", "", table(header, acc_rows), "",
             "**Attack success rate (%)**", "", table(header, asr_rows)]  # fmt: skip

    figures: list[str] = []
    heat = [
        Cell(d, a, s.byzantine, st.acc.mean, st.asr.mean)
        for (d, a), st in stats.items()
        if a != "none"
    ]
    body += ["", "### Figures", ""]
    if any(not math.isnan(c.asr) for c in heat):
        fig = ws.figure("backdoor_asr")
        plot_heatmap(
            heat, fig, metric="asr",
            title=f"{s.label}: ASR (%), mean of {len(seeds)} seed(s)",
        )  # fmt: skip
        figures.append(ws.link(fig))
        body += [f"![ASR]({ws.link(fig)})", ""]
    fig = scatter_figure(
        {s.title: {(d.label, a): stats[(d.label, a)] for d in DEFENCES for a in backdoors}},
        [d.label for d in DEFENCES], backdoors, ws.figure("backdoor_scatter"),
    )  # fmt: skip
    figures.append(ws.link(fig))
    body += [
        f"![clean accuracy vs ASR]({ws.link(fig)})",
        "",
        "Clean accuracy against ASR, one point per defence and attack (mean over the seeds); "
        "the good corner is the bottom right.",
    ]

    rules, verdicts = _rules(stats, clean, states, backdoors)
    body += rules
    return Section(
        key="backdoor",
        title="Backdoor matrix: clean accuracy and attack success rate",
        markdown="\n".join(body),
        summary=f"{len(named)} runs; {verdicts}",
        figures=figures,
        data=_data(stats, clean, backdoors, s),
    )


def _defence(label: str) -> Defence:
    return next(d for d in DEFENCES if d.label == label)


def _horizon_text(rounds: int, gains: Sequence[float], seeds: Sequence[int]) -> str:
    """The plateau rule applied to the attack-free FedAvg runs (one gain per seed), judged on
    their seed mean as in the attack matrix and the claims; a seed still above it is named."""
    window = f"{100 * PLATEAU_FRACTION:.0f}%"
    shown = ", ".join("n/a" if math.isnan(g) else f"{g:.2f}" for g in gains)
    mean = interval(gains).mean  # of the finite gains; NaN when none is
    text = (
        f"Horizon: {rounds} rounds, the attack matrix's for its FedAvg-like rows. Plateau "
        f"rule: a run has plateaued when its last {window} of the rounds gain less than "
        f"{PLATEAU_POINTS:g} point over the {window} before them; as in the attack matrix, it "
        "is applied to the seed mean. Attack-free FedAvg gains "
        f"{shown} points (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}), "
        + ("n/a" if math.isnan(mean) else f"{mean:+.2f}")
        + " on average: "
    )
    if math.isnan(mean) or not mean < PLATEAU_POINTS:
        return text + "**it has not plateaued**: the cells are those of a model still learning."
    late = [f"seed {s} " + ("diverged" if math.isnan(g) else f"gains {g:+.2f}")
            for s, g in zip(seeds, gains, strict=True)
            if math.isnan(g) or not g < PLATEAU_POINTS]  # fmt: skip
    return text + "it has plateaued" + (f" (on its own, {', '.join(late)})." if late else ".")


def _data(
    stats: Mapping[tuple[str, str], Stats],
    clean: Stats,
    backdoors: Sequence[str],
    s: Setting,
) -> dict[str, object]:
    """The numbers RESULTS.md's summary reads: per row its lowest clean accuracy under the
    backdoors and its highest ASR (seed means), and the attack that gave that ASR."""
    rows: dict[str, dict[str, object]] = {}
    for d in DEFENCES:
        accs = [stats[(d.label, a)].acc.mean for a in backdoors]
        asrs = {a: stats[(d.label, a)].asr.mean for a in backdoors}
        known = {a: v for a, v in asrs.items() if not math.isnan(v)}
        worst = max(known, key=lambda a: known[a]) if known else None
        rows[d.label] = {
            "clean": min((v for v in accs if not math.isnan(v)), default=math.nan),
            "asr_worst": known[worst] if worst is not None else math.nan,
            "worst_attack": worst or "",
        }
    return {
        "label": s.title,
        "fedavg_clean": clean.acc.mean,
        "asr_floor": clean.asr.mean,
        "rows": rows,
    }


def _rules(
    stats: Mapping[tuple[str, str], Stats],
    clean: Stats,
    states: Mapping[tuple[str, str], bool | None],
    backdoors: Sequence[str],
) -> tuple[list[str], str]:
    """The rules' lines (which attacks work, which defences hold where they do, the papers'
    claims) and the section's summary of them."""
    lines = [
        "",
        "### Rules",
        "",
        f"An attack **works** when FedAvg's mean ASR under it is at least {100 * WORKS:.0f}%. "
        "Where it works, a defence **holds** when (1) its clean accuracy is not below "
        f"attack-free FedAvg's minus {100 * ACC_MARGIN:.0f} points (it fails only when the "
        "95% intervals separate) and (2) its ASR is at most the clean model's plus "
        f"{100 * ASR_MARGIN:.0f} points (its interval wholly below that bound); it **fails** "
        "when an interval lies wholly on the wrong side, and is **within noise** otherwise.",
        "",
    ]
    works = [a for a in backdoors if stats[("FedAvg", a)].asr.mean >= WORKS]
    lines.append(
        "FedAvg under each attack (ASR / clean accuracy): "
        + "; ".join(
            f"{a} {_pct(stats[('FedAvg', a)].asr.mean)} / {_pct(stats[('FedAvg', a)].acc.mean)}"
            + ("" if a in works else " (does not work)")
            for a in backdoors
        )
        + "."
    )
    rows, every = [], []
    for d in DEFENCES[1:]:
        shown = [_MARK[states[(d.label, a)]] if a in works else "—" for a in backdoors]
        held = sum(states[(d.label, a)] is True for a in works)
        rows.append([d.label, *shown, f"{held}/{len(works)}"])
        if works and held == len(works):
            every.append(d.label)
    lines += ["", "**Each defence against each attack that works**", "",
              table(["defence", *backdoors, "holds"], rows), ""]  # fmt: skip
    lines.append(f"Hold against every attack that works: {', '.join(every) or 'none'}.")
    lines += ["", "**The papers' claims**", ""]
    matched = []
    for c in CLAIMS:
        tested = [a for a in c.attacks if a in works]
        if not tested:
            lines.append(f"- {c.statement}. Here: **not tested**, none of its attacks works.")
            matched.append(f"{c.defence}'s not tested")
            continue
        verdict = verdict_of([Check(a, states[(c.defence, a)]) for a in tested])
        detail = "; ".join(
            f"{a}: {_MARK[states[(c.defence, a)]]} (accuracy "
            f"{stats[(c.defence, a)].acc.fmt()} vs {clean.acc.fmt()}, ASR "
            f"{stats[(c.defence, a)].asr.fmt()})"
            for a in tested
        )
        skipped = [a for a in c.attacks if a not in works]
        lines.append(
            f"- {c.statement}. Here: **{verdict}** ({detail}"
            + (f"; {', '.join(skipped)} does not work here" if skipped else "")
            + ")."
        )
        matched.append(f"{c.defence}'s {verdict}")
    summary = (
        f"{len(every)} of {len(DEFENCES) - 1} defences hold against every attack that works "
        f"({len(works)} of {len(backdoors)}); claims: {', '.join(matched)}"
    )
    return lines, summary


def scatter_figure(
    panels: Mapping[str, Mapping[tuple[str, str], Stats]],
    defences: Sequence[str],
    attacks: Sequence[str],
    out: Path,
) -> Path:
    """One panel per setting: clean accuracy (x, %) against ASR (y, %), a point per
    (defence, attack) at its seed means (colour: defence, marker: attack); NaN points are
    left out."""
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
                if st is None or math.isnan(st.acc.mean) or math.isnan(st.asr.mean):
                    continue
                ax.scatter(100 * st.acc.mean, 100 * st.asr.mean,
                           color=colours[i % len(colours)], marker=markers[j % len(markers)],
                           s=28, alpha=0.85)  # fmt: skip
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
