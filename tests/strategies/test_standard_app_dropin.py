"""The README's drop-in line on Flower's standard PyTorch app, with its default sampling.

``flwr new``'s PyTorch app (the repository's copy: ``standard_app``) runs 10 nodes with
``fraction-train = 0.5``: 5 replies per round. The README's strategy line is read from its
drop-in section and run as written, in-process on a LocalGrid of 10 nodes answered by the
unchanged standard ClientApp. Before the sample check, ``f=2`` with Krum skipped every
round (Krum(f=2) needs 7 replies) and the run ended with exit 0 and the initial accuracy;
now that line raises before round 1, and the README's line (``f="auto"``) learns.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import RobustFedAvg, SampleTooSmallError
from tests.clients.nodes import model

README = Path(__file__).resolve().parents[2] / "README.md"
NODES = 10  # the template's num-supernodes
FRACTION_TRAIN = 0.5  # the template's fraction-train
LR = 0.1  # the standard app's default lr (the template's 0.01 suits its CIFAR-10 CNN)
ROUNDS = 3  # the template's num-server-rounds


def readme_line() -> str:
    """The ``strategy = RobustFedAvg(...)`` line of the README's drop-in section."""
    section = README.read_text().split("## Drop-in robust FedAvg", 1)[1].split("\n## ", 1)[0]
    lines = [s.strip() for s in section.splitlines() if s.strip().startswith("strategy = Robust")]
    assert len(lines) == 1, lines
    return lines[0].split("  #", 1)[0]


def build(line: str) -> RobustFedAvg:
    """The strategy the line makes in the template's ServerApp (``fraction_train`` read from
    the run config)."""
    scope = {"RobustFedAvg": RobustFedAvg, "fraction_train": FRACTION_TRAIN}
    exec(line, scope)
    strategy = scope["strategy"]
    assert isinstance(strategy, RobustFedAvg)
    return strategy


def standard_node(msg: Message, context: Context) -> Message:
    from .standard_app.client_app import evaluate, train

    return (train if msg.metadata.message_type == "train" else evaluate)(msg, context)


def untouched(msg: Message, context: Context) -> Message:
    raise AssertionError("a ClientApp was called before the sample was checked")


def initial() -> ArrayRecord:
    from .standard_app.task import Net

    torch.manual_seed(0)
    return ArrayRecord(Net().state_dict())


def test_the_readme_line_keeps_the_templates_sampling() -> None:
    line = readme_line()
    assert "fraction_train=fraction_train" in line and 'aggregator="nnm+krum"' in line


def test_a_misconfigured_drop_in_raises_before_round_one() -> None:
    """The README line with f=2: Krum(f=2) needs 7 replies, the template samples 5."""
    strategy = build(readme_line().replace('f="auto"', "f=2"))
    with pytest.raises(SampleTooSmallError) as info:  # any model: nothing is trained
        strategy.start(grid=LocalGrid(NODES, untouched), initial_arrays=model())
    text = str(info.value)
    for part in ("at least 7 replies", "samples 5 nodes", "fraction-train", "min-train-nodes"):
        assert part in text
    assert 'f <= 1 (the most this rule tolerates with 5 replies) or f="auto"' in text


def run(strategy: RobustFedAvg) -> tuple[list[float], dict[int, MetricRecord]]:
    from .harness import central_accuracy

    random.seed(0)  # Flower's FedAvg samples with the random module
    result = strategy.start(
        grid=LocalGrid(NODES, standard_node),
        initial_arrays=initial(),
        num_rounds=ROUNDS,
        train_config=ConfigRecord({"lr": LR}),
        evaluate_fn=lambda r, arrays: MetricRecord({"accuracy": central_accuracy(arrays)[1]}),
    )
    metrics = result.evaluate_metrics_serverapp
    curve = [float(metrics[r]["accuracy"]) for r in sorted(metrics)]
    return curve, result.train_metrics_clientapp


@pytest.mark.slow
def test_the_readme_drop_in_learns_on_the_standard_app() -> None:
    strategy = build(readme_line())
    curve, train = run(strategy)
    assert strategy.aggregator.f == 1  # the most Krum tolerates with 5 replies (2f + 3 <= 5)
    assert all(train[r]["skipped"] == 0 and train[r]["accepted"] == 5 for r in train)
    print(f"\nREADME drop-in, held-out accuracy per round: {curve}")
    assert curve[-1] > curve[0] + 0.3, curve
    # What the f=2 line did before the check (check bypassed): every round skipped silently.
    before = build(readme_line().replace('f="auto"', "f=2"))
    before.check_sample = lambda grid: None  # type: ignore[method-assign]
    frozen, skipped = run(before)
    print(f"f=2, check bypassed (the old behaviour): {frozen}")
    assert all(skipped[r]["skipped"] == 1 for r in skipped) and len(set(frozen)) == 1
