"""PNG curves and heatmaps of results, and the series the curves are drawn from."""

import math
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
from matplotlib.axes import Axes

from flwr_byz.simulations.plots import curve_series, plot_curves, plot_heatmap
from flwr_byz.simulations.report import Cell

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = math.nan


def _result(n: int = 4, nan_at: int | None = None) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = [
        {
            "round": r,
            "loss": 1.0 / r,
            "accuracy": 0.2 * r,
            "rejected": r % 2,
            "bytes_up": 500_000 * r,
            "bytes_down": 1_000_000,
            "seconds": 0.5,
        }
        for r in range(1, n + 1)
    ]
    if nan_at is not None:
        rounds[nan_at - 1]["accuracy"] = None
        rounds[nan_at - 1]["loss"] = NAN
    return {"config": {"method": "fedavg"}, "rounds": rounds, "final": {"accuracy": 0.8}}


def _pixels(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = matplotlib.image.imread(path).shape[:2]
    return height, width


def test_curve_series_round_and_percent() -> None:
    xs, ys = curve_series(_result(3), "accuracy", "round")
    assert xs == [1.0, 2.0, 3.0]
    assert ys == pytest.approx([20.0, 40.0, 60.0])


def test_curve_series_cumulative_bytes_and_seconds() -> None:
    xs, ys = curve_series(_result(3), "loss", "bytes_up")
    assert xs == pytest.approx([0.5, 1.5, 3.0])  # MB: 0.5, 0.5 + 1.0, 1.5 + 1.5
    assert ys == pytest.approx([1.0, 0.5, 1 / 3])
    xs, _ = curve_series(_result(3), "rejected", "seconds")
    assert xs == pytest.approx([0.5, 1.0, 1.5])


def test_curve_series_nan_and_null() -> None:
    _, ys = curve_series(_result(3, nan_at=2), "accuracy")
    assert math.isnan(ys[1]) and ys[2] == pytest.approx(60.0)
    _, ys = curve_series(_result(3, nan_at=2), "loss")
    assert math.isnan(ys[1])


@pytest.mark.parametrize(("metric", "x"), [("f1", "round"), ("accuracy", "epochs")])
def test_unknown_metric_or_x_lists_the_allowed_ones(metric: str, x: str, tmp_path: Path) -> None:
    allowed = "accuracy, loss" if metric == "f1" else "round, bytes_up"
    with pytest.raises(ValueError, match=allowed):
        plot_curves([("a", _result())], tmp_path / "c.png", metric=metric, x=x)
    with pytest.raises(ValueError, match=allowed):
        curve_series(_result(), metric, x)


def test_plot_curves_without_results_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no results"):
        plot_curves([], tmp_path / "c.png")


def test_plot_curves_writes_png_with_nan_gaps(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "curves.png"
    results = [("FedAvg", _result(5, nan_at=3)), ("empty", {"config": {}, "rounds": []})]
    assert plot_curves(results, out, x="bytes_up", title="t") == out
    assert _pixels(out)[0] > 100
    out = plot_curves([("diverged", _result(5, nan_at=1))], tmp_path / "l.png", metric="loss")
    assert out.exists()


def _cells(defences: int, attacks: int, counts: tuple[int, ...] = (0, 4)) -> list[Cell]:
    return [
        Cell(f"robust-fedavg [agg-{d}]", f"attack-{a}", b, NAN if (d + a) % 3 == 0 else 0.1 * a)
        for b in counts
        for d in range(defences)
        for a in range(attacks)
    ]


def test_plot_heatmap_grows_with_rows_and_columns(tmp_path: Path) -> None:
    small = _pixels(plot_heatmap(_cells(2, 2), tmp_path / "small.png"))
    more_rows = _pixels(plot_heatmap(_cells(6, 2), tmp_path / "rows.png"))
    more_cols = _pixels(plot_heatmap(_cells(2, 6), tmp_path / "cols.png"))
    more_panels = _pixels(plot_heatmap(_cells(2, 2, (0, 2, 4)), tmp_path / "panels.png"))
    assert more_rows[0] > small[0]
    assert more_cols[1] > small[1]
    assert more_panels[1] > small[1]


def test_plot_heatmap_all_nan_single_cell(tmp_path: Path) -> None:
    out = plot_heatmap([Cell("FedAvg", "none", 0, NAN)], tmp_path / "a" / "h.png", title="x")
    assert _pixels(out)[1] > 100


def test_plot_heatmap_rejects_empty_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no cells"):
        plot_heatmap([], tmp_path / "h.png")
    with pytest.raises(ValueError, match="duplicate"):
        plot_heatmap([Cell("A", "x", 1, 0.5), Cell("A", "x", 1, 0.6)], tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


def _with_asr(n: int = 3) -> dict[str, Any]:
    result = _result(n)
    for entry in result["rounds"]:
        entry["asr"] = 0.25 * entry["round"]
    result["rounds"][0]["asr"] = None  # e.g. round 1 of a run of a file without it
    return result


def test_curve_series_asr_in_percent_and_nan_without_it() -> None:
    _, ys = curve_series(_with_asr(3), "asr")
    assert math.isnan(ys[0]) and ys[1:] == pytest.approx([50.0, 75.0])
    _, ys = curve_series(_result(2), "asr")  # no backdoor (or an old file): no numbers
    assert len(ys) == 2 and all(math.isnan(y) for y in ys)


def test_plot_curves_of_asr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[str] = []
    plot = Axes.plot
    monkeypatch.setattr(
        Axes, "plot", lambda ax, *a, **k: drawn.append(k["label"]) or plot(ax, *a, **k)
    )
    out = plot_curves([("badnets", _with_asr()), ("alie", _result())], tmp_path / "a.png", "asr")
    assert _pixels(out)[0] > 100
    assert drawn == ["badnets"]  # a run without an ASR gets no line and no legend entry
    with pytest.raises(ValueError, match="no result has an attack success rate"):
        plot_curves([("alie", _result())], tmp_path / "none.png", metric="asr")
    assert not (tmp_path / "none.png").exists()


def test_plot_heatmap_of_asr_shows_the_backdoor_columns_only(tmp_path: Path) -> None:
    cells = [
        Cell(f"defence-{d}", attack, b, 0.9, asr=0.3 * d if attack == "badnets" else NAN)
        for b in (2, 4)
        for d in range(3)
        for attack in ("none", "alie", "badnets", "ipm")
        if attack == "none" or b == 2 or attack != "badnets"
    ]  # 4 Byzantine: no badnets, so no ASR panel
    accuracy = _pixels(plot_heatmap(cells, tmp_path / "acc.png"))
    asr = _pixels(plot_heatmap(cells, tmp_path / "asr.png", metric="asr"))
    assert asr[1] < accuracy[1]  # one panel of one column against 2 panels of 4 and 3
    with pytest.raises(ValueError, match="no cells with asr"):
        plot_heatmap([c for c in cells if c.attack != "badnets"], tmp_path / "x.png", metric="asr")
    with pytest.raises(ValueError, match="unknown grid metric"):
        plot_heatmap(cells, tmp_path / "x.png", metric="loss")
    assert not (tmp_path / "x.png").exists()
