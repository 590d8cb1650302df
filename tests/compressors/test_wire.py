"""Bytes on the wire: a Flower Message carrying a payload is the payload's raw bytes plus a
small constant overhead, so the compressors really shrink the traffic."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Message, RecordDict

from flwr_byz.compressors import QSGD, Compressor, Identity, Natural, RandK, TopK
from flwr_byz.protocol.records import payload_record, record_payload
from flwr_byz.simulations.local import ensure_task_identity
from flwr_byz.simulations.metering import message_bytes

from .reference import raw_nbytes

D = 100_000
OVERHEAD = 1024  # bytes of Message, record and array headers

# compressor, raw payload bytes at D, ratio to the dense float32 vector
CASES = [
    (Identity(), 4 * D, 1.0),
    (RandK(fraction=0.01), 4 * 1000 + 8, 0.01),
    (TopK(fraction=0.01), 8 * 1000, 0.02),
    (Natural(), D // 8 + D, 1.125 / 4),
    (QSGD(s=4), 4 + D, 0.25),
    (QSGD(s=300), 4 + 2 * D, 0.5),
]


def _message_bytes(payload: dict[str, torch.Tensor]) -> int:
    ensure_task_identity()
    content = RecordDict({"payload": payload_record(payload)})
    return message_bytes(Message(content=content, dst_node_id=1, message_type="train"))


@pytest.mark.parametrize(("comp", "raw", "ratio"), CASES, ids=repr)
def test_message_bytes(comp: Compressor, raw: int, ratio: float) -> None:
    x = torch.randn(D, generator=torch.Generator().manual_seed(0))
    payload = comp.compress(x, seed=1)
    assert raw_nbytes(payload) == raw
    size = _message_bytes(payload)
    assert raw <= size <= raw + OVERHEAD
    dense = _message_bytes(Identity().compress(x, 0))
    assert size / dense == pytest.approx(ratio, abs=OVERHEAD / dense)
    decoded = record_payload(payload_record(payload))  # the server's side of the wire
    assert torch.equal(comp.decompress(decoded, D), comp.decompress(payload, D))
