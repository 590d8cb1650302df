"""C3.1-C4.2 judged on seed intervals: each rule's checks hold, fail or are within noise on
fabricated per-seed results; the step-size tuning (``TunedClaim``) scores a validation split
with its own seeds, picks the best worst case and runs the claim at the chosen lr."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from flwr_byz.reproduce import CLAIMS, Budget
from flwr_byz.reproduce.claim import TUNING_SEEDS, Evidence, Grid, TunedClaim, tune
from flwr_byz.reproduce.papers.byzsgd import BYZSGD_LRS, C4_1
from flwr_byz.reproduce.papers.mu2sgd import C3_1, C3_2, C3_LRS
from flwr_byz.reproduce.stats import Check
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

from .helpers import FakeWorkspace, result

#: The full budget with 5 claim seeds (fabricated runs: no round is trained).
FULL = Budget.make(quick=False, jobs=1)
#: Seed offsets around a mean: their 95% interval is +-1.0 point (5 seeds).
WOBBLE = (-0.01, 0.005, 0.0, -0.005, 0.01)

#: run name, lr, seed index -> tail accuracy (a fraction; NaN: diverged)
Acc = Callable[[str, float, int], float]


def _evidence(claim: TunedClaim, lrs: Mapping[str, float], acc: Acc, **measured: float) -> Evidence:
    """The claim's final runs at ``lrs``, each seed a flat curve at ``acc(name, lr, seed)``."""
    assert claim.final is not None
    runs = {}
    for name, cfg in claim.final(FULL, lrs).items():
        runs[name] = [
            result(dataclasses.replace(cfg, seed=s), [acc(name, cfg.lr, i)] * 20)
            for i, s in enumerate(FULL.claim_seeds)
        ]
    chosen = {f"lr {arm}": lr for arm, lr in lrs.items()}
    return Evidence(runs, FULL, {**chosen, **measured})


def _holds(checks: list[Check | bool]) -> list[bool | None]:
    return [c.holds if isinstance(c, Check) else c for c in checks]


# ----------------------------------------------------------------------------- C3.1

C31 = C3_1
C31_LRS = {"median": 0.1, "ctma+median": 1.0, "nnm+median": 0.1, "bucketing:2+median": 0.1}
FAST = {"median": 7.0, "ctma+median": 9.0, "nnm+median": 20.0, "bucketing:2+median": 8.0}


def _c31(ctma_ipm: float, bucket: float, wobble: float = 1.0) -> Acc:
    """Every rule at 0.9 except CTMA under IPM (``ctma_ipm``) and Bucketing under the
    attacks (``bucket``); seed spread ``wobble`` x WOBBLE."""

    def acc(name: str, lr: float, i: int) -> float:
        spec, attack = name.split(" ", 1)
        assert lr == C31_LRS[spec]  # each rule runs at its own tuned lr
        base = 0.9
        if spec == "ctma+median" and attack.startswith("ipm"):
            base = ctma_ipm
        elif spec == "bucketing:2+median" and attack != "none":
            base = bucket
        return base + wobble * WOBBLE[i]

    return acc


def test_c3_1_holds_when_ctma_matches_nnm_and_beats_bucketing() -> None:
    out = C31.assess(_evidence(C31, C31_LRS, _c31(0.88, 0.5), **FAST))
    assert _holds(list(out.checks)) == [True] * 6 and out.verdict == "reproduced"
    assert out.caveat is None
    assert "| CTMA + Median | 1.0 | 90.0 ± 1.0 |" in out.results[0]  # tuned lr, mean ± half


def test_c3_1_parity_fails_only_when_the_intervals_separate() -> None:
    # 6 points below NNM with tight intervals: beyond the 3-point margin
    out = C31.assess(_evidence(C31, C31_LRS, _c31(0.84, 0.5), **FAST))
    assert _holds(list(out.checks))[:4] == [True, True, True, False]
    assert out.verdict == "partly" and "ipm:eps=0.5" in (out.caveat or "")
    # 6 points below with a seed spread of +-6 points: the intervals overlap, parity stands
    out = C31.assess(_evidence(C31, C31_LRS, _c31(0.84, 0.2, wobble=5.0), **FAST))
    assert _holds(list(out.checks))[3] is True


def test_c3_1_steadier_than_bucketing_is_within_noise_when_the_worst_cases_overlap() -> None:
    out = C31.assess(_evidence(C31, C31_LRS, _c31(0.88, 0.885), **FAST))
    assert _holds(list(out.checks))[-1] is None and out.verdict == "within noise"
    slow = {**FAST, "ctma+median": 25.0}
    assert C31.assess(_evidence(C31, C31_LRS, _c31(0.88, 0.5), **slow)).verdict == "partly"


# ----------------------------------------------------------------------------- C3.2

C32 = C3_2


def _c32(mu2_spread: float, mom_spread: float, mu2_at_01: float = 0.9) -> Acc:
    """Accuracy 0.9 at lr 1.0, minus ``spread`` x (0, 1/2, 1) at lrs 1.0, 0.1, 0.01;
    mu2-SGD at lr 0.1 pinned to ``mu2_at_01``."""

    def acc(name: str, lr: float, i: int) -> float:
        spread = mu2_spread if name.startswith("mu2sgd") else mom_spread
        if name.startswith("mu2sgd") and lr == 0.1:
            return mu2_at_01 + WOBBLE[i]
        drop = {1.0: 0.0, 0.1: 0.5, 0.01: 1.0}[lr] * spread
        return 0.9 - drop + WOBBLE[i]

    return acc


def test_c3_2_compares_the_methods_at_their_tuned_lrs() -> None:
    lrs = {"mu2sgd": 1.0, "robust-momentum": 1.0}
    # mu2-SGD far off at lr 0.1 does not matter: its tuned lr is 1.0
    out = C32.assess(_evidence(C32, lrs, _c32(0.05, 0.4, mu2_at_01=0.5)))
    assert _holds(list(out.checks))[:3] == [True] * 3
    assert "1.0 (tuned)" in out.results[0] and "0.1 (tuned)" not in out.results[0]
    out = C32.assess(_evidence(C32, {**lrs, "mu2sgd": 0.1}, _c32(0.05, 0.4, mu2_at_01=0.5)))
    assert _holds(list(out.checks))[:3] == [False] * 3


def test_c3_2_sensitivity_holds_fails_or_is_within_noise() -> None:
    lrs = {"mu2sgd": 1.0, "robust-momentum": 1.0}

    def insensitive(mu2: float, mom: float) -> bool | None:
        return _holds(list(C32.assess(_evidence(C32, lrs, _c32(mu2, mom, 0.9 - mu2 / 2))).checks))[
            -1
        ]

    assert insensitive(0.05, 0.4) is True
    assert insensitive(0.4, 0.05) is False

    # spreads 1 point apart while each seed's spread wobbles by several: within noise
    def noisy(name: str, lr: float, i: int) -> float:
        jitter = 0.03 * WOBBLE[i] / 0.01 if lr == 0.01 else 0.0
        return _c32(0.1, 0.11, 0.85)(name, lr, i) + jitter

    out = C32.assess(_evidence(C32, lrs, noisy))
    assert _holds(list(out.checks))[-1] is None and out.verdict == "within noise"


def test_c3_2_a_diverged_run_counts_as_zero_in_the_spread() -> None:
    lrs = {"mu2sgd": 0.1, "robust-momentum": 0.1}

    def acc(name: str, lr: float, i: int) -> float:
        if name.startswith("robust-momentum") and lr == 1.0:
            return math.nan
        return 0.9 + WOBBLE[i]

    out = C32.assess(_evidence(C32, lrs, acc))
    assert _holds(list(out.checks))[-1] is True  # momentum's spread: 90 points
    assert "momentum 90.0 ± 1.0" in out.results[4]


# ----------------------------------------------------------------------------- C4.1


def _c41(gap: float, wobble: float) -> Acc:
    def acc(name: str, lr: float, i: int) -> float:
        below = gap if name == "random sign-flip" else 0.0
        return 0.95 - below + wobble * WOBBLE[i]

    return acc


@pytest.mark.parametrize(
    ("gap", "wobble", "holds"),
    [
        (0.02, 1.0, True),  # 2 points below: within the margin
        (0.10, 1.0, False),  # 10 points below, tight: fails
        (0.05, 4.0, True),  # 5 points below, but +-5 points of seed spread: overlaps
    ],
)
def test_c4_1_parity_with_a_3_point_margin(gap: float, wobble: float, holds: bool) -> None:
    claim = C4_1
    assert CLAIMS["c4.1"] is claim
    ev = _evidence(claim, {"single": 0.3, "replicated": 1.0}, _c41(gap, wobble))
    out = claim.assess(ev)
    assert _holds(list(out.checks)) == [True, True, True, holds]
    assert (
        "| random | 1.0 |" in out.results[0] and "| single trusted server | 0.3 |" in out.results[0]
    )


# ----------------------------------------------------------------------------- tuning


def test_tune_scores_the_validation_split_and_takes_the_best_worst_case(tmp_path: Path) -> None:
    base = ExperimentConfig(method="mu2sgd", dataset="digits", model="logreg", rounds=4)
    # lr 1.0 is best on average but collapses under one attack; lr 0.3 diverges once
    score = {(0.1, "a"): 0.7, (0.1, "b"): 0.6, (0.3, "a"): 0.9, (0.3, "b"): math.nan}
    score |= {(1.0, "a"): 0.99, (1.0, "b"): 0.5}
    grid: Grid = {
        "arm": {
            lr: {s: dataclasses.replace(base, lr=lr, attack=s) for s in ("a", "b")}
            for lr in (0.1, 0.3, 1.0)
        }
    }

    def make(name: str, cfg: ExperimentConfig) -> Result:
        assert cfg.dataset == "digits:validation=0.2" and cfg.seed in TUNING_SEEDS
        return result(cfg, [score[(cfg.lr, cfg.attack)]] * 4)

    ws = FakeWorkspace(tmp_path, make, FULL)
    tuned = tune(ws, grid)
    assert tuned.lr == {"arm": 0.1}
    assert tuned.worst["arm"][0.1] == pytest.approx(0.6) and math.isnan(tuned.worst["arm"][0.3])
    assert len(ws.calls) == 6 * len(TUNING_SEEDS)


def test_a_tuned_claim_runs_its_final_runs_at_the_chosen_lr(tmp_path: Path) -> None:
    """C4.1 through a workspace: the single server's best lr is the smallest, the replicas'
    the largest; the final runs (claim seeds, test split) use them."""
    assert BYZSGD_LRS == (0.1, 0.3, 1.0) and C3_LRS == (0.01, 0.1, 1.0)

    def make(name: str, cfg: ExperimentConfig) -> Result:
        single = cfg.params["n_servers"] == 1
        best = 0.1 if single else 1.0
        return result(cfg, [0.9 if cfg.lr == best else 0.5] * cfg.rounds)

    budget = dataclasses.replace(FULL, claim_seeds=(0, 1))
    ws = FakeWorkspace(tmp_path, make, budget)
    section = CLAIMS["c4.1"].run(ws)
    finals = [c for c in ws.calls if c.seed in budget.claim_seeds]
    assert len(finals) == 6 * 2 and all("validation" not in c.dataset for c in finals)
    assert {(c.params["n_servers"], c.lr) for c in finals} == {(1, 0.1), (5, 1.0)}
    tuning = [c for c in ws.calls if c.seed not in budget.claim_seeds]
    assert len(tuning) == 6 * 3 * len(TUNING_SEEDS)
    assert section.verdict == "reproduced"
    assert "| single trusted server | 0.1 | 90.0 ± 0.0 |" in section.markdown
    # the validation scores behind the choice, per arm
    assert "single server (**0.1: 90.0**, 0.3: 50.0, 1.0: 50.0)" in section.markdown
    assert "replicated servers (0.1: 50.0, 0.3: 50.0, **1.0: 90.0**)" in section.markdown


def test_every_tuning_run_is_one_the_runner_takes() -> None:
    """Every arm is tuned over the whole grid and the claim's attacks, on the validation
    split, with configs the runner takes."""
    from flwr_byz.reproduce.claim import on_validation
    from flwr_byz.reproduce.workspace import pinned
    from flwr_byz.simulations.runner import prepare

    for claim, lrs, settings in (
        (C3_1, C3_LRS, 5),
        (C3_2, C3_LRS, 3),
        (C4_1, BYZSGD_LRS, None),
    ):
        assert claim.grid is not None
        grid = claim.grid(FULL)
        for arm, by_lr in grid.items():
            assert tuple(by_lr) == lrs, arm
            sizes = {len(cfgs) for cfgs in by_lr.values()}
            assert sizes == ({settings} if settings else {2 if arm == "single" else 4}), arm
            for cfgs in by_lr.values():
                for cfg in cfgs.values():
                    prepare(pinned(on_validation(cfg)))
