"""Fuzz every strategy with malformed replies of every kind (``fuzz_helpers``).

Each profile (RobustFedAvg with several rules, every method strategy in each of its reply
formats) runs a seeded fuzz: per round its ``f`` Byzantine nodes, some honest nodes and some
strangers send malformed replies mixed with the honest ones. Every round checks that nothing
escapes ``configure_train`` / ``aggregate_train``, that the model stays finite, that each
malformed reply is rejected with the right reason (in the log and in the round's metrics),
that a round whose forged replies were all rejected moves exactly as its honest replies
alone, and that no step exceeds ``STEP_FACTOR`` times the largest honest step from the same
state (``fuzz_helpers`` explains both). The fast part runs one seed per profile (about a
minute on one thread); ``slow`` runs another seed for three times the rounds.

    python -m tests.strategies.fuzz_helpers [rounds-multiplier] [seed]   # the counts table
"""

from __future__ import annotations

import pytest

from tests.clients.gradient_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.strategies.fuzz_helpers import (
    KINDS,
    PROFILES,
    FuzzStats,
    Profile,
    format_stats,
    run_fuzz,
)

BY_NAME = {p.name: p for p in PROFILES}
KIND = {k.name: k for k in KINDS}


def check_coverage(profile: Profile, stats: FuzzStats) -> None:
    """The run was not vacuous: every kind that applied to 10 or more of its draws of a main
    reply was sent, both kinds of round checks ran, and it sent 4+ malformed replies a round."""
    assert stats.rounds > 0
    unused = {k for k, n in stats.usable.items() if n >= 10} - set(stats.kinds)
    assert not unused, f"kinds that applied but were never sent: {sorted(unused)}"
    assert stats.exact_rounds > 0 and stats.bounded_rounds > 0
    assert stats.malformed >= 4 * stats.rounds


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_fuzz(profile: Profile) -> None:
    stats = run_fuzz(profile, seed=0)
    print(format_stats([stats]))
    check_coverage(profile, stats)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1])
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_fuzz_longer(profile: Profile, seed: int) -> None:
    stats = run_fuzz(profile, seed=seed, rounds=3 * profile.rounds)
    print(format_stats([stats]))
    check_coverage(profile, stats)


def test_every_kind_is_fuzzed_by_some_profile() -> None:
    formats = set().union(*(p.formats for p in PROFILES))
    for kind in KINDS:
        assert "any" in kind.formats or kind.formats & formats, kind.name
    assert {"dense", "topk", "randk", "identity", "qsgd", "natural", "ef21"} <= formats


def test_every_method_strategy_is_fuzzed() -> None:
    import flwr_byz.strategies as strategies

    names = {p.name.split("[")[0] for p in PROFILES}
    expected = {
        "RobustFedAvg", "RobustMomentum", "ByzVRMarinaPP", "ByzEF21SGDM", "ByzEF21", "BRCSGD",
        "Mu2SGD", "ByzSGD", "FLTrust",
    }  # fmt: skip
    assert names == expected
    exported = {n for n in strategies.__all__ if isinstance(getattr(strategies, n), type)}
    strategy_classes = {
        n for n in exported if hasattr(getattr(strategies, n), "aggregate_train")
    } - {"MethodStrategy"}
    assert strategy_classes <= expected, strategy_classes - expected


def test_ef21_dense_resets_every_round() -> None:
    """The Byzantine nodes send a dense reset (norms 0.1x to 1e30, alone or with their honest
    payload) in every round: the fuzz invariants hold, the ``resets`` metric counts the taken
    ones, a node's resets are taken at most once per ``reset_interval`` rounds (first contact
    aside), refused ones are ``reset-limit`` / ``reset-norm``, and a payload sent with a taken
    reset is a ``duplicate``."""
    kinds = [KIND["ef21-dense-reset"], KIND["ef21-reset-and-payload"]]
    for name in ("ByzEF21SGDM[topk:0.2]", "ByzEF21SGDM[natural]"):
        stats = run_fuzz(BY_NAME[name], seed=5, rounds=25, kinds=kinds, p_faulty=0.0)
        assert stats.events["ef21-dense-reset"] + stats.events["ef21-reset-and-payload"] >= 40
        assert stats.resets_taken >= 7  # round 1's first contacts, then at most 1 per 10 rounds
        assert stats.reasons["reset-limit"] > 0 and stats.reasons["reset-norm"] > 0
        assert stats.reasons["duplicate"] > 0  # the payload sent with a taken reset


# --- two kinds that found bugs (fixed): each alone, on the profiles it broke ---------------


def test_byzsgd_worker_counters_of_a_wrong_type_are_ignored() -> None:
    """A worker's ``byzsgd-*`` filter counters as NaN, Inf or a list: the reply counts (its
    gradient is honest), the counters do not; before the fix ``aggregate_train`` raised."""
    kinds = [KIND["worker-counters-garbage"]]
    for name in ("ByzSGD[median rule, mda]", "ByzSGD[filter rule, median]"):
        stats = run_fuzz(BY_NAME[name], seed=0, rounds=4, kinds=kinds)
        assert stats.events["worker-counters-garbage"] >= 8 and stats.exact_rounds == 4


@pytest.mark.parametrize(
    "name", ["BRCSGD[topk:0.2]", "ByzEF21SGDM[topk:0.2]", "ByzVRMarinaPP[qsgd:4]"]
)
def test_a_payload_under_another_key_is_taken_as_documented(name: str) -> None:
    """``validate_replies`` takes a reply's one ArrayRecord under another key as the expected
    one; with a payload decoder too (before the fix: rejected as ``malformed ('payload')``)."""
    stats = run_fuzz(BY_NAME[name], seed=0, rounds=6, kinds=[KIND["renamed-payload"]])
    assert stats.events["renamed-payload"] >= 6 and stats.exact_rounds >= 1
