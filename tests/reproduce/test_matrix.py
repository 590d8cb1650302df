"""The attack x defence matrix: each row tuned by the worst case over the attacks on the
validation split (never the test split, never the attack-free column, never a reported seed),
then measured with the chosen values over the seeds; its cells, intervals, worst cases, plateau
gains, bytes and summary data against a hand computation; every config one the runner takes."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from flwr_byz.reproduce import Budget, tuning
from flwr_byz.reproduce import matrix as matrix_mod
from flwr_byz.reproduce.workspace import pinned
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

from .helpers import PNG_MAGIC, FakeWorkspace, result

A, B = (replace(s, rounds={"fedavg": 20, "step": 40}) for s in matrix_mod.SETTINGS)
LO, HI = A.rows[0].lrs  # FedAvg's grid in setting (a)


def _lr_of(cfg: ExperimentConfig) -> float:
    return float(cfg.lr)


@pytest.fixture(autouse=True)
def _no_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting (b)'s data set is a spec string here (the copy itself: test_localcopy); short
    horizons keep the fabricated results small."""
    monkeypatch.setattr(matrix_mod, "setting_dataset", lambda s, ws: f"local:/{s.key}")
    short = {"fedavg": 20, "step": 40}
    monkeypatch.setattr(
        matrix_mod, "SETTINGS", tuple(replace(s, rounds=short) for s in matrix_mod.SETTINGS)
    )


def _make(name: str, cfg: ExperimentConfig) -> Result:
    """Validation runs: FedAvg's lr LO has the better worst case (HI collapses under ALIE);
    CClip: tau 10 beats tau 1. Test runs: seeds 0, 1, 2 at 50, 60, 70% (FedAvg attack-free
    80, 90, 100% at the end), 10 points less under ALIE; MARINA-PP diverges under min-max."""
    n = cfg.rounds
    if "validation=0.2" in cfg.dataset:
        acc = 0.5
        if cfg.method == "fedavg" and cfg.lr == HI and cfg.attack == "alie":
            acc = 0.1
        if "cc:tau=10" in str(cfg.aggregator):
            acc = 0.7
        return result(cfg, [acc] * n)
    if cfg.method == "byz-vr-marina-pp" and cfg.attack == "min-max":
        return result(cfg, [0.3] * (n - 1) + [math.nan])
    if cfg.method == "fedavg" and cfg.attack == "none":
        k = max(1, n // 10)  # the last 10%: a jump from 0 to 80, 90, 100%
        return result(cfg, [0.0] * (n - k) + [0.8 + 0.1 * cfg.seed] * k)
    if cfg.aggregator == "geomed" and cfg.attack == "none" and cfg.seed == 0:
        k = max(1, n // 10)  # seed 0 collapses in the last 10%: from 50 to 20%
        return result(cfg, [0.5] * (n - k) + [0.2] * k)
    return result(cfg, [0.5 + 0.1 * cfg.seed - (0.1 if cfg.attack == "alie" else 0.0)] * n)


def test_rows_are_tuned_on_validation_then_measured_on_the_test_split(tmp_path: Path) -> None:
    budget = Budget.make(quick=False, jobs=1)
    ws = FakeWorkspace(tmp_path, _make, budget)
    section = matrix_mod.attack_matrix(ws)
    tuned = [c for c in ws.calls if "validation=" in c.dataset]
    final = [c for c in ws.calls if "validation=" not in c.dataset]
    # tuning: the tuning seed, the attacks only, every candidate of every row's grid
    assert {c.seed for c in tuned} == {tuning.TUNING_SEED}
    assert "none" not in {c.attack for c in tuned}
    for s in matrix_mod.SETTINGS:
        grid = sum(len(r.candidates()) for r in s.rows)
        mine = [c for c in tuned if c.dataset == f"local:/{s.key},validation=0.2"]
        assert len(mine) == grid * (len(s.attacks) - 1)
        ours = [c for c in final if c.dataset == f"local:/{s.key}"]
        assert len(ours) == len(s.rows) * len(s.attacks) * len(budget.seeds)
        family = {r.method: r.family for r in s.rows}  # each row runs its family's horizon
        assert all(c.rounds == s.rounds[family[c.method]] for c in [*mine, *ours])
    assert {c.seed for c in final} == set(budget.seeds)
    assert {c.byzantine for c in ws.calls} == {matrix_mod.BYZANTINE}
    # the chosen values are what the cells ran with: FedAvg lr LO, CClip lr LO with tau 10
    fedavg = {(c.dataset, _lr_of(c)) for c in final if c.method == "fedavg"}
    assert fedavg == {(f"local:/{A.key}", LO), (f"local:/{B.key}", B.rows[0].lrs[0])}  # B: tie
    assert {c.aggregator for c in final if "cc" in str(c.aggregator)} == {"cc:tau=10.0"}
    md = section.markdown
    # seeds 50, 60, 70%: mean 60, 95% half-width t(0.975, 2) * 10 / sqrt(3) = 24.8
    assert f"| RobustFedAvg Krum | {LO:g} | - | 20 | 60.0 ± 24.8 |" in md
    assert f"| RobustFedAvg CClip | {LO:g} | tau 10 |" in md
    assert f"| FedAvg | lr {LO:g}: 50.0 ←; lr {HI:g}: 10.0 |" in md
    assert f"lr {LO:g}, tau 1: 50.0; lr {LO:g}, tau 10: 70.0 ←" in md
    # FedAvg's attack-free runs: 80, 90, 100% over the last 10%, gaining 90 points: flagged
    assert "| 90.0 ± 24.8 |" in md and "+90.0 (not plateaued)" in md
    # GeoMed's seed 0 loses 30 points over the last 10%, seeds 1 and 2 stay: -10.0 on average
    geomed = next(line for line in md.splitlines() if line.startswith("| RobustFedAvg GeoMed |"))
    assert "| -10.0 (falling) |" in geomed
    assert "(falling)" not in md.replace(geomed, "")  # the flat rows are not flagged
    # each seed of FedAvg's attack-free runs gains 80-100 points on its own: named
    assert (
        "Attack-free runs above the plateau rule on their own (the column judges the seed "
        "mean): FedAvg (seed 0 +80.0, seed 1 +90.0, seed 2 +100.0)." in md
    )
    data = section.data
    a_rows = data["settings"][A.key]["rows"]
    assert data["settings"][A.key]["label"] == A.label
    assert data["fedavg_clean"] == {A.key: pytest.approx(0.9), B.key: pytest.approx(0.9)}
    assert a_rows["RobustFedAvg Krum"] == {
        "clean": pytest.approx(0.6), "worst": pytest.approx(0.5), "worst_attack": "alie",
        "mb_up_per_round": pytest.approx(1 / matrix_mod.CLIENTS), "lr": LO, "param": "",
        "rounds": A.rounds["fedavg"],
    }  # fmt: skip
    assert a_rows["RobustFedAvg CClip"]["param"] == "tau 10"
    marina = a_rows["Byz-VR-MARINA-PP"]  # a diverged attack is the worst case
    assert math.isnan(marina["worst"]) and marina["worst_attack"] == "min-max"
    for s in matrix_mod.SETTINGS:
        assert (tmp_path / "docs" / "img" / f"matrix_{s.key}.png").read_bytes()[:8] == PNG_MAGIC


def test_quick_budget_runs_each_rows_first_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matrix_mod, "plot_heatmap", lambda *a, **k: None)
    ws = FakeWorkspace(tmp_path, _make, Budget.make(quick=True, jobs=1))
    section = matrix_mod.attack_matrix(ws)
    for s in matrix_mod.SETTINGS:
        tuned = [c for c in ws.calls if c.dataset == f"local:/{s.key},validation=0.2"]
        assert len(tuned) == len(s.rows) * (len(s.attacks) - 1)
    assert {c.rounds for c in ws.calls} == {2, 4}
    assert section.summary == f"{len(ws.calls)} runs (tuning included)"


def test_fedavg_lr_is_the_tuned_one_and_reuses_its_runs(tmp_path: Path) -> None:
    ws = FakeWorkspace(tmp_path, _make, Budget.make(quick=False, jobs=1))
    assert matrix_mod.fedavg_lr(ws) == LO
    assert {c.method for c in ws.calls} == {"fedavg"}
    assert len(ws.calls) == len(matrix_mod.DEFENCES[0].lrs) * (len(A.attacks) - 1)
    assert {c.dataset for c in ws.calls} == {f"local:/{A.key},validation=0.2"}


def test_choose_takes_the_best_worst_case_and_breaks_ties_by_grid_order(tmp_path: Path) -> None:
    cfg = ExperimentConfig(rounds=20)

    def runs(*accs: float) -> dict[str, Result]:
        return {f"a{i}": result(cfg, [0.0] * 18 + [acc, acc]) for i, acc in enumerate(accs)}

    grid = ["x", "y", "z"]
    picked = tuning.choose(grid, {"x": runs(0.9, 0.3), "y": runs(0.5, 0.6), "z": runs(0.8, 0.5)})
    assert picked.chosen == "y" and picked.worst == pytest.approx(0.5)
    tie = tuning.choose(grid, {"x": runs(0.5, 0.9), "y": runs(0.503, 0.9), "z": runs(0.1, 0.9)})
    assert tie.chosen == "x"  # within TIE (0.5 points) of the best: the earlier wins
    diverged = result(cfg, [0.9] * 19 + [math.nan])
    assert math.isnan(tuning.tail_accuracy(diverged))
    nan = tuning.choose(["x", "y"], {"x": {"a": diverged}, "y": runs(0.2)})
    assert nan.chosen == "y" and nan.worst_of("x") == -math.inf
    assert tuning.tail_accuracy(result(cfg, [0.0] * 18 + [0.4, 0.6])) == pytest.approx(0.5)
    assert tuning.with_validation("local:/d") == "local:/d,validation=0.2"
    assert tuning.with_validation("mnist1d") == "mnist1d:validation=0.2"


def test_matrix_configs_satisfy_every_rule() -> None:
    """Every config of setting (a)'s grids (pinned, as the workspace runs it) passes the
    runner's validation and runs on the batched engine; setting (b) has the same columns, with
    label skew (setting (a) is IID)."""
    from flwr_byz.simulations.batched import check_batched
    from flwr_byz.simulations.runner import prepare

    for row in A.rows:
        for cand in row.candidates():
            for attack in ("alie", "min-max"):
                cfg = pinned(matrix_mod._config(A, A.dataset, row, cand, attack, 0, 2))
                prepare(cfg)
                check_batched(cfg)
    assert (A.partition, B.partition, B.attacks) == ("iid", "dirichlet:0.5", A.attacks)


def test_rows_with_their_own_horizon_and_the_method_knobs_tuned_per_build() -> None:
    """mu2-SGD and ByzSGD (no momentum) run twice the other method strategies' rounds in
    setting (a); every method strategy with a key hyperparameter has it in its grid, and the
    grid's values reach the config as the strategy reads them."""
    s = matrix_mod.MNIST1D_CNN
    full, quick = Budget.make(quick=False, jobs=1), Budget.make(quick=True, jobs=1)
    rows = {r.label: r for r in s.rows}
    own = {label: s.horizon(r, full) for label, r in rows.items()}
    assert own[matrix_mod.MU2] == own[matrix_mod.BYZSGD] == 2 * s.rounds["step"]
    assert own["Byz-VR-MARINA-PP"] == own["Byz-EF21-SGDM (TopK 10%)"] == s.rounds["step"]
    assert own["FedAvg"] == s.rounds["fedavg"]
    assert {s.horizon(r, quick) for r in s.rows} == set(s.quick_rounds.values())

    def cfgs(label: str) -> list[ExperimentConfig]:
        row = rows[label]
        return [matrix_mod._config(s, "mnist1d", row, c, "alie", 0, 10) for c in row.candidates()]

    marina = cfgs("Byz-VR-MARINA-PP")
    assert [(c.lr, c.params["alpha"]) for c in marina] == [
        (0.05, 1.0), (0.05, 10.0), (0.1, 1.0), (0.1, 10.0)
    ]  # fmt: skip
    assert {c.momentum for c in cfgs("Byz-EF21-SGDM (TopK 10%)")} == {0.9, 0.5}  # 1 - eta
    byzsgd = cfgs(matrix_mod.BYZSGD)
    periods = [c.params["gather_period"] for c in byzsgd]
    assert periods == [5, 10, 5, 10] and all(type(p) is int for p in periods)
    assert all(c.params["n_servers"] == 5 for c in byzsgd)  # the row's own params kept
    assert len(cfgs(matrix_mod.MU2)) == 2  # no knob: the lr grid only


def test_setup_text_names_every_knob_and_each_rows_horizon(tmp_path: Path) -> None:
    budget = Budget.make(quick=False, jobs=1)
    ws = FakeWorkspace(tmp_path, _make, budget)
    text = matrix_mod._setup(ws, (matrix_mod.MNIST1D_CNN,))
    knobs = [r.knob for r in matrix_mod.DEFENCES if r.knob is not None]
    assert len(knobs) == 4 and all(k.about for k in knobs)
    for knob in knobs:
        assert f"{knob.about}: {', '.join(f'{v:g}' for v in knob.values)}" in text
    assert "fixed" not in text.lower().split("tuning")[1].split("horizons")[0]
    assert f"method strategies 600 ({matrix_mod.MU2} 1200, {matrix_mod.BYZSGD} 1200)" in text
