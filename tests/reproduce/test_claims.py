"""The claims: one ``Claim`` per claim, one module per paper; each verdict rule on fabricated
results; every claim's section laid out the same way; every config one the runner takes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from flwr_byz.reproduce import CLAIMS, Budget, Claim
from flwr_byz.reproduce.section import VERDICTS
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
    budget = dataclasses.replace(Budget.make(quick=True, jobs=1), quick=False)  # 150 steps
    ok = CLAIMS["c4.2"].run(FakeWorkspace(tmp_path, _byzsgd_maker(False), budget))
    assert ok.verdict == "reproduced"
    # 150 steps, T = 5: 30 gathers per run, all of them shrinking
    assert "| negate / none | 30 of 30 |" in ok.markdown
    bad = CLAIMS["c4.2"].run(FakeWorkspace(tmp_path, _byzsgd_maker(True), budget))
    assert bad.verdict == "not reproduced"
    assert "| negate / none | 29 of 30 |" in bad.markdown


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
    # every run once per claim seed, named "<run>@<seed>" and seeded so
    names = claim.runs(ws.budget)
    assert len(ws.calls) == len(names) * len(ws.budget.claim_seeds)
    assert {c.seed for c in ws.calls} == set(ws.budget.claim_seeds)
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
    """Every run of every claim (full budget, pinned as the workspace runs it) passes the
    runner's checks (e.g. the rule takes f of the sampled clients)."""
    from flwr_byz.simulations.runner import prepare

    budget = Budget.make(quick=False, jobs=1)
    seen = set()
    for claim in CLAIMS.values():
        for cfg in claim.runs(budget).values():
            key = repr(cfg)
            if key not in seen:
                seen.add(key)
                prepare(pinned(cfg))
