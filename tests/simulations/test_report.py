"""Run labels, the Markdown accuracy grid and per-run summary rows."""

import json
import math
from typing import Any

import pytest

from flwr_byz.simulations.report import (
    Cell,
    cell_grids,
    cells_from_results,
    grid_markdown,
    has_asr,
    run_label,
    summary_rows,
)

NAN = math.nan


@pytest.mark.parametrize(
    ("config", "label"),
    [
        ({"method": "fedavg", "aggregator": "median"}, "FedAvg"),
        ({"method": "flower-krum", "aggregator": "median"}, "Flower Krum"),
        ({"method": "flower-multikrum"}, "Flower MultiKrum"),
        ({"method": "flower-bulyan"}, "Flower Bulyan"),
        ({"method": "flower-median"}, "Flower Median"),
        ({"method": "flower-trimmedavg"}, "Flower TrimmedAvg"),
        ({"method": "robust-fedavg", "aggregator": "nnm+krum"}, "robust-fedavg [nnm+krum]"),
        (
            {"method": "robust-fedavg", "aggregator": "cwmed", "compressor": "none"},
            "robust-fedavg [cwmed]",
        ),
        (
            {"method": "byz-vr-marina", "aggregator": "cwmed", "compressor": "rand-k:0.1"},
            "byz-vr-marina [cwmed] rand-k:0.1",
        ),
        ({"method": "fedavg", "compressor": "top-k:0.1"}, "FedAvg top-k:0.1"),
    ],
)
def test_run_label(config: dict[str, str], label: str) -> None:
    assert run_label(config) == label


def test_run_label_needs_a_method() -> None:
    with pytest.raises(ValueError, match="method"):
        run_label({"aggregator": "median"})


CELLS = [
    Cell("FedAvg", "alie", 4, 0.2),
    Cell("robust [cwmed]", "alie", 4, 0.8512),
    Cell("FedAvg", "none", 0, 0.934),
    Cell("robust [cwmed]", "none", 0, 0.93449),  # prints 93.4 as well: a tie, both bold
    Cell("FedAvg", "ipm", 4, NAN),
    Cell("robust [cwmed]", "ipm", 4, 0.7),
    Cell("Flower Krum", "alie", 4, 0.851),  # ties with robust at 85.1
    Cell("FedAvg", "none", 4, 0.9),
    Cell("robust [cwmed]", "none", 2, 0.5),
]


def test_grid_markdown_exact() -> None:
    expected = """\
## Robustness

### no Byzantine clients

| defence | none |
|---|---:|
| FedAvg | **93.4** |
| robust [cwmed] | **93.4** |

### 2 Byzantine

| defence | none |
|---|---:|
| robust [cwmed] | **50.0** |

### 4 Byzantine

| defence | none | alie | ipm |
|---|---:|---:|---:|
| FedAvg | **90.0** | 20.0 | — |
| robust [cwmed] | — | **85.1** | **70.0** |
| Flower Krum | — | **85.1** | — |
"""
    assert grid_markdown(CELLS, title="Robustness") == expected


def test_grid_markdown_all_nan_column_and_no_title() -> None:
    text = grid_markdown([Cell("A", "x", 1, NAN), Cell("B", "x", 1, 0.5)])
    assert text.startswith("### 1 Byzantine\n")
    assert "| A | — |" in text and "| B | **50.0** |" in text
    only_nan = grid_markdown([Cell("A", "x", 1, NAN)])
    assert "| A | — |" in only_nan and "**" not in only_nan


def test_cell_grids_order() -> None:
    grids = cell_grids(CELLS)
    assert [g.byzantine for g in grids] == [0, 2, 4]
    assert grids[2].defences == ["FedAvg", "robust [cwmed]", "Flower Krum"]
    assert grids[2].attacks == ["none", "alie", "ipm"]  # "none" first though it came late
    assert math.isnan(grids[2].value("Flower Krum", "ipm"))


def test_duplicate_cell_is_an_error() -> None:
    cells = [*CELLS, Cell("FedAvg", "ipm", 4, 0.3)]
    with pytest.raises(ValueError, match=r"duplicate.*'FedAvg'.*'ipm'.*byzantine=4"):
        grid_markdown(cells)
    # the same defence/attack at another Byzantine count is fine
    grid_markdown([*CELLS, Cell("FedAvg", "ipm", 2, 0.3)])


def _result(
    method: str = "robust-fedavg",
    aggregator: str = "median",
    attack: str | None = "alie",
    byzantine: int = 4,
    final: dict[str, Any] | None = None,
    rounds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "method": method,
        "aggregator": aggregator,
        "byzantine": byzantine,
        "seed": 0,
    }
    if attack is not None:
        config["attack"] = attack
    return {
        "config": config,
        "rounds": rounds if rounds is not None else [],
        "final": final if final is not None else {"accuracy": 0.5, "loss": 1.0},
    }


def test_cells_from_results_reads_nan_and_null() -> None:
    text = json.dumps(
        [
            _result(final={"accuracy": 0.91, "loss": 0.3}),
            _result(method="fedavg", final={"accuracy": None, "loss": None}),
            _result(method="flower-krum", attack=None, byzantine=0),
        ]
    ).replace("0.91", "NaN")  # a JSON NaN as Python's json writes/reads it
    cells = cells_from_results(json.loads(text))
    assert [(c.defence, c.attack, c.byzantine) for c in cells] == [
        ("robust-fedavg [median]", "alie", 4),
        ("FedAvg", "alie", 4),
        ("Flower Krum", "none", 0),
    ]
    assert math.isnan(cells[0].accuracy) and math.isnan(cells[1].accuracy)
    assert cells[2].accuracy == 0.5


def test_summary_rows_numbers() -> None:
    rounds: list[dict[str, Any]] = [
        {"round": 1, "loss": 0.9, "accuracy": 0.6, "rejected": 1, "bytes_up": 1_000_000,
         "bytes_down": 2_000, "seconds": 0.5},
        {"round": 2, "loss": 0.5, "accuracy": 0.8, "rejected": 2, "bytes_up": 234_000,
         "bytes_down": 3_456, "seconds": 0.25},
        {"round": 3, "loss": None, "accuracy": None, "rejected": 0, "bytes_up": 0,
         "bytes_down": 0, "seconds": 0.51},
    ]  # fmt: skip
    rows = summary_rows([_result(final={"accuracy": 0.93449, "loss": 0.23149}, rounds=rounds)])
    assert rows == [
        {
            "run": "robust-fedavg [median]",
            "attack": "alie",
            "byzantine": "4",
            "accuracy": "93.4",
            "loss": "0.231",
            "s/round": "0.42",  # (0.5 + 0.25 + 0.51) / 3
            "MB up": "1.23",  # 1.234 MB
            "MB down": "0.00546",  # 5456 bytes: 3 significant digits below 0.01
            "rejected": "3",
        }
    ]


def test_summary_rows_nan_and_missing() -> None:
    diverged = _result(method="fedavg", attack=None, byzantine=0,
                       final={"accuracy": NAN, "loss": None}, rounds=[])  # fmt: skip
    unfinished = _result(final={}, rounds=[{"round": 1, "loss": 1.0, "accuracy": 0.1}])
    first, second = summary_rows([diverged, unfinished])
    assert first["accuracy"] == "nan" and first["loss"] == "nan"
    assert first["attack"] == "none" and first["byzantine"] == "0"
    assert first["s/round"] == first["MB up"] == first["rejected"] == "—"
    assert second["accuracy"] == second["loss"] == second["s/round"] == "—"
    assert second["MB up"] == second["MB down"] == "0.00" and second["rejected"] == "0"


# --- the attack success rate (backdoor attacks) --------------------------------------------
ASR_CELLS = [
    Cell("FedAvg", "none", 2, 0.95),
    Cell("FedAvg", "badnets", 2, 0.93, asr=0.9),
    Cell("FedAvg", "alie", 2, 0.4),  # not a backdoor: no ASR
    Cell("robust [normclip]", "none", 2, 0.94),
    Cell("robust [normclip]", "badnets", 2, 0.92, asr=0.1004),
    Cell("robust [flame]", "badnets", 2, 0.9, asr=0.1),  # prints 10.0 too: both bold
    Cell("robust [flame]", "dba", 2, NAN, asr=NAN),  # a missing number
    Cell("FedAvg", "dba", 2, 0.9, asr=0.5),
    Cell("FedAvg", "alie", 4, 0.3),  # no backdoor at 4 Byzantine: no ASR section
]


def test_grid_markdown_of_asr_exact() -> None:
    expected = """\
## ASR

### 2 Byzantine

| defence | badnets | dba |
|---|---:|---:|
| FedAvg | 90.0 | **50.0** |
| robust [normclip] | **10.0** | — |
| robust [flame] | **10.0** | — |
"""
    assert grid_markdown(ASR_CELLS, title="ASR", metric="asr") == expected  # lowest is best
    accuracy = grid_markdown(ASR_CELLS)  # unchanged: every attack, highest is best
    assert "| FedAvg | **95.0** | **93.0** | **40.0** | **90.0** |" in accuracy
    assert "### 4 Byzantine" in accuracy


def test_asr_grid_keeps_the_backdoor_columns_and_checks_the_metric() -> None:
    (grid,) = cell_grids(ASR_CELLS, metric="asr")
    assert (grid.byzantine, grid.attacks) == (2, ["badnets", "dba"])
    assert grid.value("FedAvg", "dba", "asr") == 0.5 and grid.value("FedAvg", "dba") == 0.9
    assert math.isnan(grid.value("robust [normclip]", "dba", "asr"))  # absent
    assert has_asr(ASR_CELLS) and not has_asr(CELLS)
    assert cell_grids(CELLS, metric="asr") == []
    with pytest.raises(ValueError, match=r"unknown grid metric 'f1'.*accuracy, asr"):
        grid_markdown(ASR_CELLS, metric="f1")


def test_cells_and_summary_rows_read_the_final_asr() -> None:
    backdoor = _result(attack="badnets", final={"accuracy": 0.9, "asr": 0.8125, "loss": 0.3})
    clean = _result(final={"accuracy": 0.9, "asr": None, "loss": 0.3})  # null: no backdoor
    old = _result(final={"accuracy": 0.9, "loss": 0.3})  # written before asr existed
    cells = cells_from_results([backdoor, clean, old])
    assert cells[0].asr == 0.8125 and math.isnan(cells[1].asr) and math.isnan(cells[2].asr)
    rows = summary_rows([backdoor, clean, old])
    assert list(rows[0])[:5] == ["run", "attack", "byzantine", "accuracy", "ASR"]
    assert [r["ASR"] for r in rows] == ["81.2", "—", "—"]
    assert all("ASR" not in r for r in summary_rows([clean, old]))  # no backdoor: no column
