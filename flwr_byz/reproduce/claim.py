"""A paper's claim as one declarative object: its setup (the runs), its verdict rule, its figure.

``Claim.run`` runs the claim's configs once per claim seed through the ``Workspace`` (local
engine, parallel, resumable), takes any extra measurement, applies the rule to the numbers,
draws the figure, and returns the ``Section``: the setup, the tables, the rule in words, the
figure and, when a check fails, the most likely reason. Nothing is tuned after the fact: a
``TunedClaim`` chooses its step sizes first, on a validation split the test split never joins.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..simulations.config import ExperimentConfig
from ..simulations.result import Result
from .pool import TAIL, mean_std, tail_acc
from .section import VERDICTS, Budget, Section, line_figure
from .stats import (
    PLATEAU_POINTS,
    Check,
    Interval,
    best_worst_case,
    interval,
    plateau_gain,
    verdict_of,
)
from .tuning import VALIDATION, with_validation
from .workspace import Workspace

__all__ = [
    "NO_NUMBER",
    "PLATEAU_RULE",
    "TUNING_SEEDS",
    "VALIDATION",
    "Claim",
    "Evidence",
    "Figure",
    "Grid",
    "Outcome",
    "Panels",
    "Tuned",
    "TunedClaim",
    "on_validation",
    "plateau_line",
    "rising_line",
    "tune",
    "tuning_line",
    "tuning_text",
    "verdict",
]

NO_NUMBER = "Paper: a qualitative claim, no number quoted."

#: A figure's panels: (title, {line label: (xs, ys)}), side by side.
Panels = list[tuple[str, dict[str, tuple[list[float], list[float]]]]]


@dataclass(frozen=True)
class Evidence:
    """What a claim's rule and figure read: ``runs`` (run name -> one Result per claim seed),
    the ``budget``, and the claim's extra measurements (``measured``)."""

    runs: Mapping[str, Sequence[Result]]
    budget: Budget
    measured: Mapping[str, float] = field(default_factory=dict)

    def acc(self, name: str, tail: int = TAIL) -> float:
        """Seed mean of run ``name``'s last-``tail``-rounds accuracy."""
        return mean_std([tail_acc(r, tail=tail) for r in self.runs[name]])[0]

    def iv(self, name: str, tail: int = TAIL) -> Interval:
        """Seed mean and 95% interval of run ``name``'s last-``tail``-rounds accuracy."""
        return interval([tail_acc(r, tail=tail) for r in self.runs[name]])

    def plateau(self, name: str) -> float:
        """Seed mean of the points run ``name`` gained in its last 10% of rounds over the 10%
        before (``stats.plateau_gain``); the plateau rule asks for less than 1."""
        gains = [plateau_gain([rec.accuracy for rec in r.rounds]) for r in self.runs[name]]
        return mean_std(gains)[0]

    def curve(self, name: str, field: str = "accuracy") -> tuple[list[float], list[float]]:
        """Seed-mean curve of a per-round field of run ``name`` (accuracy in %)."""
        rs = self.runs[name]
        scale = 100.0 if field == "accuracy" else 1.0
        n = min(len(r.rounds) for r in rs)
        xs = [float(rs[0].rounds[i].round) for i in range(n)]
        ys = [
            scale * statistics.fmean(getattr(r.rounds[i], field) for r in rs) for i in range(n)
        ]  # NaN propagates: a diverged seed shows as a gap
        return xs, ys

    @property
    def seeds_note(self) -> str:
        """``"seeds 0, 1 (numbers are seed means)"``, for the setup paragraph."""
        seeds = self.budget.claim_seeds
        s = "s" if len(seeds) > 1 else ""
        return f"seed{s} {', '.join(map(str, seeds))} (numbers are seed means)"


def verdict(checks: Sequence[Check | bool]) -> str:
    """``stats.verdict_of``: all hold: reproduced; none fails but some are within noise:
    within noise; some hold, some fail: partly; none holds: not reproduced."""
    out = verdict_of(checks)
    assert out in VERDICTS
    return out


@dataclass(frozen=True)
class Outcome:
    """The rule applied to the evidence: its ``checks`` (-> the verdict), the one-line
    ``summary``, and the section's text: the ``setup`` paragraph, the ``results`` lines (tables,
    measured figures) shown before the rule, and the ``caveat`` (the most likely reason a
    check failed) shown after the figure."""

    checks: Sequence[Check | bool]
    summary: str
    setup: str
    results: Sequence[str]
    caveat: str | None = None

    @property
    def verdict(self) -> str:
        return verdict(self.checks)


@dataclass(frozen=True)
class Figure:
    """A claim's figure, ``<docs>/img/<name>.png``: ``panels(evidence)`` side by side."""

    name: str
    alt: str
    panels: Callable[[Evidence], Panels]
    xlabel: str = "round"
    ylabel: str = "accuracy (%)"
    logy: bool = False

    def draw(self, ev: Evidence, ws: Workspace) -> str:
        """Write the PNG; its link relative to the docs folder."""
        path = ws.figure(self.name)
        line_figure(self.panels(ev), path, xlabel=self.xlabel, ylabel=self.ylabel, logy=self.logy)
        return ws.link(path)


@dataclass(frozen=True)
class Claim:
    """One claim of one paper.

    ``runs(budget)``: the setup, run name -> config (each run once per claim seed);
    ``measure(budget)``: extra measurements beside the runs (e.g. an aggregation time);
    ``rule``: the verdict rule in words, and ``assess``: the same rule on the numbers;
    ``figure``: what is drawn.
    """

    key: str
    paper: str
    title: str
    statement: str  # the paper's claim, in our words
    runs: Callable[[Budget], dict[str, ExperimentConfig]]
    rule: str
    assess: Callable[[Evidence], Outcome]
    figure: Figure
    measure: Callable[[Budget], dict[str, float]] | None = None

    def run(self, ws: Workspace) -> Section:
        """Run (or reuse) the claim's runs, apply the rule, draw the figure: its section."""
        seeds = ws.budget.claim_seeds
        named = self.runs(ws.budget)
        seeded = {f"{k}@{s}": replace(c, seed=s) for k, c in named.items() for s in seeds}
        results = ws.run(seeded)
        runs = {k: [results[f"{k}@{s}"] for s in seeds] for k in named}
        measured = self.measure(ws.budget) if self.measure else {}
        ev = Evidence(runs, ws.budget, measured)
        out = self.assess(ev)
        link = self.figure.draw(ev, ws)
        body = [out.setup, "", *out.results, self.rule, "", f"![{self.figure.alt}]({link})"]
        if out.caveat:
            body += ["", out.caveat]
        return Section(
            key=self.key,
            title=self.title,
            markdown="\n".join(body),
            verdict=out.verdict,
            summary=out.summary,
            figures=[link],
        )


# ----------------------------------------------------------------------------- tuning

#: Seeds of the tuning runs, apart from the claim seeds (the first one only in quick mode).
TUNING_SEEDS = (100, 101)

#: A claim's step-size grid: arm (what is compared) -> lr -> setting (e.g. attack) -> config.
Grid = Mapping[str, Mapping[float, Mapping[str, ExperimentConfig]]]


def on_validation(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` trained without, and scored on, a ``VALIDATION`` holdout of its training split:
    the test split is never seen."""
    return replace(cfg, dataset=with_validation(cfg.dataset))


def tuning_text(lrs: Sequence[float], over: str) -> str:
    """The tuning rule (``tune``) in words: the ``lrs`` grid, chosen per ``over``."""
    return (
        f"Learning rate tuned per {over} from {{{', '.join(map(str, lrs))}}}: each candidate is "
        f"run on seeds {', '.join(map(str, TUNING_SEEDS))}, trained without and scored on a "
        f"{VALIDATION:.0%} validation holdout of the training split (the test split is never "
        "seen); the lr with the best worst-case tail accuracy over the attacks wins (a diverged "
        "run is the worst; a tie goes to the smaller lr); then the claim's seeds run it on the "
        "test split."
    )


@dataclass(frozen=True)
class Tuned:
    """The tuning rule's outcome: ``lr`` (arm -> chosen step size) and ``worst`` (arm -> lr ->
    worst seed-mean validation accuracy over the settings; NaN when a run diverged)."""

    lr: dict[str, float]
    worst: dict[str, dict[float, float]]


def tune(ws: Workspace, grid: Grid, seeds: Sequence[int] = TUNING_SEEDS) -> Tuned:
    """Run every config of ``grid`` on the validation split once per tuning seed and choose,
    per arm, the lr whose worst seed-mean tail accuracy over the settings is highest
    (``stats.best_worst_case``: a diverged run counts as the worst; a tie goes to the earlier
    lr of the grid)."""
    configs = {
        f"tune {arm} lr={lr} {s}@{seed}": replace(on_validation(cfg), seed=seed)
        for arm, lrs in grid.items()
        for lr, settings in lrs.items()
        for s, cfg in settings.items()
        for seed in seeds
    }
    results = ws.run(configs)
    chosen: dict[str, float] = {}
    worst: dict[str, dict[float, float]] = {}
    for arm, lrs in grid.items():
        scores = {
            lr: {
                s: mean_std(
                    [tail_acc(results[f"tune {arm} lr={lr} {s}@{seed}"]) for seed in seeds]
                )[0]
                for s in settings
            }
            for lr, settings in lrs.items()
        }
        chosen[arm] = best_worst_case(scores)[0]
        worst[arm] = {
            lr: math.nan if any(math.isnan(v) for v in vs.values()) else min(vs.values())
            for lr, vs in scores.items()
        }
    return Tuned(chosen, worst)


@dataclass(frozen=True)
class TunedClaim(Claim):
    """A claim whose step size is tuned per arm first (``tune``): ``grid(budget)`` on the
    validation split with the ``TUNING_SEEDS``; then ``final(budget, lrs)`` gives the claim's
    runs at the chosen lr of each arm (test split, claim seeds). The rule reads the choice in
    ``measured``: ``"lr <arm>"`` and ``"worst <arm> <lr>"`` (validation score). ``runs`` are
    the claim's runs at the setup's own lr (to list or check them before any tuning)."""

    grid: Callable[[Budget], Grid] | None = None
    final: Callable[[Budget, Mapping[str, float]], dict[str, ExperimentConfig]] | None = None

    def run(self, ws: Workspace) -> Section:
        if self.grid is None or self.final is None:
            raise TypeError(f"{self.key}: a TunedClaim needs grid and final")
        seeds = TUNING_SEEDS[:1] if ws.budget.quick else TUNING_SEEDS
        tuned = tune(ws, self.grid(ws.budget), seeds)
        extra = {f"lr {arm}": lr for arm, lr in tuned.lr.items()}
        extra |= {f"worst {a} {lr}": w for a, ws_ in tuned.worst.items() for lr, w in ws_.items()}
        final, measure = self.final, self.measure

        def runs(b: Budget) -> dict[str, ExperimentConfig]:
            return final(b, tuned.lr)

        def measured(b: Budget) -> dict[str, float]:
            return {**(measure(b) if measure else {}), **extra}

        return Claim.run(replace(self, runs=runs, measure=measured), ws)


#: The plateau rule in words, for a setup paragraph.
PLATEAU_RULE = (
    "A run has plateaued when its last 10% of rounds gain less than 1 point of accuracy over "
    "the 10% before them (plateau gain < 1)."
)


def plateau_line(ev: Evidence, runs: Mapping[str, str]) -> str:
    """One sentence on the plateau of the runs ``runs`` (label -> run name): each one's seed
    mean plateau gain and, by name, those that have not plateaued."""
    gains = {label: ev.plateau(name) for label, name in runs.items()}
    shown = ", ".join(f"{label} {g:+.1f}" for label, g in gains.items())
    late = [label for label, g in gains.items() if not g < PLATEAU_POINTS]
    end = f"not plateaued: {', '.join(late)}." if late else "every one has plateaued."
    return f"Plateau gain of the attack-free runs (points): {shown}; {end}"


def _pct(v: float) -> str:
    return "diverged" if math.isnan(v) else f"{100 * v:.1f}"


def tuning_line(ev: Evidence, arms: Mapping[str, str]) -> str:
    """One sentence on the tuning of a ``TunedClaim``: per arm (label -> arm), each lr's
    worst validation accuracy (%) and the chosen one."""
    parts = []
    for label, arm in arms.items():
        chosen = ev.measured[f"lr {arm}"]
        prefix = f"worst {arm} "
        scores = sorted(
            (float(k[len(prefix) :]), v)
            for k, v in ev.measured.items()
            if k.startswith(prefix) and " " not in k[len(prefix) :]  # not arm "<arm> ..."
        )
        shown = ", ".join(
            (f"**{lr}: {_pct(v)}**" if lr == chosen else f"{lr}: {_pct(v)}") for lr, v in scores
        )
        parts.append(f"{label} ({shown})")
    return (
        "Worst validation accuracy over the attacks per lr (%, seed mean of the tuning runs; "
        f"chosen in bold): {'; '.join(parts)}."
    )


def rising_line(ev: Evidence, runs: Mapping[str, str]) -> str:
    """One sentence naming, of the runs ``runs`` (label -> run name, e.g. the attacked ones),
    those that have not plateaued, with their seed mean plateau gain ("" when all have)."""
    gains = {label: ev.plateau(name) for label, name in runs.items()}
    late = [f"{label} {g:+.1f}" for label, g in gains.items() if not g < PLATEAU_POINTS]
    return f"Attacked runs not plateaued (plateau gain, points): {', '.join(late)}." if late else ""
