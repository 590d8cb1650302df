"""Result of one experiment and its JSON file (the schema README.md describes under
"Experiments")."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_json

__all__ = ["Result", "RoundRecord"]


@dataclass
class RoundRecord:
    """One round: central test loss/accuracy of the new global model, replies the strategy
    rejected, bytes of the Flower Messages the clients sent (up) and received (down), and the
    round's wall-clock seconds (sampling, messaging, client work, aggregation); ``missing``:
    sampled nodes that sent no reply before the round's timeout (e.g. a lost node); the training
    objective ``train_loss`` (whole training set, with the weight decay) and, for convex
    models, the optimality gap ``f(x) - f*``; ``metrics``: the strategy's own numeric train
    metrics of the round (e.g. ByzSGD's replica ``diameter``); ``asr``: under a backdoor
    attack, the attack success rate (the share of the triggered test inputs of the other
    classes that the model classifies as the target), NaN otherwise. The JSON file lists
    ``asr`` right after ``accuracy``."""

    round: int
    loss: float
    accuracy: float
    rejected: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    train_loss: float = math.nan
    gap: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    missing: int = 0
    asr: float = math.nan


@dataclass
class Result:
    """``config`` (resolved, JSON-ready), ``rounds`` and ``final`` (last round's accuracy,
    ASR and loss, plus totals)."""

    config: dict[str, Any]
    rounds: list[RoundRecord] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> Result:
        """Fill ``final`` from the rounds."""
        last = self.rounds[-1] if self.rounds else None
        seconds = [r.seconds for r in self.rounds]
        self.final = {
            "accuracy": last.accuracy if last else math.nan,
            "asr": last.asr if last else math.nan,
            "loss": last.loss if last else math.nan,
            "train_loss": last.train_loss if last else math.nan,
            "gap": last.gap if last else math.nan,
            "rounds": len(self.rounds),
            "rejected": sum(r.rejected for r in self.rounds),
            "missing": sum(r.missing for r in self.rounds),
            "bytes_up": sum(r.bytes_up for r in self.rounds),
            "bytes_down": sum(r.bytes_down for r in self.rounds),
            "seconds_per_round": sum(seconds) / len(seconds) if seconds else math.nan,
        }
        return self

    @property
    def accuracy(self) -> float:
        """Final accuracy (NaN when the model diverged or no round ran)."""
        value = self.final.get("accuracy")
        return math.nan if value is None else float(value)

    @property
    def asr(self) -> float:
        """Final attack success rate (NaN without a backdoor attack, or in a file written
        before ASR was recorded)."""
        value = self.final.get("asr")
        return math.nan if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN/Inf become ``null`` so the file is strict JSON."""
        return _finite(
            {
                "config": self.config,
                "rounds": [_round_dict(r) for r in self.rounds],
                "final": self.final,
            }
        )

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically (parents created): a run killed while saving leaves
        the previous file or the new one, never a truncated one."""
        return write_json(path, self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """From a dict as written by ``to_dict`` (``null`` metrics read back as NaN)."""
        rounds = [RoundRecord(**_round_fields(r)) for r in data.get("rounds", [])]
        final = {k: (math.nan if v is None else v) for k, v in data.get("final", {}).items()}
        return cls(config=dict(data["config"]), rounds=rounds, final=final)

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read a result file."""
        return cls.from_dict(json.loads(Path(path).read_text()))


_ROUND_FIELDS = {f.name for f in dataclasses.fields(RoundRecord)}


def _round_dict(record: RoundRecord) -> dict[str, Any]:
    """``record`` as a dict with ``asr`` right after ``accuracy`` (the dataclass keeps it
    last, so positional construction stays as it was)."""
    fields = dataclasses.asdict(record)
    asr = fields.pop("asr")
    out: dict[str, Any] = {}
    for key, value in fields.items():
        out[key] = value
        if key == "accuracy":
            out["asr"] = asr
    return out


def _round_fields(r: dict[str, Any]) -> dict[str, Any]:
    """The RoundRecord fields of a round dict; ``null`` metrics read back as NaN (a file
    written before a field existed, e.g. ``asr``, reads as the field's default)."""
    out = {k: v for k, v in r.items() if k in _ROUND_FIELDS}
    for key in ("loss", "accuracy", "train_loss", "gap", "asr"):
        if out.get(key) is None:
            out[key] = math.nan
    return out


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
