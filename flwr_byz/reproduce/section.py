"""A section of docs/RESULTS.md, the budget it was made with, and the figure helper.

Every claim, the matrix and the performance report produce a ``Section``; it is saved as JSON
under the work directory, so ``flwr-byz reproduce c1.1`` redoes one section and RESULTS.md is
assembled again from every saved one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..files import atomic_write, write_text

__all__ = ["VERDICTS", "Budget", "Section", "line_figure", "table"]

#: The one-line verdicts a claim can get.
VERDICTS = ("reproduced", "within noise", "partly", "not reproduced")


@dataclass(frozen=True)
class Budget:
    """How much to run: ``quick`` (CI's pipeline test) or the documented full budget.

    ``rounds(full, quick)`` picks the round count of a run; ``seeds`` are the matrix's seeds,
    ``claim_seeds`` those of the claims (two in quick mode, so that intervals exist); ``jobs``
    parallel processes of the ``engine`` (``batched``, or ``local`` for what the batched engine
    does not run: backdoors, FLTrust) run them on ``device`` (``cpu`` or ``cuda[:N]``).
    """

    quick: bool = False
    jobs: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    claim_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    engine: str = "batched"
    device: str = "cpu"

    @classmethod
    def make(cls, quick: bool, jobs: int, engine: str = "batched", device: str = "cpu") -> Budget:
        if quick:
            return cls(
                quick=True, jobs=jobs, seeds=(0,), claim_seeds=(0, 1), engine=engine, device=device
            )
        return cls(jobs=jobs, engine=engine, device=device)

    def rounds(self, full: int, quick: int = 3) -> int:
        return quick if self.quick else full


@dataclass
class Section:
    """One part of RESULTS.md: ``markdown`` body (figures referenced relative to docs/),
    ``verdict`` (claims only); ``data``: the numbers RESULTS.md's opening summary reads
    (JSON values; ``document``); ``seconds`` this build took, running ``new_runs`` and reusing
    ``reused_runs`` stored ones; ``scratch_seconds``: the time of the last build that reused
    nothing (None until one has run)."""

    key: str
    title: str
    markdown: str
    verdict: str | None = None
    summary: str = ""
    seconds: float = 0.0
    new_runs: int = 0
    reused_runs: int = 0
    scratch_seconds: float | None = None
    quick: bool = False
    figures: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # numbers the summary reads (JSON)

    def __post_init__(self) -> None:
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def save(self, path: Path) -> Path:
        """Write the section's JSON atomically (parents created)."""
        return write_text(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Section:
        """Read a saved section; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def line_figure(
    panels: Sequence[tuple[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]],
    out: Path,
    xlabel: str = "round",
    ylabel: str = "accuracy (%)",
    logy: bool = False,
) -> Path:
    """Side-by-side panels of labelled (x, y) lines; NaN values leave gaps. Writes a PNG."""
    fig = Figure(figsize=(5.0 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, lines) in zip(axes, panels, strict=True):
        for label, (xs, ys) in lines.items():
            ys = [math.nan if (logy and y is not None and y <= 0) else y for y in ys]
            ax.plot(xs, ys, label=label, linewidth=1.2)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    FigureCanvasAgg(fig)
    with atomic_write(out) as fh:  # parents created
        fig.savefig(fh, dpi=110, format="png")
    return out
