"""``--engine batched`` gives the local engine's numbers: in float64 the global model after 5
rounds agrees to 1e-9 relative for every method, without and under attacks (omniscient,
per-node, data), with partial participation, compressors and unequal partitions; the rejected
replies, the strategies' metrics and the bytes per round agree too; in float32 the final
accuracy after 30 rounds is within 1 point. Unsupported options fail with a clear error."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from flwr_byz.cli import app as cli_app
from flwr_byz.reproduce.pool import without_flower_gc
from flwr_byz.simulations import runner
from flwr_byz.simulations.batched import check_batched, resolve_device
from flwr_byz.simulations.batched import engine as batched_engine
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import ENGINES, run_experiment
from flwr_byz.simulations.result import Result
from flwr_byz.simulations.training import evaluate, float_precision

#: Small federations of the offline ``digits`` set (MLP): unequal (Dirichlet) partitions.
BASE = ExperimentConfig(
    dataset="digits",
    partition="dirichlet:1.0",
    clients=6,
    rounds=5,
    batch_size=16,
    local_epochs=1,
    seed=3,
    aggregator="median",  # the settings these tests were written with, explicit
    lr=0.05,
    momentum=0.9,
    compressor="none",
)

#: Per method: the options that make it a small, moving run.
METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "local_epochs": 2},
    "robust-fedavg": {"lr": 0.1, "aggregator": "cwtm"},
    "flower-krum": {"lr": 0.1},
    "flower-multikrum": {"lr": 0.1},
    "flower-bulyan": {"lr": 0.1, "clients": 7},
    "flower-median": {"lr": 0.1},
    "flower-trimmedavg": {"lr": 0.1},
    "robust-momentum": {"lr": 0.5, "aggregator": "cwtm", "params": {"clip_alpha": 2.0}},
    "byz-vr-marina-pp": {
        "lr": 0.5,
        "aggregator": "cwtm",
        "compressor": "randk:0.2",
        "params": {"p": 0.5},
    },
    "byz-ef21-sgdm": {"lr": 0.5, "aggregator": "cwtm", "compressor": "topk:0.1"},
    "byz-ef21": {"lr": 0.5, "aggregator": "cwmed", "compressor": "qsgd:4"},
    "br-csgd": {"lr": 0.5, "aggregator": "cwtm", "compressor": "natural"},
    "mu2sgd": {"lr": 0.5, "aggregator": "ctma+median", "batch_size": 4},
    "byzsgd": {"lr": 0.5, "aggregator": "mda"},
}


def config(method: str, attack: str = "none", **changes: Any) -> ExperimentConfig:
    """``method``'s small run under ``attack`` (one Byzantine client unless changed)."""
    options = {"byzantine": 0 if attack == "none" else 1} | METHODS[method] | changes
    return dataclasses.replace(BASE, method=method, attack=attack, **options)


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with runner._flower_logging(False, logging.CRITICAL):
            yield
    finally:
        torch.set_num_threads(before)


def run_both(
    cfg: ExperimentConfig, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype = torch.float64
) -> tuple[Result, Result, list[torch.Tensor], list[torch.Tensor]]:
    """Both engines' results and the global models they evaluated after every round."""
    models: dict[str, list[torch.Tensor]] = {"local": [], "batched": []}

    def capture(engine: str) -> Any:
        def wrapped(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
            vec = torch.nn.utils.parameters_to_vector(model.parameters()).detach().cpu()
            models[engine].append(vec.clone())
            return evaluate(model, x, y)

        return wrapped

    monkeypatch.setattr(runner, "evaluate", capture("local"))
    monkeypatch.setattr(batched_engine, "evaluate", capture("batched"))
    with float_precision(dtype), without_flower_gc():  # Flower's Bulyan: 0.1 s per gc
        local = run_experiment(dataclasses.replace(cfg, threads=1), engine="local")
        fast = run_experiment(dataclasses.replace(cfg, threads=1), engine="batched")
    return local, fast, models["local"], models["batched"]


def assert_same_run(cfg: ExperimentConfig, monkeypatch: pytest.MonkeyPatch) -> Result:
    """Both engines agree (module doc); returns the local engine's result."""
    return assert_same(cfg, *run_both(cfg, monkeypatch))


def assert_same(
    cfg: ExperimentConfig, local: Result, fast: Result, a: list[torch.Tensor], b: list[torch.Tensor]
) -> Result:
    """``run_both``'s runs of ``cfg`` agree (module doc); returns the local engine's result."""
    assert len(a) == len(b) == cfg.rounds
    for k, (x, y) in enumerate(zip(a, b, strict=True), 1):
        assert x.dtype == y.dtype == torch.float64
        scale = float(x.norm())
        assert float((x - y).norm()) <= 1e-9 * scale, f"round {k}: the global models differ"
    assert not torch.equal(a[0], a[-1]), "the model did not move: nothing was compared"
    for r, s in zip(local.rounds, fast.rounds, strict=True):
        assert (r.rejected, r.missing) == (s.rejected, s.missing), f"round {r.round}"
        assert s.bytes_up == pytest.approx(r.bytes_up, rel=0.01), f"round {r.round} up"
        assert s.bytes_down == pytest.approx(r.bytes_down, rel=0.01), f"round {r.round} down"
        assert set(s.metrics) == set(r.metrics), f"round {r.round}"
        for key, value in r.metrics.items():
            assert s.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        assert math.isclose(s.loss, r.loss, rel_tol=1e-9) or (
            math.isnan(s.loss) and math.isnan(r.loss)
        )
    assert fast.config == local.config
    return local


@pytest.mark.parametrize("attack", ["none", "alie"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_the_local_engines_model(
    method: str, attack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_same_run(config(method, attack), monkeypatch)


#: Attacks of every kind, partial participation, compressors, rejected replies.
CASES: dict[str, ExperimentConfig] = {
    "fedavg-label-flip-partial": config("fedavg", "label-flip", byzantine=2, clients_per_round=4),
    "robust-fedavg-sign-flip-weighted-clipped": config(
        "robust-fedavg",
        "sign-flip:scale=5",
        aggregator="median",
        params={"weighted": True, "clip_alpha": 1.0},
    ),
    "robust-fedavg-non-finite": config("robust-fedavg", "non-finite", aggregator="median"),
    "flower-median-gaussian": config("flower-median", "gaussian"),
    "robust-momentum-full-batch-partial": config(
        "robust-momentum", "ipm", clients_per_round=4, params={"batch_size": 0}
    ),
    "robust-momentum-label-flip": config("robust-momentum", "label-flip", byzantine=2),
    "marina-non-finite": config("byz-vr-marina-pp", "non-finite"),
    "marina-gaussian-partial": config(
        "byz-vr-marina-pp", "gaussian", clients_per_round=4, params={"p": 0.3}
    ),
    "ef21-sgdm-partial-min-max": config("byz-ef21-sgdm", "min-max", clients_per_round=4),
    "ef21-sgdm-non-finite-handshake": config(
        "byz-ef21-sgdm", "non-finite", clients_per_round=4, aggregator="cwmed"
    ),
    "ef21-randk-mimic": config("byz-ef21", "mimic", compressor="randk:0.3"),
    "br-csgd-topk-sign-flip": config("br-csgd", "sign-flip", compressor="topk:0.2"),
    "mu2sgd-partial-gaussian": config("mu2sgd", "gaussian", clients_per_round=4),
    "byzsgd-filter-random-servers": config(
        "byzsgd",
        "alie",
        params={"worker_rule": "filter", "gather_period": 2, "server_attack": "random"},
    ),
    "byzsgd-non-finite-servers": config(
        "byzsgd", "sign-flip", params={"server_attack": "non-finite", "gather_period": 3}
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_attacks_participation_and_compressors(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_same_run(CASES[name], monkeypatch)


@pytest.mark.parametrize("bound", [None, 0.0])
def test_ef21_refused_dense_resets(bound: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Byz-EF21-SGDM's norm bound on dense resets: the Byzantine node's first-contact reset,
    scaled 1000x, is refused (``rejected-reset-norm``) every time it is sampled, on both
    engines alike; without the bound (``reset_norm_bound=0``) it is taken."""
    params = {} if bound is None else {"reset_norm_bound": bound}
    cfg = config("byz-ef21-sgdm", "scale:1000", clients_per_round=4, params=params)
    local = assert_same_run(cfg, monkeypatch)
    refused = sum(int(r.metrics.get("rejected-reset-norm", 0)) for r in local.rounds)
    resets = sum(int(r.metrics["resets"]) for r in local.rounds)
    if bound is None:
        assert refused >= 2 and resets == cfg.clients - 1
    else:
        assert refused == 0 and resets == cfg.clients


#: ShiftBack needs a Byzantine majority in a round: 3 of 6 clients, 3 sampled per round.
SHIFT_BACK = [
    "robust-fedavg",
    "robust-momentum",
    "byz-vr-marina-pp",
    "byz-ef21-sgdm",
    "br-csgd",
    "mu2sgd",
]


@pytest.mark.parametrize("method", SHIFT_BACK)
def test_shift_back(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(method, "shift-back", byzantine=3, clients_per_round=3, aggregator="mean")
    assert_same_run(cfg, monkeypatch)


@pytest.mark.parametrize("engine", ["local", "batched"])
def test_shift_back_needs_an_attack_surface_on_both_engines(engine: str) -> None:
    cfg = config("flower-median", "shift-back")  # Flower's strategies have no surface
    with pytest.raises(TypeError, match="FedMedian has no attack_surface"):
        run_experiment(cfg, engine=engine)


@pytest.mark.parametrize(
    "cfg",
    [
        config("robust-fedavg", "alie", rounds=30, aggregator="cwtm"),
        config("byz-ef21-sgdm", "alie", rounds=30),
    ],
    ids=["robust-fedavg", "byz-ef21-sgdm"],
)
def test_float32_accuracy_after_30_rounds(
    cfg: ExperimentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, fast, _, _ = run_both(cfg, monkeypatch, dtype=torch.float32)
    assert local.accuracy > 0.5  # it learned something
    assert abs(fast.accuracy - local.accuracy) <= 0.01


@pytest.mark.slow
def test_float32_accuracy_on_mnist1d(monkeypatch: pytest.MonkeyPatch) -> None:
    """FedAvg on MNIST-1D's CNN, 20 clients, 3 of them ALIE, 30 rounds (~25 s)."""
    cfg = ExperimentConfig(
        method="fedavg", dataset="mnist1d", clients=20, rounds=30, attack="alie", byzantine=3,
        seed=1, lr=0.05, batch_size=32,
    )  # fmt: skip
    local, fast, _, _ = run_both(cfg, monkeypatch, dtype=torch.float32)
    assert local.accuracy > 0.6
    assert abs(fast.accuracy - local.accuracy) <= 0.01


# --- errors and wiring -----------------------------------------------------------------------


def test_batched_is_an_engine() -> None:
    assert "batched" in ENGINES


def test_cuda_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = "--device cuda: no CUDA device is available (torch.cuda.is_available() is False)"
    with pytest.raises(ValueError, match=re.escape(line)):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=re.escape(line)):
        run_experiment(dataclasses.replace(config("fedavg"), device="cuda"), engine="batched")


def test_device_names_are_checked() -> None:
    with pytest.raises(ValueError, match="device must be"):
        ExperimentConfig(device="tpu").validate()
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"injection": "nodes"}, "injection='nodes' needs SuperNodes"),
        ({"checkpoint": "x.ckpt"}, "writes no checkpoints"),
    ],
)
def test_unsupported_options_name_the_local_engine(changes: dict[str, Any], match: str) -> None:
    cfg = dataclasses.replace(config("robust-momentum"), **changes)
    with pytest.raises(ValueError, match=match):
        check_batched(cfg)
    with pytest.raises(ValueError, match="--engine local"):
        run_experiment(cfg, engine="batched")


def test_cli_run_and_grid_take_the_batched_engine(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    args = ["--method", "robust-momentum", "--dataset", "digits", "--clients", "4", "--rounds", "2"]
    result = CliRunner().invoke(
        cli_app, ["run", *args, "--engine", "batched", "--device", "cpu", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    saved = Result.load(out)
    assert saved.config["device"] == "cpu" and len(saved.rounds) == 2
    bad = CliRunner().invoke(cli_app, ["run", *args, "--engine", "batched", "--device", "tpu"])
    assert bad.exit_code == 2 and "device must be" in bad.output
    grid = CliRunner().invoke(
        cli_app,
        [
            "grid", "--method", "robust-momentum", "--aggregator", "cwmed", "--attack", "none",
            "--byzantine", "0", "--dataset", "digits", "--clients", "4", "--rounds", "1",
            "--engine", "batched", "--out-dir", str(tmp_path / "grid"),
        ],
    )  # fmt: skip
    assert grid.exit_code == 0, grid.output
    assert (tmp_path / "grid" / "results.md").exists()


def test_cli_reproduce_takes_the_engine() -> None:
    bad = CliRunner().invoke(cli_app, ["reproduce", "c1.1", "--engine", "simulation"])
    assert bad.exit_code == 2 and "known: local, batched" in bad.output
