"""The attack x defence matrix at converged horizons, every row's hyperparameters tuned per
setting by the worst case over the attacks.

Two settings: MNIST-1D with its CNN, and a "Real workloads" data set (MNIST's hub format) read
from a locally prepared copy with LeNet (``localcopy.prepared_copy``). 20 clients, 4 of them
Byzantine. Every row (FedAvg, RobustFedAvg with six aggregators, the four method strategies)
first has its learning rate, and its key hyperparameter where it has one, chosen on a
validation holdout of the training split with a tuning seed (``tuning``: the best worst-case
tail accuracy over the attacks); the cells are then measured with the chosen values on the test
split over the seeds (mean and 95% interval of each seed's tail accuracy). Horizons are per row
family: FedAvg-like rows train one local epoch per round, the method strategies take one server
step per round and run many more rounds; each family's horizon is one where the attack-free runs
have plateaued (the plateau gain of every row's attack-free runs is shown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..simulations.config import ExperimentConfig
from ..simulations.plots import plot_heatmap
from ..simulations.report import Cell
from ..simulations.result import Result
from .section import Budget, Section, table
from .stats import PLATEAU_POINTS, Interval, interval, plateau_gain
from .tuning import TIE, TUNING_SEED, VALIDATION, Choice, choose, tail_accuracy, tuning_config
from .workspace import Workspace

__all__ = [
    "ATTACKS",
    "BYZANTINE",
    "CLIENTS",
    "COPY_ROWS",
    "DEFENCES",
    "MNIST1D_CNN",
    "PREPARED_COPY",
    "SETTINGS",
    "Defence",
    "Knob",
    "Row",
    "Setting",
    "attack_matrix",
    "fedavg_lr",
    "setting_dataset",
]

CLIENTS = 20
BYZANTINE = 4  # one Byzantine fraction (20%) is enough to rank the rows; see the text
#: ``Setting.dataset`` of the setting read from the locally prepared MNIST-format copy.
PREPARED_COPY = "prepared-copy"


@dataclass(frozen=True)
class Knob:
    """A row's key hyperparameter: its name in the tables, the values tried (in grid order),
    and where it goes: ``"aggregator"`` (an option ``key`` of the aggregator spec),
    ``"params"`` (the strategy argument ``key``; ``integer``: passed as an int) or ``"eta"``
    (Byz-EF21-SGDM's eta, i.e. momentum 1 - eta); ``about``: what it is, for the text."""

    name: str
    values: tuple[float, ...]
    target: str
    key: str = ""
    integer: bool = False
    about: str = ""

    def apply(self, fields: dict[str, Any], value: float) -> dict[str, Any]:
        out = dict(fields)
        if self.integer:
            value = int(value)
        if self.target == "aggregator":
            out["aggregator"] = f"{out['aggregator']}:{self.key}={value}"
        elif self.target == "params":
            out["params"] = {**out.get("params", {}), self.key: value}
        elif self.target == "eta":
            out["momentum"] = 1.0 - value
        else:
            raise ValueError(f"unknown knob target {self.target!r}")
        return out


@dataclass(frozen=True)
class Row:
    """A row of the matrix: its method and fixed config fields, its family (``"fedavg"``:
    local epochs per round; ``"step"``: one server step per round), the learning rates tried
    and its key hyperparameter (None: the lr only)."""

    label: str
    method: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    family: str = "fedavg"
    lrs: tuple[float, ...] = (0.2,)
    knob: Knob | None = None

    def candidates(self, quick: bool = False) -> list[tuple[float, float | None]]:
        """The grid, lr-major (in the order ties are broken); quick: its first candidate."""
        values: tuple[float | None, ...] = self.knob.values if self.knob else (None,)
        grid = [(lr, v) for lr in self.lrs for v in values]
        return grid[:1] if quick else grid

    def fields_for(self, lr: float, value: float | None) -> dict[str, Any]:
        out = {**self.fields, "lr": lr}
        if self.knob is not None and value is not None:
            out = self.knob.apply(out, value)
        return out

    def param_text(self, value: float | None) -> str:
        return "" if self.knob is None or value is None else f"{self.knob.name} {value:g}"


#: The name the backdoor matrix imports its rows by.
Defence = Row

_LOCAL = {"local_epochs": 1}  # local SGD (momentum 0.9), restarted every round
_FEDAVG_LRS = (0.15, 0.2)  # plateau by 100 rounds; 0.3 swings +-15 points from seed to seed
_BYZSGD = {"n_servers": 5, "f_servers": 1, "server_attack": "random"}
MU2 = "mu2-SGD + CTMA"
BYZSGD = "ByzSGD (1 of 5 servers Byzantine)"

#: The rows, in table order.
DEFENCES: tuple[Row, ...] = (
    Row("FedAvg", "fedavg", _LOCAL, lrs=_FEDAVG_LRS),
    Row("RobustFedAvg CWMed", "robust-fedavg", _LOCAL | {"aggregator": "cwmed"}, lrs=_FEDAVG_LRS),
    Row("RobustFedAvg GeoMed", "robust-fedavg", _LOCAL | {"aggregator": "geomed"},
        lrs=_FEDAVG_LRS),
    Row("RobustFedAvg Krum", "robust-fedavg", _LOCAL | {"aggregator": "krum"}, lrs=_FEDAVG_LRS),
    Row("RobustFedAvg NNM+Krum", "robust-fedavg", _LOCAL | {"aggregator": "nnm+krum"},
        lrs=_FEDAVG_LRS),
    Row("RobustFedAvg CClip", "robust-fedavg", _LOCAL | {"aggregator": "cc"}, lrs=_FEDAVG_LRS,
        knob=Knob("tau", (1.0, 10.0), "aggregator", "tau", about="CClip's radius tau")),
    Row("RobustFedAvg CTMA+CWMed", "robust-fedavg", _LOCAL | {"aggregator": "ctma+cwmed"},
        lrs=_FEDAVG_LRS),
    Row("Byz-VR-MARINA-PP", "byz-vr-marina-pp",
        {"aggregator": "bucketing:2+median", "compressor": "randk:0.1", "clients_per_round": 4},
        family="step", lrs=(0.05, 0.1),
        knob=Knob("alpha", (1.0, 10.0), "params", "alpha",
                  about="MARINA-PP's clipping multiplier alpha")),
    Row("Byz-EF21-SGDM (TopK 10%)", "byz-ef21-sgdm",
        {"aggregator": "nnm+cwtm", "compressor": "topk:0.1"},
        family="step", lrs=(0.2, 0.5),
        knob=Knob("eta", (0.1, 0.5), "eta",
                  about="Byz-EF21-SGDM's momentum eta (momentum 1 - eta)")),
    Row(MU2, "mu2sgd", {"aggregator": "ctma+median"}, family="step", lrs=(0.2, 0.5)),
    Row(BYZSGD, "byzsgd", {"aggregator": "mda", "params": _BYZSGD},
        family="step", lrs=(0.2, 0.5),
        knob=Knob("T", (5, 10), "params", "gather_period", integer=True,
                  about="ByzSGD's gather period T (steps between the servers' model exchanges)")),
)  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """A table: data, partition, model, the attacks of its columns (``"none"`` first: the
    attack-free run, with the Byzantine clients honest), the rounds of each row family (full
    budget; a row's label as a key: that row's own horizon; quick budget: per family) and
    the test samples each round is scored on (None: all)."""

    key: str
    label: str
    dataset: str  # a dataset spec, or PREPARED_COPY
    partition: str
    model: str
    rounds: Mapping[str, int]
    attacks: tuple[str, ...]
    rows: tuple[Row, ...] = DEFENCES
    eval_samples: int | None = None
    batch_size: int = 32
    quick_rounds: Mapping[str, int] = field(default_factory=lambda: {"fedavg": 2, "step": 4})

    def horizon(self, row: Row, budget: Budget) -> int:
        if budget.quick:
            return self.quick_rounds[row.family]
        return self.rounds.get(row.label, self.rounds[row.family])


#: The columns: attack-free, then the attacks the worst case is taken over: sign flipping (what
#: breaks plain averaging) and the two omniscient attacks made against robust rules, ALIE and
#: min-max.
ATTACKS: tuple[str, ...] = ("none", "sign-flip", "alie", "min-max")

#: Setting (b)'s rows: LeNet runs cost about twice the CNN's, so three FedAvg-like rows (the
#: mean, a coordinate-wise rule, a distance-based one with mixing), at a LeNet learning rate
#: grid; the other rows and the method strategies run in setting (a) only.
COPY_ROWS = ("FedAvg", "RobustFedAvg CWMed", "RobustFedAvg NNM+Krum")
_LENET_LRS = (0.05, 0.1)  # 0.2 collapses under sign flipping

#: Setting (a): MNIST-1D with its CNN, IID. 100 rounds: at 60, lr 0.3 (the only one fast
#: enough) left 8 of 11 rows still rising, some by 4-5 points; at 100 with lr 0.15-0.2 the
#: FedAvg-like rows plateau. (With Dirichlet(0.5) label skew, attack-free FedAvg had not
#: plateaued at 60 rounds on 2 of 3 seeds; setting (b) keeps the label skew.) The method
#: strategies plateau by 600 steps, except mu2-SGD and ByzSGD (no momentum, lr 0.2: +3.9 and
#: +4.4 points over the last 10% at 600, +2.8 and +1.4 at 1000; at 1200 mu2-SGD -0.7, and
#: ByzSGD -7.5 with two seeds at +1.2/+1.3 and one collapsing late).
MNIST1D_CNN = Setting(
    "mnist1d-cnn",
    "MNIST-1D, CNN, IID",
    "mnist1d",
    "iid",
    "cnn1d",
    rounds={"fedavg": 100, "step": 600, MU2: 1200, BYZSGD: 1200},
    attacks=ATTACKS,
    eval_samples=500,
)
#: Setting (b): MNIST's hub format from a locally prepared copy, LeNet, Dirichlet(0.5).
MNIST_COPY_LENET = Setting(
    "mnist-copy-lenet",
    "MNIST format (local copy), LeNet, Dirichlet(0.5)",
    PREPARED_COPY,
    "dirichlet:0.5",
    "lenet",
    rounds={"fedavg": 50, "step": 600},
    attacks=ATTACKS,
    rows=tuple(replace(r, lrs=_LENET_LRS) for r in DEFENCES if r.label in COPY_ROWS),
)

SETTINGS: tuple[Setting, ...] = (MNIST1D_CNN, MNIST_COPY_LENET)


def setting_dataset(s: Setting, ws: Workspace) -> str:
    """The dataset spec of ``s``: the prepared copy is written once under ``<work>/data``."""
    if s.dataset != PREPARED_COPY:
        return s.dataset
    from .localcopy import prepared_copy

    return prepared_copy(Path(ws.work) / "data")


def _config(
    s: Setting, dataset: str, row: Row, cand: tuple[float, float | None], attack: str,
    seed: int, rounds: int,
) -> ExperimentConfig:  # fmt: skip
    base = ExperimentConfig(
        method=row.method, attack=attack, byzantine=BYZANTINE, clients=CLIENTS, rounds=rounds,
        dataset=dataset, partition=s.partition, model=s.model, batch_size=s.batch_size,
        seed=seed, eval_samples=s.eval_samples,
    )  # fmt: skip
    return replace(base, **row.fields_for(*cand))


Cand = tuple[float, float | None]


def _describe(s: Setting, dataset: str) -> str:
    if s.dataset != PREPARED_COPY:
        return f"`{dataset}`"
    from .localcopy import describe

    return describe()


def _tune(ws: Workspace, s: Setting, dataset: str) -> dict[str, Choice[Cand]]:
    """Every row's choice: its grid run once per attack (not the attack-free column) with the
    tuning seed on the validation holdout, in one batch of runs."""
    attacks = [a for a in s.attacks if a != "none"]
    keys: dict[tuple[str, Cand, str], ExperimentConfig] = {}
    for row in s.rows:
        rounds = s.horizon(row, ws.budget)
        for cand in row.candidates(ws.budget.quick):
            for a in attacks:
                cfg = _config(s, dataset, row, cand, a, TUNING_SEED, rounds)
                keys[(row.label, cand, a)] = tuning_config(cfg)
    results = ws.run({"|".join(map(str, k)): c for k, c in keys.items()})
    out = {}
    for row in s.rows:
        grid = row.candidates(ws.budget.quick)
        runs = {c: {a: results["|".join(map(str, (row.label, c, a)))] for a in attacks}
                for c in grid}  # fmt: skip
        out[row.label] = choose(grid, runs)
    return out


def fedavg_lr(ws: Workspace, s: Setting = MNIST1D_CNN) -> float:
    """The learning rate the matrix tunes for its FedAvg row in setting ``s`` (runs, or reuses,
    that row's tuning runs): the FedAvg-family lr other sections of the same setting use."""
    row = next(r for r in s.rows if r.method == "fedavg")
    return _tune(ws, replace(s, rows=(row,)), setting_dataset(s, ws))[row.label].chosen[0]


@dataclass
class _Table:
    """One setting's measured cells: row -> attack -> per-seed results."""

    setting: Setting
    rounds: dict[str, int]
    choices: dict[str, Choice[Cand]]
    runs: dict[str, dict[str, list[Result]]]

    def iv(self, row: str, attack: str) -> Interval:
        return interval([tail_accuracy(r) for r in self.runs[row][attack]])

    def worst(self, row: str) -> tuple[float, str]:
        attacked = [(self.iv(row, a).mean, a) for a in self.setting.attacks if a != "none"]
        finite = [(m, a) for m, a in attacked if not math.isnan(m)]
        if len(finite) < len(attacked):  # a diverged attack is the worst case
            return math.nan, next(a for m, a in attacked if math.isnan(m))
        worst = (math.nan, "")
        for m, a in finite:  # the first lowest in column order
            if math.isnan(worst[0]) or m < worst[0]:
                worst = (m, a)
        return worst

    def gain(self, row: str) -> float:
        gains = [plateau_gain([r.accuracy for r in res.rounds]) for res in self.runs[row]["none"]]
        return interval(gains).mean  # of the finite gains; NaN when none is

    def mb_per_round(self, row: str) -> float:
        """Uplink MB per client and round of the attack-free runs (the total over the
        rounds / clients / rounds, so a row sampling a few clients per round counts the
        rounds its clients sit out)."""
        runs = self.runs[row]["none"]
        per = [sum(r.bytes_up for r in res.rounds) / CLIENTS / len(res.rounds) / 1e6
               for res in runs if res.rounds]  # fmt: skip
        return math.fsum(per) / len(per) if per else math.nan


def _measure(ws: Workspace, s: Setting, dataset: str, choices: dict[str, Choice[Cand]]) -> _Table:
    seeds = ws.budget.seeds
    keys: dict[tuple[str, str, int], ExperimentConfig] = {}
    rounds = {}
    for row in s.rows:
        rounds[row.label] = s.horizon(row, ws.budget)
        cand = choices[row.label].chosen
        for a in s.attacks:
            for seed in seeds:
                keys[(row.label, a, seed)] = _config(s, dataset, row, cand, a, seed,
                                                     rounds[row.label])  # fmt: skip
    results = ws.run({"|".join(map(str, k)): c for k, c in keys.items()})
    runs = {
        row.label: {
            a: [results["|".join(map(str, (row.label, a, seed)))] for seed in seeds]
            for a in s.attacks
        }
        for row in s.rows
    }
    return _Table(s, rounds, choices, runs)


_FAMILIES = {"fedavg": "FedAvg-like rows", "step": "method strategies"}


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _cand_text(row: Row, cand: Cand) -> str:
    text = f"lr {cand[0]:g}"
    return f"{text}, {row.param_text(cand[1])}" if cand[1] is not None else text


def _gain_flag(gain: float) -> str:
    """The table's flag for a seed-mean plateau gain: "not plateaued" for a gain of a point or
    more, "falling" for a loss of a point or more (the rule holds, but the tail is below the
    runs' best: e.g. a seed that collapsed late), none in between."""
    if math.isnan(gain) or abs(gain) < PLATEAU_POINTS:
        return ""
    return " (not plateaued)" if gain > 0 else " (falling)"


def _tables(t: _Table) -> list[str]:
    s = t.setting
    header = ["row", "lr", "key hyperparameter", "rounds", *s.attacks, "worst",
              "plateau gain (none)", "MB up / client / round"]  # fmt: skip
    rows = []
    for row in s.rows:
        choice = t.choices[row.label]
        lr, value = choice.chosen
        worst, attack = t.worst(row.label)
        gain = t.gain(row.label)
        flag = _gain_flag(gain)
        rows.append([
            row.label, f"{lr:g}", row.param_text(value) or "-", t.rounds[row.label],
            *[t.iv(row.label, a).fmt() for a in s.attacks],
            f"{_pct(worst)} ({attack})" if attack else "n/a",
            f"{gain:+.1f}{flag}" if not math.isnan(gain) else "n/a",
            f"{t.mb_per_round(row.label):.4f}",
        ])  # fmt: skip
    tuning = []
    for row in s.rows:
        choice = t.choices[row.label]
        tried = [
            f"{_cand_text(row, c)}: {_pct(choice.worst_of(c))}" + (" ←" if c == choice.chosen
                                                                  else "")
            for c in choice.scores
        ]  # fmt: skip
        tuning.append([row.label, "; ".join(tried)])
    return [
        "", f"**{s.label}: tail accuracy (%) on the test split, mean ± 95% half-width**", "",
        table(header, rows),
        "", _seeds_text(t),
        "", f"**{s.label}: tuning (worst validation tail accuracy over the attacks, %; ← "
        "chosen)**", "",
        table(["row", "candidates"], tuning),
    ]  # fmt: skip


def _seeds_text(t: _Table) -> str:
    """The attack-free runs that, on their own, gain a point or more over their last 10% (the
    plateau gain column judges the seed mean)."""
    above = []
    for row in t.setting.rows:
        seeds = [
            f"seed {res.config.get('seed', '?')} {gain:+.1f}"
            for res in t.runs[row.label]["none"]
            for gain in [plateau_gain([r.accuracy for r in res.rounds])]
            if not math.isnan(gain) and gain >= PLATEAU_POINTS
        ]
        if seeds:
            above.append(f"{row.label} ({', '.join(seeds)})")
    if not above:
        return "Every attack-free run is within the plateau rule on its own."
    return (
        "Attack-free runs above the plateau rule on their own (the column judges the seed "
        f"mean): {'; '.join(above)}."
    )


def _data(t: _Table) -> dict[str, Any]:
    rows = {}
    for row in t.setting.rows:
        lr, value = t.choices[row.label].chosen
        worst, attack = t.worst(row.label)
        rows[row.label] = {
            "clean": t.iv(row.label, "none").mean,
            "worst": worst,
            "worst_attack": attack,
            "mb_up_per_round": t.mb_per_round(row.label),
            "lr": lr,
            "param": row.param_text(value),
            "rounds": t.rounds[row.label],
        }
    return {"label": t.setting.label, "rows": rows}


def _setup(ws: Workspace, settings: Sequence[Setting]) -> str:
    b = ws.budget
    seeds = ", ".join(map(str, b.seeds))
    attacks = ", ".join(a for a in settings[0].attacks if a != "none")
    scope = "; ".join(f"{s.label}: {len(s.rows)} rows, rounds: {_horizons(s, b)}" for s in settings)
    return "\n".join([
        f"{len(settings)} settings ({scope}); columns: attack-free, then {attacks}. "
        f"{CLIENTS} clients of which {BYZANTINE} Byzantine (20%: one fraction, enough to rank "
        "the rows; the attack-free column keeps them honest, so each rule is set for the same "
        f"f). Seeds {seeds}; {b.engine} engine. A cell is the mean over the seeds of each "
        "run's tail accuracy (the mean of its last 10% of rounds) ± the 95% Student-t "
        "half-width; *worst* is the lowest mean over the attacks (a diverged run counts as "
        "the worst).",
        "",
        "**Tuning (per row and setting, the rule of ByzFL's benchmark).** Each row's grid "
        "(its learning rates and, where it has one, the values of its key hyperparameter: "
        f"{_knobs_text()}) is run once per attack with tuning seed {TUNING_SEED}, trained "
        "without and scored "
        f"on a fixed, stratified {round(100 * VALIDATION)}% holdout of the training split "
        f"(dataset option `validation={VALIDATION}`): the test split of the cells is never "
        "seen. The candidate with the best worst tail accuracy over the attacks wins; "
        f"candidates within {100 * TIE:.1f} points of the best are tied and the earlier in "
        "the grid (smaller lr first, then the hyperparameter's values in the order listed) "
        "wins. Each setting's tuning table lists every candidate with its worst score.",
        "",
        "**Horizons.** FedAvg-like rows (FedAvg, RobustFedAvg) train one local epoch per round "
        f"(SGD, momentum 0.9, batch {settings[0].batch_size}); the method strategies take one "
        "server step per round (minibatch gradients of the same size), so they run many more "
        "rounds (mu2-SGD and ByzSGD, without momentum, twice as many as the other two). "
        "Each row's horizon is one where its attack-free runs have plateaued "
        f"(the plateau rule: the last 10% of the rounds gain less than {PLATEAU_POINTS:g} "
        "point over the 10% before); the tables give each row's attack-free plateau gain and "
        "flag a row that has not plateaued, and one whose tail falls by a point or more "
        "(falling: the rule holds, but the runs are past their best, e.g. a seed that "
        "collapsed late). MARINA-PP samples 4 of 20 clients per round "
        "(RandK 10%, bucketing + median), Byz-EF21-SGDM sends TopK 10% (NNM + CWTM), mu2-SGD "
        "uses CTMA + median, ByzSGD MDA with one of its 5 server replicas Byzantine (a "
        "different random model to each worker). Attacks at their defaults (ALIE's z from n "
        "and f; min-max's own scaling search). Bytes: uplink MB per client and round of the "
        "attack-free runs (a row that samples a few clients per round counts the rounds its "
        "clients sit out). Flower's Krum and Bulyan rows are gone: Flower's Krum is "
        "RobustFedAvg Krum exactly, and Bulyan (Krum's selection, then a coordinate-wise "
        "trimmed mean) is the slowest rule, left out to fit the budget.",
    ])  # fmt: skip


def _knobs_text() -> str:
    """The rows' key hyperparameters and the values tried, e.g. "CClip's radius tau: 1, 10"."""
    return "; ".join(
        f"{r.knob.about or r.knob.name}: {', '.join(f'{v:g}' for v in r.knob.values)}"
        for r in DEFENCES
        if r.knob is not None
    )


def _horizons(s: Setting, budget: Budget) -> str:
    """Each family's horizon, and the rows with their own, e.g. "FedAvg-like rows 100,
    method strategies 600 (mu2-SGD + CTMA 1200)"."""
    parts = []
    for key, name in _FAMILIES.items():
        rows = [r for r in s.rows if r.family == key]
        if not rows:
            continue
        base = s.quick_rounds[key] if budget.quick else s.rounds[key]
        own = [f"{r.label} {s.horizon(r, budget)}" for r in rows if s.horizon(r, budget) != base]
        parts.append(f"{name} {base}" + (f" ({', '.join(own)})" if own else ""))
    return ", ".join(parts)


def attack_matrix(ws: Workspace) -> Section:
    body = [_setup(ws, SETTINGS)]
    figures: list[str] = []
    data: dict[str, Any] = {"settings": {}, "fedavg_clean": {}}
    runs = 0
    for s in SETTINGS:
        dataset = setting_dataset(s, ws)
        choices = _tune(ws, s, dataset)
        t = _measure(ws, s, dataset, choices)
        runs += sum(len(row.candidates(ws.budget.quick)) for row in s.rows) * (
            len(s.attacks) - 1
        ) + len(s.rows) * len(s.attacks) * len(ws.budget.seeds)
        body += ["", f"### {s.label}", "",
                 f"Rounds: {_horizons(s, ws.budget)}; data: {_describe(s, dataset)}."
                 + (f" Each round is scored on {s.eval_samples} fixed samples of the "
                    "evaluation split (test; validation when tuning)."
                    if s.eval_samples else "")]  # fmt: skip
        body += _tables(t)
        data["settings"][s.key] = _data(t)
        fedavg = next(r for r in s.rows if r.method == "fedavg")
        data["fedavg_clean"][s.key] = t.iv(fedavg.label, "none").mean
        cells = [
            Cell(row.label, a, BYZANTINE, t.iv(row.label, a).mean)
            for row in s.rows
            for a in s.attacks
        ]
        fig = ws.figure(f"matrix_{s.key}")
        plot_heatmap(
            cells, fig, title=f"{s.label}: tail accuracy (%), mean of {len(ws.budget.seeds)} "
            "seed(s)"
        )  # fmt: skip
        figures.append(ws.link(fig))
        body += ["", f"![{s.label}]({ws.link(fig)})"]
    return Section(
        key="matrix",
        title="Attack x defence matrix",
        markdown="\n".join(body),
        summary=f"{runs} runs (tuning included)",
        figures=figures,
        data=data,
    )
