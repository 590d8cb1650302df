"""Every vector attack: shape, dtype and device preserved, the protocol, input errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from flwr_byz.attacks import (
    ALIE,
    IPM,
    Attack,
    BitFlip,
    Gaussian,
    Mimic,
    MinMax,
    MinSum,
    NoAttack,
    NonFinite,
    Scale,
    SignFlip,
)

PER_NODE: dict[str, Callable[[], Attack]] = {
    "none": NoAttack,
    "sign-flip": lambda: SignFlip(2.0),
    "bit-flip": BitFlip,
    "scale": lambda: Scale(3.0),
    "gaussian": lambda: Gaussian(sigma=0.5, seed=1),
    "non-finite": lambda: NonFinite("mix"),
}
OMNISCIENT: dict[str, Callable[[], Attack]] = {
    "ipm": IPM,
    "alie": ALIE,
    "min-max": MinMax,
    "min-sum": MinSum,
    "mimic": Mimic,
}
ALL = {**PER_NODE, **OMNISCIENT}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _pair(
    h: int = 6, b: int = 3, d: int = 11, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(h, d, generator=g, dtype=dtype).to(device)
    own = torch.randn(b, d, generator=g, dtype=dtype).to(device)
    return honest, own


@pytest.mark.parametrize("name", sorted(ALL))
def test_protocol_and_omniscient_flag(name: str) -> None:
    attack = ALL[name]()
    assert isinstance(attack, Attack)
    assert attack.omniscient is (name in OMNISCIENT)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_shape_dtype_device(name: str, dtype: torch.dtype, device: str) -> None:
    honest, own = _pair(dtype=dtype, device=device)
    out = ALL[name]()(honest, own)
    assert out.shape == own.shape and out.dtype == dtype and out.device == own.device
    if name != "non-finite":
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", sorted(ALL))
def test_mixed_dtypes_follow_own(name: str) -> None:
    honest, _ = _pair(dtype=torch.float64)
    _, own = _pair(dtype=torch.float32)
    out = ALL[name]()(honest, own)
    assert out.dtype == torch.float32 and out.shape == own.shape


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_byzantine_rows(name: str) -> None:
    honest, own = _pair(b=0)
    assert ALL[name]()(honest, own).shape == (0, 11)


@pytest.mark.parametrize("name", sorted(ALL))
def test_own_is_not_modified(name: str) -> None:
    honest, own = _pair()
    honest_copy, own_copy = honest.clone(), own.clone()
    out = ALL[name]()(honest, own)
    out.add_(1.0)  # the result is a fresh tensor, not a view of the inputs
    assert torch.equal(own, own_copy) and torch.equal(honest, honest_copy)


@pytest.mark.parametrize("name", sorted(PER_NODE))
def test_per_node_accepts_no_honest(name: str) -> None:
    _, own = _pair()
    out = PER_NODE[name]()(own.new_empty(0, 11), own)
    assert out.shape == own.shape


@pytest.mark.parametrize("name", sorted(OMNISCIENT))
def test_omniscient_needs_honest(name: str) -> None:
    _, own = _pair()
    with pytest.raises(ValueError, match="h >= 1"):
        OMNISCIENT[name]()(own.new_empty(0, 11), own)


@pytest.mark.parametrize("name", sorted(ALL))
def test_bad_inputs(name: str) -> None:
    honest, own = _pair()
    attack = ALL[name]()
    with pytest.raises(ValueError, match="differ in d"):
        attack(honest[:, :5], own)
    with pytest.raises(ValueError, match="2-D"):
        attack(honest, own[0])
    with pytest.raises(ValueError, match="2-D"):
        attack(honest[0], own)
    with pytest.raises(ValueError, match="floating-point"):
        attack(honest, own.long())
    with pytest.raises(ValueError, match="floating-point"):
        attack(honest.long(), own)
    with pytest.raises(ValueError, match=r"torch\.Tensor"):
        attack(honest, own.numpy())  # type: ignore[arg-type]
