"""Flatten Flower ArrayRecords to one torch vector and back: the one bridge between Flower
records and the numeric core (aggregators, attacks), used by every strategy and client of ours.

A :class:`Layout` remembers the keys, shapes and dtypes of a record; ``flatten`` concatenates
the arrays (in key order) into a ``[d]`` tensor of one floating dtype (float64 if any array is
float64, else float32) and ``unflatten`` casts every slice back to its array's dtype (integer
arrays, e.g. BatchNorm's ``num_batches_tracked``, are rounded).

Every read of a peer's Array goes through :func:`array_view`: the ``.npy`` header inside the
bytes and the byte length are checked against the declared shape and dtype before anything is
decoded (:func:`check_array`), and the values are then a zero-copy view of the bytes Flower
already holds, so a reply carrying more data than its layout costs no allocation
(:class:`OversizeError`).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from dataclasses import dataclass
from math import prod

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = [
    "NPY_STYPE",
    "Layout",
    "OversizeError",
    "array_view",
    "check_array",
    "flatten",
    "layout_of",
    "payload_record",
    "record_payload",
    "to_state_dict",
    "unflatten",
]

NPY_STYPE = "numpy.ndarray"
"""The Array serialisation we read (Flower's ``Array(ndarray)``: the ``.npy`` format)."""

_MAX_HEADER = 10_000  # bytes of an .npy header: numpy's own limit (np.load's max_header_size)
_NUMERIC_KINDS = "fiub"  # bool, integers, floats; not complex, strings, objects, dates, voids


class OversizeError(ValueError):
    """An Array whose bytes hold more than its declared shape and dtype (a forged reply).
    ``reason`` is its rejection label in ``strategies.validation``."""

    reason = "oversize"


@dataclass(frozen=True)
class Layout:
    """Keys, shapes and dtypes (numpy names) of an ArrayRecord, in record order."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each array."""
        return tuple(prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        """Length ``d`` of the flat vector."""
        return sum(self.sizes)

    @property
    def vector_dtype(self) -> torch.dtype:
        """float64 if any array is float64, else float32."""
        return torch.float64 if "float64" in self.dtypes else torch.float32

    def floating(self) -> Layout:
        """The same layout restricted to its floating-point arrays."""
        keep = [i for i, dt in enumerate(self.dtypes) if np.issubdtype(np.dtype(dt), np.floating)]
        return Layout(
            keys=tuple(self.keys[i] for i in keep),
            shapes=tuple(self.shapes[i] for i in keep),
            dtypes=tuple(self.dtypes[i] for i in keep),
        )

    def floating_mask(self) -> torch.Tensor:
        """``[numel]`` bool: which coordinates of the flat vector come from floating arrays."""
        flags = [np.issubdtype(np.dtype(dt), np.floating) for dt in self.dtypes]
        sizes = torch.tensor(self.sizes, dtype=torch.long)
        return torch.tensor(flags, dtype=torch.bool).repeat_interleave(sizes)

    def spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{key: (shape, dtype)}``, what a conforming record must hold."""
        return dict(zip(self.keys, zip(self.shapes, self.dtypes, strict=True), strict=True))


def layout_of(record: ArrayRecord) -> Layout:
    """The layout of ``record`` (read from the Array headers, nothing is deserialised)."""
    items = list(record.items())
    return Layout(
        keys=tuple(k for k, _ in items),
        shapes=tuple(tuple(int(s) for s in a.shape) for _, a in items),
        dtypes=tuple(str(a.dtype) for _, a in items),
    )


def flatten(record: ArrayRecord, layout: Layout | None = None) -> torch.Tensor:
    """Concatenate the arrays of ``record`` (in ``layout``'s key order) into a ``[d]`` tensor.

    Each array is checked by :func:`array_view` and against its ``layout`` size, then copied
    once, straight into the vector. Raises :class:`OversizeError` when an array's bytes hold
    more than its declared shape and dtype, ``ValueError`` for any other mismatch.
    """
    layout = layout or layout_of(record)
    out = torch.empty(layout.numel, dtype=layout.vector_dtype)
    flat = out.numpy()
    start = 0
    for key, size in zip(layout.keys, layout.sizes, strict=True):
        try:
            view = array_view(record[key])
            if view.size != size:
                raise ValueError(f"has {view.size} values, expected {size}")
        except OversizeError as exc:
            raise OversizeError(f"array {key!r}: {exc}") from exc
        except Exception as exc:  # a malformed Array (bytes vs shape/dtype) from a peer
            raise ValueError(f"array {key!r} cannot be decoded: {exc}") from exc
        if size:
            np.copyto(flat[start : start + size].reshape(view.shape), view, casting="unsafe")
        start += size
    return out


def unflatten(vector: torch.Tensor, layout: Layout) -> ArrayRecord:
    """Split a ``[d]`` vector back into an ArrayRecord with ``layout``'s keys, shapes, dtypes."""
    if vector.dim() != 1 or vector.numel() != layout.numel:
        raise ValueError(f"expected a vector of {layout.numel} values, got {tuple(vector.shape)}")
    flat = vector.detach().cpu().numpy()
    arrays: dict[str, Array] = {}
    start = 0
    for key, shape, dtype, size in _entries(layout):
        chunk = flat[start : start + size]
        if not np.issubdtype(np.dtype(dtype), np.floating):
            chunk = np.rint(chunk)
        arrays[key] = Array(np.array(chunk, dtype=dtype).reshape(shape))  # a copy; 0-d stays 0-d
        start += size
    return ArrayRecord(arrays)


def _entries(layout: Layout) -> Iterable[tuple[str, tuple[int, ...], str, int]]:
    return zip(layout.keys, layout.shapes, layout.dtypes, layout.sizes, strict=True)


def payload_record(payload: dict[str, torch.Tensor]) -> ArrayRecord:
    """A compressor's wire payload (name -> tensor) as an ArrayRecord, dtypes kept (int32
    indices stay 4 bytes, int8 exponents 1 byte), so the Message carries exactly the payload."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v.detach().cpu().numpy())) for k, v in payload.items()}
    )


def record_payload(record: ArrayRecord, layout: Layout | None = None) -> dict[str, torch.Tensor]:
    """The inverse of :func:`payload_record`. With ``layout`` (what the compressor's payload
    must be at this ``d``) the keys, shapes and dtypes are checked against it before any array
    is read; every array is checked by :func:`array_view` and copied once. Raises
    :class:`OversizeError` when an array's bytes hold more than declared, else ``ValueError``."""
    if layout is not None:
        want = layout.spec()
        if set(record) != set(want):
            raise ValueError(f"payload keys {sorted(record)}, expected {sorted(want)}")
    out: dict[str, torch.Tensor] = {}
    for key in record:
        try:
            view = array_view(record[key], None if layout is None else want[key])
            out[key] = torch.from_numpy(np.array(view, order="C"))  # a writable copy
        except OversizeError as exc:
            raise OversizeError(f"array {key!r}: {exc}") from exc
        except Exception as exc:  # a malformed Array from a peer
            raise ValueError(f"array {key!r} cannot be decoded: {exc}") from exc
    return out


def to_state_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()`` with every array checked by :func:`array_view` first
    (a client reading the server's model); ``ValueError`` for an Array that does not decode."""
    out: dict[str, torch.Tensor] = {}
    for key in record:
        try:
            out[key] = torch.from_numpy(np.array(array_view(record[key]), order="C"))
        except Exception as exc:
            raise ValueError(f"array {key!r} cannot be decoded: {exc}") from exc
    return out


def array_view(array: Array, expected: tuple[tuple[int, ...], str] | None = None) -> np.ndarray:
    """The values of ``array`` as a read-only, zero-copy view of its bytes, after
    :func:`check_array` (same arguments, same errors)."""
    dtype, shape, fortran, offset = check_array(array, expected)
    view = np.frombuffer(array.data, dtype=dtype, count=prod(shape), offset=offset)
    return view.reshape(shape[::-1]).T if fortran else view.reshape(shape)


def check_array(
    array: Array, expected: tuple[tuple[int, ...], str] | None = None
) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Check, from the headers alone, that ``array`` can be read as declared: the
    serialisation is ``.npy``; the declared dtype is numeric (bool, integer, float) and the
    declared shape non-negative; both are ``expected`` (``(shape, dtype)``) when given; the
    bytes hold exactly one ``.npy`` header declaring that shape and dtype plus
    ``numel * itemsize`` bytes of data. Returns (dtype, shape, Fortran order, data offset).

    Raises :class:`OversizeError` when the bytes are longer than that, ``ValueError`` for any
    other mismatch; nothing beyond the ``.npy`` header (at most 10 kB) is read or copied.
    """
    shape = tuple(int(s) for s in array.shape)
    if expected is not None and (shape, str(array.dtype)) != tuple(expected):
        raise ValueError(
            f"declares shape {shape} and dtype {array.dtype}, expected {expected[0]} and "
            f"{expected[1]}"
        )
    if array.stype != NPY_STYPE:
        raise ValueError(f"serialisation {array.stype!r}, expected {NPY_STYPE!r}")
    try:
        dtype = np.dtype(array.dtype)
    except Exception as exc:  # a dtype string numpy does not know
        raise ValueError(f"unknown dtype {array.dtype!r}") from exc
    if dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"dtype {dtype} is not numeric")
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    data = array.data
    header_shape, fortran, header_dtype, offset = _npy_header(data)
    want = offset + prod(shape) * dtype.itemsize
    if len(data) > want:
        raise OversizeError(
            f"{len(data)} bytes, but shape {shape} of {dtype} takes {want} (with the header)"
        )
    if len(data) < want:
        raise ValueError(f"{len(data)} bytes, but shape {shape} of {dtype} takes {want}")
    if header_shape != shape or header_dtype != dtype:
        raise ValueError(
            f"the bytes hold shape {header_shape} of {header_dtype}, declared {shape} of {dtype}"
        )
    return dtype, shape, fortran, offset


def _npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, offset of the data) of the ``.npy`` header that starts
    ``data`` (format versions 1.0 and 2.0; numpy writes 3.0 only for non-latin-1 field names)."""
    if bytes(data[:6]) != b"\x93NUMPY" or len(data) < 10:
        raise ValueError("the bytes are not in the .npy format")
    version = (data[6], data[7])
    width = {(1, 0): 2, (2, 0): 4}.get(version)
    if width is None:
        raise ValueError(f"unsupported .npy format version {version}")
    offset = 8 + width + int.from_bytes(data[8 : 8 + width], "little")
    if offset - 8 - width > _MAX_HEADER or offset > len(data):
        raise ValueError(f"an .npy header of {offset} bytes")
    shape, fortran, dtype = _parse_header(bytes(data[8:offset]), width)
    return shape, fortran, dtype, offset


@functools.lru_cache(maxsize=512)  # at most 512 headers of <= 10 kB
def _parse_header(header: bytes, width: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    """numpy's parse of an ``.npy`` header (its length field and dict), cached: the replies of
    a round carry the same few headers, and a parse (``ast.literal_eval``) costs ~0.1 ms."""
    read = (
        np.lib.format.read_array_header_1_0 if width == 2 else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read(io.BytesIO(header), max_header_size=_MAX_HEADER)
    return tuple(int(s) for s in shape), bool(fortran), dtype
