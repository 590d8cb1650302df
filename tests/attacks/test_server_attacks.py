"""Server attacks of ByzSGD (flwr_byz.attacks.server): what a Byzantine replica sends.

Each attack is checked against its definition ``attack(own, x0, recipient, step)``: the norm of
the Gaussian models (``scale * max(||own||, 1)``, to a few percent at d = 20,000), which
recipients/steps/seeds share a model and which do not, and the spec strings of
``get_server_attack``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from flwr_byz.attacks import SERVER_ATTACKS, get_server_attack
from flwr_byz.attacks.server import (
    HonestServer,
    Negate,
    NonFiniteModel,
    Perturb,
    RandomModels,
    Stale,
    Stall,
)

D = 20_000
NAMES = ["negate", "non-finite", "none", "perturb", "random", "stale", "stall"]


def vectors(norm: float = 5.0, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    """(own of Euclidean norm ``norm``, x0), float32, seeded."""
    g = torch.Generator().manual_seed(11)
    own = torch.randn(d, generator=g)
    own = own * (norm / float(own.norm()))
    x0 = torch.randn(d, generator=g)
    return own, x0


def test_names() -> None:
    assert sorted(SERVER_ATTACKS) == NAMES


# --- each attack's output ---------------------------------------------------------------------


def test_none_sends_its_own_model_as_a_copy() -> None:
    own, x0 = vectors()
    out = get_server_attack("none")(own, x0, 3, 1)
    assert out is not None and out is not own
    torch.testing.assert_close(out, own, rtol=0, atol=0)
    out[0] += 1.0  # a copy: the replica's own model is not touched through it
    assert own[0] != out[0]


def test_negate_sends_minus_own() -> None:
    own, x0 = vectors()
    out = get_server_attack("negate")(own, x0, 3, 7)
    assert out is not None
    torch.testing.assert_close(out, -own, rtol=0, atol=0)


def test_stale_sends_x0_forever() -> None:
    own, x0 = vectors()
    attack = get_server_attack("stale")
    for step in (1, 5, 100):
        out = attack(own, x0, 4, step)
        assert out is not None and out is not x0
        torch.testing.assert_close(out, x0, rtol=0, atol=0)


def test_stall_sends_nothing() -> None:
    own, x0 = vectors()
    attack = get_server_attack("stall")
    assert all(attack(own, x0, r, s) is None for r in (-1, 0, 5) for s in (1, 2))


def test_non_finite_sends_nan_of_the_same_shape_and_dtype() -> None:
    own, x0 = vectors(d=50)
    out = get_server_attack("non-finite")(own, x0, 2, 3)
    assert out is not None and out.shape == own.shape and out.dtype == own.dtype
    assert bool(torch.isnan(out).all())


@pytest.mark.parametrize(("own_norm", "scale"), [(5.0, 1.0), (40.0, 0.5), (0.1, 3.0)])
def test_perturb_adds_noise_of_norm_scale_times_max_norm_1(own_norm: float, scale: float) -> None:
    own, x0 = vectors(own_norm)
    out = Perturb(scale=scale, seed=4)(own, x0, 9, 2)
    assert out is not None and out.shape == own.shape and out.dtype == own.dtype
    want = scale * max(own_norm, 1.0)  # below norm 1 the floor 1 applies
    assert float((out - own).norm()) == pytest.approx(want, rel=0.03)
    # a Gaussian direction: nearly orthogonal to own (|cos| ~ 1 / sqrt(D) = 0.007)
    noise = (out - own).double()
    assert abs(float(noise @ own.double())) < 0.05 * want * own_norm


def test_perturb_is_the_same_for_every_recipient_of_a_step() -> None:
    own, x0 = vectors()
    attack = get_server_attack("perturb:2", seed=3)
    first = attack(own, x0, 1, 5)
    assert first is not None
    for recipient in (2, 17, 0, -1, -3):
        torch.testing.assert_close(attack(own, x0, recipient, 5), first, rtol=0, atol=0)
    other_step = attack(own, x0, 1, 6)
    assert other_step is not None and not torch.allclose(other_step, first)


@pytest.mark.parametrize(("own_norm", "scale"), [(5.0, 1.0), (2.0, 1e3), (0.2, 2.0)])
def test_random_is_a_gaussian_model_of_norm_scale_times_max_norm_1(
    own_norm: float, scale: float
) -> None:
    own, x0 = vectors(own_norm)
    out = RandomModels(scale=scale, seed=1)(own, x0, 7, 3)
    assert out is not None and out.shape == own.shape and out.dtype == own.dtype
    want = scale * max(own_norm, 1.0)
    assert float(out.norm()) == pytest.approx(want, rel=0.03)
    # not own plus noise: the model itself is random (about orthogonal to own)
    cosine = float(out.double() @ own.double()) / (float(out.norm()) * own_norm)
    assert abs(cosine) < 0.05


def test_random_differs_between_recipients_and_steps() -> None:
    own, x0 = vectors(d=1000)
    attack = get_server_attack("random", seed=2)
    recipients = [1, 2, 3, 40, 41, 1000, 0, -3, -4, -5]
    outs = {(r, s): attack(own, x0, r, s) for r in recipients for s in (1, 2, 3)}
    keys = list(outs)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_random_differs_between_server_replicas_0_and_1() -> None:
    own, x0 = vectors(d=1000)
    attack = get_server_attack("random", seed=2)
    to_server_0 = attack(own, x0, -1, 3)  # -(s + 1) for replica s (module doc)
    to_server_1 = attack(own, x0, -2, 3)
    assert not torch.allclose(to_server_0, to_server_1)


@pytest.mark.parametrize("name", ["random", "perturb"])
def test_seeded_attacks_are_deterministic_per_seed(name: str) -> None:
    own, x0 = vectors(d=500)
    a = get_server_attack(name, seed=5)
    b = get_server_attack(name, seed=5)
    c = get_server_attack(name, seed=6)
    for recipient, step in [(3, 1), (8, 4), (0, 2)]:
        first = a(own, x0, recipient, step)
        torch.testing.assert_close(a(own, x0, recipient, step), first, rtol=0, atol=0)
        torch.testing.assert_close(b(own, x0, recipient, step), first, rtol=0, atol=0)
        assert not torch.allclose(c(own, x0, recipient, step), first)


def test_random_is_deterministic_across_processes() -> None:
    """The seed goes through ``hash``: it must not depend on PYTHONHASHSEED."""
    code = (
        "import torch\n"
        "from flwr_byz.attacks import get_server_attack\n"
        "a = get_server_attack('random:scale=2', seed=9)\n"
        "out = a(torch.ones(6), torch.zeros(6), 12, 4)\n"
        "print(repr(out.tolist()))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")  # this process: another (random) one
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    here = get_server_attack("random:scale=2", seed=9)(torch.ones(6), torch.zeros(6), 12, 4)
    assert done.stdout.strip() == repr(here.tolist())


def test_attacks_keep_float64() -> None:
    own, x0 = vectors(d=100)
    own, x0 = own.double(), x0.double()
    for name in NAMES:
        out = get_server_attack(name)(own, x0, 1, 1)
        assert out is None or out.dtype == torch.float64, name


# --- get_server_attack -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        ("none", HonestServer),
        ("negate", Negate),
        ("stale", Stale),
        ("stall", Stall),
        ("non-finite", NonFiniteModel),
        ("non_finite", NonFiniteModel),
        ("NEGATE", Negate),
        ("  random  ", RandomModels),
        ("perturb", Perturb),
    ],
)
def test_names_parse(spec: str, cls: type) -> None:
    assert type(get_server_attack(spec)) is cls


def test_spec_parameters() -> None:
    attack = get_server_attack("random:scale=2", seed=7)
    assert attack == RandomModels(scale=2, seed=7)
    assert get_server_attack("perturb:0.5", seed=1) == Perturb(scale=0.5, seed=1)
    assert get_server_attack("random:scale=1e3") == RandomModels(scale=1000.0, seed=0)
    assert get_server_attack("random:seed=3", seed=7) == RandomModels(scale=1.0, seed=3)
    assert get_server_attack("perturb") == Perturb(scale=1.0, seed=0)
    # the parsed scale is used: norm 2 * max(||own||, 1)
    own, x0 = vectors(3.0)
    out = attack(own, x0, 1, 1)
    assert out is not None and float(out.norm()) == pytest.approx(6.0, rel=0.03)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown server attack 'bogus'") as info:
        get_server_attack("bogus:scale=2")
    for name in NAMES:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("random:foo=1", "unknown parameter 'foo'"),
        ("negate:3", "too many positional arguments"),
        ("perturb:1,2,3", "too many positional arguments"),
    ],
)
def test_bad_parameters(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_server_attack(spec)


def test_a_callable_is_returned_as_is() -> None:
    def attack(own, x0, recipient, step):
        return own * 2

    assert get_server_attack(attack) is attack
    negate = Negate()
    assert get_server_attack(negate, seed=4) is negate
    with pytest.raises(TypeError, match="server_attack must be"):
        get_server_attack(3)  # type: ignore[arg-type]
