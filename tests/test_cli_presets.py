"""``flwr-byz run --preset`` / ``grid --preset`` / ``presets``: a preset's options first, the
``--config`` file's over them, the flags over both; the result config names the preset; the
help lists the presets. No experiment runs: ``cli._execute`` is replaced by a recorder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from click.testing import Result as InvokeResult
from typer.testing import CliRunner

from flwr_byz import cli
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.presets import PRESETS

ENV = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def invoke(*args: object) -> InvokeResult:
    return CliRunner(env=ENV).invoke(cli.app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


@pytest.fixture
def executed(monkeypatch: pytest.MonkeyPatch) -> list[ExperimentConfig]:
    """The configs the command would run (then it stops, exit code 0)."""
    seen: list[ExperimentConfig] = []

    def execute(configs: list[ExperimentConfig], verbose: bool, engine: str = "") -> Any:
        seen.extend(configs)
        raise typer.Exit(0)

    monkeypatch.setattr(cli, "_execute", execute)
    return seen


def run(tmp_path: Path, *args: object) -> InvokeResult:
    result = invoke("run", *args, "--out", tmp_path / "r.json")
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_run_preset_alone(tmp_path: Path, executed: list[ExperimentConfig]) -> None:
    run(tmp_path, "--preset", "cifar10-resnet20")
    (cfg,) = executed
    assert cfg.preset == "cifar10-resnet20"
    assert (cfg.dataset, cfg.partition, cfg.model) == (
        "hf:uoft-cs/cifar10", "dirichlet:0.5", "resnet20",
    )  # fmt: skip
    assert (cfg.clients, cfg.clients_per_round, cfg.rounds) == (100, 10, 200)
    assert (cfg.lr, cfg.batch_size, cfg.local_epochs, cfg.momentum) == (0.025, 32, 1, 0.9)
    assert cfg.to_dict()["preset"] == "cifar10-resnet20"  # what the result's config holds


def test_file_overrides_the_preset_and_flags_override_both(
    tmp_path: Path, executed: list[ExperimentConfig]
) -> None:
    path = toml(tmp_path, "rounds = 7\nlr = 0.3\nbatch-size = 16\n")
    run(tmp_path, "--preset", "cifar10-resnet20", "--config", path, "--lr", "0.5")
    (cfg,) = executed
    assert cfg.rounds == 7 and cfg.batch_size == 16  # the file's, over the preset's
    assert cfg.lr == 0.5  # the flag's, over the file's
    assert (cfg.clients, cfg.local_epochs, cfg.model) == (100, 1, "resnet20")  # the preset's


def test_flag_preset_replaces_the_files_preset(
    tmp_path: Path, executed: list[ExperimentConfig]
) -> None:
    path = toml(tmp_path, 'preset = "femnist-lenet"\nrounds = 9\n')
    run(tmp_path, "--config", path, "--preset", "mnist-lenet")
    (cfg,) = executed
    assert (cfg.preset, cfg.dataset, cfg.partition) == ("mnist-lenet", "hf:ylecun/mnist", "iid")
    assert (cfg.rounds, cfg.local_epochs) == (9, 5)  # the file's rounds still win


def test_files_preset_with_a_flag(tmp_path: Path, executed: list[ExperimentConfig]) -> None:
    path = toml(tmp_path, 'preset = "shakespeare-lstm"\nclients = 20\n')
    run(tmp_path, "--config", path, "--clients-per-round", "5")
    (cfg,) = executed
    assert (cfg.preset, cfg.model, cfg.partition) == (
        "shakespeare-lstm", "charlstm", "natural:character_id",
    )  # fmt: skip
    assert (cfg.clients, cfg.clients_per_round, cfg.lr) == (20, 5, 0.8)


def test_gradient_method_keeps_its_own_local_options(
    tmp_path: Path, executed: list[ExperimentConfig]
) -> None:
    run(tmp_path, "--preset", "cifar10-resnet20", "--method", "byz-ef21-sgdm")
    (cfg,) = executed
    assert (cfg.lr, cfg.batch_size, cfg.momentum) == (None, None, None)  # the method's
    assert (cfg.clients, cfg.rounds, cfg.dataset) == (100, 200, "hf:uoft-cs/cifar10")


def test_unknown_preset_in_the_file(tmp_path: Path, executed: list[ExperimentConfig]) -> None:
    path = toml(tmp_path, 'preset = "nope"\n')
    result = invoke("run", "--config", path, "--out", tmp_path / "r.json")
    assert result.exit_code == 2 and not executed
    assert "unknown preset 'nope'; known: cifar10-resnet20," in flat(result.output)


def test_grid_preset_per_method(tmp_path: Path, executed: list[ExperimentConfig]) -> None:
    result = invoke(
        "grid", "--preset", "cifar10-resnet20", "--method", "fedavg", "--method",
        "byz-ef21-sgdm", "--attack", "none", "--byzantine", "0", "--rounds", "3",
        "--out-dir", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    by_method = {cfg.method: cfg for cfg in executed}
    assert set(by_method) == {"fedavg", "byz-ef21-sgdm"}
    assert by_method["fedavg"].lr == 0.025 and by_method["byz-ef21-sgdm"].lr is None
    for cfg in executed:
        assert (cfg.preset, cfg.clients, cfg.rounds) == ("cifar10-resnet20", 100, 3)


@pytest.mark.parametrize("command", ["run", "grid"])
def test_help_lists_the_presets(command: str) -> None:
    lines = invoke(command, "--help").output.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^\u2502 +--preset ", line))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"^\u2502 +--[\w-]+ ", lines[i])),
        len(lines),
    )
    row = flat(" ".join(lines[start:end]))
    assert "Accepted:" in row, row
    for name in PRESETS:
        assert name in row, (name, row)


def test_presets_command_lists_each_preset_with_its_options() -> None:
    result = invoke("presets")
    assert result.exit_code == 0, result.output
    for name, preset in PRESETS.items():
        assert f"{name}: {preset.summary}" in result.output
        assert f"dataset={preset.setup['dataset']}" in result.output
    assert "lr=0.025" in result.output


def test_bench_presets_runs_the_suite_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(cli, "_call", lambda args: started.append(args) or 0)
    result = invoke("bench", "presets", "--quick", "--out", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    (args,) = started
    assert args[1:] == [
        "-m", "flwr_byz.bench.presets", "--out", str(tmp_path / "p.json"), "--device", "cpu",
        "--quick",
    ]  # fmt: skip
