"""``methods.surface``: the surfaces are inverse pairs and read the live state."""

from __future__ import annotations

import pytest
import torch

from flwr_byz.methods.surface import AttackSurface, IdentitySurface, OffsetSurface, as_surface


def test_identity_surface() -> None:
    target = torch.arange(4.0)
    s = IdentitySurface(lambda mult: (1.0 if mult is None else mult) * target)
    assert isinstance(s, AttackSurface)
    r = torch.randn(4)
    assert s.aggregated(3, r) is r and s.to_wire(3, r) is r
    assert torch.equal(s.shift_back_target(None), target)
    assert torch.equal(s.shift_back_target(0.5), 0.5 * target)


def test_offset_surface_adds_and_removes_the_offset_bit_for_bit() -> None:
    g = torch.randn(6, generator=torch.Generator().manual_seed(0))
    copies = {1: g}
    s = OffsetSurface(offset=copies.get, target=lambda mult: g)
    assert isinstance(s, AttackSurface)
    r = torch.randn(6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s.aggregated(1, r), r + g)
    assert torch.equal(s.to_wire(1, r), r - g)
    assert s.aggregated(2, r) is r and s.to_wire(2, r) is r  # no offset for node 2
    copies[2] = 2 * g  # live: reads the current offsets
    assert torch.equal(s.aggregated(2, r), r + 2 * g)


def test_offset_surface_with_sign_minus_one_is_the_update_of_a_model() -> None:
    x = torch.randn(5, dtype=torch.float64)
    s = OffsetSurface(offset=lambda node: x, target=lambda mult: -x, sign=-1.0)
    reply = torch.randn(5, dtype=torch.float64)
    assert torch.equal(s.aggregated(0, reply), reply - x)
    assert torch.equal(s.to_wire(0, reply - x), x + (reply - x))


def test_offset_surface_compressed_only_offsets_compressed_replies() -> None:
    g = torch.randn(4, generator=torch.Generator().manual_seed(2))
    s = OffsetSurface(offset=lambda node: g, target=lambda mult: g, compressed_only=True)
    r = torch.randn(4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s.aggregated(1, r, compressed=True), r + g)
    assert torch.equal(s.to_wire(1, r, compressed=True), r - g)
    assert s.aggregated(1, r) is r and s.to_wire(1, r, compressed=False) is r
    plain = OffsetSurface(offset=lambda node: g, target=lambda mult: g)  # offsets every reply
    assert torch.equal(plain.aggregated(1, r), plain.aggregated(1, r, compressed=True))


def test_as_surface_names_what_is_missing() -> None:
    s = IdentitySurface(lambda mult: torch.zeros(1))
    assert as_surface(s, "x") is s

    class OnlyTarget:
        def shift_back_target(self, mult: float | None) -> torch.Tensor:
            return torch.zeros(1)

    with pytest.raises(TypeError, match=r"OnlyTarget has no aggregated\(\), to_wire\(\)$"):
        as_surface(OnlyTarget(), "the argument")
    with pytest.raises(TypeError, match=r"^here must be an attack surface .* int has no "):
        as_surface(3, "here")
    not_callable = type("NotCallable", (), {"aggregated": 1, "to_wire": 1, "shift_back_target": 1})
    with pytest.raises(TypeError, match=r"aggregated\(\), to_wire\(\), shift_back_target\(\)"):
        as_surface(not_callable(), "x")
