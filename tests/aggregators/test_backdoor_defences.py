"""The backdoor defences (NormClip, FLAME, FoolsGold, DnC, SignGuard) against their
brute-force references (``reference.py``: loops, the seeded draws reproduced, scikit-learn's
clustering on loop-computed features), and their behaviour on a planted backdoor cluster.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import reference as ref
import torch

from flwr_byz import statetree
from flwr_byz.aggregators import (
    FLAME,
    DnC,
    FoolsGold,
    NormClip,
    SignGuard,
    get_aggregator,
    set_client_ids,
)
from flwr_byz.aggregators.base import accepts, min_inputs

RTOL = 1e-9
DEFENCES = ("normclip", "flame", "foolsgold", "dnc", "signguard")


def make_x(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random rows around a random centre with uneven per-row scales (no exact ties)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(d, generator=g, dtype=torch.float64)
    scales = 0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64)
    return (centre + scales * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)


def planted(n: int, d: int, m: int, seed: int, scale: float = 10.0) -> torch.Tensor:
    """``n - m`` honest rows, then ``m`` near-copies of one backdoor direction (all entries
    positive) scaled to ``scale`` times the honest norms: a model-replacement-like cluster."""
    g = torch.Generator().manual_seed(seed)
    x = make_x(n, d, seed)
    direction = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    size = float(torch.linalg.vector_norm(x[: n - m], dim=1).median())
    bad = direction / direction.norm() * size * scale
    x[n - m :] = bad + 1e-3 * size * torch.randn(m, d, generator=g, dtype=torch.float64)
    return x


def assert_matches(out: torch.Tensor, expected: np.ndarray, x: torch.Tensor, rtol=RTOL) -> None:
    assert isinstance(out, torch.Tensor) and out.shape == (x.shape[1],) and out.dtype == x.dtype
    scale = max(1.0, float(x.abs().max()))
    np.testing.assert_allclose(out.numpy(), expected, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("bound", [None, 0.5, 1e3])
@pytest.mark.parametrize("n,d", [(1, 7), (2, 1), (5, 33), (10, 7)])
def test_normclip(n: int, d: int, bound: float | None) -> None:
    x = make_x(n, d, n * 100 + d)
    assert_matches(NormClip(norm=bound)(x), ref.normclip(x, bound), x)


@pytest.mark.parametrize("n,m,d", [(1, 0, 5), (2, 0, 5), (3, 1, 5), (8, 2, 7), (12, 3, 33)])
def test_flame_without_noise(n: int, m: int, d: int) -> None:
    x = planted(n, d, m, n + d)
    rule = FLAME(lam=0.0)
    assert rule.admitted(x).nonzero().flatten().tolist() == ref.flame_cluster(x)
    assert_matches(rule(x), ref.FLAME(lam=0.0)(x), x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_flame_noise_is_the_seeded_draw(dtype: torch.dtype) -> None:
    """Two calls (the generator advances) and a reset: the reference's lam S randn draws."""
    x = planted(10, 9, 2, 3).to(dtype)
    rule, expected = FLAME(lam=0.05, seed=7), ref.FLAME(lam=0.05, seed=7)
    rtol = RTOL if dtype == torch.float64 else 1e-5
    for _ in range(2):
        assert_matches(rule(x), expected(x, dtype), x, rtol)
    rule.reset()
    expected.reset()
    assert_matches(rule(x), expected(x, dtype), x, rtol)
    assert not torch.equal(FLAME(lam=0.05, seed=8)(x), FLAME(lam=0.05, seed=7)(x))


def test_foolsgold_over_rounds_with_client_ids() -> None:
    """Three rounds, partial participation keyed by client ids, two sybils (clients 7, 9)
    sending near-copies: equal to the reference's histories and weights every round."""
    rule, expected = FoolsGold(kappa=1.0), ref.FoolsGold(kappa=1.0)
    g = torch.Generator().manual_seed(0)
    sybil = torch.randn(6, generator=g, dtype=torch.float64)
    for r, ids in enumerate([[1, 3, 7, 9, 4], [9, 2, 1, 7], [4, 7, 3, 2, 9, 1]]):
        x = make_x(len(ids), 6, 40 + r)
        for i, key in enumerate(ids):
            if key in (7, 9):
                x[i] = sybil + 1e-3 * torch.randn(6, generator=g, dtype=torch.float64)
        rule.client_ids = ids
        out = rule(x)
        assert rule.client_ids is None  # one call only
        assert_matches(out, expected(x, ids), x)
    h = expected.history
    assert sorted(rule._history.ids) == sorted(h)
    for k, key in enumerate(rule._history.ids):
        np.testing.assert_allclose(rule._history.total[k].numpy(), h[key], rtol=1e-12)


@pytest.mark.parametrize("kappa", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_foolsgold_positions_and_kappa(n: int, kappa: float) -> None:
    rule, expected = FoolsGold(kappa=kappa), ref.FoolsGold(kappa=kappa)
    for r in range(2):
        x = make_x(n, 4, 60 + n + r)
        assert_matches(rule(x), expected(x), x)


@pytest.mark.parametrize("iters,b,c", [(1, 10000, 1.0), (3, 4, 1.0), (2, 5, 0.5)])
@pytest.mark.parametrize("n,f,d", [(1, 0, 3), (4, 1, 9), (9, 2, 12), (12, 5, 20)])
def test_dnc(n: int, f: int, d: int, iters: int, b: int, c: float) -> None:
    rule, expected = DnC(f=f, c=c, iters=iters, b=b, seed=3), ref.DnC(f, c, iters, b, seed=3)
    for r in range(2):  # the coordinate draws advance
        x = make_x(n, d, 80 + n + d + r)
        assert rule.select(x).nonzero().flatten().tolist() == expected.good(x)
        assert_matches(DnC(f=f, c=c, iters=iters, b=b, seed=3)(x), ref.DnC(f, c, iters, b, 3)(x), x)


@pytest.mark.parametrize("fraction", [0.1, 0.5])
@pytest.mark.parametrize("n,m,d", [(1, 0, 8), (3, 1, 8), (9, 2, 20), (15, 4, 40)])
def test_signguard(n: int, m: int, d: int, fraction: float) -> None:
    """Sparse rows (about a third of the entries exactly 0) so the zero share varies too;
    two short rows (about 0.2 and 0.03 times the median norm) on either side of ``lower``."""
    rule, expected = SignGuard(fraction=fraction, seed=5), ref.SignGuard(fraction=fraction, seed=5)
    for r in range(2):
        x = planted(n, d, m, 90 + n + d + r)
        g = torch.Generator().manual_seed(r)
        x[torch.rand(n, d, generator=g) < 0.3] = 0.0
        if n >= 9:
            x[0] *= 0.2
            x[1] *= 0.03
        x1, x2 = x.clone(), x.clone()
        assert rule.select(x1).nonzero().flatten().tolist() == expected.kept(x1)
        rule_again, expected_again = SignGuard(fraction=fraction), ref.SignGuard(fraction=fraction)
        assert_matches(rule_again(x2), expected_again(x2), x2)


# ----------------------------------------------------------------------------- behaviour


def test_a_planted_backdoor_cluster_is_removed() -> None:
    """16 honest rows and 4 near-copies of a backdoor direction at 10x the honest norm: the
    filtering rules drop exactly the 4, NormClip bounds their pull, FoolsGold zeroes them."""
    n, m = 20, 4
    x = planted(n, 200, m, 11)
    honest = x[: n - m].mean(dim=0)
    pull = float((x.mean(dim=0) - honest).norm())
    assert FLAME(lam=0.0).admitted(x)[n - m :].sum() == 0
    assert DnC(f=m).select(x)[n - m :].sum() == 0
    assert SignGuard().select(x)[n - m :].sum() == 0
    assert FoolsGold().weights(x)[n - m :].abs().max() == 0
    for spec in DEFENCES:
        out = get_aggregator(spec + (":lam=0" if spec == "flame" else ""), m)(x)
        limit = 0.25 if spec == "normclip" else 0.1  # NormClip keeps them, clipped
        assert float((out - honest).norm()) < limit * pull, spec


def test_foolsgold_sybils_lose_their_weight_under_partial_participation() -> None:
    """The sybils' histories stay with their ids while the others come and go."""
    rule = FoolsGold()
    g = torch.Generator().manual_seed(1)
    target = torch.randn(30, generator=g, dtype=torch.float64)
    for r in range(4):
        ids = [100, 101] + [r * 10 + k for k in range(5)]
        x = torch.randn(7, 30, generator=g, dtype=torch.float64)
        x[:2] = target + 0.05 * torch.randn(2, 30, generator=g, dtype=torch.float64)
        set_client_ids(rule, ids)
        alpha = rule.weights(x)
        assert alpha[:2].max() == 0 and alpha[2:].min() > 0


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("spec", DEFENCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_shape_kept(spec: str, dtype: torch.dtype) -> None:
    x = make_x(9, 13, 5, dtype)
    out = get_aggregator(spec, 2)(x)
    assert out.dtype == dtype and out.shape == (13,) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("wrapper", ["nnm", "bucketing:2", "clipping:5", "arc", "ctma"])
@pytest.mark.parametrize("spec", DEFENCES)
def test_composes_with_the_pre_aggregators(wrapper: str, spec: str) -> None:
    """``wrapper+rule`` runs, twice (the state and the generators carry over), and is pulled
    less toward the planted cluster than the mean is."""
    x = planted(20, 50, 4, 2)
    rule = get_aggregator(f"{wrapper}+{spec}", 4)
    honest = x[:16].mean(dim=0)
    for _ in range(2):
        out = rule(x)
        assert out.shape == (50,) and float((out - honest).norm()) < float(
            (x.mean(dim=0) - honest).norm()
        )


@pytest.mark.parametrize("spec", DEFENCES)
def test_bad_inputs_are_refused(spec: str) -> None:
    rule = get_aggregator(spec, 1)
    bad = make_x(6, 4, 1)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[2\] contain NaN or Inf"):
        rule(bad)
    with pytest.raises(ValueError, match="2-D"):
        rule(torch.zeros(5))
    with pytest.raises(ValueError, match="floating-point"):
        rule(torch.zeros(5, 3, dtype=torch.int64))


@pytest.mark.parametrize(
    "spec,message",
    [
        ("normclip:0", "norm bound 0 < norm"),
        ("normclip:norm=-1", "norm bound"),
        ("flame:lam=-0.1", "lam >= 0"),
        ("flame:min_cluster_size=1", "min_cluster_size >= 2"),
        ("foolsgold:kappa=0", "kappa > 0"),
        ("dnc:c=-1", "c >= 0"),
        ("dnc:iters=0", "iters >= 1"),
        ("dnc:b=0", "b >= 1"),
        ("signguard:lower=1.5", "0 <= lower < 1 < upper"),
        ("signguard:fraction=0", "0 < fraction <= 1"),
    ],
)
def test_invalid_parameters(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_aggregator(spec)


def test_dnc_needs_more_inputs_than_it_removes() -> None:
    with pytest.raises(ValueError, match=r"DnC\(f=3\) needs n > c f = 3"):
        DnC(f=3)(make_x(3, 4, 0))
    assert min_inputs(DnC(f=3, c=0.5)) == 2 and accepts(DnC(f=3, c=0.5), 2)


def test_foolsgold_client_ids_must_fit_the_rows() -> None:
    rule = FoolsGold()
    rule.client_ids = [1, 2]
    with pytest.raises(ValueError, match="client_ids must name each of the 3 input rows"):
        rule(make_x(3, 4, 0))
    rule.client_ids = [1, 1, 2]
    with pytest.raises(ValueError, match="3 ids \\(2 distinct\\)"):
        rule(make_x(3, 4, 0))


def test_set_client_ids_reaches_the_rule_through_row_wise_wrappers_only() -> None:
    wrapped = get_aggregator("nnm+foolsgold", 1)
    set_client_ids(wrapped, [5, 6, 7])
    assert wrapped.base.client_ids == [5, 6, 7]  # type: ignore[attr-defined]
    bucketed = get_aggregator("bucketing:2+foolsgold", 1)
    set_client_ids(bucketed, [5, 6, 7])
    assert bucketed.base.client_ids is None  # type: ignore[attr-defined]
    set_client_ids(get_aggregator("median"), [1, 2])  # a rule without state: nothing to do


@pytest.mark.parametrize("spec", ["flame", "foolsgold", "dnc:b=3", "signguard:fraction=0.5"])
def test_state_survives_a_checkpoint(spec: str) -> None:
    """The state (FoolsGold's histories, the generators) through ``statetree`` and a
    ``weights_only`` load, as checkpoints store it: the next call is the same."""
    xs = [make_x(8, 6, s) for s in range(3)]
    rule = get_aggregator(spec, 1)
    rule(xs[0])
    buf = io.BytesIO()
    torch.save(statetree.capture(rule), buf)
    buf.seek(0)
    fresh = get_aggregator(spec, 1)
    statetree.restore(fresh, torch.load(buf, weights_only=True))
    for x in xs[1:]:
        assert torch.equal(fresh(x), rule(x))
    rule.reset()  # type: ignore[attr-defined]
    again = get_aggregator(spec, 1)
    assert torch.equal(rule(xs[0]), again(xs[0]))


def test_robust_fedavg_keys_foolsgold_by_node_id() -> None:
    """Two rounds, all seven nodes then three of them: the histories are the nodes'."""
    from flwr_byz.strategies import RobustFedAvg
    from tests.strategies.test_robust_fedavg import NODES, one_round, updates_of

    strategy = RobustFedAvg("foolsgold", min_available_nodes=3)
    sent, replies, _, _ = one_round(strategy)
    rule = strategy.aggregator
    assert isinstance(rule, FoolsGold) and sorted(rule._history.ids) == sorted(NODES)
    first = dict(zip(rule._history.ids, rule._history.total.clone(), strict=True))
    sent, replies, _, _ = one_round(strategy, nodes=NODES[:3])
    second = dict(zip(rule._history.ids, rule._history.total, strict=True))
    updates = updates_of(sent, replies)
    for reply, update in zip(replies, updates, strict=True):
        node = int(reply.metadata.src_node_id)
        np.testing.assert_allclose(second[node] - first[node], update, rtol=1e-5, atol=1e-6)
    for node in NODES[3:]:
        assert torch.equal(second[node], first[node])


@pytest.mark.slow
def test_foolsgold_same_numbers_on_both_engines_under_partial_participation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4 of 6 clients per round, ALIE: RobustFedAvg (local engine, node ids) and the batched
    engine (its node numbers) key every history by its client, so the models agree."""
    from tests.simulations.test_batched_engine import assert_same_run, config

    cfg = config("robust-fedavg", "alie", aggregator="foolsgold", clients_per_round=4)
    assert_same_run(cfg, monkeypatch)


@pytest.mark.parametrize("chunk", [None, 1, 7, 333, 5000])
def test_sign_features_are_the_same_chunk_by_chunk(chunk: int | None) -> None:
    from flwr_byz.aggregators.signguard import sign_features

    g = torch.Generator().manual_seed(0)
    block = torch.randn(7, 1000, generator=g)
    block[block.abs() < 0.5] = 0.0
    shares = (
        torch.stack(
            [(block > 0).sum(dim=1), (block == 0).sum(dim=1), (block < 0).sum(dim=1)], dim=1
        ).double()
        / 1000
    )
    assert torch.equal(sign_features(block, chunk), shares / (shares.max(dim=0).values + 1e-8))
