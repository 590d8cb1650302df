"""A seeded fuzzer of client replies against the strategies (used by ``test_fuzz.py``).

A *profile* is a strategy configuration and its honest nodes: RobustFedAvg's nodes take one
local gradient step on a softmax regression (:class:`FedAvgNodes`); the method strategies'
nodes are :class:`flwr_byz.clients.GradientClient` on the same problem (``method_helpers``,
one persistent Context per node). :func:`run_fuzz` drives the rounds by hand
(``configure_train``, the honest replies, ``aggregate_train``) and forges replies in every
round: each of the profile's ``f`` Byzantine nodes (fixed for the run) sends a *main* reply of
the least used :data:`KINDS` entry that applies to its honest reply, after a few *pre*
replies that are rejected whatever their order; up to ``n - 2f - 1`` honest nodes send a
benign faulty reply (rejected, or honest content in an odd wrapper); replies from nodes the
round was not sent to are slipped in; and now and then ``aggregate_train`` is first called
with another round number.

Each forged message carries the outcomes it may have (``accepted`` or rejection reasons), and
each node counts as ``honest`` (its honest reply is taken), ``silent`` (nothing is taken) or
``byzantine`` (a non-honest input may be taken). Every round then checks:

- nothing escaped ``configure_train`` / ``aggregate_train``; the model is finite;
- the rejection log lines (one per rejected reply: node and reason) match the forged messages
  node by node, at most one reply per node is taken, and the round's ``accepted``,
  ``rejected`` and ``rejected-<reason>`` metrics equal the log's counts (Byz-EF21-SGDM: its
  ``resets`` metric counts the dense replies taken, and a node's resets are taken at most once
  per ``reset_interval`` rounds after its first);
- *exact*: when no node counts as ``byzantine``, the model equals, bit for bit, the one the
  same strategy reaches from the same state (a deep copy taken right after
  ``configure_train``, before any aggregate call) on the honest replies of the nodes that
  count as ``honest``, in the same order: a rejected reply (or a stale aggregate call)
  changes nothing;
- *bounded*: otherwise the step (the distance between the model before and after the round)
  is at most :data:`STEP_FACTOR` times the largest honest step from the same state (see
  there) plus :data:`STEP_ATOL`.

Byz-VR-MARINA-PP returns in round k the point x^{k+1} it computed from g^k in
``configure_train``; a round's replies move g, so its step is ``gamma ||g^{k+1}||``, the move
of the next point (:func:`start_position`, :func:`position`).

``python -m tests.strategies.fuzz_helpers [rounds-multiplier] [seed]`` runs every profile and
prints the malformed replies per kind and the profiles' figures.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import Strategy

from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import (
    BRCSGD,
    REASONS,
    RESET_REASONS,
    ByzEF21,
    ByzEF21SGDM,
    ByzSGD,
    ByzVRMarinaPP,
    FLTrust,
    Mu2SGD,
    RobustFedAvg,
    RobustMomentum,
)
from flwr_byz.strategies.byz_ef21_sgdm import ByzEF21SGDM as _EF21
from tests.strategies.method_helpers import Network, initial_arrays, local_data, model_grad, vec

ACCEPTED = "accepted"
ALL_REASONS = frozenset(REASONS) | frozenset(RESET_REASONS)

STEP_FACTOR = 1.5
"""How much longer than the largest honest step a round with accepted Byzantine inputs may
move the model.

The largest honest step is the longest of three honest-only rounds from the same state (the
strategy deep-copied after ``configure_train``): (1) every sampled node's honest reply,
(2) only the replies of the nodes that stayed honest (the Byzantine ones silent), and, when
the fuzzed step exceeds the factor times those, (3) each honest input alone: the rule
replaced by "take input i" (:func:`_single_input_steps`), i.e. how far one honest node's
reply would move the model. (3) is needed: honest inputs partly cancel in the aggregate, and
a robust rule with ``f`` outliers legitimately lands elsewhere among the honest inputs (Krum
picks another one, the median moves ``f`` order statistics, a forged sample count puts the
weighted median on one honest reply), measured up to 12x the longer of (1) and (2) here.

Why 1.5: against all three the fuzzed steps stayed within 1.03x (22 profiles, 2000 rounds,
every bounded round measured: ``run_fuzz(..., step_factor=0, strict=False)``). A
coordinate-wise rule keeps each coordinate inside the honest inputs' range, so its output is
no longer than their coordinate-wise envelope, which can exceed the longest single input
(at most sqrt(#honest) times, when the inputs disagree coordinate by coordinate); 1.5 leaves
that room. A Byzantine input that gets through (an unchecked 1e30 reset, a broken or
misconfigured rule: Mean, or Bucketing with too few buckets) moves the model by orders of
magnitude more.
"""

STEP_ATOL = 1e-6
"""Absolute slack of the bounded-step check (float32 rounding of a step near zero)."""

Outcomes = frozenset[str]
CountsAs = Literal["honest", "silent", "byzantine"]


def rejected(*reasons: str) -> Outcomes:
    return frozenset(reasons)


ACCEPT: Outcomes = frozenset({ACCEPTED})
#: A finite, well-formed non-honest input: accepted, or refused by a content check
#: (EF21: no copy, g_i + c_i overflow; a dense reset's limit or norm bound).
BYZANTINE_VALUE: Outcomes = frozenset({ACCEPTED, "malformed", "non-finite", *RESET_REASONS})


# --- the problem and the honest nodes -----------------------------------------------------------
FEATURES, CLASSES = 5, 3
D = FEATURES * CLASSES + CLASSES


def fedavg_model(seed: int = 0) -> ArrayRecord:
    """Linear(5, 3) (``weight``, ``bias``, float32) and an int64 counter ``count`` (an integer
    array the strategies pass through)."""
    record = initial_arrays(seed)
    record["count"] = Array(np.array([7], dtype=np.int64))
    return record


@dataclass
class FedAvgNodes:
    """RobustFedAvg's honest nodes: one gradient step of size ``lr`` on their local data (the
    softmax regression of ``method_helpers``), the counter unchanged, ``num-examples`` = the
    local data size."""

    nodes: Sequence[int]
    size: int = 24
    lr: float = 0.5

    def __post_init__(self) -> None:
        self.data = {n: local_data(n, self.size + (n % 3)) for n in self.nodes}

    def handle(self, ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        x, y = self.data[node]
        arrays = sgd_step(ins.content.array_records["arrays"], x, y, self.lr)
        metrics = MetricRecord({"train_loss": 1.0, "num-examples": len(y)})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=ins)


def sgd_step(sent: ArrayRecord, x: torch.Tensor, y: torch.Tensor, lr: float) -> ArrayRecord:
    """``sent`` after one gradient step of size ``lr`` on ``(x, y)`` (the counter kept)."""
    w, b = sent["weight"].numpy(), sent["bias"].numpy()
    point = torch.from_numpy(np.concatenate([w.ravel(), b.ravel()]).astype(np.float64))
    new = point.numpy() - lr * model_grad(point, x, y).numpy()
    return ArrayRecord(
        {
            "weight": Array(new[: w.size].reshape(w.shape).astype(w.dtype)),
            "bias": Array(new[w.size :].astype(b.dtype)),
            "count": sent["count"],
        }
    )


def _fltrust(n: int = 9) -> Callable[[], Strategy]:
    """FLTrust whose root set is one more honest node's data (one gradient step, as the
    nodes take)."""
    x, y = local_data(100, 24)
    return lambda: FLTrust(
        lambda server_round, arrays, config: sgd_step(arrays, x, y, 0.5), min_available_nodes=n
    )


# --- profiles -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """A strategy configuration to fuzz: ``make()`` builds it for ``nodes`` node IDs, ``f`` of
    which are Byzantine (the rule is set for ``f``); ``formats`` the reply formats its honest
    nodes send (for the coverage check)."""

    name: str
    make: Callable[[], Strategy]
    formats: frozenset[str]
    nodes: int = 7
    f: int = 2
    fedavg: bool = False
    weighted: bool = False
    rounds: int = 40

    @property
    def node_ids(self) -> list[int]:
        return [101 + i for i in range(self.nodes)]


def _fedavg(aggregator: str, n: int = 9, **kwargs: Any) -> Callable[[], Strategy]:
    return lambda: RobustFedAvg(aggregator, f=2, min_available_nodes=n, **kwargs)


def _profiles() -> list[Profile]:
    dense = frozenset({"dense"})
    ef = frozenset({"dense", "ef21"})
    out = [
        Profile(f"RobustFedAvg[{agg}]", _fedavg(agg), dense, nodes=9, fedavg=True, rounds=60)
        for agg in ("median", "krum", "nnm+krum", "trimmedmean", "geomed", "cc:tau=0.1")
    ]
    out += [
        Profile("FLTrust", _fltrust(), dense, nodes=9, fedavg=True, rounds=60),
        Profile(
            "RobustFedAvg[median, clip_alpha=1]",
            _fedavg("median", clip_alpha=1.0),
            dense,
            nodes=9,
            fedavg=True,
        ),
        Profile(
            "RobustFedAvg[median, weighted]",
            _fedavg("median", weighted=True),
            dense,
            nodes=9,
            fedavg=True,
            weighted=True,
        ),
        Profile(
            "RobustMomentum[median]",
            lambda: RobustMomentum("median", f=2, lr=0.5, batch_size=8, clients_per_round=7),
            dense,
            nodes=8,
        ),
        Profile(
            "RobustMomentum[cc:tau=0.5, clip_alpha=2]",
            lambda: RobustMomentum(
                "cc:tau=0.5", f=2, lr=0.5, batch_size=8, clients_per_round=7, clip_alpha=2.0
            ),
            dense,
        ),
        Profile(
            "Mu2SGD[ctma+median]",
            lambda: Mu2SGD("ctma+median", f=2, lr=0.3, batch_size=8, clients_per_round=7),
            dense,
            nodes=8,
        ),
        Profile(
            "ByzSGD[median rule, mda]",
            lambda: ByzSGD(n_servers=2, f_servers=0, worker_aggregator="mda", f=2, lr=0.3,
                           gather_period=3, batch_size=8),
            dense,
        ),
        Profile(
            "ByzSGD[filter rule, median]",
            lambda: ByzSGD(n_servers=2, f_servers=0, worker_aggregator="median", f=2, lr=0.3,
                           gather_period=2, worker_rule="filter", batch_size=8),
            dense,
        ),
    ]  # fmt: skip
    for spec in ("randk:0.3", "qsgd:4", "natural", "none"):
        out.append(
            Profile(
                f"ByzVRMarinaPP[{spec}]",
                lambda spec=spec: ByzVRMarinaPP(
                    "median", compressor=spec, f=2, f_full=2, p=0.3, lr=0.5, batch_size=8,
                    clients_per_round=7,
                ),
                frozenset({"dense", _fmt_name(spec)}),
                nodes=8,
            )
        )  # fmt: skip
    for cls, spec in ((ByzEF21SGDM, "topk:0.2"), (ByzEF21SGDM, "natural"), (ByzEF21, "topk:0.3")):
        out.append(
            Profile(
                f"{cls.__name__}[{spec}]",
                lambda cls=cls, spec=spec: cls(
                    "nnm+cwtm", f=2, lr=0.5, compressor=spec, batch_size=8, seed=1
                ),
                ef | {_fmt_name(spec)},
            )
        )
    for spec in ("topk:0.2", "qsgd:2"):
        out.append(
            Profile(
                f"BRCSGD[{spec}]",
                lambda spec=spec: BRCSGD("cwtm", f=2, lr=0.5, compressor=spec, batch_size=8),
                frozenset({_fmt_name(spec)}),
            )
        )
    return out


def _fmt_name(spec: str) -> str:
    name = spec.split(":")[0]
    return "identity" if name == "none" else name


PROFILES: list[Profile] = _profiles()


def start_position(strategy: Strategy, arrays: ArrayRecord) -> torch.Tensor:
    """Where the model is when a round's replies arrive (after ``configure_train``)."""
    if isinstance(strategy, ByzVRMarinaPP):
        return strategy.state.x.to(torch.float64).clone()
    return position(strategy, arrays)


def position(strategy: Strategy, arrays: ArrayRecord) -> torch.Tensor:
    """Where the round leaves the model, flat float64: the returned (or kept) model; for
    Byz-VR-MARINA-PP the next point ``x - gamma g`` (module doc)."""
    if isinstance(strategy, ByzVRMarinaPP):
        state = strategy.state
        x = state.x.to(torch.float64)
        return x if state.g is None else x - strategy.lr * state.g.to(torch.float64)
    if isinstance(strategy, RobustFedAvg):
        return vec(arrays)
    return strategy.state.x.to(torch.float64).clone()  # type: ignore[attr-defined]


# --- forging ------------------------------------------------------------------------------------
_PAYLOAD_FORMATS = {
    frozenset({"values", "indices"}): "topk",
    frozenset({"values", "seed"}): "randk",
    frozenset({"values"}): "identity",
    frozenset({"norm", "levels"}): "qsgd",
    frozenset({"signs", "exponents"}): "natural",
}


@dataclass
class Ctx:
    """What a kind forges from: the node's instruction and honest reply, its previous honest
    reply, the profile, the fuzzer's generator and IDs the round was not sent to."""

    ins: Message
    honest: Message
    node: int
    profile: Profile
    rng: np.random.Generator
    previous: Message | None
    strangers: list[int]
    is_ef21: bool
    key: str = field(init=False)  # the honest reply's one ArrayRecord key
    record: ArrayRecord = field(init=False)
    fmt: str = field(init=False)  # "dense" or the payload's compressor ("topk", "randk", ...)
    _arrays: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        ((self.key, self.record),) = self.honest.content.array_records.items()
        self._arrays = {k: self.record[k].numpy() for k in self.record}
        self.fmt = "dense" if self.key != "payload" else _PAYLOAD_FORMATS[frozenset(self._arrays)]

    @property
    def metrics(self) -> dict[str, MetricRecord]:
        return {k: MetricRecord(dict(v)) for k, v in self.honest.content.metric_records.items()}

    def arrays(self) -> dict[str, np.ndarray]:
        """A fresh copy of the honest arrays."""
        return {k: v.copy() for k, v in self._arrays.items()}

    def reply(
        self,
        record: ArrayRecord | dict[str, np.ndarray] | dict[str, Array] | None,
        key: str | None = None,
        metrics: dict[str, Any] | None = None,
        to: Message | None = None,
    ) -> Message:
        """A reply to ``to`` (default: the node's instruction) with ``record`` under ``key``
        (default: the honest key) and the honest metrics (or ``metrics``)."""
        content: dict[str, Any] = {}
        if record is not None:
            if not isinstance(record, ArrayRecord):
                record = ArrayRecord(
                    {k: v if isinstance(v, Array) else Array(np.ascontiguousarray(v))
                     for k, v in record.items()}
                )  # fmt: skip
            content[key or self.key] = record
        content.update(self.metrics if metrics is None else metrics)
        return Message(RecordDict(content), reply_to=self.ins if to is None else to)

    def pick(self, names: Iterable[str]) -> str:
        names = sorted(names)
        return names[int(self.rng.integers(len(names)))]

    def float_keys(self) -> list[str]:
        return [k for k, v in self._arrays.items() if v.dtype.kind == "f"]


@dataclass(frozen=True)
class Forged:
    """The messages a node sends (each with its allowed outcomes) and how the node counts in
    the round: its honest reply accepted, nothing accepted, or maybe a non-honest input."""

    messages: list[tuple[Message, Outcomes]]
    counts_as: CountsAs


@dataclass(frozen=True)
class Kind:
    """A way to forge a reply. ``byzantine``: it may get a non-honest input accepted (only the
    Byzantine nodes use it); ``formats``: the reply formats it applies to (``any``: all);
    ``applies``: a finer condition on the context."""

    name: str
    forge: Callable[[Ctx], Forged]
    byzantine: bool = False
    formats: frozenset[str] = frozenset({"any"})
    applies: Callable[[Ctx], bool] = lambda ctx: True

    def usable(self, ctx: Ctx) -> bool:
        return ("any" in self.formats or ctx.fmt in self.formats) and self.applies(ctx)


def _silent(msg: Message, *reasons: str) -> Forged:
    return Forged([(msg, rejected(*reasons))], "silent")


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _raw(like: np.ndarray, data: bytes, stype: str = "numpy.ndarray") -> Array:
    """An Array declaring ``like``'s shape and dtype, holding ``data`` as its bytes."""
    return Array(dtype=str(like.dtype), shape=tuple(like.shape), stype=stype, data=data)


def _with(ctx: Ctx, key: str, value: Any) -> dict[str, Any]:
    arrays: dict[str, Any] = dict(ctx.arrays())
    arrays[key] = value
    return arrays


# structure ---------------------------------------------------------------------------------
def _missing_array(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    del arrays[ctx.pick(arrays)]
    return _silent(ctx.reply(arrays), "missing-key")


def _extra_array(ctx: Ctx) -> Forged:
    arrays = ctx.arrays() | {"zz": np.zeros(3, np.float32)}
    return _silent(ctx.reply(arrays), "extra-key")


def _renamed_array(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arrays[key + "_"] = arrays.pop(key)
    return _silent(ctx.reply(arrays), "missing-key")


def _missing_record(ctx: Ctx) -> Forged:
    return _silent(ctx.reply(None), "missing-record")


def _extra_record(ctx: Ctx) -> Forged:
    content: dict[str, Any] = {ctx.key: ctx.record, "extra": ArrayRecord({"x": Array(np.ones(2))})}
    msg = Message(RecordDict(content | ctx.metrics), reply_to=ctx.ins)
    return _silent(msg, "extra-record")


def _empty_record(ctx: Ctx) -> Forged:
    return _silent(ctx.reply(ArrayRecord()), "missing-key")


def _empty_content(ctx: Ctx) -> Forged:
    return _silent(Message(RecordDict(), reply_to=ctx.ins), "missing-record")


def _wrong_record_type(ctx: Ctx) -> Forged:
    """The expected record key holds a MetricRecord (and there is no ArrayRecord)."""
    content = {ctx.key: MetricRecord({"x": 1.0})}
    return _silent(Message(RecordDict(content), reply_to=ctx.ins), "missing-record")


def _renamed_record(ctx: Ctx) -> Forged:
    """The one ArrayRecord under another key: taken as the expected one (``validate_replies``:
    as Flower's own strategies do), except where the key selects the format (Byz-EF21-SGDM: a
    dense reset under another key is read as a payload, whose keys it lacks)."""
    msg = ctx.reply(ctx.record, key="renamed")
    if ctx.is_ef21 and ctx.fmt == "dense":
        return _silent(msg, "missing-key")
    return Forged([(msg, ACCEPT)], "honest")


def _wrong_shape(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arr = arrays[key]
    arrays[key] = arr.reshape(-1) if arr.ndim != 1 else arr.reshape(1, -1)
    return _silent(ctx.reply(arrays), "shape")


def _empty_array(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arrays[key] = np.zeros(0, arrays[key].dtype)
    return _silent(ctx.reply(arrays), "shape")


_OTHER_DTYPE = {
    "float32": "float64", "float64": "float32", "float16": "float32", "int32": "int64",
    "int64": "int32", "int8": "int16", "int16": "int8", "uint8": "int8",
}  # fmt: skip


def _wrong_dtype(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arrays[key] = arrays[key].astype(_OTHER_DTYPE[str(arrays[key].dtype)])
    return _silent(ctx.reply(arrays), "dtype")


def _half_precision(ctx: Ctx) -> Forged:
    """Every float array sent as float16 (values beyond its range become Inf)."""
    with np.errstate(over="ignore"):
        arrays = {
            k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in ctx.arrays().items()
        }
    return _silent(ctx.reply(arrays), "dtype")


def _truncated(ctx: Ctx) -> Forged:
    """Declared shape and dtype kept; the bytes hold fewer values (or half a value)."""
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arr = arrays[key]
    if ctx.rng.random() < 0.5:
        data = _npy(arr.reshape(-1)[:-1])
    else:
        data = _npy(arr)[: -max(1, arr.itemsize // 2)]
    return _silent(ctx.reply(_with(ctx, key, _raw(arr, data))), "malformed")


def _oversize_trailing(ctx: Ctx) -> Forged:
    """A correct ``.npy`` of the declared shape followed by 100x its data."""
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arr = arrays[key]
    data = _npy(arr) + bytes(100 * arr.nbytes + 8)
    return _silent(ctx.reply(_with(ctx, key, _raw(arr, data))), "oversize", "malformed")


def _oversize_header(ctx: Ctx) -> Forged:
    """The declared shape is the expected one; the ``.npy`` inside holds 100x the values."""
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arr = arrays[key]
    data = _npy(np.tile(arr.reshape(-1), 100))
    return _silent(ctx.reply(_with(ctx, key, _raw(arr, data))), "oversize", "malformed")


def _header_mismatch(ctx: Ctx) -> Forged:
    """Declared shape/dtype as expected; the ``.npy`` header says another shape of the same
    size or another dtype (the values are the honest ones)."""
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arr = arrays[key]
    if ctx.rng.random() < 0.5:
        inner = arr.reshape(-1) if arr.ndim != 1 else arr.reshape(1, -1)
    else:
        inner = arr.astype(_OTHER_DTYPE[str(arr.dtype)])
    return _silent(ctx.reply(_with(ctx, key, _raw(arr, _npy(inner)))), "malformed", "oversize")


def _garbage_bytes(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arr = arrays[key]
    data = ctx.rng.bytes(int(ctx.rng.integers(0, 2 * arr.nbytes + 130)))
    return _silent(ctx.reply(_with(ctx, key, _raw(arr, data))), "malformed", "oversize")


def _wrong_stype(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arr = arrays[key]
    forged = _raw(arr, _npy(arr), stype=ctx.pick(["torch.Tensor", "", "pickle"]))
    return _silent(ctx.reply(_with(ctx, key, forged)), "malformed")


def _declared_object(ctx: Ctx) -> Forged:
    """An Array declaring a non-numeric dtype (``object``, ``<U3``, complex)."""
    arrays = ctx.arrays()
    key = ctx.pick(arrays)
    arr = arrays[key]
    dtype = ctx.pick(["object", "<U3", "complex64"])
    forged = Array(dtype=dtype, shape=tuple(arr.shape), stype="numpy.ndarray", data=_npy(arr))
    return _silent(ctx.reply(_with(ctx, key, forged)), "dtype")


# values ----------------------------------------------------------------------------------
def _poison(value: float) -> Callable[[Ctx], Forged]:
    """One value NaN/Inf: a float array's entry, QSGD's norm, or Natural's NaN/Inf exponent
    code."""

    def forge(ctx: Ctx) -> Forged:
        arrays = ctx.arrays()
        if ctx.fmt == "natural":
            e = arrays["exponents"].copy()
            e[int(ctx.rng.integers(e.size))] = -127 if math.isnan(value) else 127
            arrays["exponents"] = e
        else:
            key = ctx.pick(ctx.float_keys())
            arr = arrays[key].copy()
            arr.reshape(-1)[int(ctx.rng.integers(arr.size))] = value
            arrays[key] = arr
        return _silent(ctx.reply(arrays), "non-finite")

    return forge


def _scaled_arrays(ctx: Ctx, factor: float, fill: float | None = None) -> dict[str, np.ndarray]:
    """The honest arrays with every float array times ``factor`` (or set to ``fill``);
    Natural: every non-zero exponent shifted by log2 |factor| (clamped to finite codes)."""
    arrays = ctx.arrays()
    if ctx.fmt == "natural":
        e = arrays["exponents"].astype(np.int32)
        shift = 126 if fill is not None else round(math.log2(max(abs(factor), 1e-300)))
        finite = (e >= -126) & (e <= 126)
        e = np.where(finite, np.clip(e + shift if fill is None else shift, -126, 126), e)
        if fill is not None:
            e = np.where(e == -128, 126, e)
        arrays["exponents"] = e.astype(np.int8)
        return arrays
    for key in ctx.float_keys():
        arr = arrays[key]
        if fill is not None:
            arrays[key] = np.full_like(arr, fill)
        else:
            arrays[key] = (arr.astype(np.float64) * factor).astype(arr.dtype)
    return arrays


def _byzantine(ctx: Ctx, arrays: dict[str, np.ndarray], key: str | None = None) -> Forged:
    return Forged([(ctx.reply(arrays, key=key), BYZANTINE_VALUE)], "byzantine")


def _huge(ctx: Ctx) -> Forged:
    return _byzantine(ctx, _scaled_arrays(ctx, 1.0, fill=float(ctx.pick(["1e30", "-1e30"]))))


def _near_max(ctx: Ctx) -> Forged:
    """Values near float32's largest (3e38): sums and squares overflow in the rules."""
    return _byzantine(ctx, _scaled_arrays(ctx, 1.0, fill=3.0e38))


def _scaled(ctx: Ctx) -> Forged:
    return _byzantine(ctx, _scaled_arrays(ctx, float(ctx.pick(["-10", "1e6", "-1e12"]))))


def _zeros(ctx: Ctx) -> Forged:
    if ctx.fmt == "natural":
        arrays = ctx.arrays()
        arrays["exponents"] = np.full_like(arrays["exponents"], -128)
        arrays["signs"] = np.zeros_like(arrays["signs"])
        return _byzantine(ctx, arrays)
    return _byzantine(ctx, _scaled_arrays(ctx, 0.0))


def _stale(ctx: Ctx) -> Forged:
    """The node's honest reply of its previous round, replayed."""
    assert ctx.previous is not None
    msg = Message(ctx.previous.content, reply_to=ctx.ins)
    return Forged([(msg, BYZANTINE_VALUE | {"shape", "missing-key"})], "byzantine")


# payloads --------------------------------------------------------------------------------
def _index(fn: Callable[[np.ndarray, int, np.random.Generator], None]) -> Callable[[Ctx], Forged]:
    def forge(ctx: Ctx) -> Forged:
        arrays = ctx.arrays()
        idx = arrays["indices"].copy()
        fn(idx, D, ctx.rng)
        arrays["indices"] = idx
        return _silent(ctx.reply(arrays), "malformed")

    return forge


def _out_of_range(idx: np.ndarray, d: int, rng: np.random.Generator) -> None:
    idx[-1] = d + int(rng.integers(0, 3)) if rng.random() < 0.7 else 2**31 - 1


def _negative(idx: np.ndarray, d: int, rng: np.random.Generator) -> None:
    idx[0] = -1 - int(rng.integers(0, 3)) if rng.random() < 0.7 else -(2**31)


def _duplicate_index(idx: np.ndarray, d: int, rng: np.random.Generator) -> None:
    i = int(rng.integers(1, idx.size))
    idx[i] = idx[i - 1]


def _unsorted(idx: np.ndarray, d: int, rng: np.random.Generator) -> None:
    i = int(rng.integers(1, idx.size))
    idx[i - 1], idx[i] = idx[i], idx[i - 1]


def _wrong_k(ctx: Ctx) -> Forged:
    """The payload's per-coordinate arrays one entry longer or shorter, consistently."""
    arrays = ctx.arrays()
    grow = ctx.rng.random() < 0.5
    for key in ("values", "indices", "levels", "exponents"):
        if key in arrays:
            arr = arrays[key]
            arrays[key] = np.concatenate([arr, arr[-1:]]) if grow else arr[:-1]
    return _silent(ctx.reply(arrays), "shape")


def _wrong_seed(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    arrays["seed"] = arrays["seed"] + int(ctx.rng.integers(1, 1000))
    return _silent(ctx.reply(arrays), "malformed")


def _qsgd_levels(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    levels = arrays["levels"].copy()
    levels[int(ctx.rng.integers(levels.size))] = ctx.pick([5, -5, 127, -128])
    arrays["levels"] = levels
    return _silent(ctx.reply(arrays), "malformed")


def _qsgd_norm(ctx: Ctx) -> Forged:
    """QSGD's scale: negative (a sign flip), huge or zero: finite, so a Byzantine input."""
    arrays = ctx.arrays()
    norm = arrays["norm"].astype(np.float64)
    arrays["norm"] = (norm * float(ctx.pick(["-1", "-100", "1e30", "0"]))).astype(
        arrays["norm"].dtype
    )
    return _byzantine(ctx, arrays)


def _natural_padding(ctx: Ctx) -> Forged:
    arrays = ctx.arrays()
    signs = arrays["signs"].copy()
    signs[-1] |= np.uint8(1 << 7)  # a sign bit beyond d (d = 18: bits 2..7 of byte 2 are pad)
    arrays["signs"] = signs
    return _silent(ctx.reply(arrays), "malformed")


def _natural_huge(ctx: Ctx) -> Forged:
    return _byzantine(ctx, _scaled_arrays(ctx, 1.0, fill=1.0))


# metrics (the arrays honest) ---------------------------------------------------------------------
def _metrics(values: Callable[[Ctx], dict[str, Any]] | None, *, config: bool = False):
    """The honest arrays with other metrics: rejected (``bad-weight``) when the profile
    weights by ``num-examples`` and they hold no usable count, else accepted as honest."""

    def forge(ctx: Ctx) -> Forged:
        content: dict[str, Any] = {ctx.key: ctx.record}
        usable = False
        if values is not None:
            v = values(ctx)
            if config:
                content["metrics"] = ConfigRecord(v)
            else:
                content["metrics"] = MetricRecord(v)
                count = v.get("num-examples")
                usable = (
                    isinstance(count, (int, float))
                    and not isinstance(count, bool)
                    and math.isfinite(count)
                    and count > 0
                )
        msg = Message(RecordDict(content), reply_to=ctx.ins)
        if ctx.profile.weighted and not usable:
            return _silent(msg, "bad-weight")
        if ctx.profile.weighted:  # a usable but forged count: a Byzantine weight
            return Forged([(msg, ACCEPT)], "byzantine")
        return Forged([(msg, ACCEPT)], "honest")

    return forge


def _count(value: Any) -> Callable[[Ctx], dict[str, Any]]:
    return lambda ctx: {"train_loss": 1.0, "train-loss": 1.0, "num-examples": value}


# messages --------------------------------------------------------------------------------
def _error(ctx: Ctx) -> Forged:
    code = int(ctx.rng.integers(-5, 1000))
    msg = Message(
        Error(code=code, reason=ctx.pick(["", "client crashed", "x" * 300])), reply_to=ctx.ins
    )
    return _silent(msg, "error-reply")


def _wrong_message_type(ctx: Ctx) -> Forged:
    """The honest content in a reply to an ``evaluate`` / ``query`` instruction (validation
    checks the content, not the type: accepted)."""
    fake = Message(ctx.ins.content, ctx.node, ctx.pick(["evaluate", "query"]))
    return Forged([(Message(ctx.honest.content, reply_to=fake), ACCEPT)], "honest")


def _no_reply(ctx: Ctx) -> Forged:
    return Forged([], "silent")


def _duplicate_after(ctx: Ctx) -> Forged:
    """The honest reply, then another (a scaled copy, a NaN, the same again, or an error:
    ``error-reply`` before ``duplicate`` in ``validate_replies``; Byz-EF21-SGDM calls every
    other reply of a node whose dense reset it took a ``duplicate``, errors included)."""
    choice = ctx.pick(["scaled", "nan", "same", "error"])
    if choice == "scaled":
        second, out = ctx.reply(_scaled_arrays(ctx, -10.0)), rejected("duplicate")
    elif choice == "nan":
        second, out = _poison(math.nan)(ctx).messages[0][0], rejected("duplicate")
    elif choice == "error":
        second, out = _error(ctx).messages[0][0], rejected("error-reply")
        if ctx.is_ef21 and ctx.fmt == "dense":
            out = rejected("error-reply", "duplicate")
    else:
        second, out = ctx.honest, rejected("duplicate")
    return Forged([(ctx.honest, ACCEPT), (second, out)], "honest")


def _duplicate_before(ctx: Ctx) -> Forged:
    """A forged reply, then the honest one: the first one the server takes counts."""
    first = ctx.reply(_scaled_arrays(ctx, -10.0))
    return Forged(
        [(first, BYZANTINE_VALUE), (ctx.honest, frozenset({ACCEPTED, "duplicate"}))], "byzantine"
    )


def _stranger(ctx: Ctx) -> Forged:
    """The honest reply, and a copy claiming to come from a node the round was not sent to."""
    other = ctx.strangers[int(ctx.rng.integers(len(ctx.strangers)))]
    fake = Message(ctx.ins.content, other, ctx.ins.metadata.message_type)
    msg = Message(ctx.reply(_scaled_arrays(ctx, 3.0)).content, reply_to=fake)
    return Forged([(ctx.honest, ACCEPT), (msg, rejected("unknown-node"))], "honest")


# EF21 dense resets -------------------------------------------------------------------------------
def _reset_vector(ctx: Ctx, scale: float) -> ArrayRecord:
    """A dense ``"grad"`` record of the model's floating arrays, every value ``scale``."""
    layout = ctx.ins.content.array_records["arrays"]
    out = {}
    for k in layout:
        arr = layout[k].numpy()
        if arr.dtype.kind == "f":
            out[k] = Array(np.full(arr.shape, scale, dtype=arr.dtype))
    return ArrayRecord(out)


def _ef21_reset(ctx: Ctx) -> Forged:
    """A dense reset instead of the compressed reply: of huge norm, or modest."""
    scale = float(ctx.pick(["1e30", "1e6", "0.1", "-3"]))
    msg = ctx.reply(_reset_vector(ctx, scale), key="grad")
    return Forged([(msg, BYZANTINE_VALUE)], "byzantine")


def _ef21_reset_then_payload(ctx: Ctx) -> Forged:
    """A dense reset and the honest payload in one round: if the reset is taken, the payload
    is the node's second reply (``duplicate``); if refused, the payload counts."""
    reset = ctx.reply(_reset_vector(ctx, float(ctx.pick(["1e30", "0.1"]))), key="grad")
    return Forged(
        [(ctx.honest, frozenset({ACCEPTED, "duplicate"})), (reset, BYZANTINE_VALUE)], "byzantine"
    )


def _two_indices(ctx: Ctx) -> bool:
    return ctx.fmt == "topk" and ctx.arrays()["indices"].size > 1


def _floats(ctx: Ctx) -> bool:
    return bool(ctx.float_keys())


def _floats_or_natural(ctx: Ctx) -> bool:
    return bool(ctx.float_keys()) or ctx.fmt == "natural"


def _not_natural(ctx: Ctx) -> bool:
    return ctx.fmt != "natural"


def _has_previous(ctx: Ctx) -> bool:
    return ctx.previous is not None


def _has_strangers(ctx: Ctx) -> bool:
    return bool(ctx.strangers)


def _ef21(ctx: Ctx) -> bool:
    return ctx.is_ef21


def _odd_metrics(ctx: Ctx) -> dict[str, Any]:
    return {"train-loss": math.nan, "train_loss": [1.0, 2.0], "num-examples": 20}


def _odd_counters(ctx: Ctx) -> dict[str, Any]:
    """ByzSGD workers' filter counters of the wrong type (the strategy sums them)."""
    return {
        "num-examples": 20,
        "byzsgd-dropped": math.nan,
        "byzsgd-rejected": [1, 2],
        "byzsgd-fallback": math.inf,
    }


def _string_metrics(ctx: Ctx) -> dict[str, Any]:
    return {"num-examples": "10", "train-loss": True}


PAYLOADS = frozenset({"topk", "randk", "identity", "qsgd", "natural"})
TOPK, RANDK, QSGD, NATURAL = (frozenset({n}) for n in ("topk", "randk", "qsgd", "natural"))
KINDS: list[Kind] = [
    # structure
    Kind("missing-array", _missing_array),
    Kind("extra-array", _extra_array),
    Kind("renamed-array", _renamed_array),
    Kind("missing-record", _missing_record),
    Kind("extra-record", _extra_record),
    Kind("empty-record", _empty_record),
    Kind("empty-content", _empty_content),
    Kind("wrong-record-type", _wrong_record_type),
    Kind("renamed-record", _renamed_record, formats=frozenset({"dense"})),
    Kind("renamed-payload", _renamed_record, formats=PAYLOADS),
    Kind("wrong-shape", _wrong_shape),
    Kind("empty-array", _empty_array),
    Kind("wrong-dtype", _wrong_dtype),
    Kind("float16", _half_precision, applies=_floats),
    Kind("declared-non-numeric", _declared_object),
    # bytes vs the declared layout
    Kind("truncated", _truncated),
    Kind("oversize-trailing", _oversize_trailing),
    Kind("oversize-header", _oversize_header),
    Kind("header-mismatch", _header_mismatch),
    Kind("garbage-bytes", _garbage_bytes),
    Kind("wrong-stype", _wrong_stype),
    # values
    Kind("nan", _poison(math.nan), applies=_floats_or_natural),
    Kind("inf", _poison(math.inf), applies=_floats_or_natural),
    Kind("-inf", _poison(-math.inf), applies=_floats),
    Kind("huge-1e30", _huge, byzantine=True),
    Kind("near-float32-max", _near_max, byzantine=True, applies=_not_natural),
    Kind("scaled", _scaled, byzantine=True),
    Kind("zeros", _zeros, byzantine=True),
    Kind("stale-reply", _stale, byzantine=True, applies=_has_previous),
    # compressed payloads
    Kind("index-out-of-range", _index(_out_of_range), formats=TOPK),
    Kind("index-negative", _index(_negative), formats=TOPK),
    Kind("index-duplicate", _index(_duplicate_index), formats=TOPK, applies=_two_indices),
    Kind("index-unsorted", _index(_unsorted), formats=TOPK, applies=_two_indices),
    Kind("wrong-k", _wrong_k, formats=PAYLOADS),
    Kind("wrong-seed", _wrong_seed, formats=RANDK),
    Kind("qsgd-level-out-of-range", _qsgd_levels, formats=QSGD),
    Kind("qsgd-bad-scale", _qsgd_norm, byzantine=True, formats=QSGD),
    Kind("natural-padding-bit", _natural_padding, formats=NATURAL),
    Kind("natural-huge-exponents", _natural_huge, byzantine=True, formats=NATURAL),
    # metrics (the arrays honest)
    Kind("no-metrics", _metrics(None)),
    Kind("metrics-as-config", _metrics(_string_metrics, config=True)),
    Kind("num-examples-negative", _metrics(_count(-5))),
    Kind("num-examples-zero", _metrics(_count(0))),
    Kind("num-examples-nan", _metrics(_count(math.nan))),
    Kind("num-examples-inf", _metrics(_count(math.inf))),
    Kind("num-examples-list", _metrics(_count([1.0, 2.0]))),
    Kind("num-examples-huge", _metrics(_count(1e30))),
    Kind("loss-nan-and-lists", _metrics(_odd_metrics)),
    Kind("worker-counters-garbage", _metrics(_odd_counters)),
    # messages and nodes
    Kind("error-reply", _error),
    Kind("wrong-message-type", _wrong_message_type),
    Kind("no-reply", _no_reply),
    Kind("duplicate-after", _duplicate_after),
    Kind("duplicate-before", _duplicate_before, byzantine=True),
    Kind("unknown-node", _stranger, applies=_has_strangers),
    # Byz-EF21-SGDM dense resets
    Kind("ef21-dense-reset", _ef21_reset, byzantine=True, formats=PAYLOADS, applies=_ef21),
    Kind("ef21-reset-and-payload", _ef21_reset_then_payload, byzantine=True, formats=PAYLOADS,
         applies=_ef21),
]  # fmt: skip
KIND_NAMES = [k.name for k in KINDS]
assert len(set(KIND_NAMES)) == len(KIND_NAMES)
#: Kinds rejected whatever comes before or after them: a node may send them before its main
#: reply ("pre" replies).
PRE_KINDS = frozenset(
    k.name
    for k in KINDS
    if not k.byzantine
    and k.forge
    not in (_renamed_record, _wrong_message_type, _no_reply, _duplicate_after, _stranger)
    and not k.name.startswith(("num-examples", "no-metrics", "metrics-", "loss-", "worker-"))
)


# --- the log of rejections ------------------------------------------------------------------------
class RejectionLog(logging.Handler):
    """Records ``(node, reason)`` of every "rejected the reply of node" line while on."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.on = False
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.on and "rejected the reply of node" in str(record.msg):
            args = record.args
            assert isinstance(args, tuple) and len(args) == 4, record.getMessage()
            self.lines.append((int(args[1]), str(args[2])))

    def __enter__(self) -> RejectionLog:
        logging.getLogger("flwr").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("flwr").removeHandler(self)


def _matches(outcomes: list[Outcomes], logged: list[str]) -> bool:
    """Whether the messages (allowed outcomes each) can have produced exactly the logged
    rejections, with the rest (at most one) accepted."""
    accepted = len(outcomes) - len(logged)
    if accepted not in (0, 1):
        return False
    slots = [*logged, *([ACCEPTED] * accepted)]
    return any(
        all(s in allowed for s, allowed in zip(perm, outcomes, strict=True))
        for perm in set(permutations(slots))
    )


# --- the driver -----------------------------------------------------------------------------------
@dataclass
class FuzzStats:
    """What a run forged and checked."""

    profile: str
    rounds: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # malformed replies per kind
    events: Counter[str] = field(default_factory=Counter)  # node-rounds per main kind
    usable: Counter[str] = field(default_factory=Counter)  # main draws it applied to
    reasons: Counter[str] = field(default_factory=Counter)  # rejections per reason
    honest_replies: int = 0
    exact_rounds: int = 0
    bounded_rounds: int = 0
    stale_calls: int = 0
    resets_taken: int = 0  # Byz-EF21-SGDM: accepted dense resets
    single_input_rounds: int = 0  # bounded rounds that needed the single-input steps
    max_ratio_rounds: float = 0.0  # fuzzed step / the larger honest-only round's step
    max_ratio: float = 0.0  # fuzzed step / the largest honest step
    seconds: float = 0.0

    @property
    def malformed(self) -> int:
        return sum(self.kinds.values())


class FuzzFailure(AssertionError):
    """An invariant broke; the message names the profile, seed, round and the kinds used."""


@dataclass
class _Sent:
    node: int
    kind: str
    forged: Forged


def _honest_network(profile: Profile) -> tuple[Callable[[Message], Message], LocalGrid]:
    """The honest nodes' answer to an instruction, and a grid that lists the nodes (the fuzz
    delivers each message itself, to forge replies around the honest one)."""
    nodes = profile.node_ids
    if profile.fedavg:
        fed = FedAvgNodes(nodes)
        return (lambda ins: fed.handle(ins, None)), LocalGrid(nodes)  # type: ignore[arg-type]
    net = Network(nodes, size=24)

    def answer(ins: Message) -> Message:
        node = int(ins.metadata.dst_node_id)
        return net.client.handle(ins, net.contexts[node])

    return answer, net.grid


def run_fuzz(
    profile: Profile,
    *,
    seed: int,
    rounds: int | None = None,
    kinds: Sequence[Kind] | None = None,
    p_pre: float = 1.2,
    p_faulty: float = 0.3,
    p_stranger: float = 0.3,
    p_stale_call: float = 0.1,
    step_factor: float = STEP_FACTOR,
    strict: bool = True,
) -> FuzzStats:
    """Fuzz ``profile`` for ``rounds`` rounds (default: the profile's) from ``seed`` with
    ``kinds`` (default: :data:`KINDS`); raises :class:`FuzzFailure` on the first broken
    invariant (module doc).

    Per round: each Byzantine node sends a main reply of the least used applicable kind and
    Poisson(``p_pre``) rejected replies before it; with probability ``p_faulty`` an honest
    node (at most ``n - 2f - 1`` of them) sends a main reply of a non-Byzantine kind; with
    ``p_stranger`` a reply from a node the round was not sent to is slipped in; with
    ``p_stale_call`` ``aggregate_train`` is first called for another round number.
    ``strict=False``: a step beyond ``step_factor`` x the largest honest step is only
    counted (``FuzzStats.max_ratio``), to measure the factor."""
    pool = list(kinds or KINDS)
    rounds = profile.rounds if rounds is None else rounds
    rng = np.random.default_rng(seed)
    random.seed(seed)  # Flower's FedAvg samples with the global generator
    torch.manual_seed(seed)
    answer, grid = _honest_network(profile)
    strategy = profile.make()
    fuzz = _Fuzz(profile, pool, rng, isinstance(strategy, _EF21))
    fuzz.p_pre, fuzz.p_faulty, fuzz.p_stranger = p_pre, p_faulty, p_stranger
    fuzz.step_factor, fuzz.strict = step_factor, strict
    fuzz.byzantine = set(rng.choice(profile.node_ids, size=profile.f, replace=False).tolist())
    arrays = fedavg_model(seed) if profile.fedavg else initial_arrays(seed)
    config = ConfigRecord({})
    stats = fuzz.stats
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)  # the INFO lines of every round cost more than all
    start = time.perf_counter()
    try:
        with RejectionLog() as rejections:
            for rnd in range(1, rounds + 1):
                where = f"{profile.name} seed={seed} round={rnd}"
                try:
                    messages = list(strategy.configure_train(rnd, arrays, config, grid))
                except Exception as exc:
                    raise FuzzFailure(f"{where}: configure_train raised {exc!r}") from exc
                honest = {int(m.metadata.dst_node_id): answer(m) for m in messages}
                before = start_position(strategy, arrays)
                snapshot = copy.deepcopy(strategy)
                sent = fuzz.forge_round(messages, honest)
                replies = [m for s in sent for m, _ in s.forged.messages]
                where += f" kinds={sorted({s.kind for s in sent if s.kind != 'honest'})}"

                if rng.random() < p_stale_call:  # an aggregate call for another round first
                    other = int(rng.choice([rnd - 1, rnd + 1, 0]))
                    try:
                        out = strategy.aggregate_train(other, list(replies))
                    except Exception as exc:
                        raise FuzzFailure(
                            f"{where}: aggregate_train({other}) raised {exc!r}"
                        ) from exc
                    if out[0] is not None or out[1] is not None:
                        raise FuzzFailure(f"{where}: aggregate_train({other}) returned {out}")
                    stats.stale_calls += 1

                rejections.lines.clear()
                rejections.on = True
                try:
                    new_arrays, metrics = strategy.aggregate_train(rnd, replies)
                except Exception as exc:
                    raise FuzzFailure(f"{where}: aggregate_train raised {exc!r}") from exc
                finally:
                    rejections.on = False
                after_arrays = new_arrays if new_arrays is not None else arrays
                after = position(strategy, after_arrays)
                if not bool(torch.isfinite(after).all()):
                    raise FuzzFailure(f"{where}: the model is not finite")
                _check_rejections(where, sent, rejections.lines, metrics)
                stats.reasons.update(reason for _, reason in rejections.lines)
                if fuzz.is_ef21:
                    _check_resets(where, fuzz, strategy, rnd, sent, rejections.lines, metrics)
                _check_step(where, fuzz, sent, honest, snapshot, rnd, arrays, before, after)
                arrays = after_arrays
                fuzz.previous.update(honest)
                stats.rounds += 1
    finally:
        flwr_logger.setLevel(level)
    stats.seconds = time.perf_counter() - start
    return stats


class _Fuzz:
    """The forging side of :func:`run_fuzz`: kind choices, counts, each node's last reply."""

    def __init__(
        self, profile: Profile, kinds: list[Kind], rng: np.random.Generator, is_ef21: bool
    ) -> None:
        self.profile, self.kinds, self.rng, self.is_ef21 = profile, kinds, rng, is_ef21
        self.p_pre, self.p_faulty, self.p_stranger = 1.2, 0.3, 0.3
        self.step_factor, self.strict = STEP_FACTOR, True
        self.byzantine: set[int] = set()
        self.previous: dict[int, Message] = {}
        self.last_reset: dict[int, int] = {}  # Byz-EF21-SGDM: a node's last accepted reset
        self.used: Counter[str] = Counter()
        self.stats = FuzzStats(profile.name)

    def forge_round(self, messages: list[Message], honest: dict[int, Message]) -> list[_Sent]:
        """Every node's messages of the round, and the unsolicited one (module doc)."""
        rng, profile = self.rng, self.profile
        sampled = [int(m.metadata.dst_node_id) for m in messages]
        strangers = [n for n in profile.node_ids if n not in sampled]
        strangers += [9000 + int(rng.integers(0, 50)), 2**40 + 3]
        sent: list[_Sent] = []
        faulty, max_faulty = 0, max(0, len(sampled) - 2 * profile.f - 1)
        for ins in messages:
            node = int(ins.metadata.dst_node_id)
            ctx = Ctx(ins, honest[node], node, profile, rng, self.previous.get(node), strangers,
                      self.is_ef21)  # fmt: skip
            usable = [k for k in self.kinds if k.usable(ctx)]
            if node in self.byzantine:
                self.stats.usable.update(k.name for k in usable)
                main: Kind | None = self._least_used(usable)
                n_pre = int(rng.poisson(self.p_pre))
            elif faulty < max_faulty and rng.random() < self.p_faulty:
                faulty += 1
                usable = [k for k in usable if not k.byzantine]
                self.stats.usable.update(k.name for k in usable)
                main = self._least_used(usable)
                n_pre = int(rng.random() < 0.5)
            else:
                main, n_pre = None, int(rng.random() < 0.15)
            if main is None:
                forged = Forged([(honest[node], ACCEPT)], "honest")
                self.stats.honest_replies += 1
            else:
                forged = main.forge(ctx)
                self.used[main.name] += 1
                self.stats.events[main.name] += 1
                n_bad = sum(1 for m, _ in forged.messages if m is not honest[node])
                self.stats.kinds[main.name] += max(1, n_bad)
            for kind in self._pre_kinds(ctx, usable, forged, n_pre):
                pre = kind.forge(ctx)
                assert pre.counts_as == "silent", (kind.name, pre)
                sent.append(_Sent(node, kind.name, pre))
                self.used[kind.name] += 1
                self.stats.kinds[kind.name] += len(pre.messages)
            sent.append(_Sent(node, "honest" if main is None else main.name, forged))
        if rng.random() < self.p_stranger:  # an unsolicited reply, anywhere in the list
            other = strangers[int(rng.integers(len(strangers)))]
            ins = messages[int(rng.integers(len(messages)))]
            fake = Message(ins.content, other, ins.metadata.message_type)
            msg = Message(honest[int(ins.metadata.dst_node_id)].content, reply_to=fake)
            forged = Forged([(msg, rejected("unknown-node"))], "silent")
            sent.insert(int(rng.integers(len(sent) + 1)), _Sent(other, "unknown-node", forged))
            self.stats.kinds["unknown-node"] += 1
        return sent

    def _least_used(self, kinds: list[Kind]) -> Kind | None:
        """The least used of ``kinds`` (ties: at random); a kind of compressed payloads only
        counts a quarter of its uses, so the rounds that carry payloads exercise it more."""
        if not kinds:
            return None
        score = {k.name: self.used[k.name] / (4 if k.formats <= PAYLOADS else 1) for k in kinds}
        low = min(score.values())
        pool = [k for k in kinds if score[k.name] == low]
        return pool[int(self.rng.integers(len(pool)))]

    def _pre_kinds(self, ctx: Ctx, usable: list[Kind], main: Forged, n: int) -> list[Kind]:
        """``n`` kinds the node sends before its main reply: always rejected, whatever the
        order. Byz-EF21-SGDM validates dense replies (resets) before the others, and a
        node's other replies in a round whose reset it took are ``duplicate``: no pre
        replies there when the main reply or the honest one is dense."""
        if n == 0:
            return []
        if self.is_ef21 and (
            ctx.fmt == "dense" or any("grad" in m.content.array_records for m, _ in main.messages
                                      if not m.has_error())
        ):  # fmt: skip
            return []
        pool = [k for k in usable if k.name in PRE_KINDS]
        if self.is_ef21:  # a reply without "grad" goes with the payloads: keep the groups apart
            pool = [k for k in pool if k.name not in ("missing-record", "empty-content")]
        return [k for _ in range(n) if (k := self._least_used(pool)) is not None]


def _check_step(
    where: str,
    fuzz: _Fuzz,
    sent: list[_Sent],
    honest: dict[int, Message],
    snapshot: Strategy,
    rnd: int,
    arrays: ArrayRecord,
    before: torch.Tensor,
    after: torch.Tensor,
) -> None:
    """Exactness, or the bounded step (module doc)."""
    stats = fuzz.stats
    sampled = list(honest)
    counting = {s.node for s in sent if s.forged.counts_as == "honest"}
    kept = [honest[n] for n in sampled if n in counting]
    ref_exp = _reference(snapshot, rnd, kept, arrays)
    if not any(s.forged.counts_as == "byzantine" for s in sent):
        if not torch.equal(after, ref_exp):
            diff = float((after - ref_exp).abs().max())
            raise FuzzFailure(
                f"{where}: a round whose forged replies were all rejected or honest moved "
                f"differently from its honest replies alone (max diff {diff:.3g})"
            )
        stats.exact_rounds += 1
        return
    all_honest = [honest[n] for n in sampled]
    ref_all = _reference(snapshot, rnd, all_honest, arrays)
    step = float(torch.linalg.vector_norm(after - before))
    honest_step = max(
        float(torch.linalg.vector_norm(ref_all - before)),
        float(torch.linalg.vector_norm(ref_exp - before)),
    )
    stats.bounded_rounds += 1
    if honest_step > STEP_ATOL:
        stats.max_ratio_rounds = max(stats.max_ratio_rounds, step / honest_step)
    factor = fuzz.step_factor
    if step > factor * honest_step + STEP_ATOL:  # the single-input rounds too
        single = _single_input_steps(snapshot, rnd, all_honest, arrays, before, fuzz)
        honest_step = max(honest_step, single)
        stats.single_input_rounds += 1
        if step > factor * honest_step + STEP_ATOL and fuzz.strict:
            raise FuzzFailure(
                f"{where}: step {step:.4g} exceeds {factor} x the largest honest step "
                f"{honest_step:.4g}"
            )
    if honest_step > STEP_ATOL:
        stats.max_ratio = max(stats.max_ratio, step / honest_step)


class _Select:
    """A "rule" that returns row ``index`` of its input (the last if fewer): the server
    following one input alone. Keeps the ``f`` of the rule it replaces."""

    def __init__(self, index: int, f: int) -> None:
        self.index, self.f = index, f

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x[min(self.index, x.shape[0] - 1)].clone()

    def weighted(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self(x)


def _single_input_steps(
    snapshot: Strategy,
    rnd: int,
    replies: list[Message],
    arrays: ArrayRecord,
    before: torch.Tensor,
    fuzz: _Fuzz,
) -> float:
    """The largest step of the honest-only round (every sampled node honest) in which the
    rule is replaced by one honest input alone, over every honest input the rule sees
    (Byz-EF21-SGDM: the copies of the honest nodes only; a Byzantine node's copy may be
    corrupt from an earlier round)."""
    rows = list(range(len(replies)))  # the rule sees the replies in order (ByzSGD: subsets)
    if fuzz.is_ef21:  # the rule sees every known copy, in node order
        state = snapshot.state  # type: ignore[attr-defined]
        known = state.known.tolist() if state.known is not None else []
        accepted = {int(m.metadata.src_node_id) for m in replies}
        ids = sorted(set(state.node_ids) | accepted)
        had = {n for n, k in zip(state.node_ids, known, strict=True) if k}
        order = [n for n in ids if n in had or n in accepted]
        rows = [i for i, n in enumerate(order) if n not in fuzz.byzantine]
    f = int(getattr(snapshot.aggregator, "f", 0))  # type: ignore[attr-defined]
    best = 0.0
    for index in rows:
        probe = copy.deepcopy(snapshot)
        probe.aggregator = _Select(index, f)  # type: ignore[attr-defined]
        new, _ = probe.aggregate_train(rnd, replies)
        moved = position(probe, new if new is not None else arrays) - before
        best = max(best, float(torch.linalg.vector_norm(moved)))
    return best


def _reference(
    snapshot: Strategy, rnd: int, replies: list[Message], arrays: ArrayRecord
) -> torch.Tensor:
    """The position an honest-only round reaches from the snapshot (a fresh copy of it)."""
    strategy = copy.deepcopy(snapshot)
    new, _ = strategy.aggregate_train(rnd, replies)
    return position(strategy, new if new is not None else arrays)


def _check_rejections(
    where: str,
    sent: list[_Sent],
    lines: list[tuple[int, str]],
    metrics: MetricRecord | None,
) -> None:
    """The log lines match the forged messages node by node; the metrics match the log."""
    by_node: dict[int, list[tuple[str, Outcomes]]] = {}
    for s in sent:
        for msg, outcomes in s.forged.messages:
            node = int(msg.metadata.src_node_id)
            by_node.setdefault(node, []).append((s.kind, outcomes))
    logged: dict[int, list[str]] = {}
    for node, reason in lines:
        logged.setdefault(node, []).append(reason)
    unknown = set(logged) - set(by_node)
    if unknown:
        raise FuzzFailure(f"{where}: rejections logged for nodes that sent nothing: {unknown}")
    accepted = 0
    for node, items in by_node.items():
        reasons = logged.get(node, [])
        outcomes = [o for _, o in items]
        if not _matches(outcomes, reasons):
            raise FuzzFailure(
                f"{where}: node {node} sent {[(k, sorted(o)) for k, o in items]}, "
                f"the log rejected {reasons}"
            )
        accepted += len(items) - len(reasons)
    if metrics is None:
        raise FuzzFailure(f"{where}: no metrics for a round that was sent")
    counts = Counter(r for _, r in lines)
    got = {k: int(v) for k, v in metrics.items() if k.startswith("rejected-")}  # type: ignore[call-overload]
    want = {f"rejected-{r}": c for r, c in counts.items()}
    if int(metrics["rejected"]) != len(lines) or got != want:  # type: ignore[call-overload]
        raise FuzzFailure(f"{where}: metrics {dict(metrics)} vs the log's {dict(counts)}")
    if int(metrics["accepted"]) != accepted:  # type: ignore[call-overload]
        raise FuzzFailure(f"{where}: accepted {metrics['accepted']}, expected {accepted}")
    bad = set(counts) - ALL_REASONS
    if bad:
        raise FuzzFailure(f"{where}: unknown rejection reasons {bad}")


def _check_resets(
    where: str,
    fuzz: _Fuzz,
    strategy: Strategy,
    rnd: int,
    sent: list[_Sent],
    lines: list[tuple[int, str]],
    metrics: MetricRecord | None,
) -> None:
    """Byz-EF21-SGDM: the round's ``resets`` metric counts the accepted dense replies, and a
    node's accepted resets after its first are ``reset_interval`` rounds apart or more."""
    assert metrics is not None
    by_node: dict[int, list[Message]] = {}
    for s in sent:
        for msg, _ in s.forged.messages:
            by_node.setdefault(int(msg.metadata.src_node_id), []).append(msg)
    logged = Counter(node for node, _ in lines)
    duplicates = {node for node, reason in lines if reason == "duplicate"}
    resets = []
    for node, msgs in by_node.items():
        if len(msgs) - logged[node] != 1:
            continue
        dense = [m for m in msgs if not m.has_error() and "grad" in m.content.array_records]
        other = [m for m in msgs if not m.has_error() and "grad" not in m.content.array_records]
        if dense and (not other or node in duplicates):
            resets.append(node)
    if int(metrics.get("resets", -1)) != len(resets):  # type: ignore[call-overload]
        raise FuzzFailure(f"{where}: resets {metrics.get('resets')}, accepted dense {resets}")
    interval = int(getattr(strategy, "reset_interval", 0))
    for node in resets:
        last = fuzz.last_reset.get(node)
        if interval and last is not None and rnd - last < interval:
            raise FuzzFailure(
                f"{where}: node {node}'s reset was taken {rnd - last} rounds after its last "
                f"(reset_interval {interval})"
            )
        fuzz.last_reset[node] = rnd
        fuzz.stats.resets_taken += 1


def format_stats(all_stats: Sequence[FuzzStats]) -> str:
    """A table: malformed replies per kind (all profiles), then per profile: rounds, malformed
    replies, exact and bounded rounds, rounds that needed the single-input references
    (``single``), the largest step / largest honest step computed (``ratio``) and the largest
    step / the longer honest-only round of (1) and (2) (``ratio1``, see :data:`STEP_FACTOR`),
    and the seconds."""
    total: Counter[str] = Counter()
    for s in all_stats:
        total.update(s.kinds)
    lines = [f"{'kind':<28}{'malformed replies':>18}"]
    lines += [f"{k:<28}{total[k]:>18}" for k in sorted(total)]
    lines.append(f"{'total':<28}{sum(total.values()):>18}  ({len(total)} kinds)")
    lines.append("")
    lines.append(
        f"{'profile':<38}{'rounds':>7}{'malformed':>10}{'exact':>7}{'bounded':>8}"
        f"{'single':>7}{'ratio':>7}{'ratio1':>7}{'s':>7}"
    )
    for s in all_stats:
        lines.append(
            f"{s.profile:<38}{s.rounds:>7}{s.malformed:>10}{s.exact_rounds:>7}"
            f"{s.bounded_rounds:>8}{s.single_input_rounds:>7}{s.max_ratio:>7.2f}"
            f"{s.max_ratio_rounds:>7.2f}{s.seconds:>7.2f}"
        )
    secs = sum(s.seconds for s in all_stats)
    lines.append(f"{'total':<38}{sum(s.rounds for s in all_stats):>7}"
                 f"{sum(s.malformed for s in all_stats):>10}{'':>36}{secs:>7.2f}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.strategies.fuzz_helpers [rounds-multiplier] [seed]
    import sys

    logging.getLogger("flwr").setLevel(logging.WARNING)
    mult = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    results = [run_fuzz(p, seed=seed, rounds=max(1, int(p.rounds * mult))) for p in PROFILES]
    print(format_stats(results))
