"""Malformed payloads (a Byzantine client controls them) raise ValueError, never another error;
non-finite float values pass through to the caller's check. Bad inputs to compress, too."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from flwr_byz.compressors import QSGD, Compressor, Natural, RandK, TopK

from .reference import make_compressors

D = 37
Payload = dict[str, torch.Tensor]
Mutation = Callable[[Payload], object]


def _valid(comp_id: str) -> tuple[Compressor, Payload]:
    comp = make_compressors()[comp_id]
    return comp, comp.compress(torch.randn(D, dtype=torch.float64), seed=3)


def _with(key: str, value: object) -> Mutation:
    return lambda p: {**p, key: value}


def _without(key: str) -> Mutation:
    return lambda p: {k: v for k, v in p.items() if k != key}


def _generic(payload: Payload) -> dict[str, Mutation]:
    """Mutations that break any payload: keys, types, shapes, dtypes."""
    out: dict[str, Mutation] = {
        "not-a-dict": lambda p: list(p.values()),
        "none": lambda p: None,
        "empty": lambda p: {},
        "extra-key": lambda p: {**p, "bonus": torch.zeros(1)},
    }
    for key, t in payload.items():
        out[f"missing-{key}"] = _without(key)
        out[f"numpy-{key}"] = _with(key, t.numpy())
        out[f"list-{key}"] = _with(key, t.tolist())
        out[f"longer-{key}"] = _with(key, torch.cat([t, t[:1]]))
        out[f"shorter-{key}"] = _with(key, t[:-1])
        out[f"2d-{key}"] = _with(key, t.reshape(1, -1))
        out[f"scalar-{key}"] = _with(key, t[0])
        out[f"empty-{key}"] = _with(key, t[:0])
        wrong = torch.int16 if t.is_floating_point() else torch.float32
        out[f"dtype-{key}"] = _with(key, t.to(wrong))
        if t.is_floating_point():
            out[f"float16-{key}"] = _with(key, t.to(torch.float16))
        else:
            out[f"int64-{key}" if t.dtype != torch.int64 else f"int32-{key}"] = _with(
                key, t.to(torch.int32 if t.dtype == torch.int64 else torch.int64)
            )
    return out


def _specific(comp_id: str, payload: Payload) -> dict[str, Mutation]:
    if comp_id == "topk":
        idx = payload["indices"]
        return {
            "index-d": _with("indices", torch.cat([idx[:-1], torch.tensor([D], dtype=idx.dtype)])),
            "index-huge": _with("indices", torch.cat([idx[:-1], idx.new_tensor([2**31 - 1])])),
            "index-negative": _with("indices", torch.cat([idx.new_tensor([-1]), idx[1:]])),
            "index-duplicate": _with("indices", torch.cat([idx[:1], idx[:-1]])),
            "index-decreasing": _with("indices", idx.flip(0)),
        }
    if comp_id in ("randk", "randk-k"):
        return {
            "seed-2": _with("seed", torch.tensor([1, 2])),
            "seed-0d": _with("seed", torch.tensor(1)),
        }
    if comp_id == "natural":
        signs = payload["signs"].clone()
        signs[-1] |= 0b10000000  # D = 37: bits 5..7 of the last byte are padding
        bigger = torch.zeros(6, dtype=torch.uint8)
        return {"padding-bit": _with("signs", signs), "signs-6": _with("signs", bigger)}
    if comp_id in ("qsgd", "qsgd16"):
        comp = make_compressors()[comp_id]
        assert isinstance(comp, QSGD)
        big = payload["levels"].clone()
        big[0] = comp.s + 1
        low = payload["levels"].clone()
        low[-1] = -comp.s - 1
        int_min = payload["levels"].clone()
        int_min[1] = torch.iinfo(int_min.dtype).min
        other = torch.int16 if comp.s <= 127 else torch.int8
        return {
            "level-above-s": _with("levels", big),
            "level-below-minus-s": _with("levels", low),
            "level-int-min": _with("levels", int_min),
            "levels-other-int": _with("levels", payload["levels"].clamp(-100, 100).to(other)),
        }
    return {}


CASES = [
    (comp_id, name)
    for comp_id in make_compressors()
    for name in [*_generic(_valid(comp_id)[1]), *_specific(comp_id, _valid(comp_id)[1])]
]


@pytest.mark.parametrize(("comp_id", "mutation"), CASES)
def test_malformed_payload_raises_value_error(comp_id: str, mutation: str) -> None:
    comp, payload = _valid(comp_id)
    mutations = {**_generic(payload), **_specific(comp_id, payload)}
    bad = mutations[mutation](payload)
    with pytest.raises(ValueError, match="payload"):
        comp.decompress(bad, D)  # type: ignore[arg-type]


DENSE = ["identity", "natural", "qsgd", "qsgd16"]
WRONG_D = [(c, d) for c in make_compressors() for d in (1, 2 * D, 10 * D)] + [
    (c, d) for c in DENSE for d in (D - 1, D + 1, D + 8)
]


@pytest.mark.parametrize(("comp_id", "d"), WRONG_D)
def test_wrong_d_raises_value_error(comp_id: str, d: int) -> None:
    """A payload made at D does not decode at another d (for the sparse ones: one with another
    K; their payload does not carry d itself)."""
    comp, payload = _valid(comp_id)
    if comp_id == "randk-k" and d >= 7:
        pytest.skip("RandK(k=7) sends 7 values at every d >= 7")
    with pytest.raises(ValueError, match="payload"):
        comp.decompress(payload, d)


@pytest.mark.parametrize("comp_id", list(make_compressors()))
@pytest.mark.parametrize("d", [0, -1, 2.5, "37", None, True])
def test_bad_d_raises_value_error(comp_id: str, d: object) -> None:
    comp, payload = _valid(comp_id)
    with pytest.raises(ValueError, match="d must be"):
        comp.decompress(payload, d)  # type: ignore[arg-type]


@pytest.mark.parametrize("comp_id", list(make_compressors()))
def test_valid_payload_round_trips(comp_id: str) -> None:
    """The untouched payload decodes, and the mutations above are the only failures."""
    comp, payload = _valid(comp_id)
    assert comp.decompress(payload, D).shape == (D,)


@pytest.mark.parametrize("comp_id", ["identity", "randk", "topk"])
def test_non_finite_values_pass_through(comp_id: str) -> None:
    comp, payload = _valid(comp_id)
    values = payload["values"].clone()
    values[0], values[-1] = math.nan, -math.inf
    out = comp.decompress({**payload, "values": values}, D)
    assert torch.isnan(out).sum() == 1 and torch.isneginf(out).sum() == 1


def test_non_finite_norm_passes_through() -> None:
    comp, payload = _valid("qsgd")
    out = comp.decompress({**payload, "norm": torch.tensor([math.nan], dtype=torch.float64)}, D)
    assert torch.isnan(out).all()


@pytest.mark.parametrize("comp_id", list(make_compressors()))
@pytest.mark.parametrize(
    "x",
    [
        np.zeros(4),
        torch.zeros(4, dtype=torch.int64),
        torch.zeros(4, dtype=torch.float16),
        torch.zeros(2, 3),
        torch.zeros(()),
        torch.zeros(0),
    ],
    ids=["numpy", "int64", "float16", "2d", "0d", "empty"],
)
def test_bad_input_vector(comp_id: str, x: object) -> None:
    with pytest.raises(ValueError, match="x must be"):
        make_compressors()[comp_id].compress(x, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("comp", [RandK(fraction=0.5), Natural(), QSGD(s=4)])
@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 1.0, "1", None])
def test_bad_seed(comp: Compressor, seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        comp.compress(torch.ones(4), seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("comp", [TopK(k=2), RandK(k=2), Natural(), QSGD(s=2)], ids=repr)
def test_mixed_devices(comp: Compressor) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    payload = comp.compress(torch.randn(D, device="cuda"), 0)
    for key in payload:
        with pytest.raises(ValueError, match="devices"):
            comp.decompress({**payload, key: payload[key].cpu()}, D)
