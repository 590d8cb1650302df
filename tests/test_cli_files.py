"""What the ``flwr-byz`` commands keep: a bad output path fails in one line before any
training; ``run`` checkpoints beside its result by default and resumes from there; ``grid``
keeps each finished run and reuses it when run again.

The runs are tiny (``digits``, 6 clients, 1–4 rounds) on the ``local`` engine; a failure is
injected by wrapping ``runner.train_on_grid``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result as InvokeResult
from typer.testing import CliRunner

import flwr_byz.simulations.engines as engines
import flwr_byz.simulations.runner as runner
from flwr_byz import cli
from flwr_byz.cli import app
from flwr_byz.simulations.checkpoint import client_state_dir
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result, RoundRecord

ENV = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
TINY = ("--dataset", "digits", "--clients", "6", "--engine", "local")


def invoke(*args: object) -> InvokeResult:
    return CliRunner(env=ENV).invoke(app, [str(a) for a in args])


def error_line(result: InvokeResult) -> str:
    """The one ``error:`` line of a command that failed as a usage error (exit 2)."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any experiment starts (any engine)."""

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an experiment was started")

    monkeypatch.setattr(engines, "run_experiments", started)


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A plain file, where a directory would have to be."""
    path = tmp_path / "a-file"
    path.write_text("")
    return path


# --- a bad output path fails at once, in one line (fast) -----------------------------------
@pytest.mark.usefixtures("no_training")
@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_run_refuses_a_bad_out_before_training(tmp_path: Path, blocker: Path, where: str) -> None:
    out = tmp_path if where == "directory" else blocker / "r.json"
    line = error_line(invoke("run", *TINY, "--rounds", "1", "--out", out))
    expected = "is a directory" if where == "directory" else f"{blocker} is a file"
    assert f"--out {out}" in line and expected in line


@pytest.mark.usefixtures("no_training")
def test_run_refuses_a_bad_checkpoint_path(tmp_path: Path) -> None:
    line = error_line(invoke("run", *TINY, "--out", tmp_path / "r.json", "--checkpoint", tmp_path))
    assert f"--checkpoint {tmp_path} is a directory" in line


@pytest.mark.usefixtures("no_training")
@pytest.mark.parametrize(
    ("command", "option"),
    [
        (("grid", "--method", "fedavg", "--attack", "none", *TINY), "--out-dir"),
        (("demo",), "--out-dir"),
        (("reproduce", "c1.1", "--quick"), "--work"),
        (("reproduce", "c1.1", "--quick", "--work", "{tmp}"), "--docs"),
    ],
    ids=["grid", "demo", "reproduce-work", "reproduce-docs"],
)
def test_output_directories_that_are_files_fail_at_once(
    tmp_path: Path, blocker: Path, command: tuple[str, ...], option: str
) -> None:
    args = [a.format(tmp=tmp_path / "work") for a in command]
    line = error_line(invoke(*args, option, blocker))
    assert f"{option} {blocker} is a file" in line


@pytest.mark.parametrize("command", ["plot", "bench", "deploy"])
def test_other_commands_check_their_out_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    import flwr_byz.cli as cli_module
    import flwr_byz.deployment.deploy as deploy

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{command} started")

    monkeypatch.setattr(deploy, "deploy", started)
    monkeypatch.setattr(cli_module.subprocess, "call", started)
    monkeypatch.setattr(cli_module, "_call", started, raising=False)  # how bench starts it
    result = Result(ExperimentConfig(dataset="digits").to_dict(), [RoundRecord(1, 1.0, 0.5)])
    stored = result.finish().save(tmp_path / "r.json")
    args = {"plot": ["plot", stored], "bench": ["bench", "--quick"], "deploy": ["deploy"]}
    line = error_line(invoke(*args[command], "--out", tmp_path))
    assert f"--out {tmp_path} is a directory" in line


# --- run: a checkpoint beside the result by default --------------------------------------
def fake_run(seen: list[ExperimentConfig]) -> Callable[..., list[Result]]:
    def run(configs: list[ExperimentConfig], **kwargs: Any) -> list[Result]:
        seen.extend(configs)
        results = []
        for cfg in configs:
            result = Result(runner.prepare(cfg).to_dict(), [RoundRecord(1, 0.5, 0.75)]).finish()
            results.append(result.save(str(cfg.out)) and result)
        return results

    return run


@pytest.mark.parametrize(
    ("extra", "checkpoint"),
    [
        ((), "{out}.ckpt"),
        (("--checkpoint", ""), None),
        (("--engine", "batched"), None),  # the batched engine writes no checkpoints
        (("--checkpoint", "{tmp}/mine.ckpt"), "{tmp}/mine.ckpt"),
    ],
    ids=["default", "off", "batched", "given"],
)
def test_run_checkpoints_beside_its_result_by_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
    checkpoint: str | None,
) -> None:
    seen: list[ExperimentConfig] = []
    monkeypatch.setattr(engines, "run_experiments", fake_run(seen))
    out = tmp_path / "r.json"
    names = {"out": out, "tmp": tmp_path}
    args = [a.format(**names) for a in extra]
    result = invoke("run", "--dataset", "digits", "--clients", "6", "--out", out, *args)
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert cfg.checkpoint == (checkpoint.format(**names) if checkpoint else None)
    assert cli.INTERRUPT_HINT is None  # cleared: the run ended normally


def test_the_default_checkpoint_is_deleted_once_the_result_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ExperimentConfig] = []
    fake = fake_run(seen)

    def run_and_checkpoint(configs: list[ExperimentConfig], **kwargs: Any) -> list[Result]:
        for cfg in configs:
            Path(str(cfg.checkpoint)).write_bytes(b"state")
            nodes = client_state_dir(str(cfg.checkpoint))
            nodes.mkdir()
            (nodes / "0.pt").write_bytes(b"client state")
        return fake(configs, **kwargs)

    monkeypatch.setattr(engines, "run_experiments", run_and_checkpoint)
    out = tmp_path / "r.json"
    assert invoke("run", "--dataset", "digits", "--out", out).exit_code == 0
    assert out.exists() and not Path(f"{out}.ckpt").exists()
    assert not client_state_dir(f"{out}.ckpt").exists()  # the clients' state went with it
    mine = tmp_path / "mine.ckpt"  # a checkpoint asked for is the user's: kept
    assert invoke("run", "--dataset", "digits", "--out", out, "--checkpoint", mine).exit_code == 0
    assert mine.exists()


def test_a_run_started_over_says_it_replaces_an_earlier_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "run_experiments", fake_run([]))
    out = tmp_path / "r.json"
    Path(f"{out}.ckpt").write_bytes(b"an interrupted run's state")
    output = invoke("run", "--dataset", "digits", "--out", out).output
    assert "starting over" in output and "--resume continues from it" in output


class Interrupt(Exception):
    """Stands for a kill in the middle of a run."""


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Count the runs and rounds trained; ``fail_at``: (run number, round) raising Interrupt
    after that round (its checkpoint written)."""
    seen: dict[str, Any] = {"runs": 0, "rounds": [], "fail_at": None}
    original = runner.train_on_grid

    def train(grid: Any, config: ExperimentConfig, on_round: Any = None, *args: Any) -> Result:
        seen["runs"] += 1
        number = seen["runs"]

        def rounds(cfg: ExperimentConfig, record: RoundRecord) -> None:
            seen["rounds"].append(record.round)
            if on_round is not None:
                on_round(cfg, record)
            if seen["fail_at"] in ((number, record.round), (number, None)):
                raise Interrupt

        return original(grid, config, rounds, *args)

    monkeypatch.setattr(runner, "train_on_grid", train)
    yield seen


def test_a_killed_run_resumes_from_its_default_checkpoint(
    tmp_path: Path, trained: dict[str, Any]
) -> None:
    out = tmp_path / "r.json"
    args = ("run", *TINY, "--method", "robust-fedavg", "--aggregator", "cwmed", "--rounds", "4")
    trained["fail_at"] = (1, 2)
    killed = invoke(*args, "--out", out)
    assert isinstance(killed.exception, Interrupt)
    checkpoint = Path(f"{out}.ckpt")
    assert checkpoint.exists() and not out.exists()
    assert cli.INTERRUPT_HINT is not None  # what the interrupt message ends with
    assert str(checkpoint) in cli.INTERRUPT_HINT and "--resume" in cli.INTERRUPT_HINT

    trained.update(rounds=[], fail_at=None)
    resumed = invoke(*args, "--out", out, "--resume")
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)
    assert trained["rounds"] == [3, 4]  # rounds 1-2 came from the checkpoint
    assert [r.round for r in Result.load(out).rounds] == [1, 2, 3, 4]
    assert not checkpoint.exists()


# --- grid: finished runs are kept and reused ----------------------------------------------
GRID = (
    "grid", "--method", "fedavg", "--attack", "none", "--attack", "sign-flip",
    "--byzantine", "0", "--byzantine", "1", "--rounds", "1", *TINY,
)  # fmt: skip


def test_an_interrupted_grid_reruns_only_the_missing_runs(
    tmp_path: Path, trained: dict[str, Any]
) -> None:
    out_dir = tmp_path / "grid"
    trained["fail_at"] = (2, None)  # the second of the three runs fails
    first = invoke(*GRID, "--out-dir", out_dir)
    assert isinstance(first.exception, Interrupt)
    kept = sorted((out_dir / "runs").glob("*.json"))
    assert len(kept) == 1 and not (out_dir / "results.md").exists()
    assert cli.INTERRUPT_HINT is not None and str(out_dir / "runs") in cli.INTERRUPT_HINT

    trained.update(runs=0, fail_at=None)
    second = invoke(*GRID, "--out-dir", out_dir)
    assert second.exit_code == 0, (second.output, second.exception)
    assert trained["runs"] == 2  # the finished one was reused
    assert "reusing 1 of 3 finished runs" in second.output
    assert len(list((out_dir / "runs").glob("*.json"))) == 3
    table = (out_dir / "results.md").read_text()

    trained["runs"] = 0
    third = invoke(*GRID, "--out-dir", out_dir)
    assert third.exit_code == 0 and trained["runs"] == 0
    assert "reusing 3 of 3 finished runs" in third.output
    assert (out_dir / "results.md").read_text() == table


def test_a_stored_run_of_another_config_is_not_reused(tmp_path: Path) -> None:
    cfg = ExperimentConfig(dataset="digits", clients=6, rounds=2, out=str(tmp_path / "r.json"))
    stored = cfg.resolved().to_dict() | {"threads": 99, "client_threads": 1}
    rounds = [RoundRecord(1, 1.0, 0.5), RoundRecord(2, 0.9, 0.6)]
    Result(stored, rounds).finish().save(str(cfg.out))
    assert cli._finished(cfg) is not None  # execution options (threads...) do not count
    other = dataclasses.replace(cfg, lr=cfg.resolved().lr * 2)
    assert cli._finished(other) is None
    data = json.loads(Path(cfg.out).read_text())
    data["rounds"] = data["rounds"][:1]  # a run cut short is not finished
    Path(cfg.out).write_text(json.dumps(data))
    assert cli._finished(cfg) is None
    Path(cfg.out).write_text("")  # e.g. a 0-byte file of an old, non-atomic write
    assert cli._finished(cfg) is None


def test_the_run_key_ignores_execution_options_only() -> None:
    cfg = ExperimentConfig(dataset="digits").resolved()
    key = cli.run_digest(cfg.to_dict())
    same = dataclasses.replace(cfg, out="x.json", checkpoint="c", resume=True, threads=7)
    assert cli.run_digest(same.to_dict()) == key
    for change in ({"seed": 1}, {"rounds": 31}, {"params": {"weighted": True}}, {"device": "cuda"}):
        assert cli.run_digest(dataclasses.replace(cfg, **change).to_dict()) != key, change
