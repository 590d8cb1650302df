"""The Byz-EF21-SGDM dense-reset study: its section from a measurement, and the measurement
itself on a small setting (the production EF21 driver with the attack paths swapped in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flwr_byz.methods import ef21
from flwr_byz.reproduce import Budget, Workspace
from flwr_byz.reproduce import resets as resets_mod


def _summary(attacks: list[str], dense_after: float) -> dict[str, dict[str, float]]:
    """dist_mid per path: compressed 1, dense before 2, dense after ``dense_after``."""
    dist = {"compressed": 1.0, "dense": 2.0, "adaptive": 1.0, "silent": 0.5}
    out = {}
    for attack in attacks:
        for path, limits in resets_mod.PATHS:
            d = dense_after if (path, limits) == ("dense", "after") else dist[path]
            out[f"mean|{attack}|{path}|{limits}"] = {
                "dist_mid": d, "dist_end": d, "deviation": 0.1, "acc_end": 0.3, "resets": 1.0,
                "refused_limit": 9.0 if limits == "after" and path == "dense" else 0.0,
                "refused_norm": 0.0,
            }  # fmt: skip
    return out


@pytest.mark.parametrize(("dense_after", "verdict"), [(0.2, "holds"), (1.5, "fails")])
def test_section_tabulates_the_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dense_after: float, verdict: str
) -> None:
    calls: list[dict[str, Any]] = []

    def measure(setting: dict[str, Any]) -> dict[str, Any]:
        calls.append(setting)
        return {
            "setting": setting,
            "summary": _summary(setting["attacks"], dense_after),
            "compressed_path_same_with_limits_off": True,
            "honest_reset_ratios": {"eta=0.1": 2.0, "eta=0.01": 1.5},
        }

    monkeypatch.setattr(resets_mod, "measure", measure)
    ws = Workspace(Budget.make(quick=True, jobs=1), tmp_path / "work", tmp_path / "docs")
    section = resets_mod.ef21_resets(ws)
    assert calls[0]["aggregators"] == ["mean"] and calls[0]["seeds"] == [0]  # quick
    md = section.markdown
    assert f"| mean | dense | before | {' | '.join(['2.00x'] * len(resets_mod.ATTACKS))} |" in md
    assert f"| mean | dense | after | {dense_after:.2f}x (9 / 0) |" in md
    assert f"**{verdict}**" in md and section.summary.endswith(verdict)
    assert section.verdict is None  # a check of ours, not a paper's claim
    again = resets_mod.ef21_resets(ws)  # stored: measured once
    assert len(calls) == 1 and again.markdown == md


def test_measurement_on_a_small_setting() -> None:
    setting = {
        "seeds": [0], "aggregators": ["mean"], "attacks": ["alie"], "start": 2, "window": 5,
        "ratio_rounds": 6,
    }  # fmt: skip
    data = resets_mod.measure(setting)
    s = data["summary"]
    assert s["mean|alie|dense|before"]["resets"] == 4 * 5  # every Byzantine node, every round
    after = s["mean|alie|dense|after"]
    # the Byzantine nodes' first resets (round 1) were less than 10 rounds before: all refused
    assert after["resets"] == 0 and after["refused_limit"] == 4 * 5
    assert data["compressed_path_same_with_limits_off"] is True
    ratios = data["honest_reset_ratios"]
    assert set(ratios) == {"eta=0.1", "eta=0.01"}
    assert 0 < max(ratios.values()) < ef21.DEFAULT_RESET_NORM_BOUND
