"""flwr_byz.bench.oversize: every forgery is refused as oversize, the honest replies pass, and
the refusal allocates far less than the forged bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flwr_byz.bench import oversize


@pytest.mark.slow
def test_every_forgery_is_refused_as_oversize(tmp_path: Path) -> None:
    out = tmp_path / "oversize.json"
    assert (
        oversize.main(["--d", "20000", "--factor", "50", "--repeats", "1", "--out", str(out)]) == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert {r["encoding"] for r in rows} == {"dense", "topk", "randk", "natural", "qsgd"}
    for row in rows:
        want = "accepted" if row["mode"] == "honest" else "oversize"
        assert row["outcome"] == want, row
        if row["mode"] != "honest":
            assert row["tracemalloc_peak_mib"] < row["oversize_mib"] / 10, row
