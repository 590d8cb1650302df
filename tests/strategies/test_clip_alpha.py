"""RobustFedAvg(clip_alpha=...): the clipping heuristic of Malinovsky et al. 2024, Eq. (10),
against a brute-force numpy run over several rounds driven by Flower's own ``start()``:

    round 1:   step = Agg({u_i})
    round k>1: step = u_prev + Agg({clip_lambda(u_i - u_prev)}),  lambda = alpha ||u_prev||

with ``u_i = reply_i - model sent``, ``u_prev`` the last applied step and
``clip_l(y) = y min(1, l / ||y||)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message

from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import RobustFedAvg
from tests.clients.nodes import model, sent_arrays, shifted, train_reply, vector_of
from tests.strategies.test_robust_fedavg import bf_median, bf_trimmed_mean

NODES = [21, 22, 23, 24, 25, 26]
KEYS = ("w", "b", "k")
D = 24  # 3*4 + 4 + 2*2*2

#: update(node, server_round) -> the node's update per array key
Update = Callable[[int, int], dict[str, np.ndarray]]


def split(vector: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """A flat [24] vector as the arrays of ``nodes.model``."""
    w, b, k = vector[:12], vector[12:16], vector[16:]
    return {
        "w": w.reshape(3, 4).astype(dtype),
        "b": b.astype(dtype),
        "k": k.reshape(2, 2, 2).astype(dtype),
    }


def spread_update(dtype: str = "float64") -> Update:
    """A direction shared by all nodes (mostly the same every round), node noise, and two far
    nodes: in rounds 2 and 3 some rows are clipped and some are not."""
    fixed = np.random.default_rng(0).normal(size=D)

    def update(node: int, server_round: int) -> dict[str, np.ndarray]:
        common = 0.2 * fixed + 0.05 * np.random.default_rng(server_round).normal(size=D)
        noise = 0.05 * np.random.default_rng(100 * server_round + node).normal(size=D)
        far = {21: 0.8, 23: -0.5}.get(node, 0.0)
        return split(common + noise + far, dtype)

    return update


class Recorder:
    """A LocalGrid node handler: replies ``sent + update(node, round)``; keeps the model sent
    in each round."""

    def __init__(self, update: Update) -> None:
        self.update = update
        self.sent: dict[int, ArrayRecord] = {}

    def __call__(self, ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        server_round = int(ins.content["config"]["server-round"])  # type: ignore[index, arg-type]
        sent = sent_arrays(ins)
        self.sent.setdefault(server_round, sent)
        return train_reply(ins, shifted(sent, self.update(node, server_round)), node - 20)


def run(
    strategy: RobustFedAvg, update: Update, rounds: int = 3, dtype: str = "float64"
) -> list[np.ndarray]:
    """x^0, x^1, ..., x^rounds (float64 vectors) of ``strategy.start`` on a LocalGrid."""
    recorder = Recorder(update)
    result = strategy.start(
        grid=LocalGrid(NODES, recorder), initial_arrays=model(dtype), num_rounds=rounds
    )
    metrics = result.train_metrics_clientapp
    assert all(metrics[r]["skipped"] == 0 for r in range(1, rounds + 1))
    return [vector_of(recorder.sent[r], KEYS) for r in range(1, rounds + 1)] + [
        vector_of(result.arrays, KEYS)
    ]


def strategy(spec: str, clip_alpha: float | None, **kwargs) -> RobustFedAvg:
    f = 1 if spec == "trimmedmean" else None
    return RobustFedAvg(
        spec,
        f=f,
        clip_alpha=clip_alpha,
        min_available_nodes=len(NODES),
        fraction_evaluate=0.0,
        **kwargs,
    )


# --- brute force ----------------------------------------------------------------------------

WEIGHTS = np.array([n - 20 for n in NODES], dtype=np.float64)

RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda x: x.mean(axis=0),
    "median": bf_median,
    "trimmedmean": lambda x: bf_trimmed_mean(x, 1),
    "weighted-mean": lambda x: (WEIGHTS[:, None] * x).sum(axis=0) / WEIGHTS.sum(),
}


def brute_force(
    rule: Callable[[np.ndarray], np.ndarray],
    update: Update,
    alpha: float | None,
    rounds: int = 3,
    dtype: str = "float64",
) -> tuple[list[np.ndarray], list[int]]:
    """(x^0..x^rounds, rows clipped per round) of Eq. (10) in float64."""
    x = vector_of(model(dtype), KEYS)
    xs, clipped = [x], []
    u_prev: np.ndarray | None = None
    for r in range(1, rounds + 1):
        u = np.stack(
            [
                np.concatenate([update(n, r)[k].astype(np.float64).ravel() for k in KEYS])
                for n in NODES
            ]
        )
        if alpha is None or u_prev is None:
            step = rule(u)
            clipped.append(0)
        else:
            lam = alpha * np.linalg.norm(u_prev)
            y = u - u_prev
            scale = np.minimum(1.0, lam / np.linalg.norm(y, axis=1))
            step = u_prev + rule(y * scale[:, None])
            clipped.append(int((scale < 1).sum()))
        x = x + step
        xs.append(x)
        u_prev = step
    return xs, clipped


# --- the trajectory against the brute force ----------------------------------------------------


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("alpha", [0.3, 0.8])
def test_three_rounds_match_the_brute_force(rule: str, alpha: float) -> None:
    weighted = rule == "weighted-mean"
    spec = "mean" if weighted else rule
    update = spread_update()
    got = run(strategy(spec, alpha, weighted=weighted), update)
    want, clipped = brute_force(RULES[rule], update, alpha)
    for r, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-10, err_msg=f"x^{r}")
    # the clipping did act in rounds 2 and 3 (at alpha=0.8 not on every row)
    assert clipped[0] == 0 and all(c > 0 for c in clipped[1:]), clipped
    assert alpha < 0.5 or all(c < len(NODES) for c in clipped[1:]), clipped
    unclipped, _ = brute_force(RULES[rule], update, None)
    np.testing.assert_allclose(got[1], unclipped[1], atol=1e-10)  # round 1: no clipping
    assert np.abs(got[3] - unclipped[3]).max() > 0.01


@pytest.mark.parametrize("rule", ["mean", "median"])
def test_without_clip_alpha_nothing_is_clipped(rule: str) -> None:
    update = spread_update()
    got = run(strategy(rule, None), update)
    want, _ = brute_force(RULES[rule], update, None)
    np.testing.assert_allclose(got[-1], want[-1], atol=1e-10)


def test_float32_model() -> None:
    update = spread_update("float32")
    got = run(strategy("median", 0.5), update, dtype="float32")
    want, _ = brute_force(bf_median, update, 0.5, dtype="float32")
    np.testing.assert_allclose(got[-1], want[-1], atol=2e-5)


def test_a_new_run_starts_unclipped() -> None:
    """start() twice on one strategy: the second run does not clip around the first run's
    last step (round 1 forgets it)."""
    update = spread_update()
    s = strategy("median", 0.5)
    first = run(s, update)
    second = run(s, update)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_clip_alpha_must_be_positive(alpha: float) -> None:
    with pytest.raises(ValueError, match="clip_alpha"):
        RobustFedAvg("median", clip_alpha=alpha)


# --- the bound against a far Byzantine reply --------------------------------------------------


def attacked_update(byzantine: tuple[int, ...], far: float = 1e3, dtype: str = "float32") -> Update:
    """Honest nodes: a fixed small update each; the Byzantine ones join from round 2 with a
    reply ``far`` away in every coordinate."""

    def update(node: int, server_round: int) -> dict[str, np.ndarray]:
        if node in byzantine and server_round >= 2:
            return split(np.full(D, far), dtype)
        base = 0.1 * np.ones(D) + 0.02 * np.random.default_rng(node).normal(size=D)
        return split(base, dtype)

    return update


@pytest.mark.parametrize(
    ("rule", "byzantine"),
    [("mean", (24,)), ("median", (21, 23, 25, 26))],  # one outlier / a Byzantine majority
)
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_far_byzantine_replies_move_the_model_at_most_1_plus_alpha_the_last_step(
    rule: str, byzantine: tuple[int, ...], alpha: float
) -> None:
    update = attacked_update(byzantine)
    xs = run(strategy(rule, alpha), update, rounds=5, dtype="float32")
    steps = [xs[r + 1] - xs[r] for r in range(5)]
    for prev, step in itertools.pairwise(steps):
        last = np.linalg.norm(prev)
        assert np.linalg.norm(step - prev) <= alpha * last * (1 + 1e-5) + 1e-6
        assert np.linalg.norm(step) <= (1 + alpha) * last * (1 + 1e-5) + 1e-6
    # the far replies do pull, as far as the clipping lets them: their share of the rule
    # (1/6 of the mean; all of the median with a Byzantine majority) times lambda
    share = len(byzantine) / len(NODES) if rule == "mean" else 1.0
    lam = alpha * np.linalg.norm(steps[0])
    assert np.linalg.norm(steps[1] - steps[0]) > 0.8 * share * lam
    # and without clipping the same replies throw the model ~1e3 away in one round
    free = run(strategy(rule, None), update, rounds=2, dtype="float32")
    assert np.linalg.norm(free[2] - free[1]) > 100
    assert np.linalg.norm(xs[2] - xs[1]) < 1


def test_integer_counters_do_not_loosen_the_clip_level() -> None:
    alpha, byzantine = 0.5, (24,)
    float_update = attacked_update(byzantine, far=10.0, dtype="float32")

    def update(node: int, server_round: int) -> dict[str, np.ndarray]:
        return {**float_update(node, server_round), "count": np.array([100], dtype=np.int64)}

    recorder = Recorder(update)
    initial = model(with_int=True)
    initial["count"] = Array(np.array([0], dtype=np.int64))
    result = strategy("mean", alpha).start(
        grid=LocalGrid(NODES, recorder), initial_arrays=initial, num_rounds=3
    )
    xs = [vector_of(recorder.sent[r], KEYS) for r in (1, 2, 3)] + [vector_of(result.arrays, KEYS)]
    assert int(result.arrays["count"].numpy()[0]) == 300
    steps = [xs[r + 1] - xs[r] for r in range(3)]
    for prev, step in itertools.pairwise(steps):
        assert np.linalg.norm(step - prev) <= alpha * np.linalg.norm(prev) * (1 + 1e-5) + 1e-6
