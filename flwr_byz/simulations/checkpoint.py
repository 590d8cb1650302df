"""Checkpoints: what a run needs to continue after its ServerApp stopped.

``train_on_grid`` rewrites the checkpoint file after every completed round, atomically
(``flwr_byz.files.atomic_write``: a run killed while writing leaves the previous one). The file
holds tensors and JSON values only (``torch.save`` of dicts, lists, numbers, strings and
tensors), and is read with ``torch.load(..., weights_only=True)``: loading one never unpickles
an object, so a crafted file cannot run code; it is refused with a one-line ``ValueError``.
It holds the experiment's config, the round, the global model (a state dict), the state of the
strategy and of the Byzantine grid's attack as ``flwr_byz.statetree`` trees (model vector,
method state such as MARINA's g^k, the copies g_i of EF21, ByzSGD's replicas, the sampling
generator, the aggregator's and the attack's own state, the run's ``state_key``), the number
of attacked replies, the torch RNG state and the rounds recorded so far. A resumed run builds
a fresh strategy from its config and loads that state into it (``statetree.restore``).

State kept by the *clients* (``context.state`` on the nodes: worker momenta, EF21's g_i,
mu2-SGD's d and x, the ByzSGD worker's history) is written by the nodes themselves beside the
checkpoint, in ``client_state_dir(checkpoint)`` = ``<checkpoint>.clients/<partition>/
round-<r>.pt`` (``flwr_byz.clients.state``; the latest two rounds each node trained in), and
read back by a node that has none in the resumed run. With both, a deterministic method gives
the same numbers after a resume as without one.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from ..files import atomic_write
from .result import RoundRecord

__all__ = [
    "CHECKPOINT_VERSION",
    "RESUMABLE_OPTIONS",
    "Checkpoint",
    "client_state_dir",
    "remove",
]

#: Bumped when the file's layout changes; another version is refused with a clear error.
#: Version 2: tensors and JSON values only (version 1 pickled the strategy object).
CHECKPOINT_VERSION = 2

#: Options that may differ between the run that wrote a checkpoint and the one resuming it.
RESUMABLE_OPTIONS = frozenset(
    {"rounds", "out", "checkpoint", "resume", "round_timeout", "ray_address", "device", "threads"}
)

_FIELDS = ("config", "round", "arrays", "strategy", "records", "attack", "attacked_replies",
           "torch_rng")  # fmt: skip


def client_state_dir(checkpoint: str | Path) -> Path:
    """Where the nodes keep their state for the run checkpointed at ``checkpoint``:
    ``<checkpoint>.clients`` (absolute), one folder per partition."""
    path = Path(os.path.abspath(checkpoint))
    return path.with_name(path.name + ".clients")


def remove(checkpoint: str | Path) -> None:
    """Delete the checkpoint file and the nodes' state beside it (``client_state_dir``; on
    this machine), e.g. once the run's result is written. Missing ones are fine."""
    Path(checkpoint).unlink(missing_ok=True)
    shutil.rmtree(client_state_dir(checkpoint), ignore_errors=True)


@dataclass
class Checkpoint:
    """The state after round ``round`` of the experiment ``config`` (resolved, as a dict):
    ``strategy`` and ``attack`` are ``flwr_byz.statetree`` trees (``capture`` / ``restore``)."""

    config: dict[str, Any]
    round: int
    arrays: ArrayRecord
    strategy: dict[str, Any]
    records: list[RoundRecord] = field(default_factory=list)
    attack: dict[str, Any] | None = None
    attacked_replies: int = 0
    torch_rng: torch.Tensor | None = None

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint to ``path`` atomically (parents created); ``TypeError``
        naming the value, before anything is written, when a value is neither a tensor nor
        JSON."""
        path = Path(path)
        payload = {
            "version": CHECKPOINT_VERSION,
            "config": self.config,
            "round": int(self.round),
            "arrays": [[k, v.detach()] for k, v in self.arrays.to_torch_state_dict().items()],
            "strategy": self.strategy,
            "records": [dataclasses.asdict(r) for r in self.records],
            "attack": self.attack,
            "attacked_replies": int(self.attacked_replies),
            "torch_rng": self.torch_rng,
        }
        _check_plain(payload, "checkpoint")
        with atomic_write(path) as fh:
            torch.save(payload, fh)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint written by ``save``, without unpickling any object;
        ``ValueError`` (one line, naming ``path``) for a file that is not one."""
        payload = _read(Path(path))
        if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
            found = payload.get("version") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(
                f"{path} is not a flwr-byz checkpoint of version {CHECKPOINT_VERSION} "
                f"(found {found!r}); start the run again without --resume"
            )
        try:
            return cls._parse(payload)
        except (KeyError, TypeError, ValueError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path} is a malformed flwr-byz checkpoint: {detail}") from None

    @classmethod
    def _parse(cls, payload: dict[str, Any]) -> Checkpoint:
        missing = [k for k in _FIELDS if k not in payload]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        arrays = payload["arrays"]
        if not isinstance(arrays, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
            and isinstance(p[1], torch.Tensor)
            for p in arrays
        ):  # fmt: skip
            raise ValueError("the model is not a list of (name, tensor) pairs")
        if not isinstance(payload["config"], dict) or not isinstance(payload["strategy"], dict):
            raise ValueError("the config or the strategy state is not a dict")
        if not isinstance(payload["records"], list):
            raise ValueError("the rounds are not a list")
        rng = payload["torch_rng"]
        if rng is not None and not isinstance(rng, torch.Tensor):
            raise ValueError("the torch RNG state is not a tensor")
        return cls(
            config=payload["config"],
            round=int(payload["round"]),
            arrays=ArrayRecord(dict(arrays)),
            strategy=payload["strategy"],
            records=[RoundRecord(**r) for r in payload["records"]],
            attack=payload["attack"],
            attacked_replies=int(payload["attacked_replies"]),
            torch_rng=rng,
        )

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


def _read(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``; every failure but a missing file is a
    one-line ``ValueError``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:  # an object the safe loader refuses: nothing ran
        found = _pickled_names(path)
        if any(name.startswith("flwr_byz.") for name in found):
            raise ValueError(
                f"{path} is an older flwr-byz checkpoint (version 1 pickled objects; this "
                f"flwr-byz reads version {CHECKPOINT_VERSION} only): start the run again "
                "without --resume"
            ) from None
        names = f" ({', '.join(found[:3])})" if found else ""
        raise ValueError(
            f"{path} is not a flwr-byz checkpoint: it holds pickled objects{names}, which are "
            "never loaded"
        ) from None
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a readable flwr-byz checkpoint: {detail}") from None


def _pickled_names(path: Path) -> list[str]:
    """The globals (classes, functions) the file would import when unpickled; read from the
    pickle's opcodes, never executed."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def _check_plain(value: Any, where: str) -> None:
    """``TypeError`` unless ``value`` is tensors and JSON values only (what
    ``torch.load(weights_only=True)`` reads back)."""
    if value is None or type(value) in (bool, int, str, torch.Tensor):
        return
    if type(value) is float:
        return  # NaN and Inf too: the rounds' numbers before the first evaluation
    if type(value) is list:
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"cannot save {where}: a key {k!r} that is not a string")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"cannot save {where}: a {type(value).__module__}.{type(value).__qualname__} "
        "(a checkpoint holds tensors and JSON values only)"
    )
