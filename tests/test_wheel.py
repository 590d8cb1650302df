"""The wheel works outside the repository: ``python -m build`` makes an sdist and, from it, a
wheel; the wheel is installed into a fresh virtual environment in a temporary directory and
``python -m flwr_byz`` runs there, from a working directory outside the repository, with a
home of its own.

Nothing is downloaded: the build runs without isolation, and the new environment takes the
dependencies from this one through a ``.pth`` file naming this environment's site-packages
(a ``.pth`` line is put on ``sys.path``, but the ``.pth`` files in that directory are not
read, so the editable install of flwr_byz there stays off). Each command's output is kept in
``transcript.txt`` beside the environment and printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import flwr_byz

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class WheelEnv:
    """A fresh virtual environment with only the wheel installed, a working directory and a
    home outside the repository, and the transcript of the commands run in it."""

    root: Path
    wheel: Path
    sdist: Path
    python: Path
    cwd: Path
    env: dict[str, str]
    transcript: Path

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``args`` with the environment's interpreter as ``python``; its output is appended
        to the transcript. Fails the test on a non-zero exit code."""
        command = [str(self.python) if a == "python" else a for a in args]
        return self._run(command, f"$ {' '.join(args)}", cwd=self.cwd, timeout=timeout)

    def _run(
        self, command: Sequence[str], title: str, cwd: Path, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(command),
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        text = f"{title}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n\n"
        with self.transcript.open("a") as fh:
            fh.write(text)
        print(text, end="")
        assert proc.returncode == 0, text[-4000:]
        return proc


def _environment(home: Path, venv: Path) -> dict[str, str]:
    """This process's environment without what points into the repository or its .venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        HOME=str(home),
        VIRTUAL_ENV=str(venv),
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        PYTHONNOUSERSITE="1",
        COLUMNS="200",
    )
    env.pop("FLWR_BYZ_CACHE", None)
    return env


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> WheelEnv:
    root = tmp_path_factory.mktemp("wheel")
    dist, venv, cwd, home = (root / name for name in ("dist", "venv", "elsewhere", "home"))
    cwd.mkdir()
    home.mkdir()
    transcript = root / "transcript.txt"
    env = _environment(home, venv)
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    built = proc.stdout.strip().splitlines()[-1]  # "Successfully built <sdist> and <wheel>"
    transcript.write_text(f"$ python -m build --no-isolation --outdir DIST .\n{built}\n\n")
    (wheel,) = dist.glob("flwr_byz-*.whl")
    (sdist,) = dist.glob("flwr_byz-*.tar.gz")

    # no pip in the new environment: this environment's pip installs into it (--python)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wheel_env = WheelEnv(root, wheel, sdist, python, cwd, env, transcript)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    wheel_env._run(
        [*pip, "--no-deps", "--no-index", "--no-cache-dir", str(wheel)],
        f"$ pip install --no-deps --no-index {wheel.name}",
        cwd=cwd,
    )
    # only now the dependencies: pip must not see (nor try to replace) this environment's
    # editable flwr-byz
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_flwr_byz_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return wheel_env


def test_the_wheel_holds_the_package_and_the_sdist_the_docs(wheel_env: WheelEnv) -> None:
    names = set(zipfile.ZipFile(wheel_env.wheel).namelist())
    package = ROOT / "flwr_byz"
    modules = {
        str(p.relative_to(ROOT)) for p in package.rglob("*.py") if "__pycache__" not in p.parts
    }
    assert modules <= names, sorted(modules - names)
    assert "flwr_byz/py.typed" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not {n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))}
    assert wheel_env.wheel.name == f"flwr_byz-{flwr_byz.__version__}-py3-none-any.whl"
    with tarfile.open(wheel_env.sdist) as tar:
        top = f"flwr_byz-{flwr_byz.__version__}/"
        members = {m.name.removeprefix(top) for m in tar.getmembers()}
    for name in ("README.md", "CHANGELOG.md", "pyproject.toml", "docs/ALGORITHMS.md"):
        assert name in members, name
    assert "tests/test_wheel.py" in members
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]


def test_the_wheel_is_what_runs(wheel_env: WheelEnv) -> None:
    probe = (
        "import json, flwr_byz, importlib.metadata as m; d = m.distribution('flwr-byz'); "
        "print(json.dumps({'file': flwr_byz.__file__, 'version': flwr_byz.__version__, "
        "'metadata': d.version, 'dist_file': str(d.locate_file('flwr_byz/__init__.py'))}))"
    )
    info = json.loads(wheel_env.run("python", "-c", probe).stdout)
    assert Path(info["file"]).is_relative_to(wheel_env.root / "venv"), info
    assert Path(info["dist_file"]).is_relative_to(wheel_env.root / "venv"), info
    assert info["version"] == info["metadata"] == flwr_byz.__version__
    for command in (("python", "-m", "flwr_byz"), (str(wheel_env.root / "venv/bin/flwr-byz"),)):
        out = wheel_env.run(*command, "--version").stdout
        assert out.strip() == f"flwr-byz {flwr_byz.__version__}"


def test_run_reproduce_and_deploy_work_outside_the_repository(wheel_env: WheelEnv) -> None:
    """The issue's commands as written: ``run`` generates its data (MNIST-1D) under the new
    home and writes its result under ``results/`` of the working directory."""
    wheel_env.run("python", "-m", "flwr_byz", "run", "--engine", "local", "--rounds", "2")
    (out,) = (wheel_env.cwd / "results").glob("*.json")
    result = json.loads(out.read_text())
    assert result["config"]["rounds"] == 2
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert 0.0 <= result["final"]["accuracy"] <= 1.0
    assert "reproduce" in wheel_env.run("python", "-m", "flwr_byz", "reproduce", "--help").stdout
    deploy_help = wheel_env.run("python", "-m", "flwr_byz", "deploy", "--help").stdout
    assert "--app" in deploy_help and "--nodes" in deploy_help
