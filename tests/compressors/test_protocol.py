"""What every compressor shares: the protocol, determinism in the seed, dtypes and devices."""

from __future__ import annotations

import pytest
import torch

from flwr_byz.compressors import Compressor, Natural

from .reference import make_compressors, mixed_vector, q

IDS = list(make_compressors())
RANDOM = ["randk", "randk-k", "natural", "qsgd", "qsgd16"]
OUT_DTYPE_F64 = {
    "identity": torch.float64, "randk": torch.float64, "randk-k": torch.float64,
    "topk": torch.float64, "natural": torch.float32, "qsgd": torch.float64,
    "qsgd16": torch.float64,
}  # fmt: skip


@pytest.mark.parametrize("comp_id", IDS)
def test_is_a_compressor(comp_id: str) -> None:
    comp = make_compressors()[comp_id]
    assert isinstance(comp, Compressor)
    assert isinstance(comp.omega, float) and isinstance(comp.omega_for(100), float)
    assert comp.biased == (comp_id == "topk")


@pytest.mark.parametrize("comp_id", IDS)
def test_same_seed_same_payload(comp_id: str) -> None:
    comp = make_compressors()[comp_id]
    x = mixed_vector(100, torch.float32, seed=0)
    a, b = comp.compress(x, 42), comp.compress(x.clone(), 42)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.mark.parametrize("comp_id", RANDOM)
def test_different_seeds_different_payloads(comp_id: str) -> None:
    comp = make_compressors()[comp_id]
    x = mixed_vector(100, torch.float32, seed=0)
    outs = [q(comp, x, seed) for seed in range(5)]
    assert all(not torch.equal(outs[i], outs[j]) for i in range(5) for j in range(i))


@pytest.mark.parametrize("comp_id", IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_dtype_and_length(comp_id: str, dtype: torch.dtype) -> None:
    comp = make_compressors()[comp_id]
    out = q(comp, mixed_vector(50, dtype, seed=1), 0)
    assert out.shape == (50,)
    assert out.dtype == (OUT_DTYPE_F64[comp_id] if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("comp_id", IDS)
def test_compress_does_not_alias_or_modify_x(comp_id: str) -> None:
    x = mixed_vector(30, torch.float64, seed=2).requires_grad_()
    before = x.detach().clone()
    payload = make_compressors()[comp_id].compress(x, 0)
    assert torch.equal(x.detach(), before)
    assert not any(t.requires_grad for t in payload.values())
    for t in payload.values():
        t.zero_()
    assert torch.equal(x.detach(), before)


def test_natural_output_is_float32_even_for_float64() -> None:
    assert q(Natural(), torch.ones(3, dtype=torch.float64), 0).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("comp_id", IDS)
def test_cuda(comp_id: str) -> None:
    """Payloads live on x's device and decode there; RandK's support is the same on CPU and
    GPU (it comes from a CPU generator), so a GPU client and a CPU server agree."""
    comp = make_compressors()[comp_id]
    x = mixed_vector(1000, torch.float32, seed=4)
    payload = comp.compress(x.cuda(), 7)
    assert all(t.device.type == "cuda" for t in payload.values())
    out = comp.decompress(payload, 1000)
    assert out.device.type == "cuda"
    on_cpu = comp.decompress({k: t.cpu() for k, t in payload.items()}, 1000)
    assert torch.equal(out.cpu(), on_cpu)
    if comp_id in ("identity", "randk", "randk-k", "topk"):
        assert torch.equal(on_cpu, q(comp, x, 7))
