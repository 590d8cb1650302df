"""Result: totals of ``finish()``, strict-JSON ``to_dict()`` and the save/load round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result, RoundRecord

ROUND_KEYS = {
    "round", "loss", "accuracy", "rejected", "bytes_up", "bytes_down", "seconds",
    "train_loss", "gap",  # the training objective and the optimality gap (NaN: not measured)
    "metrics",  # the strategy's own numeric metrics of the round (e.g. ByzSGD's diameter)
    "missing",  # sampled nodes that did not reply within the round's timeout
    "asr",  # the attack success rate under a backdoor attack (NaN: no backdoor attack)
}  # fmt: skip
FINAL_KEYS = {
    "accuracy",
    "asr",
    "loss",
    "train_loss",
    "gap",
    "rounds",
    "rejected",
    "missing",
    "bytes_up",
    "bytes_down",
    "seconds_per_round",
}


def _rounds() -> list[RoundRecord]:
    return [
        RoundRecord(1, 2.3, 0.11, rejected=1, bytes_up=1000, bytes_down=2000, seconds=0.5),
        RoundRecord(2, 1.7, 0.42, rejected=0, bytes_up=1100, bytes_down=2100, seconds=1.5),
        RoundRecord(
            3, 0.9, 0.73, rejected=3, bytes_up=1200, bytes_down=2200, seconds=1.0, missing=2
        ),
    ]


def _strict_json(data: Any) -> str:
    """``data`` as strict JSON (raises on NaN/Inf)."""
    return json.dumps(data, allow_nan=False)


def _same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (dicts, lists, dataclass dicts)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, RoundRecord) and isinstance(b, RoundRecord):
        return _same(vars(a), vars(b))
    return type(a) is type(b) and a == b


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name}")


def test_finish_totals() -> None:
    result = Result(config={"seed": 0}, rounds=_rounds())
    assert result.finish() is result
    assert result.final.keys() == FINAL_KEYS
    assert result.final["accuracy"] == 0.73 and result.final["loss"] == 0.9
    assert result.final["rounds"] == 3
    assert result.final["rejected"] == 1 + 0 + 3
    assert result.final["missing"] == 0 + 0 + 2
    keys = list(result.final)
    assert keys.index("missing") == keys.index("rejected") + 1  # right after "rejected"
    assert result.final["bytes_up"] == 1000 + 1100 + 1200
    assert result.final["bytes_down"] == 2000 + 2100 + 2200
    assert result.final["seconds_per_round"] == pytest.approx((0.5 + 1.5 + 1.0) / 3)
    assert result.accuracy == 0.73


def test_finish_recomputes_after_more_rounds() -> None:
    result = Result(config={}, rounds=_rounds()[:1]).finish()
    assert result.final["bytes_up"] == 1000
    result.rounds.extend(_rounds()[1:])
    result.finish()
    assert result.final["bytes_up"] == 3300 and result.final["accuracy"] == 0.73


def test_finish_without_rounds() -> None:
    result = Result(config={"seed": 1}).finish()
    final = result.final
    assert final.keys() == FINAL_KEYS
    assert math.isnan(final["accuracy"]) and math.isnan(final["loss"])
    assert math.isnan(final["seconds_per_round"])
    assert (
        final["rounds"],
        final["rejected"],
        final["missing"],
        final["bytes_up"],
        final["bytes_down"],
    ) == (0, 0, 0, 0, 0)
    assert math.isnan(result.accuracy)
    data = result.to_dict()
    assert data["final"]["accuracy"] is None and data["final"]["seconds_per_round"] is None
    json.loads(_strict_json(data))


def test_accuracy_property() -> None:
    assert math.isnan(Result(config={}).accuracy)  # not finished
    assert math.isnan(Result(config={}, final={"accuracy": None}).accuracy)
    assert Result(config={}, final={"accuracy": 1}).accuracy == 1.0


def test_to_dict_non_finite_become_null() -> None:
    rounds = [
        RoundRecord(1, math.inf, math.nan, seconds=0.25),
        RoundRecord(2, -math.inf, 0.5, seconds=math.inf),
        RoundRecord(3, float(np.float64("nan")), 0.0, seconds=0.0),
    ]
    config = {"params": {"clip": math.inf, "scales": (1.0, math.nan)}, "lr": 0.05, "out": None}
    data = Result(config=config, rounds=rounds).finish().to_dict()
    text = _strict_json(data)
    assert [r["loss"] for r in data["rounds"]] == [None, None, None]
    assert [r["accuracy"] for r in data["rounds"]] == [None, 0.5, 0.0]
    assert [r["seconds"] for r in data["rounds"]] == [0.25, None, 0.0]
    assert data["config"] == {
        "params": {"clip": None, "scales": [1.0, None]},
        "lr": 0.05,
        "out": None,
    }
    assert data["final"]["loss"] is None and data["final"]["accuracy"] == 0.0
    assert data["final"]["seconds_per_round"] is None  # mean with an Inf
    assert json.loads(text) == data
    assert config["params"]["clip"] == math.inf  # the Result itself is left alone


def test_to_dict_keeps_finite_values_and_types() -> None:
    data = Result(config={"seed": 3}, rounds=_rounds()).finish().to_dict()
    assert data["rounds"][1] == {
        "round": 2,
        "loss": 1.7,
        "accuracy": 0.42,
        "asr": None,  # no backdoor attack
        "rejected": 0,
        "bytes_up": 1100,
        "bytes_down": 2100,
        "seconds": 1.5,
        "train_loss": None,
        "gap": None,
        "metrics": {},
        "missing": 0,
    }
    assert data["rounds"][2]["missing"] == 2 and isinstance(data["rounds"][2]["missing"], int)
    assert isinstance(data["final"]["bytes_up"], int) and data["final"]["bytes_up"] == 3300
    assert isinstance(data["final"]["missing"], int) and data["final"]["missing"] == 2


def test_json_has_exactly_the_design_keys(tmp_path: Path) -> None:
    rounds = [*_rounds(), RoundRecord(4, math.nan, math.nan)]
    path = (
        Result(config=ExperimentConfig().to_dict(), rounds=rounds)
        .finish()
        .save(tmp_path / "r.json")
    )
    data = json.loads(path.read_text(), parse_constant=_reject_constant)
    assert data.keys() == {"config", "rounds", "final"}
    assert len(data["rounds"]) == 4
    for record in data["rounds"]:
        assert record.keys() == ROUND_KEYS
    assert data["final"].keys() == FINAL_KEYS
    assert data["config"] == ExperimentConfig().to_dict()


def test_save_load_round_trip(tmp_path: Path) -> None:
    config = ExperimentConfig(byzantine=2, clients=10, params={"clip": 1.5}).resolved().to_dict()
    rounds = [
        *_rounds(),
        RoundRecord(4, math.nan, math.nan, rejected=2, bytes_up=5, bytes_down=7, seconds=0.1),
        RoundRecord(5, math.inf, 0.1, seconds=0.2),
    ]
    result = Result(config=config, rounds=rounds).finish()
    path = result.save(tmp_path / "deep" / "dir" / "result.json")
    assert path == tmp_path / "deep" / "dir" / "result.json" and path.is_file()
    json.loads(path.read_text(), parse_constant=_reject_constant)  # strict JSON on disk

    back = Result.load(path)
    assert back.config == config
    assert back.config["out"] is None and back.config["ray_address"] is None  # not NaN
    assert _same(back.rounds[:4], rounds[:4])
    assert math.isnan(back.rounds[4].loss)  # Inf is written as null, read as NaN
    assert back.rounds[4].accuracy == 0.1
    assert _same(back.final, {**result.final, "loss": math.nan})
    assert back.accuracy == 0.1
    assert _same(Result.from_dict(back.to_dict()).rounds, back.rounds)


def test_strategy_metrics_round_trip(tmp_path: Path) -> None:
    rounds = _rounds()
    rounds[0].metrics = {"diameter": 0.25, "gather": 1.0, "nan-metric": math.nan}
    path = Result(config={"seed": 0}, rounds=rounds).finish().save(tmp_path / "r.json")
    data = json.loads(path.read_text(), parse_constant=_reject_constant)
    assert data["rounds"][0]["metrics"] == {"diameter": 0.25, "gather": 1.0, "nan-metric": None}
    assert data["rounds"][1]["metrics"] == {}
    back = Result.load(path)
    assert back.rounds[0].metrics["diameter"] == 0.25 and back.rounds[1].metrics == {}


def test_from_dict_ignores_unknown_round_keys_and_missing_parts() -> None:
    data = {
        "config": {"seed": 0},
        "rounds": [{"round": 1, "loss": 0.5, "accuracy": None, "note": "x"}],
    }
    result = Result.from_dict(data)
    assert len(result.rounds) == 1
    record = result.rounds[0]
    assert (record.round, record.loss, record.rejected, record.bytes_up) == (1, 0.5, 0, 0)
    assert record.missing == 0  # a result file written before ``missing`` existed
    assert math.isnan(record.accuracy)
    assert result.final == {} and math.isnan(result.accuracy)


def test_asr_sits_beside_accuracy_and_round_trips_with_null(tmp_path: Path) -> None:
    rounds = _rounds()
    rounds[0].asr, rounds[2].asr = 0.25, 0.875  # round 2: NaN (not measured)
    result = Result(config={"seed": 0}, rounds=rounds).finish()
    assert result.final["asr"] == 0.875 == result.asr
    path = result.save(tmp_path / "r.json")
    data = json.loads(path.read_text(), parse_constant=_reject_constant)
    keys = list(data["rounds"][0])
    assert keys.index("asr") == keys.index("accuracy") + 1
    assert [r["asr"] for r in data["rounds"]] == [0.25, None, 0.875]
    back = Result.load(path)
    assert _same(back.rounds, rounds) and back.asr == 0.875
    assert math.isnan(back.rounds[1].asr)
    assert math.isnan(RoundRecord(1, 0.5, 0.5, 0, 1, 2, 0.1).asr)  # the default: no backdoor


def test_a_file_written_before_asr_loads_with_nan() -> None:
    data = Result(config={"seed": 0}, rounds=_rounds()).finish().to_dict()
    for record in data["rounds"]:
        del record["asr"]
    del data["final"]["asr"]
    old = Result.from_dict(data)
    assert all(math.isnan(r.asr) for r in old.rounds) and math.isnan(old.asr)
    assert [r.accuracy for r in old.rounds] == [0.11, 0.42, 0.73]
