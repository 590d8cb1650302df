"""The attack x defence matrix: its cells and bytes-to-target against a hand computation, and
every config one the runner takes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flwr_byz.reproduce import Budget
from flwr_byz.reproduce import matrix as matrix_mod
from flwr_byz.reproduce.workspace import pinned
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

from .helpers import PNG_MAGIC, FakeWorkspace, result


def test_matrix_cells_and_bytes_to_target(tmp_path: Path) -> None:
    budget = dataclasses.replace(Budget.make(quick=True, jobs=1), seeds=(0, 1, 2))

    def make(name: str, cfg: ExperimentConfig) -> Result:
        n = cfg.rounds
        if cfg.method == "fedavg" and cfg.attack == "none":
            return result(cfg, [0.8] * n)  # the reference: target 75%
        if cfg.method == "mu2sgd":  # reaches 75% at round 2 for seeds 0 and 1 only
            accs = [0.5] + [0.76 if cfg.seed < 2 else 0.6] * (n - 1)
            return result(cfg, accs)
        return result(cfg, [0.5 + 0.1 * cfg.seed] * n)

    ws = FakeWorkspace(tmp_path, make, budget)
    section = matrix_mod.attack_matrix(ws)
    per_setting = len(matrix_mod.DEFENCES) * len(matrix_mod.ATTACKS) * 2 * 3
    assert len(ws.calls) == per_setting * len(matrix_mod.SETTINGS)
    assert section.summary == f"{len(ws.calls)} runs"
    assert {c.byzantine for c in ws.calls} == {2, 4}
    md = section.markdown
    # seeds 0, 1, 2 at 50, 60, 70%: mean 60, sample std 10
    assert "| RobustFedAvg Krum | 60.0 ± 10.0 |" in md
    # round 2 reached for 2 of 3 seeds: 2 rounds x 1 MB / 20 clients = 0.10 MB per client
    assert "| mu2-SGD + CTMA | 0.10 (2/3) |" in md
    assert "| FedAvg | 0.05 |" in md  # the reference reaches its own target at round 1
    assert "| Flower Krum | never |" in md
    for s in matrix_mod.SETTINGS:
        assert (tmp_path / "docs" / "img" / f"matrix_{s.key}.png").read_bytes()[:8] == PNG_MAGIC


def test_matrix_configs_satisfy_every_rule() -> None:
    """Every matrix config (pinned, as the workspace runs it) passes the runner's validation
    (e.g. Bulyan needs n >= 4f + 3)."""
    from flwr_byz.simulations.runner import prepare

    s = matrix_mod.SETTINGS[0]
    for d in matrix_mod.DEFENCES:
        for byz in (2, 4):
            prepare(pinned(matrix_mod._config(s, d, "alie", byz, 0, 2)))
