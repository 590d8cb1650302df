"""(slow) ``flwr-byz reproduce all --quick`` end to end, as CI runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flwr_byz.reproduce import CLAIMS, TARGETS, Section
from flwr_byz.reproduce import matrix as matrix_mod
from flwr_byz.reproduce.section import VERDICTS

from .helpers import PNG_MAGIC


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
    assert re.search(r"dense resets as an attack path.*\n[\s\S]*\*\*(holds|fails)\*\*", doc)
    for s in matrix_mod.SETTINGS:
        assert f"### {s.label}\n" in doc
    matrix = doc[doc.index("## Attack x defence matrix") : doc.index("## Backdoor matrix")]
    for d in matrix_mod.DEFENCES:  # a row per defence and setting: its cells and its tuning
        settings = sum(d.label in {r.label for r in s.rows} for s in matrix_mod.SETTINGS)
        assert matrix.count(f"| {d.label} |") == 2 * settings, d.label
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
