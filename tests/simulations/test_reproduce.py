"""``flwr-byz reproduce``: the verdict rules on fabricated results, the matrix's cells and
bytes-to-target against a hand computation, the resumable run store, the document assembly,
and (slow) the whole pipeline on the quick budget, as CI runs it."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.reproduce import (
    CLAIMS,
    TARGETS,
    Budget,
    Section,
    Workspace,
    pool,
    write_document,
)
from flwr_byz.reproduce import matrix as matrix_mod
from flwr_byz.reproduce.section import VERDICTS
from flwr_byz.simulations.result import Result, RoundRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Maker = Callable[[str, ExperimentConfig], Result]


class FakeWorkspace(Workspace):
    """A workspace whose runs are made by ``make(name, config)`` instead of trained."""

    def __init__(self, tmp: Path, make: Maker, budget: Budget | None = None) -> None:
        super().__init__(budget or Budget.make(quick=True, jobs=1), tmp / "work", tmp / "docs")
        self.make = make
        self.calls: list[ExperimentConfig] = []

    def run(self, configs: Mapping[str, ExperimentConfig]) -> dict[str, Result]:
        self.calls += configs.values()
        return {k: self.make(k, c) for k, c in configs.items()}


def result(cfg: ExperimentConfig, accs: list[float], **per_round: list[float]) -> Result:
    rounds = []
    for i, acc in enumerate(accs):
        rec = RoundRecord(i + 1, loss=1.0, accuracy=acc, bytes_up=1_000_000)
        for key, values in per_round.items():
            setattr(rec, key, values[i])
        rounds.append(rec)
    return Result(config=cfg.to_dict(), rounds=rounds).finish()


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


# ----------------------------------------------------------------------------- matrix


def test_matrix_cells_and_bytes_to_target(tmp_path: Path) -> None:
    budget = dataclasses.replace(Budget.make(quick=True, jobs=1), seeds=(0, 1, 2))

    def make(name: str, cfg: ExperimentConfig) -> Result:
        n = cfg.rounds
        if cfg.method == "fedavg" and cfg.attack == "none":
            return result(cfg, [0.8] * n)  # the reference: target 75%
        if cfg.method == "mu2sgd":  # reaches 75% at round 2 for seeds 0 and 1 only
            accs = [0.5] + [0.76 if cfg.seed < 2 else 0.6] * (n - 1)
            return result(cfg, accs)
        return result(cfg, [0.5 + 0.1 * cfg.seed] * n)

    ws = FakeWorkspace(tmp_path, make, budget)
    section = matrix_mod.attack_matrix(ws)
    per_setting = len(matrix_mod.DEFENCES) * len(matrix_mod.ATTACKS) * 2 * 3
    assert len(ws.calls) == per_setting * len(matrix_mod.SETTINGS)
    assert section.summary == f"{len(ws.calls)} runs"
    assert {c.byzantine for c in ws.calls} == {2, 4}
    md = section.markdown
    # seeds 0, 1, 2 at 50, 60, 70%: mean 60, sample std 10
    assert "| RobustFedAvg Krum | 60.0 ± 10.0 |" in md
    # round 2 reached for 2 of 3 seeds: 2 rounds x 1 MB / 20 clients = 0.10 MB per client
    assert "| mu2-SGD + CTMA | 0.10 (2/3) |" in md
    assert "| FedAvg | 0.05 |" in md  # the reference reaches its own target at round 1
    assert "| Flower Krum | never |" in md
    for s in matrix_mod.SETTINGS:
        assert (tmp_path / "docs" / "img" / f"matrix_{s.key}.png").read_bytes()[:8] == PNG_MAGIC


def test_matrix_configs_satisfy_every_rule() -> None:
    """Every matrix config passes the runner's validation (e.g. Bulyan needs n >= 4f + 3)."""
    from flwr_byz.simulations.runner import prepare

    s = matrix_mod.SETTINGS[0]
    for d in matrix_mod.DEFENCES:
        for byz in (2, 4):
            prepare(matrix_mod._config(s, d, "alie", byz, 0, 2))


# ----------------------------------------------------------------------------- run store


def test_out_path_is_a_hash_of_the_config(tmp_path: Path) -> None:
    ws = Workspace(Budget.make(quick=True, jobs=1), tmp_path, tmp_path / "docs")
    cfg = ExperimentConfig(rounds=3)
    assert ws.out_path(cfg) == ws.out_path(dataclasses.replace(cfg, out="elsewhere.json"))
    assert ws.out_path(cfg) != ws.out_path(dataclasses.replace(cfg, seed=1))
    assert ws.out_path(cfg).parent == tmp_path / "quick" / "runs"
    full = Workspace(Budget.make(quick=False, jobs=1), tmp_path, tmp_path / "docs")
    assert full.out_path(cfg).parent == tmp_path / "full" / "runs"  # budgets never mix


def test_run_all_skips_existing_and_needs_out(tmp_path: Path) -> None:
    done = tmp_path / "done.json"
    done.write_text("{}")
    seen: list[str] = []
    pool.run_all([ExperimentConfig(out=str(done))], jobs=1, progress=lambda *a: seen.append(a))
    assert seen == []  # nothing to do
    with pytest.raises(ValueError, match="'out' path"):
        pool.run_all([ExperimentConfig()], jobs=1)


def test_workspace_runs_once_and_reuses(tmp_path: Path) -> None:
    ws = Workspace(Budget.make(quick=True, jobs=1), tmp_path, tmp_path / "docs")
    cfg = ExperimentConfig(
        method="robust-fedavg", aggregator="cwmed", clients=4, rounds=2, dataset="digits",
        local_epochs=1,
    )  # fmt: skip
    first = ws.run({"a": cfg, "b": cfg})  # one config under two names: one run
    files = list((tmp_path / "quick" / "runs").glob("*.json"))
    assert len(files) == 1 and len(first["a"].rounds) == 2
    stamp = files[0].stat().st_mtime_ns
    again = ws.run({"c": cfg})
    assert files[0].stat().st_mtime_ns == stamp  # reused, not rerun
    assert again["c"].rounds[-1].accuracy == first["b"].rounds[-1].accuracy


def test_without_flower_gc_skips_only_flowers_collect() -> None:
    from flwr.app.message import arrayrecord

    original = arrayrecord.gc
    with pool.without_flower_gc():
        assert arrayrecord.gc is not original
        arrays = [np.ones((3, 2), dtype=np.float32)]
        record = ArrayRecord(arrays, keep_input=False)  # the path that calls gc.collect()
        assert record["0"].numpy().sum() == 6.0
    assert arrayrecord.gc is original


def test_helpers() -> None:
    cfg = ExperimentConfig(rounds=4)
    r = result(cfg, [0.1, 0.5, 0.3, 0.9])
    assert pool.first_reaching(r, 0.4) == 1
    assert pool.first_reaching(r, 0.35, tail=2) == 2  # trailing means 0.1, 0.3, 0.4, 0.6
    assert pool.first_reaching(r, 0.95) is None
    assert pool.tail_acc(r, tail=2) == pytest.approx(0.6)
    assert pool.mean_std([0.5, math.nan, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))
    assert all(math.isnan(v) for v in pool.mean_std([math.nan]))
    assert pool.pct(None) == "n/a" and pool.pct(0.1234) == "12.3"


# ----------------------------------------------------------------------------- document


def test_document_lists_missing_targets(tmp_path: Path) -> None:
    ws = Workspace(Budget.make(quick=False, jobs=1), tmp_path / "work", tmp_path / "docs")
    Section("c2.1", "C2.1 title", "body text", verdict="partly", summary="s").save(
        ws.section_path("c2.1")
    )
    doc = write_document(ws).read_text()
    assert "### C2.1 title — **partly**" in doc and "body text" in doc
    assert "| C2.1 |" in doc and "| C1.1 |" in doc
    assert "Not run yet: `flwr-byz reproduce matrix`." in doc
    assert "0 reproduced, 1 partly, 0 not reproduced of 8." in doc
    assert "no from-scratch time recorded" in doc
    path = ws.section_path("c2.1")
    path.write_text(path.read_text().replace('"key"', '"from_the_future": 1, "key"'))
    assert Section.load(path).verdict == "partly"  # unknown keys are ignored
    with pytest.raises(ValueError, match="verdict must be one of"):
        Section("x", "t", "m", verdict="maybe")


def test_reproduce_records_from_scratch_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flwr_byz.reproduce as rep

    stored = tmp_path / "measure.json"

    def build(ws: Workspace, key: str) -> Section:
        if not ws.stored(stored):
            stored.write_text("{}")
        ws.stored(stored)  # a second section of the same build reading it: still "new"
        return Section(key, f"{key} title", "body", verdict="reproduced")

    monkeypatch.setitem(rep.TARGETS, "c1.1", lambda ws: build(ws, "c1.1"))
    budget = Budget.make(quick=True, jobs=1)
    work, docs = tmp_path / "work", tmp_path / "docs"
    rep.reproduce(["c1.1"], budget, work, docs, echo=lambda _: None)
    first = Section.load(work / "quick" / "sections" / "c1.1.json")
    assert (first.new_runs, first.reused_runs) == (2, 0)
    assert first.scratch_seconds == first.seconds
    monkeypatch.setattr(rep.time, "perf_counter", iter([100.0, 160.0]).__next__)
    doc = rep.reproduce(["c1.1"], budget, work, docs, echo=lambda _: None).read_text()
    again = Section.load(work / "quick" / "sections" / "c1.1.json")
    assert (again.new_runs, again.reused_runs) == (0, 2)
    assert again.seconds == 60.0 and again.scratch_seconds == first.scratch_seconds
    assert "2 runs, 0.0 min from scratch (this build 1.0 min, 2 reused)" in doc


def test_targets_and_cli_errors() -> None:
    from typer.testing import CliRunner

    from flwr_byz.cli import app
    from flwr_byz.reproduce import resolve_targets

    assert list(TARGETS)[:8] == list(CLAIMS) and list(TARGETS)[8:] == ["matrix", "performance"]
    assert resolve_targets([]) == list(TARGETS) == resolve_targets(["c1.1", "all"])
    assert resolve_targets(["C4.2", "c4.2"]) == ["c4.2"]
    with pytest.raises(ValueError, match=r"known: all, c1\.1"):
        resolve_targets(["c9.9"])
    out = CliRunner().invoke(app, ["reproduce", "c9.9"])
    assert out.exit_code == 2 and "c9.9" in out.output


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.slow
def test_quick_pipeline_end_to_end(tmp_path: Path) -> None:
    """``flwr-byz reproduce all --quick``: every section, verdict, table and figure, offline;
    then one target again reuses the stored runs."""
    work, docs = tmp_path / "work", tmp_path / "docs"
    cmd = [sys.executable, "-m", "flwr_byz.cli", "reproduce"]
    args = ["--quick", "--work", str(work), "--docs", str(docs)]
    proc = subprocess.run([*cmd, "all", *args], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = (docs / "RESULTS.md").read_text()
    assert "Quick budget" in doc and "Not run yet" not in doc
    for key, claim in CLAIMS.items():
        m = re.search(rf"### {re.escape(claim.title)} — \*\*(.+?)\*\*", doc)
        assert m and m.group(1) in VERDICTS, key
    for s in matrix_mod.SETTINGS:
        assert f"### {s.label} (2 rounds)" in doc or f"### {s.label} (3 rounds)" in doc
    matrix = doc[doc.index("## Attack x defence matrix") : doc.index("## Performance")]
    for d in matrix_mod.DEFENCES:  # a row per defence, 2 fractions x (accuracy, MB) x settings
        assert matrix.count(f"| {d.label} |") == 4 * len(matrix_mod.SETTINGS), d.label
    assert "## Performance" in doc and "| FedAvg (Flower) |" in doc and "Scale run" in doc
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", doc)
    assert len(links) >= len(CLAIMS) + len(matrix_mod.SETTINGS)
    for link in links:
        assert (docs / link).read_bytes()[:8] == PNG_MAGIC, link
    sections = {p.stem for p in (work / "quick" / "sections").glob("*.json")}
    assert sections == set(TARGETS)
    for p in (work / "quick" / "runs").glob("*.json"):
        data = json.loads(p.read_text())
        assert data["rounds"] and data["config"]["rounds"] == len(data["rounds"])

    runs = sorted((work / "quick" / "runs").glob("*.json"))
    again = subprocess.run([*cmd, "c4.2", *args], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted((work / "quick" / "runs").glob("*.json")) == runs  # nothing rerun
    c42 = Section.load(work / "quick" / "sections" / "c4.2.json")
    assert c42.new_runs == 0 and c42.reused_runs > 0 and c42.scratch_seconds is not None
    assert (docs / "RESULTS.md").read_text().count("### C") == len(CLAIMS)
