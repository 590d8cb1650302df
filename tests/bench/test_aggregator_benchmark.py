"""flwr_byz.bench.aggregators: the --baselines selection and timings that time the real work
(a median over the same data cannot beat the torch.mean floor); ByzFL optional."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flwr_byz.bench import aggregators as bench
from flwr_byz.bench.baselines import NOT_REQUESTED, byzfl
from flwr_byz.bench.measure import PEAK_METHOD


def test_baselines_selection_and_real_timings(tmp_path: Path) -> None:
    out = tmp_path / "agg.json"
    args = ["--sizes", "20x200000", "--only", "median,bulyan", "--repeats", "2", "--threads", "1"]
    assert bench.main([*args, "--baselines", "flower_numpy", "--out", str(out)]) in (0, None)
    (size,) = json.loads(out.read_text())["sizes"]
    for name in ("Median", "Bulyan"):
        rule = size["rules"][name]
        for key in ("flower_msg", "flower_legacy", "byzfl_torch", "byzfl_numpy"):
            assert rule["skipped"][key] == NOT_REQUESTED, (name, key)
            assert rule[f"{key}_ms"] is None
        assert rule["ours_ms"] > 0
    # np.median over 20 x 200k floats reads all of it and sorts: slower than a mean of it
    assert size["rules"]["Median"]["flower_numpy_ms"] > size["mean_floor_ms"]


def test_peak_memory_as_a_multiple_of_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every rule's peak extra memory, in MiB and as a multiple of the input, in the JSON and
    in the table: our chunked sorts stay under a quarter of the input, while np.median (which
    partitions a copy of all of it) shows at least one input's worth, so the probe misses no
    allocation."""
    out = tmp_path / "agg.json"
    args = ["--sizes", "20x500000", "--only", "median,meamed,krum", "--repeats", "1"]
    assert bench.main(
        [*args, "--threads", "1", "--baselines", "flower_numpy", "--out", str(out)]
    ) in (0, None)
    result = json.loads(out.read_text())
    (size,) = result["sizes"]
    assert result["config"]["peak_memory_cpu"] == size["peak_memory"] == PEAK_METHOD
    assert set(size["rules"]) == {"Median", "Meamed", "Krum"}
    for name, rule in size["rules"].items():
        assert rule["ours_peak_kind"] == PEAK_METHOD
        ratio, mib = rule["ours_peak_ratio"], rule["ours_peak_mb"]
        assert ratio is not None and 0 <= ratio <= 0.25, (name, ratio)
        assert ratio == pytest.approx(mib / size["input_mb"], abs=2e-3)
    assert size["rules"]["Median"]["flower_numpy_peak_ratio"] >= 0.9
    table = capsys.readouterr().out
    assert "xInput" in table and f"({PEAK_METHOD})" in table


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--baselines", "flower_msg,nope"])


def test_without_byzfl_its_keys_say_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ByzFL is optional: absent, the run goes on and every ByzFL key records why, with the
    install command (once on stderr too)."""
    real = byzfl.importlib.util.find_spec
    monkeypatch.setattr(
        byzfl.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "byzfl" else real(name, *a),
    )
    assert byzfl.import_byzfl() == (None, byzfl.NOT_INSTALLED)
    assert "pip install --no-deps byzfl==0.0.11" in byzfl.NOT_INSTALLED
    out = tmp_path / "agg.json"
    args = ["--sizes", "8x1000", "--only", "median", "--repeats", "1", "--threads", "1"]
    assert bench.main([*args, "--baselines", "byzfl", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["byzfl_import"] == byzfl.NOT_INSTALLED
    rule = result["sizes"][0]["rules"]["Median"]
    for key in ("byzfl_torch", "byzfl_numpy"):
        assert rule["skipped"][key] == f"skipped: {byzfl.NOT_INSTALLED}"
        assert rule[f"{key}_ms"] is None
    assert rule["ours_ms"] > 0
    assert byzfl.NOT_INSTALLED in capsys.readouterr().err
