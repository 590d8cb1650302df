"""The attack success rate in the ``flwr-byz`` commands: the run summary and the progress
bar show it under a backdoor attack, ``plot --metric asr`` draws it, ``grid`` writes its
tables and heatmap, and the batched engine refuses a backdoor it does not run (Neurotoxin)
before anything runs."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result as InvokeResult
from typer.testing import CliRunner

from flwr_byz import cli
from flwr_byz.cli import app
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result, RoundRecord

ENV = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args: object) -> InvokeResult:
    return CliRunner(env=ENV).invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output without rich's box drawing, whitespace collapsed."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def _result(attack: str, asr: float | None) -> Result:
    config = ExperimentConfig(
        method="fedavg", dataset="digits", clients=6, rounds=2, byzantine=1, attack=attack
    ).to_dict()
    rounds = [RoundRecord(r, 1.0 / r, 0.4 * r, 0, 1000, 2000, 0.1) for r in (1, 2)]
    if asr is not None:
        rounds[0].asr, rounds[1].asr = asr / 2, asr
    return Result(config, rounds).finish()


def test_the_run_summary_has_an_asr_column_under_a_backdoor_only() -> None:
    with cli.console.capture() as captured:
        cli._summary([_result("badnets", 0.8125), _result("alie", None)], "flwr-byz run")
    lines = [flat(line) for line in captured.get().splitlines()]
    header = next(line for line in lines if line.startswith("run "))
    assert header.split()[:6] == ["run", "attack", "byzantine", "accuracy", "ASR", "loss"]
    assert any("badnets 1 80.0 81.2" in line for line in lines), lines
    assert any("alie 1 80.0 —" in line for line in lines), lines
    with cli.console.capture() as captured:
        cli._summary([_result("alie", None)], "flwr-byz run")
    assert "ASR" not in captured.get()


def test_the_progress_bar_shows_the_rounds_asr() -> None:
    record = RoundRecord(1, 0.5, 0.912)
    assert cli._acc_text(record) == "91.2%"
    record.asr = 0.5
    assert cli._acc_text(record) == "91.2% asr 50.0%"


def test_plot_draws_asr_curves_and_says_when_there_is_none(tmp_path: Path) -> None:
    backdoor = _result("badnets", 0.75).save(tmp_path / "b.json")
    clean = _result("alie", None).save(tmp_path / "c.json")
    out = tmp_path / "asr.png"
    done = invoke("plot", backdoor, clean, "--metric", "asr", "--out", out)
    assert done.exit_code == 0, done.output
    assert out.read_bytes()[:8] == PNG_MAGIC
    failed = invoke("plot", clean, "--metric", "asr", "--out", tmp_path / "none.png")
    assert failed.exit_code == 2 and "no result has an attack success rate" in flat(failed.output)
    assert not (tmp_path / "none.png").exists()


def test_the_batched_engine_refuses_a_backdoor_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr_byz.simulations import engines

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an experiment was started")

    monkeypatch.setattr(engines, "run_batched", started)
    args = ("--dataset", "digits", "--clients", "4", "--rounds", "1", "--byzantine", "1")
    done = invoke("run", "--engine", "batched", "--attack", "neurotoxin", *args,
                  "--out", tmp_path / "r.json")  # fmt: skip
    assert done.exit_code == 2, done.output
    text = flat(done.output)
    assert "the batched engine runs no backdoor attack 'neurotoxin'" in text
    assert "use --engine local" in text
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_grid_writes_asr_tables_and_heatmap(tmp_path: Path) -> None:
    """A real grid on the local engine: FedAvg and CWMed under ``none`` and BadNets."""
    out_dir = tmp_path / "grid"
    done = invoke(
        "grid", "--method", "fedavg", "--method", "robust-fedavg", "--aggregator", "cwmed",
        "--attack", "none", "--attack", "badnets:target=0", "--byzantine", "1",
        "--clients", "6", "--rounds", "2", "--dataset", "digits", "--engine", "local",
        "--out-dir", out_dir,
    )  # fmt: skip
    assert done.exit_code == 0, (done.output, done.exception)
    markdown = (out_dir / "results.md").read_text()
    accuracy, asr = markdown.split("## final attack success rate (%), digits, 2 rounds\n")
    assert "| defence | none | badnets:target=0 |" in accuracy
    assert "| defence | badnets:target=0 |" in asr  # the backdoor column only
    results = [Result.load(p) for p in sorted((out_dir / "runs").glob("*.json"))]
    assert len(results) == 4
    for result in results:
        label = "FedAvg" if result.config["method"] == "fedavg" else "robust-fedavg [cwmed]"
        if result.config["attack"] == "none":
            assert math.isnan(result.asr)
        else:
            assert 0.0 <= result.asr <= 1.0
            assert f"| {label} | {100 * result.asr:.1f} |" in asr.replace("**", "")
    assert (out_dir / "asr_heatmap.png").read_bytes()[:8] == PNG_MAGIC
    assert (out_dir / "heatmap.png").read_bytes()[:8] == PNG_MAGIC
    text = flat(done.output)
    assert "asr_heatmap.png" in text and " ASR " in text
