"""The Flower App that the simulation engine and ``flwr-byz deploy`` hand to ``flwr run``,
with no source checkout.

``write_app(dir)`` writes a directory holding one file, a ``pyproject.toml`` whose
``[tool.flwr.app]`` names this package's ServerApp and ClientApp and whose
``[tool.flwr.app.config]`` holds every run-config key with its default. ``flwr run DIR`` ships
it as a FAB; the ServerApp and ClientApp processes import the components from the flwr_byz
installed next to them, so a wheel install is enough.

The simulation engine's app (``write_app(dir, runs=True)``) declares one more key, ``RUNS_KEY``:
the path of a JSON file listing the run configs of a group of experiments that one ``flwr run``
runs one after the other (``flwr_byz.simulations.app.main``). The app ``flwr-byz deploy``
writes, like the checkout's ``pyproject.toml``, has only the experiment's keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ..files import write_text
from .config import ExperimentConfig

__all__ = [
    "CLIENT_APP",
    "PROGRESS_ENV",
    "RUNS_KEY",
    "SERVER_APP",
    "app_manifest",
    "run_config_toml",
    "toml_value",
    "write_app",
]

SERVER_APP = "flwr_byz.simulations.app:server_app"
CLIENT_APP = "flwr_byz.simulations.app:client_app"

#: Where the ServerApp appends every finished round, one JSON line each (``{"out": <the
#: config's out>, "round": <RoundRecord>}``), when this environment variable names a file:
#: the simulation engine sets it for the processes it starts and tails the file.
PROGRESS_ENV = "FLWR_BYZ_PROGRESS"

#: The run-config key naming a JSON file (a list of run configs, ``to_run_config``'s, each
#: over the app's defaults) that the ServerApp runs one after the other in one ``flwr run``;
#: ``""`` (its default) or absent: the run config itself is the one experiment.
RUNS_KEY = "runs-file"


def toml_value(value: Any) -> str:
    """``value`` (a bool, a number or else a string) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def run_config_toml(values: Mapping[str, Any]) -> str:
    """``values`` as the TOML of a ``flwr run --run-config`` file (None values left out)."""
    lines = [f"{key} = {toml_value(v)}" for key, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def app_manifest(runs: bool = False) -> str:
    """The ``pyproject.toml`` of the generated Flower App (Flower needs ``[project]`` with a
    name and a version, and ``[tool.flwr.app]`` with a publisher and the components); with
    ``runs``, its run config also declares ``RUNS_KEY`` (Flower refuses an undeclared key)."""
    config = ExperimentConfig().to_run_config()
    if runs:
        config[RUNS_KEY] = ""
    return (
        "[project]\n"
        'name = "flwr-byz"\n'
        f'version = "{__version__}"\n'
        'description = "flwr-byz experiments as a Flower App (components from the installed '
        'flwr_byz)"\n'
        'license = "Apache-2.0"\n'
        f'dependencies = ["flwr-byz=={__version__}"]\n'
        "\n"
        "[tool.flwr.app]\n"
        'publisher = "flwr-byz"\n'
        "\n"
        "[tool.flwr.app.components]\n"
        f'serverapp = "{SERVER_APP}"\n'
        f'clientapp = "{CLIENT_APP}"\n'
        "\n"
        "[tool.flwr.app.config]\n" + run_config_toml(config)
    )


def write_app(directory: str | Path, runs: bool = False) -> Path:
    """Write the Flower App into ``directory`` (created if missing); its absolute path.
    ``runs``: the simulation engine's app, with ``RUNS_KEY`` (``app_manifest``)."""
    path = Path(directory).absolute()
    path.mkdir(parents=True, exist_ok=True)
    write_text(path / "pyproject.toml", app_manifest(runs))
    return path
