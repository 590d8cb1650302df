"""Per-method defaults: every method has them, ``resolved()`` records them, a given value
wins, the Flower run config's sentinels mean them, ``flwr-byz run --method M --help`` shows
them, and the sweep that chose them keeps the best worst case."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flwr_byz.cli import app
from flwr_byz.methods.defaults import LEGACY, RunDefaults
from flwr_byz.reproduce import defaults_sweep
from flwr_byz.simulations.config import METHOD_OPTIONS, ExperimentConfig
from flwr_byz.simulations.defaults import METHOD_DEFAULTS, method_defaults
from flwr_byz.simulations.methods import METHODS

runner = CliRunner()


def test_every_method_has_defaults_and_a_sweep_grid() -> None:
    assert set(METHOD_DEFAULTS) == set(METHODS)
    assert set(defaults_sweep.GRIDS) == set(METHODS)
    assert set(METHOD_OPTIONS) == {f.name for f in dataclasses.fields(RunDefaults)}
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_defaults("nope")


@pytest.mark.parametrize("method", list(METHODS))
def test_resolved_config_records_the_method_defaults(method: str) -> None:
    cfg = ExperimentConfig(method=method, dataset="digits")
    assert all(getattr(cfg, name) is None for name in METHOD_OPTIONS)
    resolved = cfg.resolved()
    assert {n: getattr(resolved, n) for n in METHOD_OPTIONS} == METHOD_DEFAULTS[method].to_dict()
    assert resolved.resolved() == resolved


def test_a_given_value_overrides_the_method_default() -> None:
    defaults = METHOD_DEFAULTS["byz-ef21-sgdm"]
    cfg = ExperimentConfig(method="byz-ef21-sgdm", lr=0.123, momentum=0.0).resolved()
    assert (cfg.lr, cfg.momentum) == (0.123, 0.0)
    assert (cfg.aggregator, cfg.batch_size) == (defaults.aggregator, defaults.batch_size)


def test_validation_of_a_default_and_of_a_given_value() -> None:
    ExperimentConfig(method="mu2sgd").validate()  # unset: checked once resolved
    with pytest.raises(ValueError, match=r"^lr must be > 0"):
        ExperimentConfig(method="mu2sgd", lr=-1.0).resolved()


def test_run_config_sentinels_mean_the_method_default() -> None:
    unset = {"aggregator": "", "compressor": "", "lr": 0.0, "batch-size": 0,
             "local-epochs": 0, "rounds": 0, "momentum": -1.0}  # fmt: skip
    cfg = ExperimentConfig.from_run_config({"method": "mu2sgd", **unset}, clients=5)
    assert all(getattr(cfg, name) is None for name in METHOD_OPTIONS)
    assert cfg.to_run_config() | unset == cfg.to_run_config()  # and back
    given = ExperimentConfig.from_run_config({"momentum": 0.0, "lr": 0.2}, clients=5)
    assert (given.momentum, given.lr) == (0.0, 0.2)


def test_help_names_the_method_default() -> None:
    assert ExperimentConfig.help("lr", "fedavg").endswith(
        f"[default: {METHOD_DEFAULTS['fedavg'].lr}, fedavg's]"
    )
    assert "the method's" in ExperimentConfig.help("lr")


def _help_of(*args: str) -> str:
    result = runner.invoke(app, ["run", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("method", ["byz-ef21-sgdm", "fedavg"])
@pytest.mark.parametrize("order", ["method-first", "help-first", "equals"])
def test_run_help_shows_the_method_defaults(method: str, order: str) -> None:
    args = {
        "method-first": ["--method", method, "--help"],
        "help-first": ["--help", "--method", method],
        "equals": [f"--method={method}", "--help"],
    }[order]
    text = _help_of(*args)
    d = METHOD_DEFAULTS[method]
    listed = ", ".join(f"{k} {v}" for k, v in d.to_dict().items())
    assert f"{method}'s defaults: {listed}." in text
    assert f"[default: {d.aggregator}, {method}'s]" in text
    assert f"[default: {d.lr}, {method}'s]" in text


def test_run_help_without_a_method_points_to_it(tmp_path: Path) -> None:
    text = _help_of("--help")
    assert "[default: the method's (docs/DEFAULTS.md)]" in text
    assert "'s defaults:" not in text
    toml = tmp_path / "exp.toml"
    toml.write_text('method = "mu2sgd"\n')
    assert "mu2sgd's defaults:" in _help_of("--config", str(toml), "--help")
    assert "'s defaults:" not in _help_of("--method", "nope", "--help")


@pytest.mark.slow
def test_run_records_the_defaults_and_a_flag_overrides_them(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["run", "--method", "robust-momentum", "--dataset", "digits", "--clients", "4",
            "--rounds", "2", "--lr", "0.7", "--engine", "batched", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads(out.read_text())["config"]
    d = METHOD_DEFAULTS["robust-momentum"]
    assert (config["lr"], config["rounds"]) == (0.7, 2)
    for name in ("aggregator", "batch_size", "momentum", "compressor", "local_epochs"):
        assert config[name] == getattr(d, name), name


# --- the sweep ---------------------------------------------------------------------------


def test_sweep_keeps_the_best_worst_case_and_ties_go_to_the_earlier() -> None:
    a, b, c = (dataclasses.replace(LEGACY, lr=lr) for lr in (0.1, 0.2, 0.3))
    scores = [
        (a, {"none": 0.95, "alie": 0.50}),
        (b, {"none": 0.90, "alie": 0.80}),
        (c, {"none": 0.99, "alie": 0.805}),
    ]
    assert defaults_sweep.choose(scores) == 1  # 0.80 ties 0.805 (within 1 point)
    assert defaults_sweep.choose([(a, {"none": math.nan}), (b, {"none": 0.1})]) == 1


def test_sweep_runs_are_explicit_and_keyed_by_config(tmp_path: Path) -> None:
    setting = defaults_sweep.candidates("byz-ef21-sgdm")[0]
    runs = defaults_sweep.configs("byz-ef21-sgdm", setting, tmp_path)
    assert list(runs) == list(defaults_sweep.ATTACKS)
    assert runs["none"].byzantine == 0 and runs["alie"].byzantine == defaults_sweep.BYZANTINE
    for cfg in runs.values():
        assert all(getattr(cfg, n) is not None for n in METHOD_OPTIONS)
        assert cfg.rounds == defaults_sweep.ROUNDS and cfg.dataset == "digits"
    assert len({c.out for c in runs.values()}) == len(runs)
    again = defaults_sweep.configs("byz-ef21-sgdm", setting, tmp_path)
    assert [c.out for c in again.values()] == [c.out for c in runs.values()]


def test_sweep_markdown_lists_the_choice_per_method() -> None:
    s = defaults_sweep.candidates("fedavg")
    acc = dict.fromkeys(defaults_sweep.ATTACKS, 0.9)
    choice = defaults_sweep.Choice("fedavg", [(x, acc) for x in s], 0, 1.0)
    text = defaults_sweep.markdown([choice])
    assert "| fedavg | lr 0.05, batch 32" in text and "**90.0**" in text
    assert defaults_sweep.COMMAND in text
    assert text.count("| fedavg |") == 1 + len(s)  # the chosen row, then every candidate
