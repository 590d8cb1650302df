"""``RunDefaults``: the run options a method chooses for itself when the user does not.

Each method module carries a ``DEFAULTS`` mapping (method name -> ``RunDefaults``) next to
its algorithm; ``flwr_byz.simulations.defaults`` collects them by name, and
``ExperimentConfig.resolved()`` fills every option left unset (None) from them. The values
come from ``flwr-byz defaults-sweep`` (docs/DEFAULTS.md): on digits, 40 rounds, 20 clients of
which 4 Byzantine, the candidate setting with the best worst-case test accuracy over the
attacks none, sign-flip, ALIE, IPM and label-flip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["LEGACY", "RunDefaults"]


@dataclass(frozen=True)
class RunDefaults:
    """A method's defaults of the method-dependent experiment options (the fields of
    ``ExperimentConfig`` of the same names). ``momentum`` is the local SGD momentum of the
    FedAvg-like methods, the worker momentum beta of robust-momentum and ``1 - eta`` of
    byz-ef21-sgdm; ``aggregator`` is the robust rule (byzsgd: the servers' rule over the
    workers' gradients); ``compressor`` matters to the compressed methods only."""

    aggregator: str = "median"
    lr: float = 0.05
    batch_size: int = 32
    local_epochs: int = 2
    momentum: float = 0.9
    compressor: str = "none"
    rounds: int = 30

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value."""
        return dataclasses.asdict(self)

    @staticmethod
    def names() -> tuple[str, ...]:
        """The option names a method sets (``ExperimentConfig`` fields)."""
        return tuple(fd.name for fd in dataclasses.fields(RunDefaults))


#: The one set of defaults every method had before it carried its own (``ExperimentConfig``
#: up to issue 24): what a pinned experiment writes out to keep its earlier numbers.
LEGACY = RunDefaults()
