"""ByzVRMarinaPP against a brute-force Algorithm 1 (Malinovsky et al. 2024).

Every run goes through ``strategy.start`` on a LocalGrid whose nodes are GradientClients (a
softmax regression, one persistent Context per node). The brute force replays the algorithm in
float64 from the replies the nodes actually sent: x^{k+1} = x^k - lr g^k, then g^{k+1} = mean of
the full gradients (full round) or g^k + mean of the server-clipped differences (difference
round), and it also recomputes every honest reply (gradient / minibatch gradient difference at
the points the brute force itself computed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from flwr_byz.simulations.metering import message_bytes
from flwr_byz.strategies import ByzVRMarinaPP, SampleTooSmallError
from tests.clients.gradient_helpers import single_torch_thread
from tests.strategies.method_helpers import (
    Exchange,
    Network,
    Run,
    clip_reference,
    config_of,
    initial_arrays,
    minibatch,
    model_grad,
    replace_arrays,
    run_strategy,
    stranger,
    vec,
)

NODES = [11, 12, 13, 14, 15, 16]
LR = 0.5
ALPHA = 0.5
BATCH = 8
C = 3
SEED = 2  # with p = 0.4: rounds F D F F D D D; the clipping shortens some rows, not all
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with single_torch_thread():
        yield


def make(**kwargs) -> ByzVRMarinaPP:
    options = dict(
        aggregator="mean",
        p=0.4,
        alpha=ALPHA,
        clients_per_round=C,
        lr=LR,
        batch_size=BATCH,
        seed=SEED,
    )
    options.update(kwargs)
    return ByzVRMarinaPP(**options)


def reply_record(msg: Message) -> ArrayRecord:
    (record,) = msg.content.array_records.values()
    return record


def decode(msg: Message, d: int) -> torch.Tensor:
    """A reply's vector, decoded by hand: the gradient, the identity payload, or a RandK
    payload (values on the first K of ``randperm(d)`` from the payload's seed)."""
    record = reply_record(msg)
    if "seed" in record:
        values = torch.from_numpy(record["values"].numpy().astype(np.float64))
        seed = int(record["seed"].numpy().reshape(-1)[0])
        support = torch.randperm(d, generator=torch.Generator().manual_seed(seed))[: len(values)]
        out = torch.zeros(d, dtype=torch.float64)
        out[support] = values
        return out
    return vec(record)


Accept = Callable[[Exchange, Message], bool]


def everything(ex: Exchange, msg: Message) -> bool:
    return True


def untampered(ex: Exchange, msg: Message) -> bool:
    return msg is ex.honest


def replay(run: Run, lr: float, alpha: float | None, accept: Accept = everything) -> dict:
    """Algorithm 1 in float64 from the recorded replies (those ``accept`` keeps): per round
    x^{k+1}, g^{k+1}, the clip level, the clipped count, the accepted rows."""
    x, g = run.x0.clone(), None
    out: dict[str, list] = {"x": [], "g": [], "level": [], "clipped": [], "rows": []}
    for k, exchanges in enumerate(run.rounds):
        full = run.metrics[k]["full-round"] == 1
        x_new = x if g is None else x - lr * g
        level = None if full or alpha is None else alpha * float(torch.linalg.norm(x_new - x))
        rows = [decode(m, len(x)) for ex in exchanges for m in ex.sent if accept(ex, m)]
        clipped = 0
        if rows:
            stacked = torch.stack(rows)
            if full:
                g = stacked.mean(dim=0)
            else:
                shortened, clipped = clip_reference(stacked, level)
                g = g + shortened.mean(dim=0)
        x = x_new
        out["x"].append(x.clone())
        out["g"].append(None if g is None else g.clone())
        out["level"].append(level)
        out["clipped"].append(clipped)
        out["rows"].append(rows)
    return out


def assert_matches_replay(run: Run, ref: dict) -> None:
    for k in range(len(run.rounds)):
        torch.testing.assert_close(run.arrays[k], ref["x"][k], atol=ATOL, rtol=1e-6)
        if ref["g"][k] is None:
            assert run.state[k]["g"] is None
        else:
            torch.testing.assert_close(run.state[k]["g"], ref["g"][k], atol=ATOL, rtol=1e-6)


def kinds(run: Run) -> list[int]:
    return [int(m["full-round"]) for m in run.metrics]


# --- (a) step by step -----------------------------------------------------------------------


def test_matches_algorithm_1_step_by_step():
    net = Network(NODES)
    run = run_strategy(make(), net, 7)
    full = kinds(run)
    assert full[0] == 1 and 0 in full[1:] and 1 in full[1:], full
    diff_rounds = [k for k in range(7) if not full[k]]
    clipped = [run.metrics[k]["clipped"] for k in diff_rounds]
    assert 0 < sum(clipped) < C * len(diff_rounds), "the clipping must bite on some rows only"

    ref = replay(run, LR, ALPHA)
    x, g = run.x0, None
    for k, exchanges in enumerate(run.rounds):
        x_new = x if g is None else x - LR * g
        dsts = [int(ex.ins.metadata.dst_node_id) for ex in exchanges]
        assert len(set(dsts)) == len(dsts)
        if full[k]:
            assert sorted(dsts) == NODES  # C_hat = None: every connected node
        else:
            assert len(dsts) == C and set(dsts) <= set(NODES)
        for ex in exchanges:
            cfg = config_of(ex.ins)
            node = int(ex.ins.metadata.dst_node_id)
            data_x, data_y = net.data[node]
            torch.testing.assert_close(vec(ex.ins.content["arrays"]), x_new, atol=ATOL, rtol=0)
            if full[k]:
                assert cfg["op"] == "grad" and cfg["batch-size"] == 0
                want = model_grad(x_new, data_x, data_y)  # all local data
            else:
                assert cfg["op"] == "grad_diff" and cfg["batch-size"] == BATCH
                assert cfg["compressor"] == "none"
                torch.testing.assert_close(vec(ex.ins.content["prev"]), x, atol=ATOL, rtol=0)
                idx = minibatch(len(data_y), BATCH, cfg["batch-seed"])
                want = model_grad(x_new, data_x[idx], data_y[idx]) - model_grad(
                    x, data_x[idx], data_y[idx]
                )
            (sent,) = ex.sent
            torch.testing.assert_close(decode(sent, len(x)), want, atol=ATOL, rtol=1e-4)
        metrics = run.metrics[k]
        assert metrics["sampled"] == len(dsts) == metrics["accepted"]
        assert metrics["rejected"] == 0 and metrics["skipped"] == 0
        if full[k]:
            assert metrics["clip-level"] == -1 and metrics["clipped"] == 0
        else:
            assert metrics["clip-level"] == pytest.approx(ref["level"][k], rel=1e-5)
            assert metrics["clipped"] == ref["clipped"][k]
        x, g = ref["x"][k], ref["g"][k]
    assert_matches_replay(run, ref)


def test_full_round_clients_samples_c_hat():
    run = run_strategy(make(full_round_clients=4), Network(NODES), 7)
    full = kinds(run)
    assert 0 in full and full.count(1) >= 2
    for k, exchanges in enumerate(run.rounds):
        nodes = {int(ex.ins.metadata.dst_node_id) for ex in exchanges}
        assert len(nodes) == (4 if full[k] else C)
        assert run.metrics[k]["sampled"] == len(nodes)
    assert_matches_replay(run, replay(run, LR, ALPHA))


def test_p_none_is_batch_over_median_local_size():
    sizes = dict(zip(NODES, [12, 16, 20, 24, 28, 1000], strict=True))  # median 22
    strategy = make(p=None)
    assert strategy.p_effective == 1.0
    run_strategy(strategy, Network(NODES, sizes=sizes), 1)
    assert strategy.p_effective == pytest.approx(BATCH / 22)


def test_epoch_full_rounds_take_every_node_and_are_not_clipped():
    run = run_strategy(
        make(full_rounds="epoch", clients_per_round=2, full_round_clients=3), Network(NODES), 9
    )
    full = kinds(run)
    assert full[0] == 1 and full.count(1) >= 2 and 0 in full
    for k, exchanges in enumerate(run.rounds):
        nodes = {int(ex.ins.metadata.dst_node_id) for ex in exchanges}
        assert len(nodes) == (len(NODES) if full[k] else 2)
        if full[k]:
            assert run.metrics[k]["clip-level"] == -1
    assert_matches_replay(run, replay(run, LR, ALPHA))


def test_epoch_full_round_every_ceil_m_over_b_rounds():
    run = run_strategy(make(full_rounds="epoch"), Network(NODES, size=20), 8)
    period = math.ceil(20 / BATCH)  # 3
    assert kinds(run) == [1 if k % period == 0 else 0 for k in range(8)]


def test_plain_mean_on_diffs_uses_the_rule_only_in_full_rounds():
    # Byz-VR-MARINA+: full rounds ARAgg (here Median), difference rounds the plain mean
    run = run_strategy(make(aggregator="median", plain_mean_on_diffs=True), Network(NODES), 5)
    full = kinds(run)
    assert 0 in full[1:] and 1 in full[1:]
    g = None
    for k, exchanges in enumerate(run.rounds):
        rows = torch.stack([decode(ex.sent[0], len(run.x0)) for ex in exchanges])
        if full[k]:
            g = torch.from_numpy(np.median(rows.numpy(), axis=0))
        else:
            level = run.metrics[k]["clip-level"]
            g = g + clip_reference(rows, level)[0].mean(dim=0)
        torch.testing.assert_close(run.state[k]["g"], g, atol=ATOL, rtol=1e-6)


# --- (b), (c) clipping and a Byzantine node ------------------------------------------------

BYZANTINE = (12, 15)
HUGE = 1e4


def huge_differences(server_round: int, ins: Message, reply: Message) -> Message:
    """The Byzantine nodes answer difference rounds with HUGE * (1, ..., 1)."""
    if int(ins.metadata.dst_node_id) not in BYZANTINE or config_of(ins)["op"] != "grad_diff":
        return reply
    return replace_arrays(reply, lambda rec, key, a: np.full_like(a, HUGE), ins)


def test_clipping_bounds_each_byzantine_reply_to_the_level():
    run = run_strategy(make(), Network(NODES, tamper=huge_differences), 7)
    ref = replay(run, LR, ALPHA)
    assert_matches_replay(run, ref)
    attacked = 0
    for k, exchanges in enumerate(run.rounds):
        if run.metrics[k]["full-round"]:
            continue
        level = run.metrics[k]["clip-level"]
        step = run.state[k]["g"] - run.state[k - 1]["g"]
        assert float(torch.linalg.norm(step)) <= level * (1 + 1e-5)
        byz = [ex for ex in exchanges if int(ex.ins.metadata.dst_node_id) in BYZANTINE]
        honest = [ex for ex in exchanges if ex not in byz]
        attacked += len(byz)
        honest_rows = torch.stack([decode(ex.sent[0], len(run.x0)) for ex in honest])
        honest_part = clip_reference(honest_rows, level)[0].sum(dim=0) / len(exchanges)
        byz_part = step - honest_part
        # each Byzantine reply arrives as a vector of norm exactly `level`, weighted 1/n
        assert float(torch.linalg.norm(byz_part)) == pytest.approx(
            len(byz) * level / len(exchanges), rel=1e-4, abs=1e-7
        )
        assert run.metrics[k]["clipped"] >= len(byz)
    assert attacked > 0, "no Byzantine node was sampled in a difference round"
    assert all(bool(torch.isfinite(x).all()) for x in run.arrays)


def test_without_alpha_nothing_is_clipped():
    run = run_strategy(make(alpha=None), Network(NODES, tamper=huge_differences), 7)
    ref = replay(run, LR, None)
    assert_matches_replay(run, ref)
    assert all(m["clip-level"] == -1 and m["clipped"] == 0 for m in run.metrics)
    jumps = [
        float(torch.linalg.norm(run.state[k]["g"] - run.state[k - 1]["g"]))
        for k in range(1, 7)
        if not run.metrics[k]["full-round"]
        and any(int(ex.ins.metadata.dst_node_id) in BYZANTINE for ex in run.rounds[k])
    ]
    assert jumps and min(jumps) > HUGE / C  # the raw Byzantine vector goes straight into g


# --- (d) RandK shrinks the uplink -----------------------------------------------------------


def test_randk_payload_shrinks_uplink_bytes():
    features, classes, fraction = 200, 20, 0.1
    d = features * classes + classes
    uplink = {}
    for spec in ("none", f"randk:{fraction}"):
        net = Network([1, 2, 3, 4], size=16, features=features, classes=classes)
        strategy = make(compressor=spec, p=1e-9, alpha=None, clients_per_round=2)
        run = run_strategy(strategy, net, 2)
        assert kinds(run) == [1, 0]
        diff = run.rounds[1]
        uplink[spec] = sum(message_bytes(m) for ex in diff for m in ex.sent) / len(diff)
        for ex in diff:
            assert config_of(ex.ins)["compressor"] == spec
        if spec != "none":
            seeds = [config_of(ex.ins)["compressor-seed"] for ex in diff]
            assert len(set(seeds)) == len(seeds)
            for ex, seed in zip(diff, seeds, strict=True):
                record = reply_record(ex.sent[0])
                assert int(record["seed"].numpy()[0]) == seed
                assert record["values"].numpy().shape == (round(fraction * d),)
        assert_matches_replay(run, replay(run, LR, None))
    assert uplink["none"] > 4 * d  # the dense float32 difference
    ratio = uplink["none"] / uplink[f"randk:{fraction}"]
    assert 0.75 / fraction < ratio <= 1.0 / fraction, uplink


# --- (e) reproducibility ----------------------------------------------------------------------


def trace(run: Run) -> list[tuple[int, tuple]]:
    """(node, config without the per-run state-key) of every instruction, in order."""
    out = []
    for exchanges in run.rounds:
        for ex in exchanges:
            cfg = config_of(ex.ins)
            cfg.pop("state-key")
            out.append((int(ex.ins.metadata.dst_node_id), tuple(sorted(cfg.items()))))
    return out


def test_same_seed_same_messages_and_model_other_seed_differs():
    def go(seed: int) -> Run:
        return run_strategy(make(p=0.5, seed=seed, compressor="randk:0.5"), Network(NODES), 6)

    a, b, c = go(5), go(5), go(6)
    assert trace(a) == trace(b)
    assert all(torch.equal(u, v) for u, v in zip(a.arrays, b.arrays, strict=True))
    seeds = [dict(t[1]).get("batch-seed") for t in trace(a)]
    assert len(set(seeds)) > len(NODES)  # fresh batch seeds, not one per node
    assert trace(a) != trace(c)
    assert not torch.allclose(a.arrays[-1], c.arrays[-1])


# --- (f) validation ----------------------------------------------------------------------------


def _change(key_op: Callable[[np.ndarray], np.ndarray]) -> Callable:
    def tamper(ins: Message, reply: Message) -> Message:
        return replace_arrays(
            reply, lambda rec, key, a: key_op(a) if key in ("bias", "values") else a, ins
        )

    return tamper


def _nan(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out.reshape(-1)[0] = np.nan
    return out


def _wrong_seed(ins: Message, reply: Message) -> Message:
    return replace_arrays(reply, lambda rec, key, a: a + 1 if key == "seed" else a, ins)


def _oversize(ins: Message, reply: Message) -> Message:
    """The dense ``bias`` / the payload's ``values`` declared as sent but carrying 100x the
    bytes after them (decoding it would read them)."""
    content: dict[str, ArrayRecord | MetricRecord] = {}
    for name, record in reply.content.array_records.items():
        arrays = dict(record.items())
        for key in ("bias", "values"):
            if key in arrays:
                a = arrays[key]
                data = a.data + bytes(99 * len(a.data))
                arrays[key] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=data)
        content[name] = ArrayRecord(arrays)
    for name, metrics in reply.content.metric_records.items():
        content[name] = MetricRecord(dict(metrics))
    return Message(RecordDict(content), reply_to=ins)


def _no_record(ins: Message, reply: Message) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 20})}), reply_to=ins)


BAD_REPLIES: dict[str, Callable[[Message, Message], Message | list[Message]]] = {
    "shape": _change(lambda a: np.append(a.reshape(-1), a.reshape(-1)[:1])),
    "dtype": _change(lambda a: a.astype(np.float64)),
    "non-finite": _change(_nan),
    "missing-record": _no_record,
    "error-reply": lambda ins, reply: Message(Error(code=3, reason="boom"), reply_to=ins),
    "unknown-node": lambda ins, reply: [reply, stranger(ins, reply)],
    "malformed": _wrong_seed,
    "oversize": _oversize,
}


@pytest.mark.parametrize("reason", sorted(BAD_REPLIES))
def test_each_rejection_is_counted_and_the_round_goes_on(reason: str):
    bad = BAD_REPLIES[reason]
    tampered_rounds: set[int] = set()

    def tamper(server_round: int, ins: Message, reply: Message):
        if server_round in tampered_rounds:
            return reply
        if reason == "malformed" and config_of(ins)["op"] != "grad_diff":
            return reply  # a full round's gradient has no seed
        tampered_rounds.add(server_round)
        return bad(ins, reply)

    run = run_strategy(make(compressor="randk:0.5"), Network(NODES, tamper=tamper), 6)
    assert len(tampered_rounds) >= 3
    for k, m in enumerate(run.metrics):
        hit = k + 1 in tampered_rounds
        assert m.get(f"rejected-{reason}", 0) == int(hit)
        assert m["rejected"] == int(hit)
        assert m["accepted"] == m["sampled"] - int(hit and reason != "unknown-node")
        assert m["skipped"] == 0
        assert bool(torch.isfinite(run.arrays[k]).all())
    assert_matches_replay(run, replay(run, LR, ALPHA, accept=untampered))


def test_a_round_without_valid_replies_keeps_g_and_still_moves_x():
    # rounds with SEED: F D F F D D D; every reply of round 2 (a difference round) fails
    def tamper(server_round: int, ins: Message, reply: Message):
        if server_round == 2:
            return Message(Error(code=1, reason="down"), reply_to=ins)
        return reply

    run = run_strategy(make(), Network(NODES, tamper=tamper), 3)
    assert kinds(run) == [1, 0, 1]
    m = run.metrics[1]
    assert m["skipped"] == 1 and m["accepted"] == 0 and m["rejected-error-reply"] == C
    assert torch.equal(run.state[1]["g"], run.state[0]["g"])
    g1 = run.state[0]["g"]
    torch.testing.assert_close(run.arrays[1], run.arrays[0] - LR * g1, atol=ATOL, rtol=0)
    torch.testing.assert_close(run.arrays[2], run.arrays[1] - LR * g1, atol=ATOL, rtol=0)
    assert_matches_replay(run, replay(run, LR, ALPHA, accept=untampered))


def test_a_failed_first_full_round_is_repeated():
    def tamper(server_round: int, ins: Message, reply: Message):
        if server_round == 1:
            return replace_arrays(reply, lambda rec, key, a: np.full_like(a, np.nan), ins)
        return reply

    run = run_strategy(make(), Network(NODES, tamper=tamper), 3)
    assert run.metrics[0]["skipped"] == 1
    assert run.metrics[0]["rejected-non-finite"] == len(NODES)
    assert run.state[0]["g"] is None
    assert kinds(run)[:2] == [1, 1]  # no g^1 yet: round 2 is a full round again
    torch.testing.assert_close(run.arrays[0], run.x0, atol=0, rtol=0)
    torch.testing.assert_close(run.arrays[1], run.x0, atol=0, rtol=0)
    assert run.state[1]["g"] is not None
    assert_matches_replay(run, replay(run, LR, ALPHA, accept=untampered))


def test_a_rule_that_refuses_its_input_skips_the_difference_round():
    # TrimmedMean(f=1) needs 3 inputs; difference rounds have C = 2, full rounds f_full = 0
    strategy = make(aggregator="trimmedmean", f=1, f_full=0, clients_per_round=2)
    with pytest.raises(SampleTooSmallError, match=r"difference rounds.*at least 3 .* samples 2"):
        run_strategy(strategy, Network(NODES), 6)  # refused before round 1
    strategy = make(aggregator="trimmedmean", f=1, f_full=0, clients_per_round=2)
    strategy.check_sample = lambda connected: None  # as if replies were lost mid-run
    run = run_strategy(strategy, Network(NODES), 6)
    full = kinds(run)
    assert 0 in full
    for k in range(1, 6):
        g_before, g_after = run.state[k - 1]["g"], run.state[k]["g"]
        torch.testing.assert_close(run.arrays[k], run.arrays[k - 1] - LR * g_before)
        if full[k]:
            assert run.metrics[k]["skipped"] == 0
        else:
            assert run.metrics[k]["skipped"] == 1 and run.metrics[k]["accepted"] == 2
            assert torch.equal(g_after, g_before)


# --- (g) ShiftBack's vector ------------------------------------------------------------------


def rounds_by_hand(strategy: ByzVRMarinaPP, net: Network, num_rounds: int, inspect) -> None:
    """configure_train / aggregate_train by hand; ``inspect(round, full)`` between them."""
    arrays = initial_arrays()
    for rnd in range(1, num_rounds + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), net.grid))
        full = config_of(messages[0])["op"] == "grad"
        inspect(rnd, full, messages)
        replies = net.grid.send_and_receive(messages)
        arrays, _ = strategy.aggregate_train(rnd, replies)


def test_shift_back_target_with_a_multiplier():
    strategy, seen = make(), []

    def inspect(rnd: int, full: bool, messages: list[Message]) -> None:
        x, x0 = strategy.x.double(), strategy.x0.double()
        torch.testing.assert_close(x, vec(messages[0].content["arrays"]))  # x^{k+1}
        torch.testing.assert_close(x0, vec(initial_arrays()))
        target = (0.3 / strategy.lr) * (x - x0)
        if not full:
            target = target - strategy.g.double()  # g^k: makes g^{k+1} = target
        got = strategy.attack_surface().shift_back_target(0.3)
        torch.testing.assert_close(got.double(), target)
        seen.append(full)

    rounds_by_hand(strategy, Network(NODES), 5, inspect)
    assert True in seen[1:] and False in seen


def test_shift_back_target_none_is_the_gradient_back_to_x0():
    # mult=None: (x^{k+1} - x^0) / lr, the gradient that lands the model on x^0
    strategy, seen = make(), []

    def inspect(rnd: int, full: bool, messages: list[Message]) -> None:
        x, x0 = strategy.x.double(), strategy.x0.double()
        target = (x - x0) / strategy.lr
        if not full:
            target = target - strategy.g.double()
        seen.append(full)
        got = strategy.attack_surface().shift_back_target(None)
        torch.testing.assert_close(got.double(), target)

    rounds_by_hand(strategy, Network(NODES), 5, inspect)
    assert True in seen[1:] and False in seen


@pytest.mark.parametrize("attacked_round", [2, 3])  # SEED: round 2 is a difference round, 3 full
def test_shift_back_replies_send_the_model_back_to_x0(attacked_round: int):
    strategy = make(alpha=None)

    def tamper(server_round: int, ins: Message, reply: Message) -> Message:
        if server_round != attacked_round:
            return reply
        # mult 1: (x^{k+1} - x^0) / lr as a gradient
        target = strategy.attack_surface().shift_back_target(1.0)

        def as_reply(rec: str, key: str, a: np.ndarray) -> np.ndarray:
            if rec == "payload":
                return target.numpy().astype(a.dtype)
            start = {"weight": 0, "bias": 15}[key]  # Linear(5, 3): weight [3, 5], bias [3]
            return target[start : start + a.size].numpy().astype(a.dtype).reshape(a.shape)

        return replace_arrays(reply, as_reply, ins)

    run = run_strategy(strategy, Network(NODES, tamper=tamper), attacked_round + 1)
    assert kinds(run)[1:3] == [0, 1]
    # every reply is ShiftBack's: g^{k+1} = (x^{k+1} - x^0) / lr, so x^{k+2} = x^0
    torch.testing.assert_close(run.arrays[attacked_round], run.x0, atol=ATOL, rtol=0)


# --- constructor ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compressor": "topk:0.1"},
        {"p": 0.0},
        {"p": 1.5},
        {"p": -0.2},
        {"alpha": 0.0},
        {"alpha": -1.0},
        {"clients_per_round": 4, "full_round_clients": 3},
        {"batch_size": 0},
        {"batch_size": -1},
        {"full_rounds": "sometimes"},
        {"lr": 0.0},
    ],
)
def test_constructor_rejects(kwargs):
    with pytest.raises(ValueError):
        make(**kwargs)


@pytest.mark.parametrize("compressor", ["none", "randk:0.1", "natural", "qsgd:4"])
def test_constructor_accepts_unbiased_compressors_and_p_one(compressor):
    strategy = make(compressor=compressor, p=1.0, alpha=None, full_round_clients=C)
    assert strategy.p_effective == 1.0


def test_full_rounds_use_f_full_and_difference_rounds_f():
    # Krum(f) needs n >= 2f + 3: with f_full = 2 the full round of 6 clients cannot run,
    # while the difference rounds of 3 clients run Krum(f=0): refused before round 1, and
    # (the check bypassed, as if nodes were lost mid-run) only the full rounds are skipped.
    with pytest.raises(SampleTooSmallError, match=r"full rounds\): Krum\(f=2\) needs at least 7"):
        run_strategy(make(aggregator="krum", f=0, f_full=2, p=0.5), Network(NODES), 4)
    strategy = make(aggregator="krum", f=0, f_full=2, p=0.5)
    strategy.check_sample = lambda connected: None
    run = run_strategy(strategy, Network(NODES), 4)
    for metrics in run.metrics:
        assert metrics["skipped"] == int(metrics["full-round"] == 1)
    strict = run_strategy(make(aggregator="krum", f=0, f_full=1, p=0.5), Network(NODES), 4)
    assert all(m["skipped"] == 0 for m in strict.metrics)  # n = 6 >= 2*1 + 3
