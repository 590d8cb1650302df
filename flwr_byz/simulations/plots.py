"""PNG plots of experiment results: training curves and a final-accuracy (or attack success
rate) heatmap.

Drawn on bare :class:`matplotlib.figure.Figure` objects with the Agg canvas, so no pyplot
state or interactive backend is involved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from flwr_byz.files import atomic_write
from flwr_byz.simulations.report import (
    GRID_METRICS,
    MISSING,
    Cell,
    byzantine_heading,
    cell_grids,
)
from flwr_byz.specs import unknown

__all__ = ["METRICS", "X_AXES", "curve_series", "plot_curves", "plot_heatmap"]

DPI = 120

# metric -> y-axis label; accuracy and the attack success rate are plotted in percent.
METRICS = {
    "accuracy": "accuracy (%)",
    "loss": "loss",
    "rejected": "rejected updates",
    "asr": "attack success rate (%)",
}
_PERCENT = ("accuracy", "asr")
# x -> axis label; everything but "round" is cumulative over rounds.
X_AXES = {
    "round": "round",
    "bytes_up": "MB sent by clients",
    "bytes_down": "MB sent to clients",
    "seconds": "wall-clock seconds",
}


def _check(metric: str, x: str) -> None:
    if metric not in METRICS:
        raise unknown("metric", metric, list(METRICS))
    if x not in X_AXES:
        raise unknown("x axis", x, list(X_AXES))


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def curve_series(
    result: Mapping[str, Any], metric: str = "accuracy", x: str = "round"
) -> tuple[list[float], list[float]]:
    """The (x, y) points :func:`plot_curves` draws for one result, in plotted units.

    x is the round number, or the running total of ``bytes_up``/``bytes_down`` in MB (1e6 bytes)
    or of ``seconds``; y is the metric per round (accuracy and ASR in percent, NaN/null as
    NaN: e.g. ``asr`` of a run without a backdoor attack, or of a file written before it was
    recorded). Missing byte/second entries count as 0; a round without a number takes its
    position.
    """
    _check(metric, x)
    xs: list[float] = []
    ys: list[float] = []
    total = 0.0
    for i, entry in enumerate(result.get("rounds") or [], start=1):
        if x == "round":
            xs.append(float(entry.get("round", i)))
        else:
            total += _number(entry.get(x) or 0)
            xs.append(total / 1e6 if x.startswith("bytes") else total)
        y = _number(entry.get(metric))
        ys.append(100 * y if metric in _PERCENT else y)
    return xs, ys


def _save(fig: Figure, out: Path) -> Path:
    out = Path(out)
    FigureCanvasAgg(fig)
    with atomic_write(out) as fh:  # parents created; a kill leaves the previous PNG
        fig.savefig(fh, dpi=DPI, format="png")
    fig.clear()
    return out


def plot_curves(
    results: Sequence[tuple[str, Mapping[str, Any]]],
    out: Path,
    metric: str = "accuracy",
    x: str = "round",
    title: str | None = None,
) -> Path:
    """One line per ``(label, result)`` of ``metric`` against ``x``; writes a PNG to ``out``.

    ``metric`` is one of :data:`METRICS`, ``x`` one of :data:`X_AXES` (see :func:`curve_series`);
    NaN values leave gaps. Raises ValueError for an unknown metric/x, no results, or ``asr``
    when no result has one (no backdoor attack).
    """
    _check(metric, x)
    if not results:
        raise ValueError("no results to plot")
    series = [(label, curve_series(result, metric, x)) for label, result in results]
    if metric == "asr" and all(math.isnan(y) for _, (_, ys) in series for y in ys):
        raise ValueError(
            "no result has an attack success rate (asr is recorded under backdoor attacks "
            "only, e.g. --attack badnets)"
        )
    if metric == "asr":  # a run without a backdoor attack has no ASR: no line, no legend entry
        series = [(label, s) for label, s in series if not all(math.isnan(y) for y in s[1])]
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for label, (xs, ys) in series:
        # markers keep isolated points (between NaN gaps) visible on short runs
        ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 40 else None, markersize=3)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(METRICS[metric])
    if x == "round":
        ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title if title is not None else f"{metric} {_per(x)}")
    return _save(fig, out)


def _per(x: str) -> str:
    return "per round" if x == "round" else f"vs {X_AXES[x]}"


def plot_heatmap(
    cells: Sequence[Cell], out: Path, title: str | None = None, metric: str = "accuracy"
) -> Path:
    """Heatmap PNG of final accuracy (%), or with ``metric="asr"`` of the final attack
    success rate (%) under the backdoor attacks: one panel per Byzantine count, side by side.

    Rows are defences, columns attacks (ordered as in :func:`~.report.grid_markdown`); colour is
    on a fixed 0–100 viridis scale (reversed for ASR, so the better end has the same colour)
    with one shared colour bar, and each cell is annotated (``—`` when missing or NaN). The
    figure grows with the rows/columns. Raises ValueError on no cells (no ASR for ``asr``),
    duplicate cells or an unknown metric.
    """
    grids = cell_grids(cells, metric)
    if not grids:
        raise ValueError("no cells to plot" if metric == "accuracy" else f"no cells with {metric}")
    label, higher_is_better = GRID_METRICS[metric]
    rows = max(len(g.defences) for g in grids)
    cols = sum(len(g.attacks) for g in grids)
    row_label = max(len(d) for g in grids for d in g.defences)
    col_label = max(len(a) for g in grids for a in g.attacks)
    width = 0.8 * cols + len(grids) * (0.4 + 0.075 * row_label) + 1.4
    height = 0.45 * rows + 0.06 * col_label + 1.6
    fig = Figure(figsize=(max(width, 4.0), max(height, 2.5)), layout="constrained")
    ratios = [len(g.attacks) for g in grids]
    axes = fig.subplots(1, len(grids), squeeze=False, width_ratios=ratios)[0]
    cmap = colormaps["viridis" if higher_is_better else "viridis_r"].with_extremes(bad="#d9d9d9")
    norm = Normalize(vmin=0.0, vmax=100.0)
    fig.colorbar(ScalarMappable(norm, cmap), ax=list(axes), label=label, shrink=0.9)
    for ax, grid in zip(axes, grids, strict=True):
        values = np.array(
            [[100 * grid.value(d, a, metric) for a in grid.attacks] for d in grid.defences],
            dtype=float,
        )
        ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(grid.attacks)), grid.attacks, rotation=30, ha="right")
        ax.set_yticks(range(len(grid.defences)), grid.defences)
        ax.set_title(byzantine_heading(grid.byzantine), fontsize="medium")
        for (i, j), value in np.ndenumerate(values):
            if math.isnan(value):
                text, colour = MISSING, "black"
            else:
                r, g, b, _ = cmap(norm(value))
                text = f"{value:.1f}"
                colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize="small")
    fig.suptitle(title if title is not None else label)
    return _save(fig, out)
