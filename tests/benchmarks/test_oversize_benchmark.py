"""benchmarks/oversize.py: every forgery is refused as oversize, the honest replies pass, and
the refusal allocates far less than the forged bytes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "oversize.py"


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_oversize", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_oversize"] = module
    spec.loader.exec_module(module)
    return module


def test_every_forgery_is_refused_as_oversize(tmp_path: Path) -> None:
    out = tmp_path / "oversize.json"
    _bench().main(["--d", "20000", "--factor", "50", "--repeats", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["encoding"] for r in rows} == {"dense", "topk", "randk", "natural", "qsgd"}
    for row in rows:
        want = "accepted" if row["mode"] == "honest" else "oversize"
        assert row["outcome"] == want, row
        if row["mode"] != "honest":
            assert row["tracemalloc_peak_mib"] < row["oversize_mib"] / 10, row
