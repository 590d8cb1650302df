"""Every strategy has a typed attack surface (``methods.surface``); a method strategy that
forgets it cannot be built, and the error names ``attack_surface``."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from flwr_byz.methods.surface import AttackSurface, IdentitySurface, OffsetSurface, as_surface
from flwr_byz.strategies import (
    BRCSGD,
    ByzEF21,
    ByzEF21SGDM,
    ByzSGD,
    ByzVRMarinaPP,
    MethodStrategy,
    Mu2SGD,
    RobustFedAvg,
    RobustMomentum,
)

#: strategy class -> (surface class, OffsetSurface's sign, compressed_only)
SURFACES = {
    RobustFedAvg: (OffsetSurface, -1.0, False),  # the update reply - x^k
    ByzEF21SGDM: (OffsetSurface, 1.0, True),  # g_i + c_i of a compressed c_i
    ByzEF21: (OffsetSurface, 1.0, True),
    RobustMomentum: (IdentitySurface, None, None),
    ByzVRMarinaPP: (IdentitySurface, None, None),
    BRCSGD: (IdentitySurface, None, None),
    Mu2SGD: (IdentitySurface, None, None),
    ByzSGD: (IdentitySurface, None, None),
}


@pytest.mark.parametrize("cls", list(SURFACES), ids=lambda c: c.__name__)
def test_every_strategy_has_its_surface(cls: type) -> None:
    surface = cls().attack_surface()
    assert as_surface(surface, cls.__name__) is surface and isinstance(surface, AttackSurface)
    kind, sign, compressed_only = SURFACES[cls]
    assert type(surface) is kind
    if kind is OffsetSurface:
        assert (surface.sign, surface.compressed_only) == (sign, compressed_only)


def test_every_method_strategy_is_covered() -> None:
    import flwr_byz.strategies as strategies

    classes = {
        obj
        for obj in vars(strategies).values()
        if isinstance(obj, type) and issubclass(obj, MethodStrategy) and obj is not MethodStrategy
    }
    assert classes <= set(SURFACES)


class _Minimal(MethodStrategy):
    """A method strategy with everything but ``attack_surface``."""

    def _init_state(self, x: torch.Tensor) -> object:
        return None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return None, None


def test_a_method_strategy_without_a_surface_fails_at_construction() -> None:
    assert "attack_surface" in MethodStrategy.__abstractmethods__
    kwargs = dict(aggregator="mean", f=None, lr=0.1, batch_size=1, clients_per_round=None)
    with pytest.raises(TypeError, match=r"abstract method.*attack_surface"):
        _Minimal(**kwargs)  # type: ignore[abstract, arg-type]

    class WithSurface(_Minimal):
        def attack_surface(self) -> AttackSurface:
            return IdentitySurface(lambda mult: torch.zeros(1))

    assert isinstance(WithSurface(**kwargs).attack_surface(), IdentitySurface)  # type: ignore[arg-type]
