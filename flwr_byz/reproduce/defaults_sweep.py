"""The sweep that chooses each method's run defaults (``flwr-byz defaults-sweep``).

For every method, a small candidate grid (lr x batch size x aggregator x a method knob) runs
on digits for 40 rounds with 20 clients: once without attack and without Byzantine clients
(the setting of ``flwr-byz run --method M --dataset digits --rounds 40``), and once per
attack with 4 Byzantine clients (f = 4). A candidate's score is its worst final test
accuracy over those runs; the chosen setting is the best score, ties within ``TIE`` going to
the earlier candidate (each grid lists the previous default, or the paper's, first). The
chosen values are what ``flwr_byz.methods.<module>.DEFAULTS`` hold; the table goes to
``docs/DEFAULTS.md``.

The runs go through ``pool.run_all`` into ``<work>/runs/<method>-<digest>.json`` (the digest
of the run's config), so a rerun reuses every finished run and resumes an interrupted sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_text
from ..methods.defaults import LEGACY, RunDefaults
from ..simulations.batched.engine import DRIVERS
from ..simulations.config import ExperimentConfig
from ..simulations.defaults import METHOD_DEFAULTS
from ..simulations.result import Result
from .pool import pct, run_all

__all__ = [
    "ATTACKS",
    "GRIDS",
    "Choice",
    "Grid",
    "candidates",
    "choose",
    "configs",
    "markdown",
    "sweep",
]

DATASET = "digits"
ROUNDS = 40
CLIENTS = 20
BYZANTINE = 4
SEED = 0
#: The attacks, each with 4 Byzantine clients; "none" runs with none (f = 0).
ATTACKS: tuple[str, ...] = ("none", "sign-flip", "alie", "ipm", "label-flip")
#: Candidates whose worst case is within this of the best one tie (the earlier one wins).
TIE = 0.01
COMMAND = "flwr-byz defaults-sweep --work results/defaults-sweep --docs docs --jobs 2"


@dataclass(frozen=True)
class Grid:
    """A method's candidates: every combination of ``lrs`` x ``batch_sizes`` x ``aggregators``
    x ``knobs`` (each knob a dict of further ``RunDefaults`` fields), over ``base``."""

    lrs: tuple[float, ...]
    batch_sizes: tuple[int, ...] = (32,)
    aggregators: tuple[str, ...] = ("median",)
    knobs: tuple[Mapping[str, Any], ...] = field(default=({},))
    base: RunDefaults = LEGACY


_LOCAL_SGD = Grid(lrs=(0.05, 0.1), knobs=({"local_epochs": 2}, {"local_epochs": 1}))
#: The methods that take one server step per round default to the sweep's horizon.
_STEPS = dataclasses.replace(LEGACY, rounds=ROUNDS)
_EF21 = {"compressor": "topk:0.1"}

#: method -> its candidate grid (the first candidate: the previous default or the paper's).
GRIDS: dict[str, Grid] = {
    "fedavg": _LOCAL_SGD,
    "robust-fedavg": dataclasses.replace(_LOCAL_SGD, aggregators=("median", "nnm+cwtm")),
    "fltrust": _LOCAL_SGD,
    "flower-krum": _LOCAL_SGD,
    "flower-multikrum": _LOCAL_SGD,
    "flower-bulyan": _LOCAL_SGD,
    "flower-median": _LOCAL_SGD,
    "flower-trimmedavg": _LOCAL_SGD,
    "robust-momentum": Grid(
        base=_STEPS,
        lrs=(0.5, 1.0, 2.0),
        aggregators=("nnm+cwtm", "bucketing:2+median"),
        knobs=({"momentum": 0.9}, {"momentum": 0.5}),
    ),
    "byz-vr-marina-pp": Grid(
        base=_STEPS,
        lrs=(0.3, 0.5, 1.0),
        aggregators=("bucketing:2+median", "nnm+cwtm"),
        knobs=({"compressor": "randk:0.1"}, {"compressor": "randk:0.3"}),
    ),
    "byz-ef21-sgdm": Grid(
        base=_STEPS,
        lrs=(0.5, 1.0, 2.0),
        aggregators=("nnm+cwtm", "nnm+median"),
        knobs=(_EF21 | {"momentum": 0.9}, _EF21 | {"momentum": 0.5}),
    ),
    "byz-ef21": Grid(
        base=_STEPS,
        lrs=(0.3, 0.5, 1.0),
        batch_sizes=(32, 16),
        aggregators=("nnm+cwtm", "nnm+median"),
        knobs=(_EF21,),
    ),
    "br-csgd": Grid(
        base=_STEPS,
        lrs=(0.3, 0.5, 1.0),
        aggregators=("nnm+cwtm", "nnm+median"),
        knobs=({"compressor": "topk:0.1"}, {"compressor": "topk:0.3"}),
    ),
    "mu2sgd": Grid(
        base=_STEPS,
        lrs=(0.5, 1.0, 2.0),
        batch_sizes=(32, 8),
        aggregators=("ctma+median", "nnm+cwtm"),
    ),
    "byzsgd": Grid(base=_STEPS, lrs=(0.3, 0.5, 1.0), aggregators=("mda", "median")),
}


def candidates(method: str) -> list[RunDefaults]:
    """The candidate settings of ``method``, in grid order (each run for ``ROUNDS`` rounds
    whatever its ``rounds``)."""
    grid = GRIDS[method]
    return [
        dataclasses.replace(grid.base, lr=lr, batch_size=bs, aggregator=agg, **dict(knob))
        for lr, bs, agg, knob in itertools.product(
            grid.lrs, grid.batch_sizes, grid.aggregators, grid.knobs
        )
    ]


def _run_path(runs: Path, cfg: ExperimentConfig) -> Path:
    text = json.dumps(dataclasses.replace(cfg, out=None).to_dict(), sort_keys=True, default=str)
    return runs / f"{cfg.method}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"


def configs(method: str, setting: RunDefaults, runs: Path) -> dict[str, ExperimentConfig]:
    """attack -> the run of ``setting`` under it (every option explicit, ``out`` in ``runs``)."""
    out = {}
    for attack in ATTACKS:
        cfg = ExperimentConfig(
            method=method, dataset=DATASET, clients=CLIENTS, seed=SEED, attack=attack,
            byzantine=0 if attack == "none" else BYZANTINE,
            **(setting.to_dict() | {"rounds": ROUNDS}),
        )  # fmt: skip
        out[attack] = dataclasses.replace(cfg, out=str(_run_path(runs, cfg)))
    return out


@dataclass(frozen=True)
class Choice:
    """A method's sweep: every candidate's final accuracy per attack, the chosen one, and
    the training seconds of its runs (the rounds' own clocks: the same when reused)."""

    method: str
    scores: list[tuple[RunDefaults, dict[str, float]]]
    chosen: int
    seconds: float

    @property
    def setting(self) -> RunDefaults:
        return self.scores[self.chosen][0]

    @property
    def accuracy(self) -> dict[str, float]:
        return self.scores[self.chosen][1]


def _worst(accuracy: Mapping[str, float]) -> float:
    values = [a if math.isfinite(a) else 0.0 for a in accuracy.values()]
    return min(values)


def choose(scores: Sequence[tuple[RunDefaults, Mapping[str, float]]]) -> int:
    """Index of the candidate with the best worst-case accuracy (NaN counts as 0); a
    candidate within ``TIE`` of the best counts as tied and the earliest tied one wins."""
    worst = [_worst(acc) for _, acc in scores]
    best = max(worst)
    return next(i for i, w in enumerate(worst) if w >= best - TIE)


def sweep(
    work: Path,
    methods: Sequence[str] | None = None,
    jobs: int = 2,
    engine: str = "batched",
    echo: Callable[[str], Any] = print,
) -> list[Choice]:
    """Run (or reuse) every method's candidates under every attack; the choices."""
    runs = work / "runs"
    choices = []
    for method in methods or list(GRIDS):
        if method not in GRIDS:
            raise ValueError(f"no sweep grid for method {method!r}; known: {', '.join(GRIDS)}")
        grid = {i: configs(method, s, runs) for i, s in enumerate(candidates(method))}
        start = time.monotonic()
        echo(f"{method}: {len(grid)} candidates x {len(ATTACKS)} attacks")
        run_all(
            [c for cfgs in grid.values() for c in cfgs.values()],
            jobs,
            progress=lambda i, n, out: None,
            engine=engine if engine != "batched" or method in DRIVERS else "local",  # fltrust
        )
        results = {i: {a: Result.load(str(c.out)) for a, c in grid[i].items()} for i in grid}
        scores = [
            (s, {a: r.accuracy for a, r in results[i].items()})
            for i, s in enumerate(candidates(method))
        ]
        seconds = sum(
            rec.seconds for rs in results.values() for r in rs.values() for rec in r.rounds
        )
        echo(f"  {time.monotonic() - start:.0f} s here, {seconds:.0f} s of training in all")
        choice = Choice(method, scores, choose(scores), seconds)
        echo(f"  chosen {_setting_text(choice.setting)}: worst {pct(_worst(choice.accuracy))}%")
        choices.append(choice)
    return choices


def _setting_text(s: RunDefaults) -> str:
    parts = [f"lr {s.lr:g}", f"batch {s.batch_size}", f"aggregator {s.aggregator}"]
    parts += [f"momentum {s.momentum:g}", f"local epochs {s.local_epochs}"]
    parts += [] if s.compressor == "none" else [f"compressor {s.compressor}"]
    return ", ".join(parts)


def _row(method: str, s: RunDefaults, acc: Mapping[str, float], mark: str = "") -> str:
    cells = [method, mark + _setting_text(s)] + [pct(acc[a]) for a in ATTACKS]
    return "| " + " | ".join([*cells, f"**{pct(_worst(acc))}**"]) + " |"


def markdown(choices: Sequence[Choice], engine: str = "batched") -> str:
    """docs/DEFAULTS.md: how the defaults were chosen, the chosen setting per method, and
    every candidate."""
    head = "| method | setting | " + " | ".join(ATTACKS) + " | worst |"
    rule = "|" + "---|" * (len(ATTACKS) + 3)
    lines = [
        "# Per-method defaults",
        "",
        "Every method carries its own defaults of the method-dependent options (aggregator, "
        "lr, batch size, local epochs, momentum, compressor, rounds): "
        "`flwr_byz/methods/<module>.py` `DEFAULTS`, shown by `flwr-byz run --method M "
        "--help`. An option given as a flag, in a `--config` file or a Flower run config "
        "overrides them, and a result's `config` records the values used.",
        "",
        "## How they were chosen",
        "",
        f"`{COMMAND}` (engine `{engine}`, `local` for the methods the batched engine does "
        "not run: fltrust; finished runs in `<work>/runs/` are reused). For "
        f"each method, every candidate of a small grid (below) runs on `{DATASET}` for "
        f"{ROUNDS} rounds with {CLIENTS} clients, seed {SEED}: without attack and without "
        f"Byzantine clients, and under each attack ({', '.join(ATTACKS[1:])}) with "
        f"{BYZANTINE} Byzantine clients (f = {BYZANTINE}). The score is the worst final test "
        f"accuracy over these {len(ATTACKS)} runs; the chosen candidate has the best score, "
        f"a candidate within {100 * TIE:g} point of it counting as tied (the earlier one in "
        f"the grid wins). `rounds` stays 30 for the local-SGD methods and is {ROUNDS} (the "
        "sweep's horizon) for the methods that take one server step per round. "
        "Candidate settings not named use the previous defaults (aggregator median, lr 0.05, "
        "batch 32, local epochs 2, momentum 0.9, compressor none). "
        "The local-SGD methods (fedavg, robust-fedavg, fltrust, flower-*) use `local_epochs` and a "
        "client `lr`; the others take one server step of size `lr` per round, and "
        "`momentum` is their worker momentum (byz-ef21-sgdm: eta = 1 - momentum).",
        "",
        "Final test accuracy (%) of the chosen setting per method:",
        "",
        head,
        rule,
        *(_row(c.method, c.setting, c.accuracy) for c in choices),
        "",
        "Training seconds per method (the sum over its runs of the rounds' times, one thread "
        "each, on a shared 2-core machine): "
        + ", ".join(f"{c.method} {c.seconds:.0f}" for c in choices)
        + ".",
        "",
        "## Every candidate",
        "",
        "The chosen one is marked `>`.",
        "",
        head,
        rule,
    ]
    for c in choices:
        for i, (s, acc) in enumerate(c.scores):
            lines.append(_row(c.method, s, acc, "> " if i == c.chosen else ""))
    return "\n".join(lines) + "\n"


def write_docs(choices: Sequence[Choice], docs: Path, engine: str = "batched") -> Path:
    """Write ``<docs>/DEFAULTS.md``; its path."""
    return write_text(docs / "DEFAULTS.md", markdown(choices, engine))


def differences(choices: Sequence[Choice]) -> list[str]:
    """The methods whose ``DEFAULTS`` differ from the sweep's choice, one line each."""
    return [
        f"{c.method}: DEFAULTS {METHOD_DEFAULTS[c.method]} != chosen {c.setting}"
        for c in choices
        if METHOD_DEFAULTS.get(c.method) != c.setting
    ]
