"""RESULTS.md's assembly from the saved sections, the from-scratch time, the targets, and the
CLI writing only under the folders it is given."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flwr_byz.reproduce import CLAIMS, TARGETS, Budget, Section, Workspace, write_document
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

from .helpers import result


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
    from flwr_byz.cli import app
    from flwr_byz.reproduce import resolve_targets

    assert list(TARGETS)[:8] == list(CLAIMS)
    assert list(TARGETS)[8:] == ["ef21-resets", "matrix", "backdoor", "performance"]
    assert resolve_targets([]) == list(TARGETS) == resolve_targets(["c1.1", "all"])
    assert resolve_targets(["C4.2", "c4.2"]) == ["c4.2"]
    with pytest.raises(ValueError, match=r"known: all, c1\.1"):
        resolve_targets(["c9.9"])
    out = CliRunner().invoke(app, ["reproduce", "c9.9"])
    assert out.exit_code == 2 and "c9.9" in out.output


def test_cli_writes_only_under_the_folders_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--work`` and ``--docs`` (or their defaults, relative to the current directory): the
    runs, sections, figures and RESULTS.md go there and nowhere else."""
    from flwr_byz.cli import app

    def fabricate(self: Workspace, configs: Mapping[str, ExperimentConfig]) -> dict[str, Result]:
        for c in configs.values():
            self.stored(self.out_path(c))
        return {k: result(c, [0.5] * c.rounds, gap=[1.0] * c.rounds) for k, c in configs.items()}

    monkeypatch.setattr(Workspace, "run", fabricate)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work, docs = tmp_path / "w", tmp_path / "d"
    args = ["reproduce", "c1.1", "--quick", "--jobs", "1"]
    out = CliRunner().invoke(app, [*args, "--work", str(work), "--docs", str(docs)])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "d", "w"]
    assert not any(cwd.iterdir())
    assert sorted(p.name for p in docs.rglob("*")) == ["RESULTS.md", "c1_1_gap.png", "img"]
    assert (work / "quick" / "sections" / "c1.1.json").is_file()
    out = CliRunner().invoke(app, args)  # the defaults: under the current directory
    assert out.exit_code == 0, out.output
    assert (cwd / "results" / "reproduce" / "quick" / "docs" / "RESULTS.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "d", "w"]
