"""Errors a user can act on: every command's ``--help`` lists the values its options accept
(read from the registries), an unknown name is answered with every accepted one in one
format, argument errors come before any progress output, and ``flwr-byz stop`` stops by PID
what ``flwr run`` left running, and nothing else."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result as InvokeResult
from typer.main import get_command
from typer.testing import CliRunner

from flwr_byz import cli
from flwr_byz.aggregators import AGGREGATORS, WRAPPERS, get_aggregator
from flwr_byz.aggregators.registry import ALIASES as AGGREGATOR_ALIASES
from flwr_byz.attacks import ATTACKS, get_attack
from flwr_byz.attacks.registry import ALIASES as ATTACK_ALIASES
from flwr_byz.compressors import COMPRESSORS, get_compressor
from flwr_byz.interrupt import alive, descendants, send_signal
from flwr_byz.reproduce.defaults_sweep import GRIDS
from flwr_byz.reproduce.targets import TARGETS, resolve_targets
from flwr_byz.simulations.config import INJECTIONS, ExperimentConfig
from flwr_byz.simulations.datasets import DATASETS, PARTITIONS, load_dataset, partition_indices
from flwr_byz.simulations.defaults import method_defaults
from flwr_byz.simulations.engines import ENGINES, check_engine
from flwr_byz.simulations.methods import METHODS, check_method
from flwr_byz.simulations.models import MODELS, build_model
from flwr_byz.simulations.plots import METRICS, X_AXES, curve_series
from flwr_byz.simulations.presets import PRESETS
from flwr_byz.simulations.result import Result

ENV = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
PER_NODE = [k for k, cls in ATTACKS.items() if not getattr(cls, "omniscient", False)]


def invoke(*args: object) -> InvokeResult:
    return CliRunner(env=ENV).invoke(cli.app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output without rich's box drawing, whitespace collapsed (wrapped lines rejoined)."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def names_in(text: str) -> set[str]:
    """The names listed in ``text`` (``a, b; label: c, d.``): split at ``, `` ``; `` and
    spaces, a final ``.`` dropped (``c1.1`` and ``cpu,cuda`` stay whole)."""
    return {word.rstrip(".") for word in re.split(r",\s+|;\s+|\s+", text) if word}


# --- --help lists what each option accepts --------------------------------------------------
#: (command, option or argument) -> the names its --help must list: the registries themselves
EXPECTED: dict[tuple[str, str], list[str]] = {
    **{(command, "method"): list(METHODS) for command in ("run", "grid", "deploy")},
    **{(c, "aggregator"): [*AGGREGATORS, *WRAPPERS, *AGGREGATOR_ALIASES] for c in ("run", "grid")},
    ("deploy", "aggregator"): [*AGGREGATORS, *WRAPPERS],
    **{(c, "attack"): [*ATTACKS, *ATTACK_ALIASES] for c in ("run", "grid", "demo")},
    ("deploy", "attack"): PER_NODE,
    **{(c, "compressor"): [*COMPRESSORS, "none"] for c in ("run", "deploy")},
    **{(c, "dataset"): list(DATASETS) for c in ("run", "grid", "deploy")},
    **{(c, "partition"): list(PARTITIONS) for c in ("run", "grid", "deploy")},
    **{(c, "model"): ["auto", *MODELS] for c in ("run", "grid", "deploy")},
    **{(c, "engine"): list(ENGINES) for c in ("run", "grid")},
    **{(c, "engine"): list(cli.POOL_ENGINES) for c in ("reproduce", "defaults-sweep")},
    **{(c, "device"): ["cpu", "cuda"] for c in ("run", "grid", "deploy", "bench", "reproduce")},
    ("run", "injection"): list(INJECTIONS),
    **{(c, "preset"): list(PRESETS) for c in ("run", "grid")},
    ("reproduce", "targets"): ["all", *TARGETS],
    ("defaults-sweep", "method"): list(GRIDS),
    ("bench", "suite"): list(cli.BENCHMARKS),
    ("plot", "metric"): list(METRICS),
    ("plot", "x"): list(X_AXES),
}


def help_rows(command: str) -> dict[str, str]:
    """Option/argument name -> its row of ``command --help`` (wrapped lines joined)."""
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    rows: dict[str, str] = {}
    current = None
    for line in result.output.splitlines():
        start = re.match(r"^\u2502 (?:\*)?\s{0,4}(--[\w-]+|[a-z_]+)\s", line)  # not wrapped
        if start:
            current = start[1].removeprefix("--").replace("-", "_")
            rows[current] = flat(line)
        elif current is not None and flat(line):
            rows[current] += " " + flat(line)
    return rows


def test_every_command_is_checked() -> None:
    """Every command and every option whose values come from a registry is in EXPECTED."""
    commands = get_command(cli.app).commands  # type: ignore[attr-defined]
    listed = {
        (name, str(p.name))
        for name, command in commands.items()
        for p in command.params
        if cli._accepted(name, p.name) is not None
    }
    assert listed == set(EXPECTED)
    for name, command in commands.items():  # the class that adds the accepted values
        assert isinstance(command, cli._Command), name


@pytest.mark.parametrize("command", sorted({c for c, _ in EXPECTED}))
def test_help_lists_the_registry_names(command: str) -> None:
    rows = help_rows(command)
    missing = {}
    for (cmd, param), names in EXPECTED.items():
        if cmd != command:
            continue
        assert "Accepted:" in rows[param], (param, rows[param])
        shown = names_in(rows[param].split("Accepted:", 1)[1])
        lost = [n for n in names if n not in shown]
        if lost:
            missing[param] = lost
    assert not missing, missing


def test_deploy_help_lists_only_the_attacks_a_node_can_make() -> None:
    row = help_rows("deploy")["attack"].split("Accepted:", 1)[1]
    assert "sign-flip" in names_in(row) and "alie" not in names_in(row)


def test_argument_help_survives() -> None:
    """typer's Argument loses its help text under click >= 8.2: the command restores it."""
    assert "papers' claims" in help_rows("reproduce")["targets"]
    assert "Result JSON files" in flat(invoke("plot", "--help").output)


# --- unknown names: one format, every accepted name -----------------------------------------
def _result() -> Result:
    return Result.from_dict({"config": {}, "rounds": [{"round": 1, "accuracy": 0.5}]})


UNKNOWN: list[tuple[str, Callable[[], Any], str, list[str]]] = [
    ("aggregator", lambda: get_aggregator("nope"), "aggregator 'nope'",
     [*AGGREGATORS, *WRAPPERS, *AGGREGATOR_ALIASES]),
    ("aggregator-wrapper", lambda: get_aggregator("nope+krum"), "aggregator 'nope' in 'nope+krum'",
     [*AGGREGATORS, *WRAPPERS]),
    ("attack", lambda: get_attack("nope:1"), "attack 'nope' in 'nope:1'",
     [*ATTACKS, *ATTACK_ALIASES]),
    ("compressor", lambda: get_compressor("nope"), "compressor 'nope'", [*COMPRESSORS, "none"]),
    ("method", lambda: check_method("nope"), "method 'nope'", list(METHODS)),
    ("method-defaults", lambda: method_defaults("nope"), "method 'nope'", list(METHODS)),
    ("dataset", lambda: load_dataset("nope:a=1"), "dataset 'nope' in 'nope:a=1'", list(DATASETS)),
    ("partition", lambda: partition_indices(load_dataset("breast-cancer"), "shards:2", 4),
     "partition 'shards' in 'shards:2'", list(PARTITIONS)),
    ("model", lambda: build_model("nope", (4,), 2), "model 'nope'", list(MODELS)),
    ("engine", lambda: check_engine("nope", []), "engine 'nope'", list(ENGINES)),
    ("target", lambda: resolve_targets(["c9.9"]), "target 'c9.9'", ["all", *TARGETS]),
    ("metric", lambda: curve_series(_result(), "f1", "round"), "metric 'f1'", list(METRICS)),
    ("option", lambda: ExperimentConfig.from_mapping({"epochs": 1}), "experiment option 'epochs'",
     ["rounds", "local_epochs", "aggregator"]),
    ("preset", lambda: ExperimentConfig.from_preset("nope"), "preset 'nope'", list(PRESETS)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "what", "names"), [u[1:] for u in UNKNOWN], ids=[u[0] for u in UNKNOWN]
)
def test_unknown_names_list_every_accepted_one(
    call: Callable[[], Any], what: str, names: list[str]
) -> None:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"unknown {what}; known: "), message
    listed = names_in(message.split("; known: ", 1)[1])
    assert [n for n in names if n not in listed] == []


def test_misplaced_wrapper_or_rule_says_where_it_goes() -> None:
    with pytest.raises(ValueError, match=r"'nnm' is a wrapper .*put a rule after it.*krum"):
        get_aggregator("nnm")
    with pytest.raises(ValueError, match=r"'krum' is a rule and cannot wrap.*wrappers: .*nnm"):
        get_aggregator("krum+median")


# --- argument errors before any progress ----------------------------------------------------
PROGRESS = ("acc —", "━", "0/1")


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if an experiment starts (the argument error must come first)."""
    from flwr_byz.simulations import engines

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an experiment was started")

    for name in ("run_local", "run_batched", "run_simulated"):
        monkeypatch.setattr(engines, name, started)


TINY = ("--dataset", "digits", "--clients", "4", "--rounds", "1")
NODES = ("--dataset", "digits", "--nodes", "4", "--rounds", "1")


@pytest.mark.usefixtures("nothing_runs")
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("run", "--engine", "foo", *TINY), "unknown engine 'foo'; known: simulation, local"),
        (("run", "--engine", "local", "--device", "cuda:99", *TINY), "--device cuda:99: "),
        (
            ("run", "--engine", "batched", "--checkpoint", "{tmp}/c.ckpt", *TINY),
            "the batched engine writes no checkpoints",
        ),
        (("grid", "--engine", "foo", *TINY), "unknown engine 'foo'"),
        (("run", "--preset", "nope", *TINY), "unknown preset 'nope'; known: cifar10-resnet20, "),
        (("grid", "--preset", "nope", *TINY), "unknown preset 'nope'; known: cifar10-resnet20, "),
        (("run", "--aggregator", "nope+krum", *TINY), "unknown aggregator 'nope'"),
        (("deploy", "--aggregator", "nope", *NODES), "unknown aggregator 'nope'"),
        (("deploy", "--device", "cuda:99", *NODES), "--device cuda:99: "),
        (("deploy", "--attack", "alie", "--byzantine", "1", *NODES), "per-node attack here"),
        (("reproduce", "c9.9"), "unknown target 'c9.9'"),
        (("reproduce", "--engine", "simulation"), "unknown engine 'simulation'; known: local"),
        (("reproduce", "--device", "cuda:99"), "--device cuda:99: "),
        (("defaults-sweep", "--method", "fedavg", "--method", "nope"), "unknown method 'nope'"),
        (("bench", "nope"), "unknown benchmark 'nope'; known: aggregators, engines"),
        (("bench", "--device", "gpu"), "unknown device 'gpu'"),
    ],
    ids=[
        "run-engine",
        "run-device",
        "batched-checkpoint",
        "grid-engine",
        "run-preset",
        "grid-preset",
        "run-aggregator",
        "deploy-aggregator",
        "deploy-device",
        "deploy-omniscient",
        "reproduce-target",
        "reproduce-engine",
        "reproduce-device",
        "sweep-method",
        "bench-suite",
        "bench-device",
    ],
)
def test_argument_errors_come_before_any_progress(
    tmp_path: Path, args: tuple[str, ...], error: str
) -> None:
    args = tuple(a.replace("{tmp}", str(tmp_path)) for a in args)
    out = ("--out", str(tmp_path / "r.json")) if args[0] in ("run", "deploy") else ()
    out = ("--out-dir", str(tmp_path)) if args[0] == "grid" else out
    out = ("--work", str(tmp_path / "w")) if args[0] in ("reproduce", "defaults-sweep") else out
    result = invoke(*args, *out)
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert error in text, text
    assert text.startswith("error:"), text  # nothing printed before the error
    assert not any(mark in result.output for mark in PROGRESS), result.output
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "w").exists()


# --- --config: the file, the line, the problem ----------------------------------------------
@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[experiment]\nrounds = 2\naggregator = nnm+krum\n",
            "exp.toml, line 3, column 14: Invalid value: aggregator = nnm+krum (text values "
            'need quotes: aggregator = "nnm+krum")',
        ),
        ("rounds = 2\nepochs = 3\n", "exp.toml, line 2: unknown experiment option 'epochs'"),
        ('rounds = "ten"\n', "exp.toml, line 1: rounds = 'ten': expected an integer"),
    ],
    ids=["unquoted", "unknown-key", "type"],
)
def test_run_config_errors_name_the_file_and_line(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(toml)
    result = invoke("run", "--config", path, "--out", tmp_path / "r.json")
    assert result.exit_code == 2
    text = flat(result.output)
    assert "Invalid value for '--config'" in text
    squeezed = text.replace(" ", "").replace(str(path).replace(" ", ""), "exp.toml")
    assert message.replace(" ", "") in squeezed, text


# --- flwr-byz stop ----------------------------------------------------------------------------
def _fake_superlink(tmp_path: Path, home: Path) -> subprocess.Popen[bytes]:
    """A process named like ``flwr run``'s local SuperLink of ``home``, with a child."""
    script = tmp_path / "bin" / "flower-superlink"
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "time.sleep(120)\n"
    )
    script.chmod(0o755)
    log = home / "local-superlink" / "superlink.log"
    return subprocess.Popen([str(script), "--insecure", "--log-file", str(log)])


def _wait_for(check: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_stop_lists_then_stops_only_flwr_runs_superlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, other = tmp_path / "home", tmp_path / "other-home"
    ours = _fake_superlink(tmp_path, mine)
    theirs = _fake_superlink(tmp_path, other)  # another FLWR_HOME's: never touched
    try:
        monkeypatch.setenv("FLWR_HOME", str(mine))
        assert _wait_for(lambda: len(cli.flower_leftovers()) == 2)  # the SuperLink, its child
        pids = [pid for pid, _ in cli.flower_leftovers()]
        assert pids[0] == ours.pid and theirs.pid not in pids

        listed = invoke("stop")
        assert listed.exit_code == 0 and "add --yes" in listed.output
        assert all(str(pid) in listed.output for pid in pids)
        assert ours.poll() is None  # listed, not stopped

        stopped = invoke("stop", "--yes")
        assert stopped.exit_code == 0 and f"stopped {pids[0]}, {pids[1]}" in stopped.output
        assert ours.wait(timeout=15) == -signal.SIGTERM
        assert _wait_for(lambda: not alive(pids[1]))
        assert theirs.poll() is None
        assert "nothing to stop" in invoke("stop").output
    finally:
        for proc in (ours, theirs):
            send_signal([proc.pid, *descendants(proc.pid)], signal.SIGKILL)
            proc.wait()
