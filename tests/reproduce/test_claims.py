"""The claims: one ``Claim`` per claim, one module per paper; each verdict rule on fabricated
results; every claim's section laid out the same way; every config one the runner takes."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from flwr_byz.reproduce import CLAIMS, Budget, Claim
from flwr_byz.reproduce.claim import TUNING_SEEDS, Evidence, TunedClaim, on_validation
from flwr_byz.reproduce.section import VERDICTS
from flwr_byz.reproduce.stats import Check
from flwr_byz.reproduce.workspace import pinned
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

from .helpers import PNG_MAGIC, FakeWorkspace, Maker, result

PAPERS = {
    "marina": ("Byz-VR-MARINA-PP", ["c1.1", "c1.2"]),
    "ef21": ("Byz-EF21-SGDM", ["c2.1", "c2.2"]),
    "mu2sgd": ("mu2-SGD", ["c3.1", "c3.2"]),
    "byzsgd": ("ByzSGD", ["c4.1", "c4.2"]),
}


def test_one_claim_object_per_claim_one_module_per_paper() -> None:
    assert list(CLAIMS) == [k for _, keys in PAPERS.values() for k in keys]
    for module, (paper, keys) in PAPERS.items():
        for key in keys:
            claim = CLAIMS[key]
            assert isinstance(claim, Claim) and claim.key == key
            assert claim.paper == paper, key
            assert claim.assess.__module__ == f"flwr_byz.reproduce.papers.{module}", key
            assert claim.title.startswith(key.upper() + " ") and claim.rule.startswith("Rule: ")


# ----------------------------------------------------------------------------- verdicts


def _gap_maker(unclipped_decays: bool) -> Maker:
    def make(name: str, cfg: ExperimentConfig) -> Result:
        n = cfg.rounds
        alpha = cfg.params.get("alpha")
        if alpha is None and not unclipped_decays:
            gaps = [1.0 + (i % 3) for i in range(n)]  # ShiftBack keeps throwing it back
        else:
            gaps = [0.5**i for i in range(n)]  # linear convergence
        return result(cfg, [0.9] * n, gap=gaps)

    return make


def test_c1_1_verdict_follows_its_rule(tmp_path: Path) -> None:
    good = CLAIMS["c1.1"].run(FakeWorkspace(tmp_path, _gap_maker(unclipped_decays=False)))
    assert good.verdict == "reproduced"
    # the unclipped run converging as well contradicts "no progress without clipping"
    bad = CLAIMS["c1.1"].run(FakeWorkspace(tmp_path, _gap_maker(unclipped_decays=True)))
    assert bad.verdict == "partly"
    assert "Most likely reason" in bad.markdown and "Most likely reason" not in good.markdown
    assert (tmp_path / "docs" / "img" / "c1_1_gap.png").read_bytes()[:8] == PNG_MAGIC


def _byzsgd_maker(bad_gather: bool) -> Maker:
    def make(name: str, cfg: ExperimentConfig) -> Result:
        n = cfg.rounds
        recs = result(cfg, [0.5] * n)
        for i, rec in enumerate(recs.rounds):
            rec.metrics = {"diameter": 0.3}
            if (i + 1) % 5 == 0:
                after = 0.5 if (bad_gather and i == 4 and "negate" in name) else 0.1
                rec.metrics = {"diameter": after, "diameter-before-gather": 0.4}
        return recs

    return make


def test_c4_2_counts_the_gathers(tmp_path: Path) -> None:
    budget = dataclasses.replace(Budget.make(quick=True, jobs=1), quick=False)  # 200 steps
    ok = CLAIMS["c4.2"].run(FakeWorkspace(tmp_path, _byzsgd_maker(False), budget))
    assert ok.verdict == "reproduced"
    # 200 steps, T = 5: 40 gathers per run, 80 over the 2 seeds, all of them shrinking
    assert "| negate / none | 80 of 80 |" in ok.markdown
    bad = CLAIMS["c4.2"].run(FakeWorkspace(tmp_path, _byzsgd_maker(True), budget))
    assert bad.verdict == "not reproduced"
    assert "| negate / none | 78 of 80 |" in bad.markdown  # one per seed


def test_c4_1_single_server_is_the_reference(tmp_path: Path) -> None:
    def make(name: str, cfg: ExperimentConfig) -> Result:
        n = cfg.rounds
        drop = 0.1 if name.startswith("random sign-flip") else 0.0
        return result(cfg, [min(0.6, 0.01 * (i + 1)) - drop for i in range(n)])

    section = CLAIMS["c4.1"].run(FakeWorkspace(tmp_path, make))
    assert section.verdict == "partly"  # 3 of the 4 Byzantine-server cells within 3 points
    assert "within 3 points in 3 of 4 cells" in section.summary


# ----------------------------------------------------------------------------- layout


def _flat(name: str, cfg: ExperimentConfig) -> Result:
    """Every run the same: no check can tell the runs apart."""
    n = cfg.rounds
    recs = result(cfg, [0.5] * n, gap=[1.0] * n)
    for i, rec in enumerate(recs.rounds):
        rec.metrics = {"diameter": 0.3}
        if (i + 1) % 5 == 0:
            rec.metrics = {"diameter": 0.3, "diameter-before-gather": 0.3}
    return recs


@pytest.mark.parametrize("key", list(CLAIMS))
def test_every_section_has_setup_results_rule_figure_then_caveat(key: str, tmp_path: Path) -> None:
    claim = CLAIMS[key]
    ws = FakeWorkspace(tmp_path, _flat)
    section = claim.run(ws)
    # every run once per claim seed, named "<run>@<seed>" and seeded so (a TunedClaim's
    # tuning runs beside them: the tuning seeds, on a validation split)
    names = claim.runs(ws.budget)
    finals = [c for c in ws.calls if c.seed in ws.budget.claim_seeds]
    assert len(finals) == len(names) * len(ws.budget.claim_seeds)
    tuning = [c for c in ws.calls if c.seed not in ws.budget.claim_seeds]
    assert {c.seed for c in finals} == set(ws.budget.claim_seeds)
    assert all(c.seed in TUNING_SEEDS and "validation=" in c.dataset for c in tuning)
    assert bool(tuning) == isinstance(claim, TunedClaim)
    assert section.key == key and section.title == claim.title and section.verdict in VERDICTS
    md = section.markdown
    assert md.startswith("Setup")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == section.figures == [f"img/{claim.figure.name}.png"]
    assert (ws.docs / links[0]).read_bytes()[:8] == PNG_MAGIC
    before, after = md.split(f"![{claim.figure.alt}]({links[0]})")
    assert before.endswith(claim.rule + "\n\n")
    # after the figure only a caveat (the most likely reason), and only when a check failed
    assert not after.strip() or section.verdict != "reproduced"
    if section.verdict == "reproduced":
        assert after == ""


def test_every_claim_config_is_one_the_runner_takes() -> None:
    """Every run of every claim (full budget, pinned as the workspace runs it), and every
    tuning run of a TunedClaim's grid (on the validation split), passes the runner's checks
    (e.g. the rule takes f of the sampled clients)."""
    from flwr_byz.simulations.runner import prepare

    budget = Budget.make(quick=False, jobs=1)
    seen = set()
    for claim in CLAIMS.values():
        configs = list(claim.runs(budget).values())
        if isinstance(claim, TunedClaim) and claim.grid is not None:
            grid = claim.grid(budget)
            configs += [
                on_validation(c) for lrs in grid.values() for s in lrs.values() for c in s.values()
            ]
        for cfg in configs:
            key = repr(cfg)
            if key not in seen:
                seen.add(key)
                prepare(pinned(cfg))


# ----------------------------------------------------------------------------- intervals (C1-C2)

#: The full budget (5 claim seeds); the runs are fabricated, nothing is trained.
FULL = Budget.make(quick=False, jobs=1)
#: Per-seed offsets around a mean: a 95% interval of +-1.0 point over 5 seeds.
WOBBLE = (-0.01, 0.005, 0.0, -0.005, 0.01)


def _ev(
    configs: dict[str, ExperimentConfig],
    acc: Callable[[str, int], float],
    lrs: dict[str, float] | None = None,
) -> Evidence:
    """Evidence of ``configs``, seed ``i`` of run ``name`` a flat curve at ``acc(name, i)``;
    ``lrs``: the tuned lr per arm, as a TunedClaim records it."""
    runs = {
        name: [
            result(dataclasses.replace(cfg, seed=s), [acc(name, i)] * 30)
            for i, s in enumerate(FULL.claim_seeds)
        ]
        for name, cfg in configs.items()
    }
    return Evidence(runs, FULL, {f"lr {arm}": lr for arm, lr in (lrs or {}).items()})


def _states(checks: Sequence[Check | bool]) -> list[bool | None]:
    return [c.holds if isinstance(c, Check) else c for c in checks]


def _tuned(key: str, lr: float = 0.3) -> tuple[TunedClaim, dict[str, float]]:
    """Claim ``key`` (a TunedClaim) and every arm of its full grid at ``lr``."""
    claim = CLAIMS[key]
    assert isinstance(claim, TunedClaim) and claim.grid is not None
    return claim, dict.fromkeys(claim.grid(FULL), lr)


def _c12_acc(shift_gain: float, bitflip_loss: float = 0.0, spread: float = 1.0) -> Callable:
    """0.9 everywhere, except clipping under ShiftBack (+``shift_gain`` over 0.8 without) and
    under BitFlip (-``bitflip_loss``); seeds ``spread`` x WOBBLE."""

    def acc(name: str, i: int) -> float:
        clip = name.endswith("clip=True")
        base = 0.9
        if name.startswith("shift-back"):
            base = 0.8 + (shift_gain if clip else 0.0)
        elif name.startswith("bit-flip") and clip:
            base -= bitflip_loss
        return base + spread * WOBBLE[i]

    return acc


def test_c1_2_parity_under_three_attacks_and_a_5_point_rescue_under_shift_back() -> None:
    claim, lrs = _tuned("c1.2")
    final = claim.final(FULL, lrs)  # type: ignore[misc]
    # the attack-free pair beside the attacked runs, every arm at its own lr
    assert {"none clip=False", "none clip=True", "shift-back geomed clip=True"} <= set(final)
    assert final["shift-back clip=True"].params["clip_alpha"] == pytest.approx(1 / 0.3)
    assert final["shift-back clip=False"].params["clip_alpha"] is None
    good = claim.assess(_ev(final, _c12_acc(0.1), lrs))
    assert _states(good.checks) == [True] * 5 and good.verdict == "reproduced"
    assert good.caveat is None
    assert (
        "| shift-back | Bucketing(2)+Median | 80.0 ± 1.0 | 90.0 ± 1.0 | holds |"
        in (good.results[0])
    )
    # a 1-point loss under BitFlip is parity (within 2 points); 5 points below is a failure
    assert claim.assess(_ev(final, _c12_acc(0.1, 0.01), lrs)).verdict == "reproduced"
    lost = claim.assess(_ev(final, _c12_acc(0.1, 0.05), lrs))
    assert _states(lost.checks)[0] is False and lost.verdict == "partly"
    assert lost.caveat and "Not reproduced for bit-flip" in lost.caveat
    # a 6-point rescue with a 5-point spread cannot be told from 5 points: within noise
    noisy = claim.assess(_ev(final, _c12_acc(0.06, spread=5.0), lrs))
    assert _states(noisy.checks)[3:] == [None, None] and noisy.verdict == "within noise"
    # a clearly separated 2-point rescue is not the 5 points the rule asks for
    small = claim.assess(_ev(final, _c12_acc(0.02), lrs))
    assert _states(small.checks)[3:] == [False, False]


def _c21_acc(gap: float, spread: float = 1.0) -> Callable:
    """Byz-EF21-SGDM ``gap`` above the two others under every attack."""

    def acc(name: str, i: int) -> float:
        return 0.5 + (gap if name.startswith("byz-ef21-sgdm ") else 0.0) + spread * WOBBLE[i]

    return acc


@pytest.mark.parametrize(
    ("gap", "spread", "verdict"),
    [
        (0.05, 1.0, "reproduced"),  # separated above
        (0.01, 2.0, "within noise"),  # 1 point with +-2: overlapping
        (-0.05, 1.0, "not reproduced"),  # separated below
    ],
)
def test_c2_1_superiority_needs_separated_intervals(
    gap: float, spread: float, verdict: str
) -> None:
    claim, lrs = _tuned("c2.1", 1.0)
    out = claim.assess(_ev(claim.final(FULL, lrs), _c21_acc(gap, spread), lrs))  # type: ignore[misc]
    assert out.verdict == verdict and len(out.checks) == 4
    assert (out.caveat is None) == (verdict == "reproduced")
    assert "| Byz-EF21-SGDM | 1.0 |" in out.results[0]  # the tuned lr beside the numbers


def _c22_acc(sgdm_drop: float, ef21_drop: float, spread: float = 1.0) -> Callable:
    """Batch 64 at 0.9; batch 1 ``*_drop`` below it (batch 4 half of that); batch 64's seeds
    wobble the other way, so that the per-seed drops spread too."""

    def acc(name: str, i: int) -> float:
        drop = sgdm_drop if name.startswith("byz-ef21-sgdm ") else ef21_drop
        batch = name.split()[-1]
        shrink = {"b=1": 1.0, "b=4": 0.5, "b=64": 0.0}[batch]
        wobble = WOBBLE[::-1] if batch == "b=64" else WOBBLE
        return 0.9 - shrink * drop + spread * wobble[i]

    return acc


@pytest.mark.parametrize(
    ("sgdm", "ef21", "states"),
    [
        (0.01, 0.2, [True, True, True]),  # SGDM keeps its accuracy, EF21 loses 20 points
        (0.1, 0.2, [False, True, True]),  # batch 1 is 10 points below batch 64: not close
        (0.01, 0.015, [True, True, None]),  # both keep it: the drops overlap
    ],
)
def test_c2_2_parity_per_batch_and_the_drops_compared(
    sgdm: float, ef21: float, states: list[bool | None]
) -> None:
    claim, lrs = _tuned("c2.2")
    assert set(lrs) == {f"{m} b={bs}" for m in ("byz-ef21-sgdm", "byz-ef21") for bs in (1, 4, 64)}
    out = claim.assess(_ev(claim.final(FULL, lrs), _c22_acc(sgdm, ef21), lrs))  # type: ignore[misc]
    assert _states(out.checks) == states
    assert "(lr 0.3)" in out.results[0]


def test_c1_1_a_fall_within_noise_of_10x_is_not_counted() -> None:
    """Per seed, alpha=0.1's gap falls 10^(1 +- 0.3): its interval straddles one order of
    magnitude, so that check is within noise; the others hold."""
    spread = (-0.3, 0.3, 0.0, -0.2, 0.2)

    def run(name: str, cfg: ExperimentConfig, i: int) -> Result:
        n = cfg.rounds
        if name == "alpha=None":
            gaps = [1.0] + [50.0] * (n - 1)  # thrown back up by ShiftBack
        elif name == "alpha=0.1":
            gaps = [1.0] + [10 ** -(1 + spread[i])] * (n - 1)
        else:
            gaps = [1.0] + [1e-4] * (n - 1)
        return result(dataclasses.replace(cfg, seed=i), [0.9] * n, gap=gaps)

    configs = CLAIMS["c1.1"].runs(FULL)
    ev = Evidence({k: [run(k, c, i) for i in range(5)] for k, c in configs.items()}, FULL)
    out = CLAIMS["c1.1"].assess(ev)
    assert _states(out.checks) == [None, True, True, True] and out.verdict == "within noise"
    assert out.caveat and "alpha=0.1 did not gain 10x beyond noise" in out.caveat
