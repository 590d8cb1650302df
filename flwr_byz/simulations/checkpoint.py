"""Checkpoints: what a run needs to continue after its ServerApp stopped.

``train_on_grid`` rewrites the checkpoint file after every completed round (atomically: a
temporary file, then ``os.replace``, so a run killed while writing leaves the previous one).
It holds the global model, the whole strategy object (model vector, method state such as
MARINA's g^k, robust momentum's last aggregate, ByzSGD's server replicas, the sampling
generator, the aggregator's own state), the Byzantine grid's attack object, the RNG state
and the rounds recorded so far. A run with ``resume=True`` loads it and continues with the
next round, so a deterministic method gives the same final result as an uninterrupted run.

State kept by the *clients* (``context.state`` on the SuperNodes: worker momenta, EF21's
g_i, the ByzSGD filter history) belongs to Flower's run and starts afresh in the resumed run;
the methods that keep none resume bit-identically (see docs/DEPLOYMENT.md).

The file is a pickle (``torch.save``): load only checkpoints you wrote yourself.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from .result import RoundRecord

__all__ = ["CHECKPOINT_VERSION", "RESUMABLE_OPTIONS", "Checkpoint"]

#: Bumped when the file's layout changes; an older file is refused with a clear error.
CHECKPOINT_VERSION = 1

#: Options that may differ between the run that wrote a checkpoint and the one resuming it.
RESUMABLE_OPTIONS = frozenset(
    {"rounds", "out", "checkpoint", "resume", "round_timeout", "ray_address", "device", "threads"}
)


@dataclass
class Checkpoint:
    """The state after round ``round`` of the experiment ``config`` (resolved, as a dict)."""

    config: dict[str, Any]
    round: int
    arrays: ArrayRecord
    strategy: Any
    records: list[RoundRecord] = field(default_factory=list)
    attack: Any = None
    attacked_replies: int = 0
    torch_rng: torch.Tensor | None = None

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint to ``path`` atomically (parents created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"version": CHECKPOINT_VERSION, **self.__dict__}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint written by ``save``; ``ValueError`` for a file that is not one."""
        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"{path} is not a readable flwr-byz checkpoint: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
            found = payload.get("version") if isinstance(payload, dict) else type(payload)
            raise ValueError(
                f"{path} is not a flwr-byz checkpoint of version {CHECKPOINT_VERSION} "
                f"(found {found!r})"
            )
        payload.pop("version")
        return cls(**payload)

    def check(self, config: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless ``config`` (resolved, as a dict) continues this run:
        every option but ``RESUMABLE_OPTIONS`` equal, and at least ``round`` rounds."""
        keys = (set(config) | set(self.config)) - RESUMABLE_OPTIONS
        differ = sorted(k for k in keys if config.get(k) != self.config.get(k))
        if differ:
            detail = ", ".join(
                f"{k}: {self.config.get(k)!r} -> {config.get(k)!r}" for k in differ[:6]
            )
            raise ValueError(f"the checkpoint is of another experiment ({detail})")
        if int(config["rounds"]) < self.round:
            raise ValueError(
                f"the checkpoint is at round {self.round}, past rounds={config['rounds']}"
            )
