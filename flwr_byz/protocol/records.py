"""Flatten Flower ArrayRecords to one torch vector and back: the one bridge between Flower
records and the numeric core (aggregators, attacks), used by every strategy and client of ours.

A :class:`Layout` remembers the keys, shapes and dtypes of a record; ``flatten`` concatenates
the arrays (in key order) into a ``[d]`` tensor of one floating dtype (float64 if any array is
float64, else float32) and ``unflatten`` casts every slice back to its array's dtype (integer
arrays, e.g. BatchNorm's ``num_batches_tracked``, are rounded).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from math import prod

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = ["Layout", "flatten", "layout_of", "payload_record", "record_payload", "unflatten"]


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

    Raises ``ValueError`` when an array's bytes do not match its declared shape and dtype.
    """
    layout = layout or layout_of(record)
    out = torch.empty(layout.numel, dtype=layout.vector_dtype)
    start = 0
    for key, size in zip(layout.keys, layout.sizes, strict=True):
        try:
            arr = record[key].numpy()
            if arr.dtype.kind not in "fiub":  # complex, strings, objects, dates: not a tensor
                raise TypeError(f"decodes to dtype {arr.dtype}")
            if arr.size != size:
                raise TypeError(f"has {arr.size} values, expected {size}")
            out[start : start + size] = torch.from_numpy(np.ascontiguousarray(arr).reshape(-1))
        except Exception as exc:  # a malformed Array (bytes vs shape/dtype) from a peer
            raise ValueError(f"array {key!r} cannot be decoded: {exc}") from exc
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


def record_payload(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The inverse of :func:`payload_record`; ``ValueError`` when an array cannot be decoded."""
    out: dict[str, torch.Tensor] = {}
    for key in record:
        try:
            arr = record[key].numpy()
            if arr.dtype.kind not in "fiub":
                raise TypeError(f"decodes to dtype {arr.dtype}")
            out[key] = torch.from_numpy(np.array(arr))
        except Exception as exc:  # a malformed Array from a peer
            raise ValueError(f"array {key!r} cannot be decoded: {exc}") from exc
    return out
