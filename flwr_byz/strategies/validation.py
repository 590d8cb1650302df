"""Reply validation: every strategy of ours runs it on every reply before aggregating.

A reply is rejected, with one log line naming the node and the reason, when it is an error
reply, comes from a node the round was not sent to (or is a second reply from one), lacks the
expected ArrayRecord or carries extra ones, has missing/extra array keys, wrong shapes or
dtypes, more bytes than its shapes and dtypes take, undecodable bytes, NaN/Inf values, or
(when weighting by sample count) no usable weight. Nothing a client sends can raise here:
the worst a reply can do is be rejected. The structure (records, keys, shapes, dtypes, byte
lengths) is checked from the headers before any array is decoded, so rejecting a reply costs
no more than its expected size.

The counts go into the round's MetricRecord: ``accepted``, ``rejected`` and
``rejected-<reason>`` for every reason seen (see :data:`REASONS`), and ``byzantine-replies``
(the replies from sampled nodes, accepted or not, that ``byzantine_mod`` marks Byzantine;
present when any reply carries the mark).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING

import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.common.logger import log

from ..protocol.keys import ACCEPTED_KEY, BYZANTINE_REPLIES_KEY, REJECTED_KEY
from ..protocol.metrics import count_byzantine
from ..protocol.records import Layout, OversizeError, check_array, flatten, layout_of

__all__ = ["REASONS", "CheckedReplies", "Rejection", "sample_count", "validate_replies"]

REASONS: tuple[str, ...] = (
    "error-reply",  # the Message carries an Error instead of content
    "unknown-node",  # the round was not sent to this node
    "duplicate",  # a second reply from the same node
    "missing-record",  # the expected ArrayRecord is absent
    "extra-record",  # ArrayRecords beyond the expected ones
    "missing-key",  # an expected array key is absent
    "extra-key",  # an array key that was not expected
    "shape",  # an array of the wrong shape
    "dtype",  # an array of the wrong dtype
    "oversize",  # an array whose bytes hold more than its declared shape and dtype take
    "malformed",  # an array whose bytes do not decode to its declared shape/dtype
    "non-finite",  # NaN or Inf values
    "bad-weight",  # weighting by sample count, but no finite positive count
)
"""Every rejection reason, as used in the ``rejected-<reason>`` metric keys."""


@dataclass(frozen=True)
class Rejection:
    """A rejected reply: the sending node, the reason (one of :data:`REASONS`) and details."""

    node_id: int
    reason: str
    detail: str = ""


@dataclass
class CheckedReplies:
    """The outcome of :func:`validate_replies`.

    ``vectors[i]`` is the flattened content (the expected records concatenated in order) of
    the reply from ``node_ids[i]``; ``weights[i]`` its sample count when weighting was asked.
    """

    node_ids: list[int]
    contents: list[RecordDict]
    vectors: torch.Tensor
    weights: torch.Tensor | None = None
    rejected: list[Rejection] = field(default_factory=list)
    byzantine: int | None = None  # replies marked Byzantine (None: no reply carried the mark)

    def metrics(self) -> dict[str, int]:
        """``accepted``, ``rejected`` and ``rejected-<reason>`` counts for the MetricRecord
        (and ``byzantine-replies`` when replies carried the mark)."""
        out = {ACCEPTED_KEY: len(self.node_ids), REJECTED_KEY: len(self.rejected)}
        for reason, count in sorted(Counter(r.reason for r in self.rejected).items()):
            out[f"{REJECTED_KEY}-{reason}"] = count
        if self.byzantine is not None:
            out[BYZANTINE_REPLIES_KEY] = self.byzantine
        return out


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def validate_replies(
    replies: Iterable[Message],
    expected: Mapping[str, Layout],
    *,
    expected_nodes: Collection[int] | None = None,
    weighted_by_key: str | None = None,
    context: str = "aggregate_train",
    decode: Callable[[int, RecordDict], torch.Tensor] | None = None,
) -> CheckedReplies:
    """Validate ``replies`` against the ``expected`` ArrayRecords (record key -> layout).

    With a single expected record, a reply holding exactly one ArrayRecord under another key
    is accepted too (Flower's own strategies take "the one ArrayRecord" of a reply).
    ``expected_nodes``: the node IDs the round was sent to (None: anyone may reply).
    ``weighted_by_key``: also read this sample-count metric (finite, > 0) as the weight.
    ``context`` prefixes the log lines (e.g. ``"RobustFedAvg round 3"``).
    ``decode(node_id, content)``: turns a reply whose records have the expected structure
    into its ``[d]`` vector (e.g. decompressing a compressor's payload) instead of
    concatenating the arrays; any exception it raises rejects the reply as ``malformed``
    (``oversize`` for an ``OversizeError``). Every array's bytes are checked against its
    declared shape and dtype before ``decode`` or ``flatten`` reads them.
    """
    layouts = list(expected.values())
    wide = any(lay.vector_dtype == torch.float64 for lay in layouts)
    dtype = torch.float64 if wide else torch.float32
    d = sum(lay.numel for lay in layouts)
    allowed = None if expected_nodes is None else set(expected_nodes)
    seen: set[int] = set()
    node_ids: list[int] = []
    contents: list[RecordDict] = []
    rows: list[torch.Tensor] = []
    weights: list[float] = []
    rejected: list[Rejection] = []
    marks: list[int | None] = []
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        try:
            if msg.has_error():
                raise _Reject("error-reply", _error_text(msg))
            if allowed is not None and node not in allowed:
                raise _Reject("unknown-node", "the round was not sent to this node")
            if node in seen:
                raise _Reject("duplicate", "a reply from this node was already accepted")
            content = msg.content
            marks.append(_mark(content))
            vector = _vector(content, expected, dtype, node, decode)
            if not bool(torch.isfinite(vector).all()):
                bad = int((~torch.isfinite(vector)).sum())
                raise _Reject("non-finite", f"{bad} of {vector.numel()} values are NaN/Inf")
            weight = _weight(content, weighted_by_key) if weighted_by_key else 1.0
        except Exception as exc:  # nothing a client sends may escape: reject, log, go on
            rej = exc if isinstance(exc, _Reject) else _Reject("malformed", repr(exc))
            rejected.append(Rejection(node, rej.reason, rej.detail))
            log(
                WARNING,
                "%s: rejected the reply of node %d: %s (%s)",
                context,
                node,
                rej.reason,
                rej.detail,
            )
            continue
        seen.add(node)
        node_ids.append(node)
        contents.append(content)
        rows.append(vector)
        weights.append(weight)
    if decode is not None and not rows:
        d = 0
    vectors = torch.stack(rows) if rows else torch.empty(0, d, dtype=dtype)
    return CheckedReplies(
        node_ids=node_ids,
        contents=contents,
        vectors=vectors,
        weights=torch.tensor(weights, dtype=torch.float64) if weighted_by_key else None,
        rejected=rejected,
        byzantine=None if all(m is None for m in marks) else sum(m or 0 for m in marks),
    )


def _mark(content: RecordDict) -> int | None:
    """``byzantine_mod``'s mark on a reply (1, 0, None: unmarked); never raises."""
    try:
        return count_byzantine(content)
    except Exception:  # a malformed reply is rejected below; its mark does not count
        return None


def _vector(
    content: RecordDict,
    expected: Mapping[str, Layout],
    dtype: torch.dtype,
    node: int = 0,
    decode: Callable[[int, RecordDict], torch.Tensor] | None = None,
) -> torch.Tensor:
    if decode is not None:
        matched = _records(content, expected)  # the structure first
        if set(content.array_records) != set(expected):  # the one record, under another key
            renamed = RecordDict(dict(content.metric_records))
            for key, (record, _) in zip(expected, matched, strict=True):
                renamed[key] = record
            content = renamed
        try:
            vector = decode(node, content)
        except Exception as exc:  # a payload the decoder refuses
            raise _Reject(_reason(exc), str(exc) or repr(exc)) from exc
        if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
            raise _Reject("malformed", "the payload does not decode to a vector")
        return vector.to(dtype)
    parts = []
    for record, layout in _records(content, expected):
        try:
            parts.append(flatten(record, layout).to(dtype))
        except ValueError as exc:
            raise _Reject(_reason(exc), str(exc)) from exc
    return torch.cat(parts) if parts else torch.empty(0, dtype=dtype)


def _reason(exc: Exception) -> str:
    """``oversize`` for an ``OversizeError``, else ``malformed``."""
    return "oversize" if isinstance(exc, OversizeError) else "malformed"


def _error_text(msg: Message) -> str:
    try:
        return f"code {msg.error.code}: {msg.error.reason}"
    except Exception:  # an error reply whose Error cannot be read
        return "unreadable error"


def _records(
    content: RecordDict, expected: Mapping[str, Layout]
) -> list[tuple[ArrayRecord, Layout]]:
    """The reply's ArrayRecords matched to the expected ones, after checking their structure."""
    got = dict(content.array_records)
    if len(expected) == 1 and len(got) == 1:
        (want_key,), (got_key,) = expected.keys(), got.keys()
        got = {want_key: got[got_key]}
    _same_keys(expected, got, "record", "the reply")
    out = []
    for key, layout in expected.items():
        record = got[key]
        _check_structure(record, layout, key)
        out.append((record, layout))
    return out


def _same_keys(want: Iterable[str], have: Iterable[str], level: str, where: str) -> None:
    """Reject ``missing-<level>`` / ``extra-<level>`` unless the two key sets agree."""
    want, have = list(want), list(have)
    missing = [k for k in want if k not in have]
    if missing:
        raise _Reject(f"missing-{level}", f"{where} lacks {missing[:5]}; has {sorted(have)[:5]}")
    extra = [k for k in have if k not in want]
    if extra:
        raise _Reject(f"extra-{level}", f"{where} has unexpected {extra[:5]}")


def _check_structure(record: ArrayRecord, layout: Layout, name: str) -> None:
    want = layout.spec()
    try:
        have = layout_of(record).spec()
    except Exception as exc:  # headers that cannot even be read
        raise _Reject("malformed", f"ArrayRecord {name!r}: {exc}") from exc
    _same_keys(want, have, "key", f"ArrayRecord {name!r}")
    for key, (shape, dtype) in want.items():
        got_shape, got_dtype = have[key]
        if got_shape != shape:
            raise _Reject("shape", f"{name}[{key!r}] has shape {got_shape}, expected {shape}")
        if got_dtype != dtype:
            raise _Reject("dtype", f"{name}[{key!r}] has dtype {got_dtype}, expected {dtype}")
        try:  # the bytes against the headers, before any array is decoded
            check_array(record[key], (shape, dtype))
        except Exception as exc:
            raise _Reject(_reason(exc), f"{name}[{key!r}]: {exc}") from exc
    # Keys in a different order are fine: flatten() reads them in the layout's order.


def sample_count(content: RecordDict, key: str) -> float:
    """The sample count ``key`` of a reply (the first MetricRecord holding it); ``ValueError``
    unless it is a finite number > 0."""
    for record in content.metric_records.values():
        if key in record:
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key!r} is {value!r}, not a number")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{key!r} is {value!r}, not finite and > 0")
            return float(value)
    raise ValueError(f"no MetricRecord holds {key!r}")


def _weight(content: RecordDict, key: str) -> float:
    try:
        return sample_count(content, key)
    except ValueError as exc:
        raise _Reject("bad-weight", str(exc)) from exc
