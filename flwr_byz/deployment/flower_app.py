"""The Flower App that ``flwr-byz deploy`` hands to ``flwr run``, with no source checkout.

``write_app(dir)`` writes a directory holding one file, a ``pyproject.toml`` whose
``[tool.flwr.app]`` names this package's ServerApp and ClientApp and whose
``[tool.flwr.app.config]`` holds every run-config key with its default. ``flwr run DIR`` ships
it as a FAB; the ServerApp and ClientApp processes import the components from the flwr_byz
installed next to them, so a wheel install is enough.
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..files import write_text
from ..simulations.config import ExperimentConfig
from .federation import run_config_toml

__all__ = ["CLIENT_APP", "SERVER_APP", "app_manifest", "write_app"]

SERVER_APP = "flwr_byz.simulations.app:server_app"
CLIENT_APP = "flwr_byz.simulations.app:client_app"


def app_manifest() -> str:
    """The ``pyproject.toml`` of the generated Flower App (Flower needs ``[project]`` with a
    name and a version, and ``[tool.flwr.app]`` with a publisher and the components)."""
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
        "[tool.flwr.app.config]\n" + run_config_toml(ExperimentConfig().to_run_config())
    )


def write_app(directory: str | Path) -> Path:
    """Write the Flower App into ``directory`` (created if missing); its absolute path."""
    path = Path(directory).absolute()
    path.mkdir(parents=True, exist_ok=True)
    write_text(path / "pyproject.toml", app_manifest())
    return path
