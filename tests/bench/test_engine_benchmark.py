"""flwr_byz.bench.engines: its plain torch loop is the engines' math (the same global model as
the local engine from the same seed), its rules are the package's, and a tiny run writes the
documented JSON and table."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from flwr_byz.aggregators import get_aggregator
from flwr_byz.bench import engine_runs, engines, plain
from flwr_byz.bench.engine_setup import experiment
from flwr_byz.protocol.records import flatten, layout_of
from flwr_byz.simulations.checkpoint import Checkpoint
from flwr_byz.simulations.engines import run_experiment
from flwr_byz.simulations.runner import _flower_logging


@pytest.fixture(autouse=True)
def one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("method", ["fedavg", "robust-fedavg", "byz-ef21-sgdm", "mu2sgd", "byzsgd"])
def test_plain_loop_is_the_engines_math(method: str, tmp_path: Path) -> None:
    """3 rounds, 6 clients: the plain loop ends on the local engine's global model (read from
    its checkpoint), to float32 rounding; ByzSGD gathers at step 2."""
    cfg = experiment(method, "mlp", clients=6, rounds=3, threads=1)
    if method == "byzsgd":
        cfg = dataclasses.replace(cfg, params={"gather_period": 2})
    checkpoint = tmp_path / "ck.pt"
    with _flower_logging(False, logging.ERROR):
        result = run_experiment(
            dataclasses.replace(cfg, checkpoint=str(checkpoint)), engine="local"
        )
    arrays = Checkpoint.load(checkpoint).arrays
    engine_x = flatten(arrays, layout_of(arrays).floating())
    seconds, loop = plain.run_plain(cfg)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    x0 = plain.Plain(cfg).x
    assert not torch.allclose(loop.x, x0, atol=1e-4)  # it trained
    torch.testing.assert_close(loop.x, engine_x, rtol=1e-6, atol=1e-7)
    loss, _ = loop.evaluate()
    assert loss == pytest.approx(result.final["loss"], rel=1e-5)


@pytest.mark.parametrize("spec", ["nnm+krum", "nnm+cwtm", "ctma+median", "cwtm"])
@pytest.mark.parametrize("n", [7, 20])
def test_plain_rules_are_the_package_rules(spec: str, n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 300, generator=gen, dtype=torch.float64)
    x[:2] = 5.0 * x[:2] + 3.0  # two outliers
    f = 2
    torch.testing.assert_close(plain.RULES[spec](x, f), get_aggregator(spec, f=f)(x))
    torch.testing.assert_close(plain.median(x), get_aggregator("median")(x))


def test_top_k_matches_the_compressor() -> None:
    from flwr_byz.compressors import get_compressor

    u = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    topk = get_compressor("topk:0.1")
    expected = topk.decompress(topk.compress(u), 1000)
    assert torch.equal(plain.top_k(u, topk.k_for(1000)), expected)


@pytest.mark.slow
def test_tiny_run_writes_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    args = [
        "--models", "mlp", "--clients", "6,12", "--methods", "byz-ef21-sgdm,fedavg",
        "--engines", "plain,batched,local", "--device", "cpu,cuda", "--rounds", "2",
        "--goal-clients", "8", "--goal-rounds", "2", "--out", str(out),
    ]  # fmt: skip
    assert engines.main(args) == 0
    doc = json.loads(out.read_text())
    assert set(doc) >= {"machine", "config", "cells", "ratios", "goal", "elapsed_s"}
    assert doc["config"]["engines"] == ["plain", "batched", "batched-cuda", "local"]
    cells = doc["cells"]
    assert len(cells) == 2 * 2 * 4  # clients x methods x engines
    for cell in cells:
        assert set(cell) >= {"engine", "method", "model", "clients", "rounds", "s_per_round"}
        if cell["skipped"] is None:
            assert cell["s_per_round"] > 0 and len(cell["round_seconds"]) == 2
            assert cell["threads"] == 1
        else:
            assert cell["s_per_round"] is None and cell["skipped"].split(":")[0] in (
                "skipped",
                "error",
            )
        if cell["engine"] in ("plain", "local"):
            assert cell["skipped"] is None, cell
        if cell["engine"] == "batched-cuda" and not torch.cuda.is_available():
            assert cell["skipped"] == "skipped: CUDA is not available"
    rows = {(r["clients"], r["method"]): r for r in doc["ratios"]}
    assert set(rows) == {(c, m) for c in (6, 12) for m in ("byz-ef21-sgdm", "fedavg")}
    for r in rows.values():
        secs = r["s_per_round"]
        assert r["x_local"]["local"] == pytest.approx(1.0)
        assert r["x_plain"]["plain"] == pytest.approx(1.0)
        assert r["x_plain"]["local"] == pytest.approx(secs["local"] / secs["plain"])
    (goal,) = doc["goal"]
    assert goal["clients"] == 8 and goal["rounds"] == 2
    assert goal["skipped"] is not None or goal["wall_s"] > 0
    text = (tmp_path / "engines.txt").read_text()
    assert "| model | n | method | plain s |" in text and "Byz-EF21-SGDM" in text


def test_cells_over_budget_are_skipped_with_the_reason() -> None:
    args = engines.parse_args(["--cell-budget-s", "10"])
    b = engine_runs.EngineBench(args)
    b.rates[("local", "fedavg", "mlp")] = (20, 0.5)
    assert b.estimate("local", "fedavg", "mlp", 100, 3) is None  # 7.5 s
    reason = b.estimate("local", "fedavg", "mlp", 1000, 2)  # 50 s
    assert reason is not None and reason.startswith("skipped: estimated 50 s > cell budget 10 s")
    assert b.estimate("simulation", "fedavg", "mlp", 1000, 2) is None  # nothing measured yet


def test_flwr_byz_bench_runs_the_engine_benchmark(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from flwr_byz import cli

    calls: list[list[str]] = []
    monkeypatch.setattr(cli, "_call", lambda args: calls.append(args) or 0)  # no real run
    runner = CliRunner()
    out = tmp_path / "e.json"
    result = runner.invoke(cli.app, ["bench", "engines", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.app, ["bench", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    assert calls == [
        [
            sys.executable,
            "-m",
            "flwr_byz.bench.engines",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quick",
        ],
        [
            sys.executable,
            "-m",
            "flwr_byz.bench.aggregators",
            "--out",
            str(Path("benchmarks/results/aggregators.json")),
            "--device",
            "cuda",
        ],
    ]
    assert runner.invoke(cli.app, ["bench", "nope"]).exit_code == 2
