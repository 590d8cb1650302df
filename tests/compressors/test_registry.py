"""get_compressor spec strings and the COMPRESSORS table."""

from __future__ import annotations

import pytest

from flwr_byz.compressors import (
    COMPRESSORS,
    QSGD,
    Compressor,
    Identity,
    Natural,
    RandK,
    TopK,
    get_compressor,
)


def test_names_are_the_design_names() -> None:
    assert COMPRESSORS == {
        "identity": Identity, "randk": RandK, "topk": TopK, "natural": Natural, "qsgd": QSGD,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("none", Identity()),
        ("identity", Identity()),
        ("NONE", Identity()),
        ("randk:0.1", RandK(fraction=0.1)),
        ("randk:fraction=0.1", RandK(fraction=0.1)),
        ("randk:k=100", RandK(k=100)),
        ("RandK:1", RandK(fraction=1.0)),
        ("rand-k:0.5", RandK(fraction=0.5)),
        ("topk:0.01", TopK(fraction=0.01)),
        ("TOPK:k=3", TopK(k=3)),
        ("top_k:0.2", TopK(fraction=0.2)),
        ("natural", Natural()),
        ("Natural", Natural()),
        ("qsgd:4", QSGD(s=4)),
        ("qsgd:s=256", QSGD(s=256)),
        (" qsgd : 8 ", QSGD(s=8)),
    ],
)
def test_spec(spec: str, expected: Compressor) -> None:
    comp = get_compressor(spec)
    assert type(comp) is type(expected) and comp == expected
    assert repr(comp) == repr(expected)
    assert isinstance(comp, Compressor)


def test_repr() -> None:
    assert repr(RandK(fraction=0.1)) == "RandK(fraction=0.1)"
    assert repr(RandK(k=100)) == "RandK(k=100)"
    assert repr(TopK(fraction=0.01)) == "TopK(fraction=0.01)"
    assert repr(QSGD(s=4)) == "QSGD(s=4)"
    assert repr(Natural()) == "Natural()" and repr(Identity()) == "Identity()"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown compressor 'signsgd'.*natural.*qsgd.*randk"):
        get_compressor("signsgd:1")


@pytest.mark.parametrize(
    "spec",
    [
        "randk", "randk:0", "randk:1.5", "randk:-0.1", "randk:10", "randk:k=0", "randk:k=-3",
        "randk:k=2.5", "randk:0.1,k=5", "randk:nan", "randk:true", "topk", "topk:0", "topk:2.0",
        "topk:k=0", "qsgd", "qsgd:0", "qsgd:-1", "qsgd:32768", "qsgd:2.5", "qsgd:4,5",
        "natural:1", "identity:x=1", "randk:frac=0.1", "",
    ],
)  # fmt: skip
def test_bad_arguments(spec: str) -> None:
    with pytest.raises(ValueError):
        get_compressor(spec)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"fraction": 0.1, "k": 3}, {"fraction": 0}, {"k": True}, {"fraction": "0.1"},
     {"k": 2.0}, {"fraction": float("nan")}],
)  # fmt: skip
@pytest.mark.parametrize("cls", [RandK, TopK])
def test_constructor_validation(cls: type, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=cls.__name__):
        cls(**kwargs)
