"""Oversize data is refused from the headers, before anything is decoded or copied.

A forged Array declares the expected shape and dtype but carries far more bytes: in the
``.npy`` header inside its bytes (``header``: ``np.load`` would read all of it) or after a
correct header (``trailing``). Every decoder of a peer's Array (``array_view``, ``flatten``,
``record_payload``, ``to_state_dict``, ``PayloadCodec``'s decoder, ``validate_replies``)
refuses both with ``OversizeError`` / the reason ``oversize``, without calling any numpy or
torch decoding routine and with a tracemalloc peak far below the forged bytes.
"""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from flwr_byz.protocol.keys import PAYLOAD_KEY
from flwr_byz.protocol.payload import PayloadCodec
from flwr_byz.protocol.records import (
    Layout,
    OversizeError,
    array_view,
    flatten,
    layout_of,
    payload_record,
    record_payload,
    to_state_dict,
)
from flwr_byz.simulations.local import ensure_task_identity
from flwr_byz.strategies.validation import REASONS, validate_replies

ensure_task_identity()

D = 20_000
FACTOR = 100
MODES = ["header", "trailing"]
ENCODINGS = {  # encoding -> compressor spec (None: a dense model)
    "dense": None,
    "identity": "none",
    "topk": "topk:0.1",
    "randk": "randk:0.1",
    "natural": "natural",
    "qsgd": "qsgd:4",
    "qsgd16": "qsgd:1000",
}


def npy_header(dtype: np.dtype, shape: tuple[int, ...], version: tuple[int, int] = (1, 0)) -> bytes:
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def forged(array: Array, mode: str, factor: int = FACTOR) -> Array:
    """``array``'s declared dtype and shape over ``factor`` times its data (module doc)."""
    dt = np.dtype(array.dtype)
    numel = int(np.prod(array.shape, dtype=np.int64))
    if mode == "header":
        data = npy_header(dt, (numel * factor,)) + bytes(numel * factor * dt.itemsize)
    else:
        data = array.data + bytes((factor - 1) * numel * dt.itemsize)
    return Array(dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=data)


def biggest(record: ArrayRecord) -> str:
    return max(record, key=lambda k: len(record[k].data))


def with_forged(record: ArrayRecord, mode: str) -> tuple[ArrayRecord, int]:
    """``record`` with its largest array forged; and the forged array's byte count."""
    key = biggest(record)
    arrays = dict(record.items())
    arrays[key] = forged(arrays[key], mode)
    return ArrayRecord(arrays), len(arrays[key].data)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every numpy / torch routine that could decode or copy an Array's bytes records its call
    (and fails); the test asserts the list stays empty."""
    calls: list[str] = []

    def spy(name: str) -> Callable[..., object]:
        def refuse(*args: object, **kwargs: object) -> object:
            calls.append(name)
            raise AssertionError(f"{name} called on an oversize reply")

        return refuse

    for owner, name in [
        (np, "frombuffer"),
        (np, "load"),
        (np.lib.format, "read_array"),
        (torch, "frombuffer"),
        (torch, "from_numpy"),
    ]:
        monkeypatch.setattr(owner, name, spy(f"{owner.__name__}.{name}"))
    yield calls


def traced_peak(fn: Callable[[], object]) -> int:
    """Bytes of the tracemalloc peak while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def honest(encoding: str) -> tuple[ArrayRecord, dict[str, Layout], Callable | None]:
    """(the honest reply's record, what validation expects, the decoder)."""
    x = torch.randn(D, generator=torch.Generator().manual_seed(0))
    spec = ENCODINGS[encoding]
    if spec is None:
        record = ArrayRecord(
            {"w": Array(x[:-100].reshape(-1, 100).numpy()), "b": Array(x[-100:].numpy())}
        )
        return record, {"arrays": layout_of(record)}, None
    codec = PayloadCodec(spec)
    record = payload_record(codec.compressor.compress(x, 7))
    return record, {PAYLOAD_KEY: codec.layout(D, torch.float32)}, codec.decoder(D, {1: 7})


def message(record_key: str, record: ArrayRecord) -> Message:
    ins = Message(RecordDict(), 1, "train")
    content = RecordDict({record_key: record, "metrics": MetricRecord({"num-examples": 1})})
    return Message(content, reply_to=ins)


def test_oversize_is_a_reason() -> None:
    assert "oversize" in REASONS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_validation_refuses_oversize_without_decoding(
    encoding: str, mode: str, no_decoding: list[str]
) -> None:
    record, expected, decode = honest(encoding)
    bad, nbytes = with_forged(record, mode)
    (key,) = expected
    msg = message(key, bad)
    out = []
    peak = traced_peak(lambda: out.append(validate_replies([msg], expected, decode=decode)))
    checked = out[0]
    assert [r.reason for r in checked.rejected] == ["oversize"], checked.rejected
    assert checked.metrics() == {"accepted": 0, "rejected": 1, "rejected-oversize": 1}
    assert no_decoding == []
    assert peak < nbytes / 20, (peak, nbytes)  # decoding it would take >= nbytes


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_the_honest_reply_still_decodes(encoding: str) -> None:
    record, expected, decode = honest(encoding)
    (key,) = expected
    checked = validate_replies([message(key, record)], expected, decode=decode)
    assert checked.rejected == [] and checked.vectors.shape == (1, D)
    if decode is None:
        want = torch.cat([torch.from_numpy(record[k].numpy().reshape(-1)) for k in record])
    else:
        codec = PayloadCodec(str(ENCODINGS[encoding]))
        payload = {k: torch.from_numpy(record[k].numpy()) for k in record}
        want = codec.compressor.decompress(payload, D)
    assert torch.equal(checked.vectors[0], want)


@pytest.mark.parametrize("mode", MODES)
def test_each_decoder_raises_oversize_error(mode: str, no_decoding: list[str]) -> None:
    record, _, _ = honest("dense")
    bad, _ = with_forged(record, mode)
    with pytest.raises(OversizeError, match="'w'"):
        flatten(bad)
    with pytest.raises(OversizeError, match="'w'"):
        flatten(bad, layout_of(record))
    with pytest.raises(OversizeError):
        array_view(bad["w"])
    with pytest.raises(ValueError, match="'w'"):
        to_state_dict(bad)  # a client reading a forged model from the server
    payload, _, _ = honest("topk")
    forged_payload, _ = with_forged(payload, mode)
    layout = PayloadCodec("topk:0.1").layout(D, torch.float32)
    with pytest.raises(OversizeError, match="'values'"):
        record_payload(forged_payload, layout)
    with pytest.raises(OversizeError, match="'values'"):
        record_payload(forged_payload)
    content = RecordDict({PAYLOAD_KEY: forged_payload})
    with pytest.raises(OversizeError):
        PayloadCodec("topk:0.1").decoder(D, {})(1, content)
    assert no_decoding == []


def test_the_payload_decoder_checks_the_layout_before_reading() -> None:
    """A payload whose headers declare another K than the compressor's at d is refused
    before its bytes are read (even without validate_replies in front)."""
    codec = PayloadCodec("topk:0.1")
    bigger = payload_record(codec.compressor.compress(torch.randn(10 * D), 0))  # K = 10x
    with pytest.raises(ValueError, match="declares shape"):
        codec.decoder(D, {})(1, RecordDict({PAYLOAD_KEY: bigger}))


# --- array_view: what is accepted and what is refused ----------------------------------------


def raw(dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)


@pytest.mark.parametrize(
    "values",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        np.arange(6, dtype=">f4").reshape(2, 3),
        np.array(2.5, dtype=np.float16),
        np.zeros((0, 3), dtype=np.int64),
        np.array([True, False]),
    ],
    ids=["c-order", "fortran", "big-endian", "0-d", "empty", "bool"],
)
def test_array_view_is_a_zero_copy_view_of_any_numeric_npy(values: np.ndarray) -> None:
    array = Array(values)
    view = array_view(array)
    assert view.shape == values.shape and view.dtype == values.dtype
    assert np.array_equal(view, values)
    assert not view.flags.writeable  # a view of Flower's bytes, not a copy
    assert np.array_equal(flatten(ArrayRecord({"a": array})).numpy(), values.reshape(-1))


def test_array_view_reads_a_version_2_header() -> None:
    values = np.arange(5, dtype=np.float32)
    array = raw("float32", (5,), npy_header(values.dtype, (5,), (2, 0)) + values.tobytes())
    assert np.array_equal(array_view(array), values)


GOOD = Array(np.arange(4, dtype=np.float32))


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (raw("float32", (4,), GOOD.data + b"\0"), "bytes"),
        (raw("float32", (4,), GOOD.data[:-1]), "bytes"),
        (raw("float32", (2, 2), GOOD.data), "the bytes hold shape"),
        (raw("int32", (4,), GOOD.data), "the bytes hold shape"),
        (raw("complex64", (2,), GOOD.data), "not numeric"),
        (raw("object", (4,), GOOD.data), "not numeric"),
        (raw("no-such-dtype", (4,), GOOD.data), "unknown dtype"),
        (raw("float32", (-4,), GOOD.data), "negative"),
        (raw("float32", (4,), b"PK\x03\x04" + GOOD.data), "not in the .npy format"),
        (raw("float32", (4,), GOOD.data[:6] + b"\x03\x00" + GOOD.data[8:]), "version"),
        (raw("float32", (4,), GOOD.data[:8] + b"\xff\xff" + GOOD.data[10:]), "header of"),
        (Array(dtype="float32", shape=(4,), stype="torch.save", data=GOOD.data), "serialisation"),
    ],
    ids=[
        "one-byte-more",
        "one-byte-less",
        "other-shape",
        "other-dtype",
        "complex",
        "object",
        "unknown-dtype",
        "negative-dim",
        "not-npy",
        "npy-v3",
        "huge-header",
        "other-stype",
    ],
)
def test_array_view_refuses(array: Array, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        array_view(array)


def test_one_byte_more_is_oversize_one_less_is_not() -> None:
    with pytest.raises(OversizeError):
        array_view(raw("float32", (4,), GOOD.data + b"\0"))
    with pytest.raises(ValueError) as info:
        array_view(raw("float32", (4,), GOOD.data[:-1]))
    assert not isinstance(info.value, OversizeError)


def test_array_view_checks_the_expected_layout_first() -> None:
    assert array_view(GOOD, ((4,), "float32")).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"expected \(5,\)"):
        array_view(GOOD, ((5,), "float32"))
    with pytest.raises(ValueError, match=r"expected .* float64"):
        array_view(GOOD, ((4,), "float64"))


def test_to_state_dict_matches_flower() -> None:
    record, _, _ = honest("dense")
    ours, flowers = to_state_dict(record), record.to_torch_state_dict()
    assert list(ours) == list(flowers)
    for key in ours:
        assert torch.equal(ours[key], flowers[key])
        ours[key] += 1  # writable, independent of the record
    assert torch.equal(to_state_dict(record)["b"], flowers["b"])
