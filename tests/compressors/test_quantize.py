"""Natural and QSGD: payload format, the values Q(x) can take, the exponent range, levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flwr_byz.compressors import QSGD, Natural

from .reference import E_MAX, E_MIN, mixed_vector, natural_brackets, q, qsgd_level_bounds


@pytest.mark.parametrize("d", [1, 7, 8, 9, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_natural_payload_format(d: int, dtype: torch.dtype) -> None:
    x = mixed_vector(d, dtype, seed=d)
    payload = Natural().compress(x, seed=1)
    assert set(payload) == {"signs", "exponents"}
    assert payload["signs"].dtype == torch.uint8 and payload["signs"].shape == (math.ceil(d / 8),)
    assert payload["exponents"].dtype == torch.int8 and payload["exponents"].shape == (d,)
    negative = (x < 0).numpy()
    np.testing.assert_array_equal(
        payload["signs"].numpy(), np.packbits(negative, bitorder="little")
    )
    out = Natural().decompress(payload, d)
    assert out.dtype == torch.float32
    e = payload["exponents"].numpy().astype(int)
    expected = np.where(e == -128, 0.0, np.where(negative, -1.0, 1.0) * 2.0 ** e.astype(float))
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_natural_rounds_to_a_bracketing_power_of_two(dtype: torch.dtype, seed: int) -> None:
    """Every Q(x)_i is 0 for x_i = 0, else ±2^a or ±2^(a+1) with 2^a <= |x_i| < 2^(a+1), the
    sign of x_i; exact powers of two are kept."""
    x = mixed_vector(200, dtype, seed=seed, span=60 if dtype == torch.float64 else 30)
    out = q(Natural(), x, seed).double().numpy()
    xs = x.double().numpy()
    lo, hi = natural_brackets(xs)
    mag = np.abs(out)
    assert ((mag == lo) | (mag == hi)).all()
    assert (np.sign(out) == np.sign(xs)).all()
    powers = np.abs(xs) == 2.0 ** np.round(np.log2(np.abs(xs) + (xs == 0)))
    np.testing.assert_array_equal(out[powers], xs[powers])


def test_natural_exponent_range() -> None:
    """Below 2^-126: 0 or 2^-126; from 2^126 on: clamped to 2^126; inf and NaN pass through."""
    x = torch.tensor(
        [2.0**E_MIN, 2.0**E_MAX, -(2.0**E_MIN), 1e-300, -1e-45, 2.0**-127, 1.5 * 2.0**125,
         2.0**E_MAX * 1.75, -1e300, 3e38, math.inf, -math.inf, math.nan, 0.0, -0.0],
        dtype=torch.float64,
    )  # fmt: skip
    for seed in range(20):
        payload = Natural().compress(x, seed)
        out = Natural().decompress(payload, x.numel()).double()
        e = payload["exponents"]
        assert out[:3].tolist() == [2.0**E_MIN, 2.0**E_MAX, -(2.0**E_MIN)]
        assert out[3] in (0.0, 2.0**E_MIN) and out[4] in (0.0, -(2.0**E_MIN))
        assert out[5] in (0.0, 2.0**E_MIN)
        assert out[6] in (2.0**125, 2.0**126)
        assert out[7:10].tolist() == [2.0**E_MAX, -(2.0**E_MAX), 2.0**E_MAX]
        assert out[10].item() == math.inf and out[11].item() == -math.inf
        assert math.isnan(out[12].item())
        assert out[13:].tolist() == [0.0, 0.0] and e[13:].tolist() == [-128, -128]
        assert e[10:13].tolist() == [127, 127, -127]
        assert ((e >= E_MIN) & (e <= E_MAX) | (e == -128) | (e == 127) | (e == -127)).all()


def test_natural_every_exponent_byte_decodes() -> None:
    """All 256 exponent bytes are valid and decode to ±2^e, 0, inf or NaN."""
    e = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8)
    signs = torch.full((32,), 0b10101010, dtype=torch.uint8)  # odd coordinates negative
    out = Natural().decompress({"signs": signs, "exponents": e}, 256).double()
    sign = torch.tensor([1.0, -1.0]).repeat(128).double()
    finite = torch.arange(-128, 128)
    finite = (finite >= E_MIN) & (finite <= E_MAX)
    assert torch.equal(out[finite], sign[finite] * 2.0 ** e[finite].double())
    assert out[0] == 0 and math.isnan(out[1]) and out[255] == -math.inf


@pytest.mark.parametrize("seed", [0, 5])
def test_natural_sign_bit_of_zero_is_cleared(seed: int) -> None:
    x = torch.tensor([-0.0, 0.0, -1.0, -0.0])
    assert Natural().compress(x, seed)["signs"].tolist() == [0b0100]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s", [1, 4, 127, 128, 32767])
def test_qsgd_payload_and_levels(dtype: torch.dtype, s: int) -> None:
    """norm [1] in x's dtype; levels int8 (s <= 127) or int16, sign(x_i) times floor or ceil of
    s |x_i| / ||x||; Q(x) = levels * norm / s."""
    x = mixed_vector(150, dtype, seed=s, span=6)
    comp = QSGD(s=s)
    payload = comp.compress(x, seed=s)
    assert set(payload) == {"norm", "levels"}
    assert payload["norm"].dtype == dtype and payload["norm"].shape == (1,)
    assert payload["levels"].dtype == (torch.int8 if s <= 127 else torch.int16)
    assert payload["levels"].shape == (150,)
    assert payload["norm"].item() == pytest.approx(float(x.double().norm()), rel=1e-6)
    levels = payload["levels"].numpy().astype(np.int64)
    lo, hi = qsgd_level_bounds(x.numpy(), s)
    xs = x.double().numpy()
    assert ((lo <= np.abs(levels)) & (np.abs(levels) <= hi)).all()
    assert (np.sign(levels) * np.sign(xs) >= 0).all() and (np.abs(levels) <= s).all()
    out = comp.decompress(payload, 150)
    assert out.dtype == dtype
    expected = levels * (payload["norm"].double().item() / s)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-6)


def test_qsgd_zero_and_single_spike() -> None:
    payload = QSGD(s=4).compress(torch.zeros(10), seed=0)
    assert payload["levels"].eq(0).all() and payload["norm"].item() == 0
    assert torch.equal(QSGD(s=4).decompress(payload, 10), torch.zeros(10))
    x = torch.zeros(10, dtype=torch.float64)
    x[3] = -2.5
    assert torch.equal(q(QSGD(s=1), x, 0), x)  # one non-zero coordinate is exact


def test_qsgd_non_finite_input_gives_non_finite_output() -> None:
    for bad in (math.nan, math.inf):
        x = torch.ones(8)
        x[2] = bad
        assert not torch.isfinite(q(QSGD(s=4), x, 0)).all()


def test_qsgd_omega() -> None:
    assert QSGD(s=4).omega == math.inf
    assert QSGD(s=4).omega_for(100) == 2.5  # min(100/16, 10/4)
    assert QSGD(s=20).omega_for(100) == 0.25  # min(100/400, 10/20)
    assert Natural().omega == Natural().omega_for(10**6) == 0.125
    assert not QSGD.biased and not Natural.biased


@pytest.mark.parametrize("s", [0, -1, 32768, 2.5, True, "4", None])
def test_qsgd_bad_levels(s: object) -> None:
    with pytest.raises(ValueError, match="QSGD"):
        QSGD(s=s)  # type: ignore[arg-type]
