"""The backdoor matrix (``flwr-byz reproduce backdoor``): its setting taken from the attack
matrix (data, horizon, the tuned FedAvg lr), its cells, interval rules, claims and summary data
against a hand computation on fabricated runs, every config one the runner takes, and (slow)
the quick budget end to end."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from flwr_byz.reproduce import TARGETS, Budget, Workspace, matrix
from flwr_byz.reproduce import backdoor as bd
from flwr_byz.reproduce.stats import Interval, interval
from flwr_byz.reproduce.workspace import pinned
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

from .helpers import PNG_MAGIC, FakeWorkspace, result

SPEC = {v: k for k, v in bd.ATTACKS.items()}  # attack spec -> column
HORIZON = matrix.MNIST1D_CNN.rounds["fedavg"]


def _label(cfg: ExperimentConfig) -> str:
    by_fields = {(d.method, d.fields.get("aggregator")): d.label for d in bd.DEFENCES}
    return by_fields[(cfg.method, cfg.aggregator if cfg.method == "robust-fedavg" else None)]


FEDAVG_ROW = next(r for r in matrix.MNIST1D_CNN.rows if r.method == "fedavg")
TUNED_LR = max(FEDAVG_ROW.lrs)
TUNING_RUNS = len(FEDAVG_ROW.lrs) * sum(a != "none" for a in matrix.MNIST1D_CNN.attacks)


def _tuning(cfg: ExperimentConfig) -> Result:
    """The matrix's FedAvg tuning runs (untargeted attacks, validation split): the larger the
    lr the better under every attack, so the tuned lr is the grid's largest (a tie would pick
    the first)."""
    assert cfg.dataset.endswith("validation=0.2") and cfg.method == "fedavg"
    return result(cfg, [0.5 + cfg.lr] * cfg.rounds)  # lrs 0.05 apart: beyond the tie margin


def _fabricate(name: str, cfg: ExperimentConfig) -> Result:
    """Attack-free FedAvg: 90% / ASR 5%; FedAvg attacked: 88% / 90%, but BadNets does not
    work (ASR 30%); NNM+Krum holds everywhere (87% / 10%); FLAME holds but against DBA (ASR
    50%); FLTrust loses accuracy (80%) under model replacement; NormClip's ASR is 0, 10, 30%
    for seeds 0, 1, 2 (within noise); SignGuard: 85% and ASR 50, 60, 70%."""
    if cfg.attack not in SPEC:
        return _tuning(cfg)
    d, a = _label(cfg), SPEC[cfg.attack]
    acc, asr = 0.85, 0.5 + 0.1 * cfg.seed
    if a == "none":
        acc, asr = 0.9, 0.05
    elif d == "FedAvg":
        acc, asr = 0.88, 0.3 if a == "badnets" else 0.9
    elif d == "NNM+Krum":
        acc, asr = 0.87, 0.1
    elif d == "FLAME":
        acc, asr = 0.9, 0.5 if a == "dba" else 0.0
    elif d == "FLTrust":
        acc, asr = (0.8 if a == "model-replacement" else 0.89), 0.02
    elif d == "NormClip":
        acc, asr = 0.9, (0.0, 0.1, 0.3)[cfg.seed]
    n, k = cfg.rounds, cfg.rounds // 2  # flat tails: the tail mean is the value
    return result(cfg, [0.3] * (n - k) + [acc] * k, asr=[0.0] * (n - k) + [asr] * k)


class EngineWorkspace(FakeWorkspace):
    """A fake workspace that also records the engine each batch of runs asks for."""

    engines: list[str | None]

    def run(
        self, configs: Mapping[str, ExperimentConfig], engine: str | None = None
    ) -> dict[str, Result]:
        self.engines = [*getattr(self, "engines", []), *[engine] * len(configs)]
        return super().run(configs, engine)


def _backdoor_calls(ws: FakeWorkspace) -> list[ExperimentConfig]:
    return [c for c in ws.calls if c.attack in SPEC]


def test_cells_rules_claims_and_data(tmp_path: Path) -> None:
    ws = EngineWorkspace(tmp_path, _fabricate, Budget.make(quick=False, jobs=1))
    section = bd.backdoor_matrix(ws)
    calls = _backdoor_calls(ws)
    # FLTrust on the local engine (no batched driver), every other run on the budget's
    engines = {(c.method, e) for c, e in zip(ws.calls, ws.engines, strict=True) if c in calls}
    assert engines == {(d.method, "local" if d.method == "fltrust" else ws.budget.engine)
                       for d in bd.DEFENCES}  # fmt: skip
    assert ws.budget.engine == "batched"
    assert len(calls) == 57 == (1 + len(bd.DEFENCES) * 3) * 3
    assert len(ws.calls) - len(calls) == TUNING_RUNS  # the FedAvg row's tuning: lrs x attacks
    # the attack matrix's setting, its horizon and its tuned FedAvg lr, in every run
    s = matrix.MNIST1D_CNN
    assert {
        (c.dataset, c.partition, c.model, c.clients, c.byzantine, c.rounds, c.lr, c.eval_samples)
        for c in calls
    } == {(s.dataset, s.partition, s.model, 20, 4, HORIZON, TUNED_LR, s.eval_samples)}
    assert {c.seed for c in calls} == {0, 1, 2} and {c.local_epochs for c in calls} == {1}
    md = section.markdown
    assert (
        "= 57 runs, batched engine (FLTrust on the local engine: the batched engine has no "
        f"driver for it), {HORIZON} rounds" in md
    )
    assert f"lr {TUNED_LR:g} (" in md
    assert "Attack-free FedAvg: clean accuracy 90.0 ± 0.0, ASR of the trigger on the clean " in md
    assert (
        "Attack-free FedAvg gains 0.00, 0.00, 0.00 points (seeds 0, 1, 2), +0.00 on average: "
        "it has plateaued." in md
    )
    assert "| FedAvg | 88.0 ± 0.0 | 88.0 ± 0.0 | 88.0 ± 0.0 |" in md
    assert "| FLTrust | 89.0 ± 0.0 | 89.0 ± 0.0 | 80.0 ± 0.0 |" in md
    # seeds 0, 1, 2 at ASR 50, 60, 70%: mean 60, half-width t(0.975, 2) * 10 / sqrt(3) = 24.8
    assert "| SignGuard | 60.0 ± 24.8 | 60.0 ± 24.8 | 60.0 ± 24.8 |" in md
    assert "| NormClip | 13.3 ± 37.9 | 13.3 ± 37.9 | 13.3 ± 37.9 |" in md
    assert "Left out to fit the time budget: the rows CWMed, FoolsGold, DnC and the attack " in md
    assert (
        "FedAvg under each attack (ASR / clean accuracy): badnets 30.0% / 88.0% (does not "
        "work); dba 90.0% / 88.0%; model-replacement 90.0% / 88.0%." in md
    )
    assert "| NNM+Krum | — | holds | holds | 2/2 |" in md
    assert "| FLAME | — | fails | holds | 1/2 |" in md
    assert "| FLTrust | — | holds | fails | 1/2 |" in md
    assert "| NormClip | — | noise | noise | 0/2 |" in md  # the interval straddles 15%
    assert "| SignGuard | — | fails | fails | 0/2 |" in md
    assert "| FedAvg | —" not in md
    assert "Hold against every attack that works: NNM+Krum." in md
    flame = next(line for line in md.splitlines() if line.startswith("- FLAME"))
    assert "Here: **partly** (model-replacement: holds" in flame
    assert "dba: fails (accuracy 90.0 ± 0.0 vs 90.0 ± 0.0, ASR 50.0 ± 0.0)" in flame
    fltrust = next(line for line in md.splitlines() if line.startswith("- FLTrust"))
    assert "**not reproduced** (model-replacement: fails (accuracy 80.0 ± 0.0 vs" in fltrust
    assert section.summary == (
        "57 runs; 1 of 5 defences hold against every attack that works (2 of 3); claims: "
        "FLAME's partly, FLTrust's not reproduced"
    )
    assert section.verdict is None and len(section.figures) == 2
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (tmp_path / "docs" / link).read_bytes()[:8] == PNG_MAGIC, link
    data = json.loads(json.dumps(section.data))  # JSON values only
    assert data["fedavg_clean"] == pytest.approx(0.9) and data["asr_floor"] == pytest.approx(0.05)
    assert data["label"] == "MNIST-1D, CNN, IID, 20% Byzantine (4 of 20)"
    rows = data["rows"]
    assert set(rows) == {d.label for d in bd.DEFENCES}
    ap = pytest.approx  # the seed means of float tails
    assert rows["FedAvg"] == {"clean": ap(0.88), "asr_worst": ap(0.9), "worst_attack": "dba"}
    assert rows["FLAME"] == {"clean": ap(0.9), "asr_worst": ap(0.5), "worst_attack": "dba"}
    assert rows["FLTrust"]["clean"] == pytest.approx(0.8)
    assert rows["SignGuard"]["asr_worst"] == pytest.approx(0.6)
    assert rows["NormClip"]["asr_worst"] == pytest.approx(0.4 / 3)


def test_quick_budget_registration_and_rules(tmp_path: Path) -> None:
    assert "backdoor" in TARGETS and TARGETS["backdoor"] is bd.backdoor_matrix
    ws = FakeWorkspace(tmp_path, _fabricate)  # quick
    section = bd.backdoor_matrix(ws)
    calls = _backdoor_calls(ws)
    quick = matrix.MNIST1D_CNN.quick_rounds["fedavg"]
    assert len(calls) == 1 + len(bd.DEFENCES) * 3 == 19
    assert {(c.rounds, c.seed, c.byzantine) for c in calls} == {(quick, 0, 4)}
    assert section.summary.startswith("19 runs;")

    def weak_replacement(name: str, cfg: ExperimentConfig) -> Result:
        """Model replacement does not work on FedAvg (ASR 20%): FLTrust's claim is untested;
        attack-free FedAvg still climbs (it has not plateaued)."""
        if cfg.attack in SPEC and (_label(cfg), SPEC[cfg.attack]) == ("FedAvg", "none"):
            return result(cfg, [0.5 + 0.1 * i for i in range(cfg.rounds)], asr=[0.05] * cfg.rounds)
        if cfg.attack in SPEC and (_label(cfg), SPEC[cfg.attack]) == (
            "FedAvg",
            "model-replacement",
        ):
            return result(cfg, [0.9] * cfg.rounds, asr=[0.2] * cfg.rounds)
        return _fabricate(name, cfg)

    md = bd.backdoor_matrix(FakeWorkspace(tmp_path, weak_replacement)).markdown
    assert "| NNM+Krum | — | holds | — | 1/1 |" in md
    assert "Here: **not tested**, none of its attacks works." in md
    flame = next(line for line in md.splitlines() if line.startswith("- FLAME"))
    assert "Here: **not reproduced** (dba: fails" in flame  # its one tested cell
    assert "model-replacement does not work here" in flame
    assert "on average: **it has not plateaued**: the cells are those of a model" in md

    # an unknown number is never a hold; the bounds are inclusive
    def st(acc: float, asr: float) -> bd.Stats:
        return bd.Stats(interval([acc]), interval([asr]))

    nan = bd.Stats(Interval(math.nan, math.nan, math.nan, 0), interval([0.0]))
    clean = st(0.9, 0.05)
    assert bd._state(nan, clean) is None
    assert bd._state(st(0.85, 0.15), clean) is True
    assert bd._state(st(0.9, 0.8), st(0.9, 0.7)) is True  # 0.8 - 0.1 rounds to 0.7000000000000001
    assert bd._state(st(0.84, 0.0), clean) is False
    assert bd._state(st(0.95, 0.16), clean) is False


def test_configs_satisfy_every_rule(tmp_path: Path) -> None:
    """Every cell's config (pinned, as the workspace runs it) passes the runner's checks."""
    from flwr_byz.simulations.runner import prepare

    ws = FakeWorkspace(tmp_path, _fabricate, Budget.make(quick=False, jobs=1))
    s = bd.setting(ws)
    for d in bd.DEFENCES:
        for a in bd.ATTACKS:
            prepare(pinned(bd._config(d, a, 0, s)))


@pytest.mark.slow
@pytest.mark.serial  # a process pool of 2
def test_quick_budget_end_to_end(tmp_path: Path) -> None:
    """The quick budget (batched engine, FLTrust on local): every defence against every
    attack, the tables, rules and figures; the backdoor runs record an ASR, the clean one
    too."""
    ws = Workspace(Budget.make(quick=True, jobs=2), tmp_path / "work", tmp_path / "docs")
    section = bd.backdoor_matrix(ws)
    runs = [json.loads(p.read_text()) for p in (tmp_path / "work" / "quick" / "runs").glob("*")]
    cells = [r for r in runs if r["config"]["attack"] in SPEC]
    quick_tuning = TUNING_RUNS // len(FEDAVG_ROW.lrs)  # one candidate
    assert len(cells) == 19 and ws.new_runs == len(runs) == 19 + quick_tuning
    for data in cells:
        assert len(data["rounds"]) == matrix.MNIST1D_CNN.quick_rounds["fedavg"]
        assert data["final"]["asr"] is not None and 0.0 <= data["final"]["asr"] <= 1.0
    md = section.markdown
    assert "n/a" not in md
    for d in bd.DEFENCES:
        rows = 2 if d.label == "FedAvg" else 3  # accuracy, ASR, the rules table but FedAvg
        assert md.count(f"| {d.label} |") == rows, d.label
    assert len(section.figures) == 2
    for link in section.figures:
        assert (tmp_path / "docs" / link).read_bytes()[:8] == PNG_MAGIC
    assert set(section.data["rows"]) == {d.label for d in bd.DEFENCES}


def test_horizon_judged_on_the_seed_mean() -> None:
    """As in the attack matrix: the seed mean gain decides; a seed above 1 point is named, a
    diverged seed (NaN) is left out of the mean."""
    text = bd._horizon_text(100, [-0.1, 0.94, 1.3], [0, 1, 2])
    assert "+0.71 on average: it has plateaued (on its own, seed 2 gains +1.30)." in text
    text = bd._horizon_text(100, [2.0, 0.5, math.nan], [0, 1, 2])
    assert "+1.25 on average: **it has not plateaued**" in text
    assert bd._horizon_text(100, [0.2, 0.3], [0, 1]).endswith("+0.25 on average: it has plateaued.")
    text = bd._horizon_text(100, [0.2, math.nan], [0, 1])
    assert text.endswith("+0.20 on average: it has plateaued (on its own, seed 1 diverged).")
