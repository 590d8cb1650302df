"""A paper's claim as one declarative object: its setup (the runs), its verdict rule, its figure.

``Claim.run`` runs the claim's configs once per claim seed through the ``Workspace`` (local
engine, parallel, resumable), takes any extra measurement, applies the rule to the numbers,
draws the figure, and returns the ``Section``: the setup, the tables, the rule in words, the
figure and, when a check fails, the most likely reason. Nothing is tuned after the fact.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..simulations.config import ExperimentConfig
from ..simulations.result import Result
from .pool import TAIL, mean_std, tail_acc
from .section import VERDICTS, Budget, Section, line_figure
from .stats import Check, Interval, interval, plateau_gain, verdict_of
from .workspace import Workspace

__all__ = ["NO_NUMBER", "Claim", "Evidence", "Figure", "Outcome", "Panels", "verdict"]

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
