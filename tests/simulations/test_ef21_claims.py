"""Claim C2.1 (docs/ALGORITHMS.md, Byz-EF21-SGDM), small: TopK(0.1), batch 2, non-IID digits,
10 clients of which 2 Byzantine, NNM + CWTM, 80 rounds on the local engine (the production
strategy and ClientApp handlers). Under SignFlip and LabelFlip its accuracy stays within 3
points of its attack-free run, and under SignFlip it beats BR-CSGD (no momentum, no error
feedback) in the same setting. "Accuracy" is the mean test accuracy of the last 10 rounds.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiments
from flwr_byz.simulations.runner import _flower_logging

from ..clients.gradient_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

pytestmark = pytest.mark.slow  # four 80-round runs

BASE = ExperimentConfig(
    dataset="digits", model="logreg", partition="dirichlet:1.0", clients=10, byzantine=2,
    rounds=80, lr=0.5, batch_size=2, aggregator="nnm+cwtm", compressor="topk:0.1",
    momentum=0.9, method="byz-ef21-sgdm",
)  # fmt: skip


@pytest.fixture(scope="module")
def accuracy() -> dict[tuple[str, str], float]:
    runs = [
        ("byz-ef21-sgdm", "none"),
        ("byz-ef21-sgdm", "sign-flip"),
        ("byz-ef21-sgdm", "label-flip"),
        ("br-csgd", "sign-flip"),
    ]
    configs = [dataclasses.replace(BASE, method=m, attack=a) for m, a in runs]
    with _flower_logging(False, logging.ERROR):
        results = run_experiments(configs, engine="local")
    out = {}
    for key, result in zip(runs, results, strict=True):
        tail = [r.accuracy for r in result.rounds[-10:]]
        out[key] = sum(tail) / len(tail)
    return out


def test_attack_free_run_learns(accuracy: dict[tuple[str, str], float]) -> None:
    assert accuracy[("byz-ef21-sgdm", "none")] > 0.85


@pytest.mark.parametrize("attack", ["sign-flip", "label-flip"])
def test_within_three_points_of_attack_free(
    accuracy: dict[tuple[str, str], float], attack: str
) -> None:
    clean = accuracy[("byz-ef21-sgdm", "none")]
    assert accuracy[("byz-ef21-sgdm", attack)] >= clean - 0.03


def test_beats_br_csgd_under_sign_flip(accuracy: dict[tuple[str, str], float]) -> None:
    assert accuracy[("byz-ef21-sgdm", "sign-flip")] >= accuracy[("br-csgd", "sign-flip")] + 0.02
