"""byzantine_mod / byzantine_app / node_attack / label_flip_requested: the per-node adversary
switched on by the SuperNode's node config, driven with a fake ``call_next``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from flwr_byz.attacks import Gaussian, LabelFlip, Scale, SignFlip
from flwr_byz.clients import (
    ATTACK_KEY,
    byzantine_app,
    byzantine_mod,
    label_flip_requested,
    make_byzantine_mod,
    node_attack,
)

from .nodes import model, shifted, train_reply, update_for, vector_of

KEYS = ("w", "b", "k")
NODE = 7


def context(
    node_id: int = NODE, run_config: dict[str, Any] | None = None, **node_config: Any
) -> Context:
    return Context(
        run_id=1,
        node_id=node_id,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config or {},
    )


def instruction(
    message_type: str = "train",
    server_round: int = 1,
    sent: ArrayRecord | None = None,
    **config: Any,
) -> Message:
    config = {"server-round": server_round, **config}
    content = RecordDict({"arrays": sent or model(), "config": ConfigRecord(config)})
    return Message(content, NODE, message_type)


class FakeApp:
    """``call_next``: answers with ``sent + update`` and records its calls."""

    def __init__(self, scale: float = 0.1) -> None:
        self.calls = 0
        self.scale = scale
        self.last: Message | None = None

    def __call__(self, msg: Message, ctx: Context) -> Message:
        self.calls += 1
        sent = msg.content["arrays"]
        assert isinstance(sent, ArrayRecord)
        if msg.metadata.message_type.startswith("evaluate"):
            content = RecordDict({"metrics": MetricRecord({"eval_loss": 0.5, "num-examples": 4})})
            reply = Message(content, reply_to=msg)
        else:
            reply = train_reply(msg, shifted(sent, update_for(sent, ctx.node_id, self.scale)))
        self.last = reply
        return reply


def update_vector(sent: ArrayRecord, node: int = NODE, scale: float = 0.1) -> np.ndarray:
    return vector_of(shifted(sent, update_for(sent, node, scale)), KEYS) - vector_of(sent, KEYS)


def sent_and_reply(ctx: Context, msg: Message | None = None, app: FakeApp | None = None):
    msg = msg or instruction()
    reply = byzantine_mod(msg, ctx, app or FakeApp())
    return msg.content["arrays"], reply


def returned_update(sent: ArrayRecord, reply: Message) -> np.ndarray:
    return vector_of(reply.content["arrays"], KEYS) - vector_of(sent, KEYS)


# --- per-node attacks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "factor"),
    [
        ({ATTACK_KEY: "sign-flip"}, -1.0),
        ({ATTACK_KEY: "sign-flip", "byzantine-scale": 4.0}, -4.0),
        ({ATTACK_KEY: "sign-flip:3"}, -3.0),
        ({ATTACK_KEY: "bit-flip"}, -1.0),
        ({ATTACK_KEY: "scale"}, 10.0),
        ({ATTACK_KEY: "scale", "byzantine-scale": 2}, 2.0),
    ],
)
def test_vector_attacks_act_on_the_update(config: dict[str, Any], factor: float) -> None:
    sent, reply = sent_and_reply(context(**config))
    np.testing.assert_allclose(
        returned_update(sent, reply), factor * update_vector(sent), rtol=1e-5, atol=1e-6
    )
    assert reply.content["metrics"]["num-examples"] == 10  # the rest of the reply is kept


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf"])
def test_non_finite(kind: str) -> None:
    _, reply = sent_and_reply(context(**{ATTACK_KEY: f"non-finite:{kind}"}))
    values = vector_of(reply.content["arrays"], KEYS)
    expected = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    np.testing.assert_array_equal(values, np.full_like(values, expected))


def test_non_finite_default_is_nan() -> None:
    _, reply = sent_and_reply(context(**{ATTACK_KEY: "non-finite"}))
    assert np.isnan(vector_of(reply.content["arrays"], KEYS)).all()


def test_gaussian_replaces_the_update_by_seeded_noise() -> None:
    ctx = context(**{ATTACK_KEY: "gaussian", "byzantine-scale": 2.0, "byzantine-seed": 3})
    sent, reply = sent_and_reply(ctx, instruction(server_round=4))
    noise = returned_update(sent, reply)
    # the same (seed, node, round) again: the same noise, whatever the honest update
    _, again = sent_and_reply(ctx, instruction(server_round=4), FakeApp(scale=5.0))
    np.testing.assert_allclose(returned_update(sent, again), noise, rtol=1e-6, atol=1e-6)
    # another round, another node, another seed: other noise
    _, later = sent_and_reply(ctx, instruction(server_round=5))
    other_node = context(8, **{ATTACK_KEY: "gaussian", "byzantine-scale": 2.0, "byzantine-seed": 3})
    _, elsewhere = sent_and_reply(other_node, instruction(server_round=4))
    other_seed = context(**{ATTACK_KEY: "gaussian", "byzantine-scale": 2.0, "byzantine-seed": 4})
    _, reseeded = sent_and_reply(other_seed, instruction(server_round=4))
    for reply_ in (later, elsewhere, reseeded):
        assert np.abs(returned_update(sent, reply_) - noise).max() > 0.1
    # it is N(0, sigma^2) noise of the attack node_attack builds (sigma from byzantine-scale)
    attack = node_attack(ctx, 4)
    assert isinstance(attack, Gaussian) and attack.sigma == 2.0
    expected = attack(torch.empty(0, noise.size), torch.zeros(1, noise.size))[0]
    np.testing.assert_allclose(noise, expected.double().numpy(), rtol=1e-5, atol=1e-5)


def test_gaussian_sigma_scales_the_noise() -> None:
    def spread(sigma: float) -> float:
        ctx = context(**{ATTACK_KEY: "gaussian", "byzantine-scale": sigma})
        msg = instruction(sent=ArrayRecord({"v": Array(np.zeros(4000, np.float32))}))

        def app(m: Message, c: Context) -> Message:
            return train_reply(m, m.content["arrays"])  # type: ignore[arg-type]

        reply = byzantine_mod(msg, ctx, app)
        return float(reply.content["arrays"]["v"].numpy().std())

    assert spread(1.0) == pytest.approx(1.0, rel=0.05)
    assert spread(3.0) == pytest.approx(3.0, rel=0.05)


def test_scale_does_not_apply_to_every_attack() -> None:
    with pytest.raises(ValueError, match="byzantine-scale"):
        node_attack(context(**{ATTACK_KEY: "non-finite", "byzantine-scale": 2.0}))


def test_with_op_the_attack_acts_on_the_returned_vectors() -> None:
    msg = instruction(op="grad")
    sent, reply = sent_and_reply(context(**{ATTACK_KEY: "sign-flip"}), msg)
    np.testing.assert_allclose(
        vector_of(reply.content["arrays"], KEYS),
        -(vector_of(sent, KEYS) + update_vector(sent)),
        rtol=1e-6,
    )


def test_integer_arrays_are_untouched() -> None:
    sent = model(with_int=True)
    msg = instruction(sent=sent)

    def app(m: Message, c: Context) -> Message:
        delta = {**update_for(sent, c.node_id), "count": np.array([3])}
        return train_reply(m, shifted(sent, delta))

    reply = byzantine_mod(msg, context(**{ATTACK_KEY: "sign-flip"}), app)
    arrays = reply.content["arrays"]
    assert arrays["count"].numpy().tolist() == [8] and arrays["count"].numpy().dtype == np.int64
    np.testing.assert_allclose(
        returned_update(sent, reply), -update_vector(sent), rtol=1e-5, atol=1e-6
    )


# --- what the mod leaves alone ---------------------------------------------------------------


@pytest.mark.parametrize("config", [{}, {ATTACK_KEY: ""}, {ATTACK_KEY: "none"}, {"other": 1}])
def test_without_an_attack_the_reply_is_untouched(config: dict[str, Any]) -> None:
    app = FakeApp()
    sent, reply = sent_and_reply(context(**config), app=app)
    assert reply is app.last
    np.testing.assert_array_equal(returned_update(sent, reply), update_vector(sent))
    assert node_attack(context(**config)) is None


@pytest.mark.parametrize("attack", ["sign-flip", "non-finite", "gaussian", "alie"])
def test_evaluate_messages_are_untouched(attack: str) -> None:
    app = FakeApp()
    msg = instruction("evaluate")
    reply = byzantine_mod(msg, context(**{ATTACK_KEY: attack}), app)
    assert reply is app.last and app.calls == 1
    assert reply.content["metrics"]["eval_loss"] == 0.5


def test_error_replies_are_passed_on() -> None:
    def app(m: Message, c: Context) -> Message:
        return Message(Error(code=3, reason="oom"), reply_to=m)

    reply = byzantine_mod(instruction(), context(**{ATTACK_KEY: "sign-flip"}), app)
    assert reply.has_error() and reply.error.code == 3


def test_label_flip_is_left_to_the_client_app() -> None:
    app = FakeApp()
    ctx = context(**{ATTACK_KEY: "label-flip"})
    sent, reply = sent_and_reply(ctx, app=app)
    assert reply is app.last
    np.testing.assert_array_equal(returned_update(sent, reply), update_vector(sent))
    assert isinstance(node_attack(ctx), LabelFlip)


def test_label_flip_from_the_run_config_marks_the_message() -> None:
    """The node config does not name the attack: the ClientApp learns it from the message."""
    seen: list[bool] = []

    def app(msg: Message, ctx: Context) -> Message:
        seen.append(label_flip_requested(msg, ctx))
        return FakeApp()(msg, ctx)

    run_config = {ATTACK_KEY: "label-flip", "byzantine-partitions": "0,2"}
    for partition in (0, 1, 2):
        ctx = context(run_config=run_config, **{"partition-id": partition})
        byzantine_mod(instruction(), ctx, app)
    assert seen == [True, False, True]


@pytest.mark.parametrize("spec", ["alie", "ipm", "min-max", "min-sum", "mimic"])
def test_omniscient_attacks_are_refused(spec: str) -> None:
    app = FakeApp()
    with pytest.raises(ValueError, match="ByzantineGrid"):
        byzantine_mod(instruction(), context(**{ATTACK_KEY: spec}), app)
    assert app.calls == 0


def test_unknown_attack_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown attack"):
        byzantine_mod(instruction(), context(**{ATTACK_KEY: "nope"}), FakeApp())


# --- node_attack, label_flip_requested -------------------------------------------------------


def test_node_attack_builds_the_configured_attack() -> None:
    assert node_attack(context(**{ATTACK_KEY: "sign-flip"})) == SignFlip()
    assert node_attack(context(**{ATTACK_KEY: "scale", "byzantine-scale": 5})) == Scale(s=5.0)
    a = node_attack(context(**{ATTACK_KEY: "gaussian"}), 1)
    b = node_attack(context(**{ATTACK_KEY: "gaussian"}), 2)
    assert isinstance(a, Gaussian) and isinstance(b, Gaussian) and a.seed != b.seed


@pytest.mark.parametrize(
    ("node_config", "msg_config", "expected"),
    [
        ({ATTACK_KEY: "label-flip"}, {}, True),
        ({ATTACK_KEY: "labelflip"}, {}, True),
        ({ATTACK_KEY: "label-flip:10"}, {}, True),
        ({}, {ATTACK_KEY: "label-flip"}, True),
        ({ATTACK_KEY: "sign-flip"}, {}, False),
        ({}, {}, False),
        ({ATTACK_KEY: "garbage"}, {ATTACK_KEY: "sign-flip"}, False),
        ({ATTACK_KEY: ""}, {ATTACK_KEY: 3}, False),
    ],
)
def test_label_flip_requested(node_config: dict, msg_config: dict, expected: bool) -> None:
    msg = instruction(**msg_config)
    assert label_flip_requested(msg, context(**node_config)) is expected


# --- byzantine_app ---------------------------------------------------------------------------


def _client_app() -> tuple[ClientApp, list[str]]:
    calls: list[str] = []
    app = ClientApp()
    fake = FakeApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        calls.append("train")
        return fake(msg, ctx)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        calls.append("evaluate")
        return fake(msg, ctx)

    return app, calls


def test_byzantine_app_attacks_train_replies() -> None:
    app, calls = _client_app()
    wrapped = byzantine_app(app)
    msg = instruction()
    sent = msg.content["arrays"]
    reply = wrapped(msg, context(**{ATTACK_KEY: "sign-flip"}))
    np.testing.assert_allclose(
        returned_update(sent, reply), -update_vector(sent), rtol=1e-5, atol=1e-6
    )
    honest = wrapped(instruction(), context())
    np.testing.assert_array_equal(returned_update(sent, honest), update_vector(sent))
    assert calls == ["train", "train"]


def test_byzantine_app_delegates_evaluate() -> None:
    app, calls = _client_app()
    reply = byzantine_app(app)(instruction("evaluate"), context(**{ATTACK_KEY: "sign-flip"}))
    assert reply.content["metrics"]["eval_loss"] == 0.5
    assert calls == ["evaluate"]


def test_byzantine_app_delegates_named_actions() -> None:
    app, _ = _client_app()
    fake = FakeApp()

    @app.train("custom")
    def custom(msg: Message, ctx: Context) -> Message:
        return fake(msg, ctx)

    msg = instruction("train.custom")
    sent = msg.content["arrays"]
    reply = byzantine_app(app)(msg, context(**{ATTACK_KEY: "sign-flip"}))
    np.testing.assert_allclose(
        returned_update(sent, reply), -update_vector(sent), rtol=1e-5, atol=1e-6
    )


# --- run config and defaults -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_config", "byzantine"),
    [
        ({ATTACK_KEY: "sign-flip", "byzantine-partitions": "1,3"}, {1, 3}),
        ({ATTACK_KEY: "sign-flip", "byzantine-num-nodes": 2}, {0, 1}),
        ({ATTACK_KEY: "sign-flip", "byzantine-partitions": "", "byzantine-num-nodes": 1}, {0}),
        ({ATTACK_KEY: "none", "byzantine-partitions": "", "byzantine-num-nodes": 0}, set()),
    ],
)
def test_run_config_names_the_byzantine_partitions(run_config: dict, byzantine: set) -> None:
    for partition in range(4):
        ctx = context(run_config=run_config, **{"partition-id": partition})
        sent, reply = sent_and_reply(ctx)
        factor = -1.0 if partition in byzantine else 1.0
        np.testing.assert_allclose(
            returned_update(sent, reply), factor * update_vector(sent), rtol=1e-5, atol=1e-6
        )


def test_node_config_comes_before_run_config() -> None:
    run_config = {ATTACK_KEY: "sign-flip", "byzantine-partitions": "0"}
    ctx = context(run_config=run_config, **{"partition-id": 0, ATTACK_KEY: "scale"})
    sent, reply = sent_and_reply(ctx)
    np.testing.assert_allclose(
        returned_update(sent, reply), 10.0 * update_vector(sent), rtol=1e-5, atol=1e-6
    )


def test_make_byzantine_mod_defaults() -> None:
    mod = make_byzantine_mod("sign-flip", partitions=[1], scale=5.0)
    for partition, factor in ((0, 1.0), (1, -5.0)):
        msg = instruction()
        reply = mod(msg, context(**{"partition-id": partition}), FakeApp())
        sent = msg.content["arrays"]
        np.testing.assert_allclose(
            returned_update(sent, reply), factor * update_vector(sent), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError):
        make_byzantine_mod("no-such-attack", num_nodes=1)


def test_byzantine_app_with_defaults() -> None:
    app, _ = _client_app()
    wrapped = byzantine_app(app, attack="sign-flip", num_nodes=1)
    for partition, factor in ((0, -1.0), (1, 1.0)):
        msg = instruction()
        reply = wrapped(msg, context(**{"partition-id": partition}))
        sent = msg.content["arrays"]
        np.testing.assert_allclose(
            returned_update(sent, reply), factor * update_vector(sent), rtol=1e-5, atol=1e-6
        )
