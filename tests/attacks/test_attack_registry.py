"""get_attack spec strings, and the shared spec parser (flwr_byz.specs)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from flwr_byz.attacks import (
    ALIE,
    ATTACKS,
    IPM,
    BitFlip,
    Gaussian,
    LabelFlip,
    Mimic,
    MinMax,
    NonFinite,
    Scale,
    SignFlip,
    get_attack,
)
from flwr_byz.specs import build, parse_value, split_part

NAMES = [
    "none", "sign-flip", "bit-flip", "scale", "gaussian", "non-finite", "ipm", "alie",
    "min-max", "min-sum", "mimic", "shift-back", "label-flip",
    "badnets", "dba", "model-replacement", "neurotoxin",
]  # fmt: skip


def test_names_are_the_design_names() -> None:
    assert sorted(ATTACKS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name: str) -> None:
    attack = get_attack(name)
    assert type(attack) is ATTACKS[name]
    assert type(get_attack(name.upper())) is ATTACKS[name]


def test_spec_arguments() -> None:
    assert get_attack("alie:z=1.5") == ALIE(z=1.5)
    assert get_attack("alie") == ALIE(z=None)
    assert get_attack("alie:z=none") == ALIE(z=None)
    assert get_attack("sign-flip:10") == SignFlip(scale=10)
    assert get_attack("scale:-2.5") == Scale(-2.5)
    assert get_attack("ipm:eps=0.5") == IPM(eps=0.5)
    assert get_attack("ipm:0.5") == IPM(eps=0.5)
    assert get_attack("min-max:unit") == MinMax("unit")
    assert get_attack("min-max:perturbation=sign") == MinMax("sign")
    assert get_attack("mimic:idx=3") == Mimic(idx=3)
    assert get_attack("label-flip:10") == LabelFlip(10)
    assert get_attack("non-finite:-inf").kind == "-inf"  # type: ignore[union-attr]
    assert get_attack("non-finite:mix").kind == "mix"  # type: ignore[union-attr]
    assert get_attack(" gaussian : sigma = 2 ") == Gaussian(sigma=2)


def test_aliases() -> None:
    assert type(get_attack("empire:0.5")) is IPM
    assert type(get_attack("little")) is ALIE
    assert type(get_attack("sign_flip")) is SignFlip
    assert type(get_attack("bitflip")) is BitFlip


def test_seed_goes_to_seeded_attacks() -> None:
    assert get_attack("gaussian:sigma=2", seed=7) == Gaussian(sigma=2, seed=7)
    assert get_attack("non-finite:mix", seed=3) == NonFinite("mix", seed=3)
    assert get_attack("gaussian:seed=1", seed=7) == Gaussian(seed=1)  # the spec wins
    assert get_attack("gaussian:2", seed=7) == Gaussian(sigma=2, seed=7)  # seed not positional
    own = torch.zeros(2, 5)
    a, b = get_attack("gaussian", seed=4), Gaussian(seed=4)
    assert torch.equal(a(own[:0], own), b(own[:0], own))  # type: ignore[arg-type]
    assert get_attack("sign-flip", seed=9) == SignFlip()  # no seed field: not passed


@pytest.mark.parametrize(
    "spec,message",
    [
        ("foo", "unknown attack 'foo'; known: attacks: alie, badnets, bit-flip"),
        ("shift-back:mult=1,x=2", "unknown parameter 'x'"),
        ("", "unknown attack"),
        ("alie:q=1", r"attack spec 'alie:q=1': unknown parameter 'q' \(has \['z'\]\)"),
        ("gaussian:1,2", "too many positional"),
        ("bit-flip:2", "too many positional"),
        ("bit-flip:scale=2", "unknown parameter 'scale'"),
        ("min-max:random", "perturbation"),
        ("non-finite:zero", "kind"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_attack(spec)


# ------------------------------------------------------------------------------- flwr_byz.specs


def test_parse_value() -> None:
    assert parse_value("2") == 2 and parse_value("0.5") == 0.5 and parse_value("-1e3") == -1000.0
    assert parse_value("none") is None and parse_value("NULL") is None
    assert parse_value("mix") == "mix" and parse_value("-inf") == "-inf"
    assert parse_value("'a'") == "a" and parse_value("(1, 2)") == (1, 2)
    assert parse_value("True") is True


def test_split_part() -> None:
    assert split_part("krum") == ("krum", [])
    assert split_part(" Bucketing :2,base=x") == ("Bucketing", ["2", "base=x"])


@dataclass
class _Rule:
    f: int = 0
    alpha: float = 1.0
    max_iter: int = 3
    base: object = None


def test_build() -> None:
    r = build(_Rule, ["2.5", "max-iter=7"], "r:...", "thing", defaults={"f": 4})
    assert r == _Rule(f=4, alpha=2.5, max_iter=7)
    assert build(_Rule, ["f=1"], "r", "thing", defaults={"f": 4}).f == 1
    assert build(_Rule, [], "r", "thing", fixed={"base": "b"}).base == "b"
    assert build(_Rule, ["", "2"], "r", "thing", defaults={"f": 0}).alpha == 2  # "" skipped
    with pytest.raises(ValueError, match="thing spec 'r': unknown parameter 'beta'"):
        build(_Rule, ["beta=1"], "r", "thing")
    with pytest.raises(ValueError, match="too many positional"):
        build(_Rule, ["1", "2", "3"], "r", "thing", defaults={"f": 0}, fixed={"base": None})
    with pytest.raises(ValueError, match="'base' is set by the spec"):
        build(_Rule, ["base=1"], "r", "thing", fixed={"base": None})
