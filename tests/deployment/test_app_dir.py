"""The Flower App ``flwr-byz deploy`` writes (``write_app``): one ``pyproject.toml`` that
Flower accepts, whose components are imported from the installed flwr_byz, whose run config
has every key (the defaults), and whose FAB ships nothing else. The real deployment that runs
it is in test_deployment.py (the TLS test)."""

from __future__ import annotations

import sys
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

from flwr.cli.build import build_fab_from_disk
from flwr.common.config import validate_config

import flwr_byz
from flwr_byz.deployment import write_app
from flwr_byz.deployment.deploy import find_app
from flwr_byz.deployment.flower_app import CLIENT_APP, SERVER_APP
from flwr_byz.simulations.config import ExperimentConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _manifest(app: Path) -> dict[str, Any]:
    with open(app / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def test_write_app_writes_a_flower_app_flower_accepts(tmp_path: Path) -> None:
    app = write_app(tmp_path / "a" / "app")
    assert app == tmp_path / "a" / "app" and find_app(app) == app
    assert sorted(p.name for p in app.iterdir()) == ["pyproject.toml"]
    config = _manifest(app)
    valid, errors, _ = validate_config(config, check_module=True, project_dir=app)
    assert valid, errors  # the components import from the installed package
    assert config["project"]["version"] == flwr_byz.__version__
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}


def test_its_run_config_is_the_defaults_with_the_checkouts_keys(tmp_path: Path) -> None:
    run_config = _manifest(write_app(tmp_path))["tool"]["flwr"]["app"]["config"]
    assert run_config == ExperimentConfig().to_run_config()
    # a source checkout is a Flower App too (`flwr run .`): the same keys (its values are
    # checked against the options in tests/simulations/test_config.py)
    assert set(run_config) == set(_manifest(ROOT)["tool"]["flwr"]["app"]["config"])
    assert ExperimentConfig.from_run_config(run_config, clients=10) == ExperimentConfig(clients=10)


def test_its_fab_ships_no_source(tmp_path: Path) -> None:
    fab = zipfile.ZipFile(BytesIO(build_fab_from_disk(write_app(tmp_path))))
    assert not [n for n in fab.namelist() if n.endswith(".py")]
    assert "pyproject.toml" in fab.namelist()
