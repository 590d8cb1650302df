"""The Flower App that ``flwr-byz deploy`` hands to ``flwr run``: the one of
``flwr_byz.simulations.flower_app`` (the simulation engine runs it too), re-exported here."""

from __future__ import annotations

from ..simulations.flower_app import CLIENT_APP, SERVER_APP, app_manifest, write_app

__all__ = ["CLIENT_APP", "SERVER_APP", "app_manifest", "write_app"]
