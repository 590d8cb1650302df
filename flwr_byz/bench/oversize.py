"""Cost of rejecting an oversize reply: time and memory of ``validate_replies`` on one reply
whose Array declares the expected shape and dtype but whose bytes carry ``--factor`` times the
data, for every encoding a strategy of ours decodes (a dense model, TopK / RandK sparse
payloads, Natural / QSGD quantized payloads), next to an honest reply of the same layout.

Two forgeries per encoding: ``header`` (the ``.npy`` header inside the bytes declares the
larger shape, so ``np.load`` would read all of it) and ``trailing`` (a correct ``.npy`` header
followed by extra bytes).

    OMP_NUM_THREADS=1 python -m flwr_byz.bench.oversize                  # d = 1M, 100x
    python -m flwr_byz.bench.oversize --d 100000 --factor 10 --only dense

Per case: the rejection reason (``accepted`` for the honest reply), the wall time (median of
``--repeats``), the tracemalloc peak (numpy's allocations; torch's are not traced) and the peak
RSS above the RSS before the call, sampled every ~1 ms (torch's allocations included;
:class:`flwr_byz.bench.measure.RssSampler`).
Nothing is written unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from flwr_byz.files import write_json
from flwr_byz.protocol.keys import PAYLOAD_KEY
from flwr_byz.protocol.payload import PayloadCodec
from flwr_byz.protocol.records import Layout, layout_of, payload_record
from flwr_byz.simulations.local import ensure_task_identity
from flwr_byz.strategies.validation import validate_replies

from .measure import MIB, RssSampler

__all__ = ["ENCODINGS", "Row", "build", "forged", "main", "npy"]

ENCODINGS: dict[str, str | None] = {
    "dense": None,
    "topk": "topk:0.1",
    "randk": "randk:0.1",
    "natural": "natural",
    "qsgd": "qsgd:4",
}
"""Encoding name -> compressor spec (None: the dense model itself)."""


def npy(dtype: str, shape: tuple[int, ...], nbytes: int | None = None) -> bytes:
    """``.npy`` bytes: a header declaring ``dtype``/``shape`` and ``nbytes`` zero bytes of data
    (default: exactly what the header declares)."""
    dt = np.dtype(dtype)
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    if nbytes is None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    return buf.getvalue() + bytes(nbytes)


def forged(array: Array, factor: int, mode: str) -> Array:
    """``array``'s header (dtype, shape) over ``factor`` times its data (module doc)."""
    dt = np.dtype(array.dtype)
    numel = int(np.prod(array.shape, dtype=np.int64))
    if mode == "header":
        data = npy(array.dtype, (numel * factor,))
    else:
        data = npy(array.dtype, tuple(array.shape), numel * factor * dt.itemsize)
    return Array(dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=data)


@dataclass
class Case:
    """One reply to validate: what the round expects, the decoder and the reply's record."""

    expected: dict[str, Layout]
    decode: Callable[[int, RecordDict], torch.Tensor] | None
    key: str
    record: ArrayRecord


def build(encoding: str, d: int) -> Case:
    """The honest reply's record for ``encoding`` at dimension ``d``."""
    x = torch.randn(d, generator=torch.Generator().manual_seed(0))
    spec = ENCODINGS[encoding]
    if spec is None:
        record = ArrayRecord({"w": Array(x.numpy())})
        return Case({"arrays": layout_of(record)}, None, "arrays", record)
    codec = PayloadCodec(spec)
    record = payload_record(codec.compressor.compress(x, 7))
    decode = codec.decoder(d, {1: 7})
    return Case({PAYLOAD_KEY: codec.layout(d, torch.float32)}, decode, PAYLOAD_KEY, record)


def biggest(record: ArrayRecord) -> str:
    """The key of the array with the most bytes (the one the forgery inflates)."""
    return max(record, key=lambda k: len(record[k].data))


@dataclass
class Row:
    encoding: str
    mode: str
    oversize_mib: float
    outcome: str
    ms: float
    tracemalloc_peak_mib: float
    rss_peak_extra_mib: float


def measure(case: Case, record: ArrayRecord, repeats: int) -> tuple[str, float, int, int]:
    """(outcome, median ms, max tracemalloc peak, max RSS extra) of validating the reply."""
    ins = Message(RecordDict(), 1, "train")
    msg = Message(
        RecordDict({case.key: record, "metrics": MetricRecord({"num-examples": 1})}), reply_to=ins
    )
    outcome, times, traced, rss = "", [], 0, 0
    for _ in range(repeats):
        gc.collect()
        tracemalloc.start()
        with RssSampler() as peak:
            start = time.perf_counter()
            checked = validate_replies([msg], case.expected, decode=case.decode, context="bench")
            times.append(time.perf_counter() - start)
        traced = max(traced, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        rss = max(rss, peak.extra or 0)
        outcome = checked.rejected[0].reason if checked.rejected else "accepted"
        del checked
    return outcome, statistics.median(times) * 1e3, traced, rss


def main(argv: Sequence[str] | None = None) -> int:
    """Validate every encoding's honest reply and forgeries; print the rows (and write them to
    ``--out`` when given)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=1_000_000, help="model dimension")
    parser.add_argument("--factor", type=int, default=100, help="oversize factor")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="comma list of encodings: " + ",".join(ENCODINGS))
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    ensure_task_identity()
    torch.set_num_threads(1)
    encodings = args.only.split(",") if args.only else list(ENCODINGS)
    rows: list[Row] = []
    for encoding in encodings:
        case = build(encoding, args.d)
        key = biggest(case.record)
        variants: list[tuple[str, ArrayRecord]] = [("honest", case.record)]
        for mode in ("header", "trailing"):
            arrays = dict(case.record.items())
            arrays[key] = forged(arrays[key], args.factor, mode)
            variants.append((mode, ArrayRecord(arrays)))
        for mode, record in variants:
            size = sum(len(record[k].data) for k in record) / MIB
            outcome, ms, traced, rss = measure(case, record, args.repeats)
            row = Row(encoding, mode, size, outcome, ms, traced / MIB, rss / MIB)
            rows.append(row)
            print(
                f"{encoding:8s} {mode:8s} reply {size:8.1f} MiB  {outcome:9s} {ms:9.2f} ms  "
                f"tracemalloc {row.tracemalloc_peak_mib:8.2f} MiB  "
                f"RSS +{row.rss_peak_extra_mib:8.2f} MiB",
                flush=True,
            )
            del record
        del case, variants
    if args.out is not None:
        write_json(
            args.out, {"d": args.d, "factor": args.factor, "rows": [asdict(r) for r in rows]}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
