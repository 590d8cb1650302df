"""PayloadCodec: the server side of a compressor (the spec sent to the clients, the payload's
wire layout used by validation, and the decoder that turns a reply into its dense vector)."""

from __future__ import annotations

import pytest
import torch
from flwr.app import RecordDict

from flwr_byz.compressors import QSGD, Natural, RandK, TopK, compressor_spec, get_compressor
from flwr_byz.protocol.payload import PayloadCodec
from flwr_byz.protocol.records import layout_of, payload_record

D = 97
SPECS = ["none", "topk:0.1", "randk:0.1", "randk:k=5", "natural", "qsgd:4"]
DTYPES = [torch.float32, torch.float64]


def vector(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reply(spec: str, v: torch.Tensor, seed: int) -> RecordDict:
    """A reply's content: the payload of ``compress(v, seed)``."""
    return RecordDict({"payload": payload_record(get_compressor(spec).compress(v, seed))})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", SPECS)
def test_layout_matches_the_payload_of_a_real_compress(spec: str, dtype: torch.dtype) -> None:
    codec = PayloadCodec(spec)
    real = layout_of(payload_record(get_compressor(spec).compress(vector(dtype, 3), 1234)))
    assert codec.layout(D, dtype) == real
    assert codec.layout(D, dtype) is codec.layout(D, dtype)  # cached


def test_layout_depends_on_dimension_and_dtype() -> None:
    codec = PayloadCodec("none")
    assert codec.layout(D, torch.float32).dtypes == ("float32",)
    assert codec.layout(D, torch.float64).dtypes == ("float64",)
    assert codec.layout(D, torch.float32).shapes == ((D,),)
    assert codec.layout(D + 1, torch.float32).shapes == ((D + 1,),)
    topk = PayloadCodec("topk:0.1").layout(D, torch.float32)
    assert sum(topk.sizes) < D  # K values and K indices, K = round(0.1 * 97) = 10
    assert dict(zip(topk.keys, topk.sizes, strict=True)) == {"values": 10, "indices": 10}


def test_topk_round_trips_through_the_decoder() -> None:
    codec = PayloadCodec("topk:0.1")
    v = vector()
    got = codec.decoder(D, {})(5, reply("topk:0.1", v, 0))
    keep = v.abs().topk(10).indices
    want = torch.zeros(D)
    want[keep] = v[keep]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert int((got != 0).sum()) == 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_round_trip_is_exact(dtype: torch.dtype) -> None:
    v = vector(dtype, 1)
    got = PayloadCodec("none").decoder(D, {})(3, reply("none", v, 0))
    assert got.dtype == dtype and torch.equal(got, v)


def test_randk_with_the_seed_sent_decodes() -> None:
    v = vector()
    got = PayloadCodec("randk:0.1").decoder(D, {7: 42})(7, reply("randk:0.1", v, 42))
    want = get_compressor("randk:0.1").decompress(get_compressor("randk:0.1").compress(v, 42), D)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_decoder_rejects_a_randk_seed_mismatch() -> None:
    decode = PayloadCodec("randk:0.1").decoder(D, {7: 42, 8: 43})
    with pytest.raises(ValueError, match=r"seed \[41\] is not the seed sent \(42\)"):
        decode(7, reply("randk:0.1", vector(), 41))
    with pytest.raises(ValueError, match="is not the seed sent"):
        decode(8, reply("randk:0.1", vector(), 42))  # node 7's seed, replayed by node 8
    with pytest.raises(ValueError, match=r"not the seed sent \(None\)"):
        decode(9, reply("randk:0.1", vector(), 42))  # a node the round was not sent to


def test_decoder_rejects_a_payload_with_several_seeds() -> None:
    decode = PayloadCodec("randk:0.1").decoder(D, {7: 42})
    content = reply("randk:0.1", vector(), 42)
    payload = get_compressor("randk:0.1").compress(vector(), 42)
    payload["seed"] = torch.tensor([42, 42], dtype=payload["seed"].dtype)
    content["payload"] = payload_record(payload)
    with pytest.raises(ValueError, match=r"'seed'.* declares shape \(2,\).* expected \(1,\)"):
        decode(7, content)  # refused from the headers, before the seed is read


def test_decoder_calls_check_first() -> None:
    calls: list[int] = []

    def check(node: int) -> None:
        calls.append(node)
        if node == 2:
            raise ValueError("no copy of node 2")

    decode = PayloadCodec("topk:0.1").decoder(D, {}, check=check)
    # the refusal comes before the payload is read: an empty content raises check's error
    with pytest.raises(ValueError, match="no copy of node 2"):
        decode(2, RecordDict({}))
    assert calls == [2]
    out = decode(1, reply("topk:0.1", vector(), 0))
    assert calls == [2, 1] and out.shape == (D,)


def test_decoder_without_check_fails_on_a_missing_payload() -> None:
    with pytest.raises(KeyError):
        PayloadCodec("topk:0.1").decoder(D, {})(2, RecordDict({}))


@pytest.mark.parametrize(
    "compressor", [TopK(fraction=0.1), RandK(k=5), QSGD(s=4), Natural(), get_compressor("none")]
)
def test_spec_of_an_object_is_its_compressor_spec(compressor: object) -> None:
    codec = PayloadCodec(compressor)  # type: ignore[arg-type]
    assert codec.spec == compressor_spec(compressor)  # type: ignore[arg-type]
    assert codec.compressor is compressor
    assert get_compressor(codec.spec) == compressor  # what the clients rebuild


def test_spec_string_is_kept_and_biased_reported() -> None:
    codec = PayloadCodec("topk:0.1")
    assert codec.spec == "topk:0.1" and codec.compressor == TopK(fraction=0.1)
    assert codec.biased is True
    assert PayloadCodec("randk:0.1").biased is False
    assert PayloadCodec("none").biased is False
    assert "TopK" in repr(codec)


def test_unknown_spec_raises() -> None:
    with pytest.raises(ValueError, match="unknown compressor"):
        PayloadCodec("zip")
