"""Tables from experiment result files: run labels, accuracy and ASR grids and per-run
summaries.

A result is the JSON an experiment writes::

    {"config": {"method": ..., "aggregator": ..., "attack": ..., "byzantine": ..., ...},
     "rounds": [{"round": 1, "loss": ..., "accuracy": ..., "asr": ..., "rejected": ...,
                 "bytes_up": ..., "bytes_down": ..., "seconds": ...}, ...],
     "final": {"accuracy": ..., "asr": ..., "loss": ...}}

``loss``/``accuracy`` may be NaN or ``null`` (a diverged model); both read as NaN here.
``asr`` (attack success rate) is ``null`` unless the attack is a backdoor; a file written
before it was recorded has none, which reads as NaN as well.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..specs import unknown

__all__ = [
    "GRID_METRICS",
    "Cell",
    "Grid",
    "byzantine_heading",
    "cell_grids",
    "cells_from_results",
    "grid_markdown",
    "has_asr",
    "run_label",
    "summary_rows",
]

MISSING = "—"

#: What a grid cell may show -> (its title, whether a higher value is the better one).
GRID_METRICS = {
    "accuracy": ("final accuracy (%)", True),
    "asr": ("final attack success rate (%)", False),
}

# Flower's built-in strategies, by the suffix after "flower-", as Flower spells them.
_FLOWER_NAMES = {
    "krum": "Krum",
    "multikrum": "MultiKrum",
    "bulyan": "Bulyan",
    "median": "Median",
    "trimmedavg": "TrimmedAvg",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg",
    "fedavg": "FedAvg",
}


def run_label(config: Mapping[str, Any]) -> str:
    """Short human label of a run's defence: method, its aggregator, and any compressor."""
    if "method" not in config:
        raise ValueError(f"config has no 'method' (keys: {sorted(config)})")
    method = str(config["method"])
    if method == "fedavg":
        label = "FedAvg"
    elif method == "fltrust":  # its own rule: the aggregator option plays no part
        label = "FLTrust"
    elif method.startswith("flower-"):
        suffix = method.removeprefix("flower-")
        name = _FLOWER_NAMES.get(suffix)
        if name is None:
            name = "".join(part[:1].upper() + part[1:] for part in suffix.split("-"))
        label = f"Flower {name}"
    else:
        aggregator = config.get("aggregator")
        label = method if aggregator is None else f"{method} [{aggregator}]"
    compressor = config.get("compressor")
    if compressor is not None and str(compressor) != "none":
        label += f" {compressor}"
    return label


@dataclass(frozen=True)
class Cell:
    """Final accuracy (and, under a backdoor attack, attack success rate) of one defence
    against one attack with a given number of Byzantine clients."""

    defence: str  # run_label
    attack: str  # attack spec, "none" for no attack
    byzantine: int
    accuracy: float  # final accuracy in [0, 1], may be nan
    asr: float = math.nan  # final attack success rate in [0, 1]; nan: not a backdoor attack


@dataclass(frozen=True)
class Grid:
    """The cells of one Byzantine count laid out as a table (rows = defences, cols = attacks)."""

    byzantine: int
    defences: list[str]
    attacks: list[str]
    accuracy: dict[tuple[str, str], float]  # (defence, attack) -> accuracy; absent = missing
    asr: dict[tuple[str, str], float] = field(default_factory=dict)  # the same for ASR

    def value(self, defence: str, attack: str, metric: str = "accuracy") -> float:
        """``metric`` (``accuracy`` or ``asr``) of a cell, NaN when it is missing."""
        _check_metric(metric)
        values = self.accuracy if metric == "accuracy" else self.asr
        return values.get((defence, attack), math.nan)


def _check_metric(metric: str) -> None:
    if metric not in GRID_METRICS:
        raise unknown("grid metric", metric, list(GRID_METRICS))


def has_asr(cells: Iterable[Cell]) -> bool:
    """Whether any cell has an attack success rate (a run under a backdoor attack)."""
    return any(not math.isnan(cell.asr) for cell in cells)


def _as_float(value: Any) -> float:
    """A JSON number as float; ``None`` (JSON null) reads as NaN."""
    return math.nan if value is None else float(value)


def _attack(config: Mapping[str, Any]) -> str:
    attack = config.get("attack")
    return "none" if attack is None or attack == "" else str(attack)


def cells_from_results(results: Iterable[Mapping[str, Any]]) -> list[Cell]:
    """One cell per result: run label, ``config["attack"]``/``["byzantine"]``, final accuracy
    and ASR.

    A missing attack reads as ``"none"``, a missing Byzantine count as 0 and a missing final
    accuracy or ASR as NaN.
    """
    cells = []
    for result in results:
        config = result["config"]
        final = result.get("final") or {}
        cells.append(
            Cell(
                defence=run_label(config),
                attack=_attack(config),
                byzantine=int(config.get("byzantine") or 0),
                accuracy=_as_float(final.get("accuracy")),
                asr=_as_float(final.get("asr")),
            )
        )
    return cells


def cell_grids(cells: Sequence[Cell], metric: str = "accuracy") -> list[Grid]:
    """Group cells into one grid per Byzantine count, ascending.

    Defences and attacks keep their order of first appearance in ``cells`` (with ``"none"``
    first among attacks); each grid holds only the defences and attacks present at its count.
    With ``metric="asr"`` only the attacks with an ASR (the backdoor attacks) are columns, and
    a Byzantine count without any is left out. Raises ValueError on a duplicate (defence,
    attack, byzantine) cell.
    """
    _check_metric(metric)
    seen: dict[tuple[str, str, int], float] = {}
    for cell in cells:
        key = (cell.defence, cell.attack, cell.byzantine)
        if key in seen:
            raise ValueError(
                f"duplicate cell: defence={cell.defence!r}, attack={cell.attack!r}, "
                f"byzantine={cell.byzantine}"
            )
        seen[key] = cell.accuracy
    defences = list(dict.fromkeys(cell.defence for cell in cells))
    attacks = list(dict.fromkeys(cell.attack for cell in cells))
    if "none" in attacks:
        attacks.remove("none")
        attacks.insert(0, "none")
    grids = []
    for byzantine in sorted({cell.byzantine for cell in cells}):
        here = [cell for cell in cells if cell.byzantine == byzantine]
        rows = {cell.defence for cell in here}
        cols = {cell.attack for cell in here}
        if metric == "asr":
            cols = {cell.attack for cell in here if not math.isnan(cell.asr)}
            if not cols:
                continue
        grids.append(
            Grid(
                byzantine=byzantine,
                defences=[d for d in defences if d in rows],
                attacks=[a for a in attacks if a in cols],
                accuracy={(cell.defence, cell.attack): cell.accuracy for cell in here},
                asr={(cell.defence, cell.attack): cell.asr for cell in here},
            )
        )
    return grids


def byzantine_heading(byzantine: int) -> str:
    """``"4 Byzantine"``, or ``"no Byzantine clients"`` for 0."""
    return "no Byzantine clients" if byzantine == 0 else f"{byzantine} Byzantine"


def _percent(accuracy: float) -> str:
    return MISSING if math.isnan(accuracy) else f"{100 * accuracy:.1f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _grid_table(grid: Grid, metric: str = "accuracy") -> list[str]:
    lines = [
        "| defence | " + " | ".join(_escape(a) for a in grid.attacks) + " |",
        "|---|" + "---:|" * len(grid.attacks),
    ]
    shown = {
        (d, a): _percent(grid.value(d, a, metric)) for d in grid.defences for a in grid.attacks
    }  # compare what is shown, so values that print equal are all bold
    pick = max if GRID_METRICS[metric][1] else min
    best = {}
    for a in grid.attacks:
        numbers = [float(shown[d, a]) for d in grid.defences if shown[d, a] != MISSING]
        best[a] = pick(numbers, default=math.nan)
    for d in grid.defences:
        row = []
        for a in grid.attacks:
            text = shown[d, a]
            row.append(f"**{text}**" if text != MISSING and float(text) == best[a] else text)
        lines.append(f"| {_escape(d)} | " + " | ".join(row) + " |")
    return lines


def grid_markdown(cells: Sequence[Cell], title: str | None = None, metric: str = "accuracy") -> str:
    """Markdown: per Byzantine count a section with a defence x attack table of ``metric``
    (final ``accuracy``, or ``asr``: the attack success rate, backdoor attacks only).

    Cells are percent with one decimal, ``—`` when missing or NaN; the best defence of each
    attack column (highest accuracy, lowest ASR) is bold (all of them on a tie). Raises
    ValueError on duplicate cells or an unknown metric.
    """
    lines: list[str] = []
    if title is not None:
        lines += [f"## {title}", ""]
    for grid in cell_grids(cells, metric):
        lines += [f"### {byzantine_heading(grid.byzantine)}", ""]
        lines += _grid_table(grid, metric)
        lines.append("")
    return "\n".join(lines)


def _megabytes(total_bytes: float) -> str:
    mb = total_bytes / 1e6
    return f"{mb:.3g}" if 0 < abs(mb) < 0.01 else f"{mb:.2f}"


def _loss(loss: float) -> str:
    return f"{loss:.3f}" if math.isnan(loss) or abs(loss) < 1e4 else f"{loss:.3g}"


def summary_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row of strings per run, for a terminal table.

    Keys: run, attack, byzantine, accuracy (final, percent, 1 decimal), ASR (only when a run
    has one, i.e. a backdoor attack: final attack success rate, percent, 1 decimal; ``—`` in
    the other runs' rows), loss (final, 3 decimals), s/round (mean of the rounds' seconds),
    MB up / MB down (total over rounds / 1e6, 2 decimals, 3 significant digits below 0.01) and
    rejected (total over rounds). NaN prints as ``nan``; a value the result lacks (no final
    metrics, no rounds) as ``—``.
    """
    asr = [_as_float((result.get("final") or {}).get("asr")) for result in results]
    with_asr = any(not math.isnan(a) for a in asr)
    rows = []
    for result, run_asr in zip(results, asr, strict=True):
        config = result["config"]
        final = result.get("final") or {}
        rounds = result.get("rounds") or []
        seconds = [_as_float(r["seconds"]) for r in rounds if "seconds" in r]
        accuracy = _as_float(final["accuracy"]) if "accuracy" in final else None
        loss = _as_float(final["loss"]) if "loss" in final else None
        row = {
            "run": run_label(config),
            "attack": _attack(config),
            "byzantine": str(int(config.get("byzantine") or 0)),
            "accuracy": MISSING if accuracy is None else f"{100 * accuracy:.1f}",
        }
        if with_asr:
            row["ASR"] = _percent(run_asr)
        rows.append(
            row
            | {
                "loss": MISSING if loss is None else _loss(loss),
                "s/round": f"{sum(seconds) / len(seconds):.2f}" if seconds else MISSING,
                "MB up": _megabytes(sum(r.get("bytes_up") or 0 for r in rounds))
                if rounds
                else MISSING,
                "MB down": _megabytes(sum(r.get("bytes_down") or 0 for r in rounds))
                if rounds
                else MISSING,
                "rejected": str(sum(int(r.get("rejected") or 0) for r in rounds))
                if rounds
                else MISSING,
            }
        )
    return rows
