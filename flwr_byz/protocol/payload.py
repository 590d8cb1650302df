"""The server side of a compressor: the spec the clients receive, the payload's ArrayRecord
layout (for validation) and the decoder that turns a reply's payload into its dense vector.

Shared by the method strategies whose clients reply with a compressed ``"payload"``
(Byz-VR-MARINA-PP, Byz-EF21-SGDM, BR-CSGD).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from flwr.app import ArrayRecord, RecordDict

from ..compressors import Compressor, compressor_spec, get_compressor
from .keys import PAYLOAD_KEY
from .records import Layout, layout_of, payload_record, record_payload

__all__ = ["PayloadCodec"]


class PayloadCodec:
    """A compressor as the server uses it.

    Parameters
    ----------
    compressor : Compressor | str
        A ``flwr_byz.compressors`` object or spec (``"topk:0.1"``, ``"randk:0.01"``, ...).
    """

    def __init__(self, compressor: Compressor | str) -> None:
        if isinstance(compressor, str):
            self.compressor: Compressor = get_compressor(compressor)
            self.spec = compressor
        else:
            self.compressor = compressor
            self.spec = compressor_spec(compressor)
        self._layouts: dict[tuple[int, torch.dtype], Layout] = {}

    @property
    def biased(self) -> bool:
        """Whether the compressor is biased (TopK)."""
        return bool(getattr(self.compressor, "biased", False))

    def layout(self, d: int, dtype: torch.dtype) -> Layout:
        """The ArrayRecord layout of the payload of a ``[d]`` vector of ``dtype`` (cached)."""
        key = (int(d), dtype)
        if key not in self._layouts:
            zero = torch.zeros(int(d), dtype=dtype)
            self._layouts[key] = layout_of(payload_record(self.compressor.compress(zero, 0)))
        return self._layouts[key]

    def decoder(
        self,
        d: int,
        seeds: Mapping[int, int],
        check: Callable[[int], None] | None = None,
    ) -> Callable[[int, RecordDict], torch.Tensor]:
        """``decode(node, content)`` for ``validate_replies``: the dense ``[d]`` vector of the
        reply's payload. The payload's keys, shapes, dtypes and byte lengths must be this
        compressor's at ``d`` (float32 or float64 values) before anything is read. A payload
        carrying a seed (RandK) must carry the seed sent to that node (``seeds``);
        ``check(node)`` may refuse the node first. Raises ``ValueError`` (``OversizeError``
        for an array carrying more bytes than its declared shape and dtype)."""

        def decode(node: int, content: RecordDict) -> torch.Tensor:
            if check is not None:
                check(node)
            record = content.array_records[PAYLOAD_KEY]
            payload = record_payload(record, self.expected(record, d))
            if "seed" in payload:
                sent = seeds.get(node)
                got = payload["seed"].reshape(-1)
                if got.numel() != 1 or int(got[0]) != sent:
                    raise ValueError(f"payload seed {got.tolist()} is not the seed sent ({sent})")
            return self.compressor.decompress(payload, d)

        return decode

    def expected(self, record: ArrayRecord, d: int) -> Layout:
        """The layout ``record`` must have at ``d``: the payload of a float64 vector if
        ``record`` holds a float64 array, else of a float32 one (read from the headers)."""
        return self.layout(d, layout_of(record).vector_dtype)

    def __repr__(self) -> str:
        return f"PayloadCodec({self.compressor!r})"
