"""The ``flwr-byz`` console script: help texts, validation before Ray starts, and end-to-end
``run``, ``grid`` and ``plot`` on tiny configs (``digits``, 6 clients, 1–2 rounds).

The slow tests start two simulations: one ``run`` (some of its options from a ``--config``
file, one of them overridden by a flag) and one ``grid`` (its four experiments batched), each
shared by several tests through a module fixture.
Everything else is fast: bad input is rejected before Ray starts, and ``plot``'s errors are
checked on a hand-made result file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result as InvokeResult
from typer.testing import CliRunner

from flwr_byz import cli
from flwr_byz.aggregators import AGGREGATORS, WRAPPERS
from flwr_byz.attacks import ATTACKS
from flwr_byz.cli import app
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.methods import METHODS
from flwr_byz.simulations.models import build_model
from flwr_byz.simulations.plots import METRICS, X_AXES
from flwr_byz.simulations.result import Result, RoundRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMANDS = (
    "run", "grid", "plot", "demo", "deploy", "bench", "reproduce", "defaults-sweep",
    "aggregators", "attacks", "models", "presets", "stop",
)  # fmt: skip
ROUND_KEYS = {
    "round", "loss", "accuracy", "rejected", "bytes_up", "bytes_down", "seconds",
    "train_loss", "gap", "metrics", "missing", "asr",
}  # fmt: skip
# wide, so rich neither wraps help texts nor squeezes the summary table
ENV = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def invoke(*args: object) -> InvokeResult:
    return CliRunner(env=ENV).invoke(app, [str(a) for a in args])


def ok(result: InvokeResult) -> str:
    """The output of a command that must have succeeded."""
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def flat(text: str) -> str:
    """Output without rich's box drawing, whitespace collapsed (wrapped lines rejoined)."""
    text = re.sub(r"[\u2500-\u257f]", " ", text)
    return " ".join(text.split())


def options(help_output: str) -> dict[str, str]:
    """``--flag`` -> its row of the help (type, help text, default), wrapped lines joined."""
    rows: dict[str, str] = {}
    current = None
    for line in help_output.splitlines():
        text = flat(line)
        if text.startswith("--"):
            current = text.split()[0]
            rows[current] = text
        elif current is not None and text and not text.startswith(("Usage", "Options")):
            rows[current] += " " + text
    return rows


def strict_json(path: Path) -> Any:
    def reject(constant: str) -> None:
        raise ValueError(f"{path} is not strict JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if Flower's simulation runtime (a SuperLink, Ray) is started."""
    from flwr_byz.simulations import simulation

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a simulation was started")

    monkeypatch.setattr(simulation, "SimulationRuntime", started)


# --- listings and help (fast) --------------------------------------------------------------
def test_aggregators_lists_every_spec_name() -> None:
    result = CliRunner().invoke(app, ["aggregators"])
    assert result.exit_code == 0
    for name in [*AGGREGATORS, *WRAPPERS]:
        assert name in result.output


def test_bench_help_documents_its_options() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    assert "--quick" in result.output and "--out" in result.output


def test_attacks_lists_every_name_with_its_kind() -> None:
    result = CliRunner().invoke(app, ["attacks"])
    assert result.exit_code == 0
    lines = dict(line.split() for line in result.output.strip().splitlines())
    assert set(lines) == set(ATTACKS)
    assert lines["alie"] == "omniscient" and lines["sign-flip"] == "per-node"
    assert lines["label-flip"] == "data" and lines["model-replacement"] == "backdoor"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command: str) -> None:
    output = ok(invoke(command, "--help"))
    assert "Usage" in output and command in output
    assert "--help" in options(output)


def test_top_level_help_lists_every_command() -> None:
    output = ok(invoke("--help"))
    for command in COMMANDS:
        assert re.search(rf"\b{command}\b", output), command


def _run_fields() -> list[str]:
    return [fd.name for fd in dataclasses.fields(ExperimentConfig) if fd.name != "params"]


@pytest.mark.parametrize("name", _run_fields())
def test_run_has_a_flag_for_every_config_field(name: str) -> None:
    rows = options(ok(invoke("run", "--help")))
    flag = "--" + name.replace("_", "-")
    assert flag in rows, sorted(rows)
    if name != "out":  # --out has its own help (the default file name)
        help_text = ExperimentConfig.help(name).rsplit(" [default:", 1)[0]
        assert flat(help_text) in rows[flag]


def test_run_help_documents_param_config_and_verbose() -> None:
    rows = options(ok(invoke("run", "--help")))
    assert "name=value" in rows["--param"] and "repeatable" in rows["--param"]
    assert "TOML" in rows["--config"] and "override" in rows["--config"]
    assert "per-round log" in rows["--verbose"]
    assert "Result JSON" in rows["--out"]


def test_run_help_shows_the_default_of_every_option() -> None:
    rows = options(ok(invoke("run", "--help")))
    missing = {}
    for fd in dataclasses.fields(ExperimentConfig):
        flag = "--" + fd.name.replace("_", "-")
        if fd.name == "params":
            continue
        shown = ExperimentConfig.help(fd.name)
        expected = {"out": "[default: results/", "checkpoint": "[default: <out>.ckpt"}.get(
            fd.name, shown[shown.rindex("[default:") :]
        )
        if expected not in rows[flag]:
            missing[flag] = expected
    if "[default: none]" not in rows["--param"]:
        missing["--param"] = "[default: none]"
    assert not missing, missing


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "flwr-byz"
    assert script.exists(), script
    done = subprocess.run(
        [str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ENV},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert command in done.stdout


# --- bad input fails before Ray starts (fast) ----------------------------------------------
TINY = ("--dataset", "digits", "--clients", "6", "--rounds", "1")


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--method", "nope"), ["unknown method 'nope'", *METHODS]),
        (("--method", "byzsgd", "--param", "n_servers=4"), ["n_servers >= 3 f_servers + 2 = 5"]),
        (("--aggregator", "nosuch"), ["unknown aggregator 'nosuch'", "median"]),
        (("--attack", "nosuch", "--byzantine", "1"), ["unknown attack 'nosuch'", "sign-flip"]),
        (("--attack", "sign-flip:bogus=1", "--byzantine", "1"), ["unknown parameter 'bogus'"]),
        (("--byzantine", "7"), ["byzantine=7 must be in [0, clients=6]"]),
        (("--clients-per-round", "9"), ["clients_per_round=9 must be in [1, clients=6]"]),
        (("--rounds", "0"), ["rounds must be a positive integer"]),
        (("--lr", "-1"), ["lr must be > 0"]),
        (("--dataset", "nosuch"), ["unknown dataset 'nosuch'", "digits"]),
        (("--model", "nosuch"), ["unknown model 'nosuch'", "mlp"]),
        (
            ("--method", "fedavg", "--param", "nosuchparam=1"),
            ["fedavg (FedAvg) has no parameter(s) ['nosuchparam']", "fraction_train"],
        ),
    ],
    ids=[
        "unknown-method",
        "later-method",
        "aggregator",
        "attack",
        "attack-param",
        "byzantine",
        "clients-per-round",
        "rounds",
        "lr",
        "dataset",
        "model",
        "param-name",
    ],
)
def test_run_rejects_bad_input_before_starting(
    tmp_path: Path, args: tuple[str, ...], expected: list[str]
) -> None:
    out = tmp_path / "r.json"
    result = invoke("run", *TINY, *args, "--out", str(out))
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # an error, no traceback
    text = flat(result.output)
    for piece in expected:
        assert piece in text, text
    assert not out.exists()


@pytest.mark.usefixtures("no_simulation")
def test_grid_rejects_a_bad_attack_before_starting(tmp_path: Path) -> None:
    result = invoke(
        "grid",
        "--method",
        "fedavg",
        "--attack",
        "nosuch",
        "--byzantine",
        "1",
        *TINY,
        "--out-dir",
        str(tmp_path),
    )
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "unknown attack 'nosuch'" in flat(result.output)
    assert not (tmp_path / "results.md").exists()


@pytest.mark.usefixtures("no_simulation")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("run", *TINY, "--param", "weighted"), "expected name=value"),
        (("grid", *TINY, "--param", "weighted"), "expected name=value"),
        (("run", "--config", "{bad_key}"), "unknown experiment option 'nosuch'"),
        (("run", "--config", "{missing}"), "missing.toml"),
        (("plot", "{missing}"), "missing.toml"),
    ],
    ids=["run-param", "grid-param", "toml-key", "toml-missing", "plot-missing"],
)
def test_malformed_input_is_a_usage_error_not_a_traceback(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("rounds = 1\nnosuch = 1\n")
    paths = {"bad_key": bad_key, "missing": tmp_path / "missing.toml"}
    result = invoke(*(a.format(**paths) for a in args))
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2
    assert expected in flat(result.output)


def test_param_booleans_are_read_as_booleans() -> None:
    cfg = cli._config(None, {}, ["weighted=false", "clip=true"])
    assert cfg.params == {"weighted": False, "clip": True}


# --- --config merging, with the simulation replaced by a stub (fast) -------------------
def test_run_config_file_and_flags_are_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_simulation: None
) -> None:
    import flwr_byz.simulations.engines as engines
    import flwr_byz.simulations.runner as runner

    seen: list[ExperimentConfig] = []

    def fake_run(configs: list[ExperimentConfig], **kwargs: Any) -> list[Result]:
        seen.extend(configs)
        return [
            Result(
                runner.prepare(c).to_dict(), [RoundRecord(1, 0.5, 0.75, 0, 10, 20, 0.1)]
            ).finish()
            for c in configs
        ]

    monkeypatch.setattr(engines, "run_experiments", fake_run)
    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "exp.toml"
    toml.write_text(
        "[experiment]\n"
        'method = "robust-fedavg"\naggregator = "median"\nattack = "sign-flip:scale=10"\n'
        'byzantine = 1\nclients = 6\nrounds = 3\ndataset = "digits"\nseed = 1\nmomentum = 0.5\n'
        "params = { weighted = true }\n"
    )
    output = ok(invoke("run", "--config", toml, "--seed", "5", "--lr", "0.2", "--param", "f=0"))
    (cfg,) = seen
    assert (cfg.method, cfg.aggregator, cfg.attack) == (
        "robust-fedavg",
        "median",
        "sign-flip:scale=10",
    )
    assert (cfg.byzantine, cfg.clients, cfg.rounds, cfg.dataset) == (1, 6, 3, "digits")
    assert (cfg.seed, cfg.lr, cfg.momentum) == (5, 0.2, 0.5)  # flags override, file kept
    assert cfg.params == {"weighted": True, "f": 0}  # --param adds to the file's params
    assert cfg.out == str(Path("results") / "robust-fedavg-sign-flip_scale=10-b1-s5.json")
    assert "75.0" in output  # the summary table of the (stub) result


# --- end to end: run (slow) ----------------------------------------------------------------
#: The e2e run's options from its ``--config`` file (top-level keys); its ``seed`` is
#: overridden by the ``--seed`` flag of ``RUN_ARGS``.
RUN_CONFIG = 'method = "robust-fedavg"\nrounds = 2\ndataset = "digits"\nclients = 6\nseed = 1\n'
RUN_ARGS = (
    "run",
    "--aggregator",
    "cwmed",
    "--attack",
    "sign-flip:scale=10",
    "--byzantine",
    "1",
    "--lr",
    "0.1",
    "--seed",
    "3",
    "--param",
    "weighted=false",
)


@pytest.fixture(scope="module")
def run_e2e(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict[str, Any]]:
    """One real ``run`` (2 rounds; ``RUN_CONFIG`` as its ``--config`` file and ``RUN_ARGS``):
    its output, JSON path and parsed JSON."""
    folder = tmp_path_factory.mktemp("run")
    out = folder / "r.json"
    toml = folder / "exp.toml"
    toml.write_text(RUN_CONFIG)
    output = ok(invoke(*RUN_ARGS, "--config", str(toml), "--out", str(out)))
    assert out.is_file(), output
    return output, out, strict_json(out)


@pytest.mark.slow
def test_run_writes_a_strict_json_result(run_e2e: tuple[str, Path, dict[str, Any]]) -> None:
    _, _, data = run_e2e
    assert set(data) == {"config", "rounds", "final"}
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    params = sum(p.numel() for p in build_model("mlp", (64,), 10).parameters())
    floats = 4 * params * 6  # float32 weights of 6 clients
    for record in data["rounds"]:
        assert set(record) == ROUND_KEYS
        assert 0.0 <= record["accuracy"] <= 1.0 and math.isfinite(record["loss"])
        assert isinstance(record["rejected"], int) and record["rejected"] >= 0
        assert floats < record["bytes_up"] < 1.5 * floats
        assert floats < record["bytes_down"] < 1.5 * floats
        assert record["seconds"] > 0
    final = data["final"]
    assert final["accuracy"] == data["rounds"][-1]["accuracy"]
    assert final["rounds"] == 2
    assert final["bytes_up"] == sum(r["bytes_up"] for r in data["rounds"])


@pytest.mark.slow
def test_run_result_echoes_the_resolved_config(run_e2e: tuple[str, Path, dict[str, Any]]) -> None:
    _, out, data = run_e2e
    cfg = data["config"]
    expected = {
        "method": "robust-fedavg", "aggregator": "cwmed", "attack": "sign-flip:scale=10",
        "byzantine": 1, "clients": 6, "clients_per_round": 6, "rounds": 2,
        "dataset": "digits", "lr": 0.1, "seed": 3, "f": 1, "model": "mlp", "out": str(out),
    }  # fmt: skip
    assert {k: cfg[k] for k in expected} == expected
    assert set(cfg) == {fd.name for fd in dataclasses.fields(ExperimentConfig)} | {
        "byzantine_partitions",
        "client_threads",  # the simulation engine's ClientApp actors
        "device_name",  # the device's ("cpu", or the GPU's name)
    }
    assert cfg["threads"] == 1 and cfg["client_threads"] == 1  # OMP_NUM_THREADS=1 (conftest)
    assert cfg["device"] == "cpu" and cfg["device_name"] == "cpu"
    (byz,) = cfg["byzantine_partitions"]
    assert 0 <= byz < 6
    assert set(cfg["params"]) == {"weighted"}


@pytest.mark.slow
def test_run_result_echoes_typed_params(run_e2e: tuple[str, Path, dict[str, Any]]) -> None:
    assert run_e2e[2]["config"]["params"] == {"weighted": False}


@pytest.mark.slow
def test_run_prints_a_summary_table(run_e2e: tuple[str, Path, dict[str, Any]]) -> None:
    output, out, data = run_e2e
    text = flat(output)
    assert "flwr-byz run" in text and "robust-fedavg" in text and "sign-flip:scale=10" in text
    assert f"{100 * data['final']['accuracy']:.1f}" in text
    assert "result written to" in text and out.name in text


@pytest.mark.slow
def test_run_summary_shows_the_full_run_label(run_e2e: tuple[str, Path, dict[str, Any]]) -> None:
    assert "robust-fedavg [cwmed]" in flat(run_e2e[0])


@pytest.mark.slow
def test_run_config_file_with_a_flag_override(run_e2e: tuple[str, Path, dict[str, Any]]) -> None:
    """The e2e run's ``--config`` file (``RUN_CONFIG``) with ``--seed`` overriding its seed."""
    _, _, data = run_e2e
    cfg = data["config"]
    assert (cfg["rounds"], cfg["dataset"], cfg["clients"], cfg["method"]) == (
        2,
        "digits",
        6,
        "robust-fedavg",
    )  # from the file
    assert cfg["seed"] == 3  # the flag, over the file's seed = 1
    assert [r["round"] for r in data["rounds"]] == [1, 2]


# --- end to end: grid and plot (slow) ------------------------------------------------------
@pytest.fixture(scope="module")
def grid_e2e(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One real ``grid`` (4 experiments in one simulation): its output and out-dir."""
    out_dir = tmp_path_factory.mktemp("grid") / "grid"
    output = ok(
        invoke(
            "grid",
            "--method",
            "fedavg",
            "--method",
            "robust-fedavg",
            "--aggregator",
            "cwmed",
            "--attack",
            "none",
            "--attack",
            "sign-flip:scale=10",
            "--byzantine",
            "1",
            "--clients",
            "6",
            "--rounds",
            "2",
            "--dataset",
            "digits",
            "--out-dir",
            str(out_dir),
        )
    )
    return output, out_dir


def _markdown_table(markdown: str, heading: str) -> dict[str, dict[str, str]]:
    """The table under ``### heading``: row label -> column -> cell (bold stripped)."""
    section = markdown.split(f"### {heading}\n", 1)[1].split("###", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    table = {}
    for line in lines[2:]:
        label, *cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        table[label] = dict(zip(columns, cells, strict=True))
    return table


@pytest.mark.slow
def test_grid_writes_one_result_per_run(grid_e2e: tuple[str, Path]) -> None:
    _, out_dir = grid_e2e
    files = sorted((out_dir / "runs").glob("*.json"))
    runs = {
        (d["config"]["method"], d["config"]["attack"], d["config"]["byzantine"])
        for d in map(strict_json, files)
    }
    assert runs == {
        ("fedavg", "none", 1),  # the baseline: the Byzantine client behaves honestly
        ("fedavg", "sign-flip:scale=10", 1),
        ("robust-fedavg", "none", 1),
        ("robust-fedavg", "sign-flip:scale=10", 1),
    }
    assert len(files) == 4
    for data in map(strict_json, files):
        assert len(data["rounds"]) == 2 and data["config"]["clients"] == 6
        if data["config"]["method"] == "robust-fedavg":
            assert data["config"]["f"] == 1  # the same f with and without the attack


@pytest.mark.slow
def test_grid_markdown_holds_the_final_accuracies(grid_e2e: tuple[str, Path]) -> None:
    _, out_dir = grid_e2e
    markdown = (out_dir / "results.md").read_text()
    assert "digits" in markdown and "2 rounds" in markdown
    assert "### no Byzantine clients" not in markdown  # 'none' is run with 1 honest-acting client
    table = _markdown_table(markdown, "1 Byzantine")
    assert set(table) == {"FedAvg", "robust-fedavg [cwmed]"}
    label = {"fedavg": "FedAvg", "robust-fedavg": "robust-fedavg [cwmed]"}
    for path in (out_dir / "runs").glob("*.json"):
        data = strict_json(path)
        row = table[label[data["config"]["method"]]]
        assert list(row) == ["none", "sign-flip:scale=10"]
        assert row[data["config"]["attack"]] == f"{100 * data['final']['accuracy']:.1f}", path


@pytest.mark.slow
def test_grid_writes_a_heatmap_and_a_summary(grid_e2e: tuple[str, Path]) -> None:
    output, out_dir = grid_e2e
    assert png(out_dir / "heatmap.png")
    text = flat(output)
    assert "flwr-byz grid" in text and "results.md" in text and "heatmap.png" in text
    assert text.count("sign-flip:scale=10") >= 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra", [(), ("--x", "bytes_up"), ("--metric", "loss"), ("--metric", "loss", "--x", "seconds")]
)
def test_plot_draws_the_grid_results(
    grid_e2e: tuple[str, Path], tmp_path: Path, extra: tuple[str, ...]
) -> None:
    files = sorted((grid_e2e[1] / "runs").glob("*.json"))
    out = tmp_path / "curves.png"
    output = ok(invoke("plot", *files, "--out", out, *extra))
    assert png(out)
    assert "wrote" in flat(output)


# --- plot argument errors, on a small result file (fast) ---------------------------------
@pytest.fixture
def result_file(tmp_path: Path) -> Path:
    rounds = [RoundRecord(r, 1.0 / r, 0.3 * r, 0, 1000, 2000, 0.1) for r in (1, 2)]
    config = ExperimentConfig(method="fedavg", dataset="digits", clients=6, rounds=2).to_dict()
    return Result(config, rounds).finish().save(tmp_path / "r.json")


def test_plot_a_result_file(result_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.png"
    ok(invoke("plot", result_file, "--out", out, "--title", "t"))
    assert png(out)


@pytest.mark.parametrize(("option", "allowed"), [("--metric", METRICS), ("--x", X_AXES)])
def test_plot_rejects_an_unknown_metric_or_axis(
    result_file: Path, tmp_path: Path, option: str, allowed: dict[str, str]
) -> None:
    out = tmp_path / "p.png"
    result = invoke("plot", result_file, "--out", out, option, "nosuch")
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    text = flat(result.output)
    assert "nosuch" in text
    assert ", ".join(allowed) in text
    assert not out.exists()
