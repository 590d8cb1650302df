"""byzantine_mod's configuration in a user's own app: the errors a configuration that would
do nothing raises, the one log line per Byzantine node and run, the ``byzantine-replies``
mark on the train replies (and what Flower's metric aggregation makes of it)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from flwr_byz.clients import byzantine_mod, make_byzantine_mod, node_attack
from flwr_byz.protocol import BYZANTINE_REPLIES_KEY, sum_byzantine_replies

from .nodes import capture_flwr_log
from .test_byzantine_mod import FakeApp, context, instruction

DECLARED = {"byzantine-attack": "none", "byzantine-num-nodes": 0}  # the README's block


def run_config(**overrides: Any) -> dict[str, Any]:
    """The declared block with ``--run-config`` overrides (kebab-case keys as ``a_b``)."""
    return {**DECLARED, **{k.replace("_", "-"): v for k, v in overrides.items()}}


# --- configurations that would do nothing are errors ------------------------------------------


@pytest.mark.parametrize(
    ("node_config", "config", "match"),
    [
        ({}, {"byzantine-attack": "sign-flip"}, "no node is selected.*byzantine-num-nodes=k"),
        ({}, run_config(byzantine_attack="sign-flip"), "no node is selected"),
        ({}, run_config(byzantine_num_nodes=2), "byzantine-attack is empty"),
        ({}, {"byzantine-partitions": "1"}, "byzantine-attack is empty"),
        (
            {},
            {"byzantine-attack": "scale", "byzantine-partitions": "1", "byzantine-num-nodes": 1},
            "not both",
        ),
        ({}, run_config(byzantine_attack="scale", byzantine_num_nodes=-1), "negative"),
        ({}, {"byzantine-attack": "scale", "byzantine-partitions": "0,x"}, "partition IDs"),
        ({}, run_config(byzantine_attack="scale", byzantine_num_nodes="two"), "not an integer"),
        (
            {},
            {**DECLARED, "byzantine-atack": "scale"},
            r"run config: unknown key\(s\) byzantine-atack",
        ),
        (
            {"num-partitions": 4},
            run_config(byzantine_attack="scale", byzantine_num_nodes=5),
            r"\[4\] outside 0..3",
        ),
        (
            {},
            run_config(byzantine_attack="scale", byzantine_num_nodes=1),
            "no integer partition-id",
        ),
        ({"byzantine-atack": "scale"}, {}, r"node config: unknown key\(s\) byzantine-atack"),
        ({"byzantine-num-nodes": 1}, {}, "a node config sets byzantine-attack"),
        ({"byzantine-scale": 3.0}, {}, "without byzantine-attack"),
    ],
)
def test_a_configuration_that_does_nothing_is_an_error(
    node_config: dict[str, Any], config: dict[str, Any], match: str
) -> None:
    app = FakeApp()
    ctx = context(run_config=config, **node_config)
    with pytest.raises(ValueError, match=match):
        byzantine_mod(instruction(), ctx, app)
    with pytest.raises(ValueError, match=match):  # every message type, evaluate too
        byzantine_mod(instruction("evaluate"), ctx, app)
    assert app.calls == 0


def test_mod_defaults_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="no node is selected"):
        make_byzantine_mod("sign-flip")
    with pytest.raises(ValueError, match="byzantine-attack is empty"):
        make_byzantine_mod(num_nodes=2)


def test_the_declared_defaults_leave_every_node_honest() -> None:
    for partition in range(3):
        assert node_attack(context(run_config=run_config(), **{"partition-id": partition})) is None


def test_a_node_config_none_makes_a_selected_node_honest() -> None:
    config = run_config(byzantine_attack="sign-flip", byzantine_num_nodes=2)
    ctx = context(run_config=config, **{"partition-id": 0, "byzantine-attack": "none"})
    assert node_attack(ctx) is None


# --- one log line per Byzantine node and run --------------------------------------------------


def _byzantine_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "flwr" and r.levelno == logging.INFO and "is Byzantine" in r.getMessage()
    ]


def test_each_byzantine_node_logs_one_line_per_run(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_flwr_log(caplog, monkeypatch)
    config = run_config(byzantine_attack="sign-flip:scale=10", byzantine_num_nodes=2)
    contexts = [
        context(node_id=100 + p, run_config=config, **{"partition-id": p, "num-partitions": 4})
        for p in range(4)
    ]
    for _ in range(3):  # three rounds: train and evaluate messages
        for ctx in contexts:
            byzantine_mod(instruction("train"), ctx, FakeApp())
            byzantine_mod(instruction("evaluate"), ctx, FakeApp())
    assert _byzantine_lines(caplog) == [
        f"byzantine_mod: node {100 + p} (partition-id {p}) is Byzantine: attack "
        "sign-flip:scale=10 (from the run config: byzantine-num-nodes=2)"
        for p in (0, 1)
    ]
    caplog.clear()
    fresh = context(node_id=100, run_config=config, **{"partition-id": 0})  # a new run
    byzantine_mod(instruction(), fresh, FakeApp())
    assert len(_byzantine_lines(caplog)) == 1


def test_a_node_config_attack_names_its_source_and_settings(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_flwr_log(caplog, monkeypatch)
    ctx = context(
        node_id=9,
        **{"partition-id": 3, "byzantine-attack": "sign-flip", "byzantine-scale": 4.0},
    )
    byzantine_mod(instruction(), ctx, FakeApp())
    byzantine_mod(instruction(), ctx, FakeApp())
    assert _byzantine_lines(caplog) == [
        "byzantine_mod: node 9 (partition-id 3) is Byzantine: attack sign-flip, "
        "byzantine-scale=4.0 (from the node config)"
    ]


def test_partitions_named_in_the_run_config(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_flwr_log(caplog, monkeypatch)
    config = {**run_config(byzantine_attack="gaussian"), "byzantine-partitions": "1,3"}
    for p in range(4):
        byzantine_mod(
            instruction(), context(node_id=p, run_config=config, **{"partition-id": p}), FakeApp()
        )
    assert [line.split(" is ")[0] for line in _byzantine_lines(caplog)] == [
        "byzantine_mod: node 1 (partition-id 1)",
        "byzantine_mod: node 3 (partition-id 3)",
    ]
    assert _byzantine_lines(caplog)[0].endswith("(from the run config: byzantine-partitions='1,3')")


# --- the byzantine-replies mark ---------------------------------------------------------------


def _mark(reply: Message) -> Any:
    return reply.content["metrics"].get(BYZANTINE_REPLIES_KEY)


def test_declared_runs_mark_every_train_reply() -> None:
    config = run_config(byzantine_attack="sign-flip", byzantine_num_nodes=1)
    marks = [
        _mark(
            byzantine_mod(
                instruction(), context(run_config=config, **{"partition-id": p}), FakeApp()
            )
        )
        for p in range(3)
    ]
    assert marks == [1, 0, 0]
    honest = context(run_config=run_config(), **{"partition-id": 0})  # declared, nobody attacks
    assert _mark(byzantine_mod(instruction(), honest, FakeApp())) == 0
    evaluated = byzantine_mod(instruction("evaluate"), honest, FakeApp())
    assert BYZANTINE_REPLIES_KEY not in evaluated.content["metrics"]


def test_label_flip_replies_are_marked_too() -> None:
    config = run_config(byzantine_attack="label-flip", byzantine_num_nodes=1)
    reply = byzantine_mod(
        instruction(), context(run_config=config, **{"partition-id": 0}), FakeApp()
    )
    assert _mark(reply) == 1


def test_mod_defaults_mark_every_train_reply() -> None:
    mod = make_byzantine_mod("sign-flip", num_nodes=1)
    marks = [_mark(mod(instruction(), context(**{"partition-id": p}), FakeApp())) for p in (0, 1)]
    assert marks == [1, 0]


def test_undeclared_runs_are_not_marked() -> None:
    """Without the run-config declaration an honest node cannot know a Byzantine run is on:
    no node marks its replies (one marked reply alone would make Flower's FedAvg skip the
    round for inconsistent metric keys); the Byzantine node still attacks."""
    honest = byzantine_mod(instruction(), context(**{"partition-id": 0}), FakeApp())
    byzantine = byzantine_mod(
        instruction(), context(**{"partition-id": 1, "byzantine-attack": "sign-flip"}), FakeApp()
    )
    assert _mark(honest) is None and _mark(byzantine) is None


# --- what a server makes of the mark ----------------------------------------------------------


def _content(mark: int, examples: int) -> RecordDict:
    metrics = MetricRecord(
        {"train_loss": 1.0, "num-examples": examples, BYZANTINE_REPLIES_KEY: mark}
    )
    return RecordDict({"metrics": metrics})


def test_flower_weighted_average_is_a_share_and_sum_byzantine_replies_a_count() -> None:
    replies = [_content(1, 10), _content(1, 10), _content(0, 30), _content(0, 50)]
    averaged = aggregate_metricrecords(replies, "num-examples")
    assert averaged[BYZANTINE_REPLIES_KEY] == pytest.approx(0.2)  # the examples' share
    counted = sum_byzantine_replies(replies, "num-examples")
    assert counted[BYZANTINE_REPLIES_KEY] == 2
    assert counted["train_loss"] == pytest.approx(averaged["train_loss"])


def test_sum_byzantine_replies_without_marks_is_flowers_average() -> None:
    replies = [
        RecordDict({"metrics": MetricRecord({"train_loss": v, "num-examples": 1})})
        for v in (1.0, 3.0)
    ]
    counted = sum_byzantine_replies(replies, "num-examples")
    assert dict(counted) == dict(aggregate_metricrecords(replies, "num-examples"))
