"""Backdoor attacks on the batched engine (``batched.backdoor``): BadNets, DBA and model
replacement with ``fedavg`` and ``robust-fedavg`` give the local engine's run (in float64 the
global models after every round agree to 1e-9 relative, the ASR, losses, metrics and bytes
too); the poisoning and the boost change the run (BadNets with nothing poisoned gives the
attack-free models); Neurotoxin and the other methods are refused in one line naming
``--engine local``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from flwr_byz.attacks import DBA, BadNets
from flwr_byz.simulations.batched import check_batched
from flwr_byz.simulations.batched.backdoor import Backdoor
from flwr_byz.simulations.batched.data import StackedData
from flwr_byz.simulations.batched.setup import Setup
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.datasets import client_data, load_dataset
from flwr_byz.simulations.engines import check_engine, run_experiment
from flwr_byz.simulations.runner import prepare

from .test_batched_engine import assert_same, config, quiet, run_both

__all__ = ["quiet"]  # the autouse fixture: one thread, Flower quiet

#: (method, attack, changes): 2 of 6 clients Byzantine (DBA: one trigger part each).
CASES: dict[str, tuple[str, str, dict[str, object]]] = {
    "fedavg-badnets": ("fedavg", "badnets", {}),
    "fedavg-dba": ("fedavg", "dba:parts=2", {}),
    "fedavg-model-replacement": ("fedavg", "model-replacement", {}),
    "robust-fedavg-badnets": ("robust-fedavg", "badnets", {}),
    "robust-fedavg-dba-four-parts": ("robust-fedavg", "dba", {}),
    "robust-fedavg-model-replacement": ("robust-fedavg", "model-replacement", {}),
    "robust-fedavg-model-replacement-late-partial": (
        "robust-fedavg",
        "model-replacement:start=3,fraction=0.3",
        {"clients_per_round": 4, "aggregator": "mean"},
    ),
    "robust-fedavg-model-replacement-clipped": (
        "robust-fedavg",
        "model-replacement:norm=1",
        {"aggregator": "mean"},
    ),
}


def backdoor_config(method: str, attack: str, **changes: object) -> ExperimentConfig:
    return config(method, attack, **({"byzantine": 2, "rounds": 4} | changes))


def honest_models(cfg: ExperimentConfig, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The global models of ``cfg`` without its attack (the local engine's)."""
    _, _, models, _ = run_both(dataclasses.replace(cfg, attack="none"), monkeypatch)
    return models


@pytest.mark.parametrize("name", list(CASES))
def test_backdoor_gives_the_local_engines_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    method, attack, changes = CASES[name]
    cfg = backdoor_config(method, attack, **changes)
    local, fast, models, fast_models = run_both(cfg, monkeypatch)
    assert_same(cfg, local, fast, models, fast_models)  # models, losses, metrics, bytes agree
    for r, s in zip(local.rounds, fast.rounds, strict=True):
        assert not math.isnan(r.asr) and 0.0 <= r.asr <= 1.0, f"round {r.round}"
        assert math.isclose(s.asr, r.asr, rel_tol=1e-9), f"round {r.round}: ASR"
        assert math.isclose(s.accuracy, r.accuracy, rel_tol=1e-9), f"round {r.round}"
    clean = honest_models(cfg, monkeypatch)
    first = 3 if "start=3" in attack else 1  # honest before ``start``
    for k, (x, y) in enumerate(zip(models, clean, strict=True), 1):
        if k < first:
            assert torch.equal(x, y), f"round {k}: attacked before start"
    assert not torch.allclose(models[-1], clean[-1], rtol=1e-6), "the attack changed nothing"


@pytest.mark.parametrize("method", ["fedavg", "robust-fedavg"])
def test_badnets_poisoning_nothing_is_the_honest_run(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``badnets:fraction=0``: the marked Byzantine clients train on clean data: the
    attack-free models on both engines, an ASR that is a number, more bytes down (the mark)."""
    cfg = backdoor_config(method, "badnets:fraction=0")
    local, fast, models, fast_models = run_both(cfg, monkeypatch)
    clean = honest_models(cfg, monkeypatch)
    for k, (x, y, z) in enumerate(zip(models, fast_models, clean, strict=True), 1):
        assert torch.equal(x, z), f"round {k}"
        assert float((x - y).norm()) <= 1e-9 * float(x.norm()), f"round {k}"
    for r, s in zip(local.rounds, fast.rounds, strict=True):
        assert not math.isnan(r.asr) and math.isclose(s.asr, r.asr, rel_tol=1e-9)
        assert s.bytes_down == r.bytes_down and s.bytes_up == r.bytes_up


def test_poisoned_writes_the_clientapps_data_and_puts_the_clean_rows_back() -> None:
    """Within ``Backdoor.poisoned`` a Byzantine partition's rows are its ClientApp's
    ``poison`` (DBA: the i-th Byzantine node's part); after it, the clean rows."""
    data = StackedData.load("digits", "iid", 4, seed=0)
    x0, y0 = data.x.clone(), data.y.clone()
    reference = load_dataset("digits").x_train
    attack = DBA(parts=2, seed=5)
    backdoor = Backdoor(attack, [3, 1], reference)
    mark = backdoor.mark(2)  # node 2: partition 1, the first Byzantine node
    assert isinstance(mark, str) and mark.startswith("dba:") and "part=0" in mark
    assert backdoor.mark(1) is False
    with backdoor.poisoned(data, [0, 1, 2, 3], server_round=7):
        for p, part in ((1, 0), (3, 1)):
            x, y = client_data("digits", "iid", p, 4, 0)
            node = dataclasses.replace(attack, part=part)
            want_x, want_y = node.poison(x, y, reference, node=p, server_round=7)
            rows = slice(data.offsets[p], data.offsets[p] + data.sizes[p])
            assert torch.equal(data.x[rows], want_x) and torch.equal(data.y[rows], want_y)
            assert not torch.equal(want_x, x)
        clean = slice(data.offsets[0], data.offsets[0] + data.sizes[0])
        assert torch.equal(data.x[clean], x0[clean])
    assert torch.equal(data.x, x0) and torch.equal(data.y, y0)


@pytest.mark.parametrize(
    ("method", "attack", "match"),
    [
        ("fedavg", "neurotoxin", "Neurotoxin masks"),
        ("robust-fedavg", "neurotoxin:ratio=0.2", "Neurotoxin masks"),
        ("robust-momentum", "badnets", "with method 'robust-momentum'"),
        ("byz-vr-marina-pp", "dba:parts=2", "with method 'byz-vr-marina-pp'"),
        ("mu2sgd", "badnets", "with method 'mu2sgd'"),
        ("flower-krum", "model-replacement", "with method 'flower-krum'"),
        ("flower-median", "badnets", "with method 'flower-median'"),
        ("fltrust", "badnets", "method 'fltrust' does not run on the batched engine"),
    ],
)
def test_unsupported_backdoors_name_the_local_engine(method: str, attack: str, match: str) -> None:
    cfg = dataclasses.replace(backdoor_config("fedavg", attack), method=method)
    for check in (check_batched, lambda c: check_engine("batched", [c])):
        with pytest.raises(ValueError, match=match) as info:
            check(cfg)
        text = str(info.value)
        assert "\n" not in text and "--engine local" in text
    if method != "fltrust":
        with pytest.raises(ValueError, match="--engine local"):
            Setup.build(cfg)
    with pytest.raises(ValueError, match="--engine local"):
        run_experiment(cfg, engine="batched")


def test_label_flip_is_no_backdoor_on_the_batched_engine() -> None:
    setup = Setup.build(prepare(backdoor_config("robust-momentum", "label-flip")))
    assert setup.backdoor is None and setup.vector_attack is None
    bad = Setup.build(prepare(backdoor_config("fedavg", "badnets")))
    assert isinstance(bad.backdoor, Backdoor) and isinstance(bad.attack, BadNets)
    assert bad.vector_attack is None


@pytest.mark.slow
def test_float32_dba_on_mnist1d(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backdoor matrix's setting (MNIST-1D CNN, 20 clients, 4 of them DBA, RobustFedAvg
    with NormClip), 20 rounds in float32 (~10 s): the engines' accuracy and ASR agree to
    rounding."""
    cfg = ExperimentConfig(
        method="robust-fedavg", aggregator="normclip", attack="dba", byzantine=4, clients=20,
        rounds=20, dataset="mnist1d", partition="iid", model="cnn1d", batch_size=32,
        local_epochs=1, lr=0.2, momentum=0.9, seed=0, eval_samples=500,
    )  # fmt: skip
    local, fast, _, _ = run_both(cfg, monkeypatch, dtype=torch.float32)
    assert local.accuracy > 0.4 and local.asr > 0.2  # it learned, and the backdoor took
    assert abs(fast.accuracy - local.accuracy) <= 0.02
    assert abs(fast.asr - local.asr) <= 0.03
