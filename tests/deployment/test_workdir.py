"""``flwr-byz deploy`` deletes its work directory (private keys, FLWR_HOMEs, logs) at the end,
on success, error, Ctrl-C and SIGTERM, unless ``--keep-workdir``; it deletes only what it
created. Fast: a fake LocalDeployment writes the files a real one writes and ends its run at
once (the real deployment is in test_deployment.py)."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

import flwr_byz.deployment.deploy as deploy_module
from flwr_byz.cli import app as cli_app
from flwr_byz.deployment import handle_termination
from flwr_byz.deployment.deploy import DeploymentError, WorkDir, deploy
from flwr_byz.deployment.flower_app import CLIENT_APP
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

#: What a real LocalDeployment writes in its work directory (private keys included).
FILES = (
    "certificates/ca.crt",
    "certificates/server.key",
    "keys/supernode-0",
    "keys/supernode-0.pub",
    "homes/superlink/state.db",
    "homes/node-0/apps/x",
    "logs/superlink.log",
    "run-1.toml",
)


class FakeRun:
    """A ``flwr run`` process that has already ended."""

    def __init__(self, log: Path) -> None:
        self.log = log

        class _Popen:
            returncode = 1

        self.popen = _Popen()

    def running(self) -> bool:
        return False

    def tail(self, lines: int = 30) -> str:
        return "last line of the run log"


class FakeDeployment:
    """LocalDeployment as ``deploy`` uses it. ``outcome``: ``ok`` (the run writes the result),
    ``error`` (no result), ``ctrl-c`` / ``sigterm`` (interrupted while running)."""

    outcome = "ok"
    out: Path | None = None
    events: ClassVar[list[tuple[str, Path, bool]]] = []  # (event, workdir, files exist)

    def __init__(
        self,
        workdir: Path,
        nodes: list[Any],
        *,
        tls: bool,
        auth: bool,
        fork_server: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        # deploy's own app: the nodes' long-running ClientApp launchers import its module
        assert fork_server == CLIENT_APP.partition(":")[0]

    def __enter__(self) -> FakeDeployment:
        for name in FILES:
            path = self.workdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("secret")
        self.events.append(("start", self.workdir, True))
        return self

    def __exit__(self, *exc: object) -> None:  # the processes stop before the files go
        self.events.append(("stop", self.workdir, all((self.workdir / f).exists() for f in FILES)))

    def start_run(self, app: Path, run_config: dict[str, Any]) -> FakeRun:
        assert app == self.workdir / "app"  # the Flower App deploy wrote (no --app given)
        assert "[tool.flwr.app]" in (app / "pyproject.toml").read_text()
        log = self.workdir / "logs" / "run-1.log"
        log.write_text("[flwr-byz] round 1/1  accuracy 0.5\n")
        if self.outcome == "ctrl-c":
            raise KeyboardInterrupt
        if self.outcome == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by handle_termination's handler
        if self.outcome == "ok":
            assert self.out is not None
            Result(config={"method": "fake"}).finish().save(self.out)
        return FakeRun(log)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[FakeDeployment]:
    """The fake deployment, temporary directories made under ``tmp_path / "tmp"``."""
    monkeypatch.setattr(deploy_module, "LocalDeployment", FakeDeployment)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(FakeDeployment, "outcome", "ok")
    monkeypatch.setattr(FakeDeployment, "out", tmp_path / "out" / "r.json")
    monkeypatch.setattr(FakeDeployment, "events", [])
    return FakeDeployment


def _cfg(tmp_path: Path) -> ExperimentConfig:
    return ExperimentConfig(clients=2, rounds=1, dataset="digits", out=str(tmp_path / "out/r.json"))


def _run(cfg: ExperimentConfig, **kwargs: Any) -> Result:
    with handle_termination():
        return deploy(cfg, **kwargs)


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


OUTCOMES: dict[str, type[BaseException] | None] = {
    "ok": None,
    "error": DeploymentError,
    "ctrl-c": KeyboardInterrupt,
    "sigterm": SystemExit,
}


@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
def test_the_temporary_workdir_is_deleted_on_every_exit(
    fake: type[FakeDeployment], tmp_path: Path, outcome: str
) -> None:
    fake.outcome = outcome
    seen: list[Path] = []
    error = OUTCOMES[outcome]
    if error is None:
        result = _run(_cfg(tmp_path), on_workdir=seen.append)
        assert result.config["workdir"] is None  # a deleted directory is not recorded
        assert Result.load(tmp_path / "out/r.json").config["workdir"] is None
    else:
        with pytest.raises(error) as info:
            _run(_cfg(tmp_path), on_workdir=seen.append)
        if outcome == "sigterm":
            assert info.value.code == 128 + signal.SIGTERM  # type: ignore[attr-defined]
        if outcome == "error":
            assert "run-1.log" in str(info.value) and "--keep-workdir" in str(info.value)
    (work,) = seen
    assert work.parent == tmp_path / "tmp" and work.name.startswith("flwr-byz-deploy-")
    assert fake.events == [("start", work, True), ("stop", work, True)]
    assert not work.exists()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
def test_keep_workdir_keeps_everything(
    fake: type[FakeDeployment], tmp_path: Path, outcome: str
) -> None:
    fake.outcome = outcome
    seen: list[Path] = []
    error = OUTCOMES[outcome]
    if error is None:
        result = _run(_cfg(tmp_path), keep_workdir=True, on_workdir=seen.append)
        assert result.config["workdir"] == str(seen[0])
    else:
        with pytest.raises(error) as info:
            _run(_cfg(tmp_path), keep_workdir=True, on_workdir=seen.append)
        if outcome == "error":
            assert str(seen[0] / "logs" / "run-1.log") in str(info.value)
    assert set(FILES) <= _tree(seen[0])


def test_a_new_workdir_is_deleted_with_the_parents_deploy_created(
    fake: type[FakeDeployment], tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    given = tmp_path / "a" / "b" / "c" / "work"
    seen: list[Path] = []
    _run(_cfg(tmp_path), workdir=given, on_workdir=seen.append)
    assert seen == [given.absolute()]  # used as is: logs at <workdir>/logs while it runs
    assert fake.events[0] == ("start", given, True)
    assert list((tmp_path / "a").iterdir()) == []  # b/c/work gone, a (not ours) kept


def test_an_existing_workdir_keeps_its_contents_and_gets_a_subdirectory(
    fake: type[FakeDeployment], tmp_path: Path
) -> None:
    given = tmp_path / "mine"
    (given / "keys").mkdir(parents=True)
    (given / "keys" / "old.key").write_text("an earlier run's key")
    (given / "notes.txt").write_text("the user's file")
    before = _tree(given)
    seen: list[Path] = []
    _run(_cfg(tmp_path), workdir=given, on_workdir=seen.append)
    (work,) = seen
    assert work.parent == given and work.name.startswith("flwr-byz-deploy-")
    assert _tree(given) == before
    assert (given / "notes.txt").read_text() == "the user's file"


def test_out_inside_the_directory_to_delete_is_refused_before_anything_starts(
    fake: type[FakeDeployment], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    cfg = ExperimentConfig(clients=2, rounds=1, dataset="digits", out=str(work / "r.json"))
    with pytest.raises(ValueError, match=r"--out .* deletes .*--keep-workdir"):
        deploy(cfg, workdir=work)
    cfg2 = ExperimentConfig(
        clients=2, dataset="digits", out=str(tmp_path / "r.json"), checkpoint=str(work / "c.pt")
    )
    with pytest.raises(ValueError, match="--checkpoint"):
        deploy(cfg2, workdir=work)
    assert not work.exists() and fake.events == []
    fake.out = work / "r.json"
    assert _run(cfg, workdir=work, keep_workdir=True).config["workdir"] == str(work)
    (tmp_path / "mine").mkdir()  # an existing directory: the run has its own subdirectory
    fake.out = tmp_path / "mine" / "r.json"
    cfg3 = ExperimentConfig(clients=2, rounds=1, dataset="digits", out=str(fake.out))
    _run(cfg3, workdir=tmp_path / "mine")
    assert _tree(tmp_path / "mine") == {"r.json"}


def test_a_workdir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        WorkDir.plan(tmp_path / "f")


def test_workdir_plan_creates_nothing(tmp_path: Path) -> None:
    plan = WorkDir.plan(tmp_path / "x" / "y")
    assert plan.owned == tmp_path / "x" and not (tmp_path / "x").exists()
    assert plan.owns(tmp_path / "x" / "r.json") and not plan.owns(tmp_path / "r.json")
    assert not WorkDir.plan(tmp_path).owns(tmp_path / "r.json")


# ----------------------------------------------------------------------------------- CLI
runner = CliRunner()


def _cli(tmp_path: Path, *extra: str) -> Any:
    args = ["deploy", "--nodes", "2", "--rounds", "1", "--dataset", "digits"]
    args += ["--out", str(tmp_path / "out" / "r.json"), *extra]
    return runner.invoke(cli_app, args, env={"COLUMNS": "200"})


def test_cli_deletes_the_workdir_and_says_nothing_about_it(
    fake: type[FakeDeployment], tmp_path: Path
) -> None:
    result = _cli(tmp_path)
    assert result.exit_code == 0, result.output
    assert "kept" not in result.output
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("outcome", ["ok", "error"])
def test_cli_keep_workdir_prints_where_it_is(
    fake: type[FakeDeployment], tmp_path: Path, outcome: str
) -> None:
    fake.outcome = outcome
    result = _cli(tmp_path, "--keep-workdir")
    assert result.exit_code == (0 if outcome == "ok" else 2), result.output
    (work,) = (tmp_path / "tmp").iterdir()
    lines = [line for line in result.output.splitlines() if "work directory kept" in line]
    assert len(lines) == 1 and lines[0].endswith(str(work)), result.output
    assert set(FILES) <= _tree(work)


def test_cli_help_lists_keep_workdir() -> None:
    result = runner.invoke(cli_app, ["deploy", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--keep-workdir" in result.output
