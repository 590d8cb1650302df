"""Presets (``flwr_byz.simulations.presets``): each one is a valid config whose options land
in it; the local-training part goes to the FedAvg-like methods only; options given override
a preset (mapping, TOML file, Flower run config); unknown names fail in the specs' format;
docs/PRESETS.md documents each option; and each preset's model, partition and local training
run a round on a tiny copy of its data set in the hub's format (``hubdata``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flwr_byz.simulations.config import METHOD_OPTIONS, ExperimentConfig
from flwr_byz.simulations.datasets import canonical_spec, check_partition, load_dataset
from flwr_byz.simulations.defaults import method_defaults
from flwr_byz.simulations.methods import METHODS
from flwr_byz.simulations.models import (
    MODELS,
    REFERENCE_INPUTS,
    build_model,
    count_parameters,
    default_model,
)
from flwr_byz.simulations.presets import PRESETS, get_preset, preset_options, trains_locally
from flwr_byz.strategies import MethodStrategy

from . import hubdata
from .hubdata import caches  # noqa: F401  (autouse fixture: fresh caches per test)

NAMES = list(PRESETS)
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "PRESETS.md"


# --- every preset is a valid config ---------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_preset_resolves_to_its_own_options(name: str) -> None:
    preset = PRESETS[name]
    cfg = ExperimentConfig.from_preset(name)
    cfg.validate()
    resolved = cfg.resolved()  # no data loaded: the model is named, not auto
    for key, value in {**preset.setup, **preset.local_sgd}.items():
        assert getattr(resolved, key) == value, key
    assert resolved.preset == name and resolved.method == "robust-fedavg"
    assert resolved.model in MODELS
    check_partition(resolved.partition)
    assert canonical_spec(resolved.dataset) == resolved.dataset  # a hub name, parsed only
    assert 1 <= resolved.clients_per_round < resolved.clients
    assert set(preset.local_sgd) <= set(METHOD_OPTIONS) - {"rounds", "aggregator", "compressor"}
    assert not set(preset.setup) & set(preset.local_sgd)


@pytest.mark.parametrize("name", NAMES)
def test_preset_model_is_the_auto_choice_and_fits_the_real_shapes(name: str) -> None:
    """``--model auto`` on the preset's data set picks the preset's model, and the model
    builds for that data set's real input shape and classes."""
    dataset, model = PRESETS[name].setup["dataset"], PRESETS[name].setup["model"]
    assert default_model(str(dataset)) == model
    (ref,) = [r for r in REFERENCE_INPUTS if r.dataset == dataset]
    net = build_model(str(model), ref.shape, ref.classes, ref.vocab_size)
    assert count_parameters(net) > 0


def test_local_training_goes_to_the_local_sgd_methods_only() -> None:
    """robust-fedavg takes the preset's lr/batch/epochs/momentum; a gradient method keeps its
    own (docs/DEFAULTS.md), the setup (data, clients, rounds) is the preset's for both."""
    fedavg = ExperimentConfig.from_preset("cifar10-resnet20", method="fedavg")
    assert (fedavg.lr, fedavg.batch_size, fedavg.local_epochs, fedavg.momentum) == (
        0.025, 32, 1, 0.9,
    )  # fmt: skip
    ef21 = ExperimentConfig.from_preset("cifar10-resnet20", method="byz-ef21-sgdm")
    assert (ef21.lr, ef21.batch_size, ef21.local_epochs, ef21.momentum) == (None,) * 4
    assert (ef21.clients, ef21.clients_per_round, ef21.rounds) == (100, 10, 200)
    assert ef21.weight_decay == 1e-4
    resolved, own = ef21.resolved(), method_defaults("byz-ef21-sgdm")
    assert (resolved.lr, resolved.batch_size, resolved.momentum) == (
        own.lr, own.batch_size, own.momentum,
    )  # fmt: skip
    given = ExperimentConfig.from_preset("cifar10-resnet20", method="byz-ef21-sgdm", lr=0.3)
    assert given.lr == 0.3


def test_trains_locally_is_every_strategy_that_is_not_a_method_strategy() -> None:
    for method, (cls, _) in METHODS.items():
        assert trains_locally(method) == (not issubclass(cls, MethodStrategy)), method
    assert preset_options("mnist-lenet", "byz-ef21")["preset"] == "mnist-lenet"
    assert "lr" not in preset_options("cifar10-resnet20", "mu2sgd")
    assert preset_options("cifar10-resnet20", "flower-krum")["lr"] == 0.025


def test_given_options_override_the_preset() -> None:
    cfg = ExperimentConfig.from_mapping(
        {"preset": "femnist-lenet", "clients": 50, "lr": 0.1, "num-byzantine": 5}
    )
    assert (cfg.clients, cfg.lr, cfg.byzantine) == (50, 0.1, 5)
    assert (cfg.partition, cfg.batch_size, cfg.rounds) == ("natural:writer_id", 10, 2000)
    assert cfg.preset == "femnist-lenet"


def test_presets_are_read_only() -> None:
    with pytest.raises(TypeError):
        PRESETS["mnist-lenet"].setup["clients"] = 3  # type: ignore[index]
    assert preset_options("mnist-lenet")["clients"] == 100


UNKNOWN = "unknown preset 'nope'; known: cifar10-resnet20, femnist-lenet, shakespeare-lstm, "


@pytest.mark.parametrize(
    "call",
    [
        lambda: get_preset("nope"),
        lambda: ExperimentConfig.from_preset("nope"),
        lambda: ExperimentConfig.from_mapping({"preset": "nope", "rounds": 2}),
        lambda: ExperimentConfig(preset="nope").validate(),
    ],
    ids=["get", "from_preset", "from_mapping", "validate"],
)
def test_unknown_preset_lists_the_known_ones(call: Callable[[], Any]) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(UNKNOWN), info.value


def test_toml_file_names_a_preset_and_overrides_it(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('preset = "mnist-lenet"\nrounds = 3\nlocal-epochs = 2\n')
    cfg = ExperimentConfig.from_toml(path)
    assert (cfg.preset, cfg.dataset, cfg.model) == ("mnist-lenet", "hf:ylecun/mnist", "lenet")
    assert (cfg.rounds, cfg.local_epochs, cfg.batch_size) == (3, 2, 10)
    assert ExperimentConfig.toml_options(path) == {
        "preset": "mnist-lenet", "rounds": 3, "local_epochs": 2,
    }  # fmt: skip
    path.write_text("rounds = 3\npreset = 7\n")
    with pytest.raises(ValueError, match=r"exp.toml, line 2: preset = 7: expected a quoted"):
        ExperimentConfig.from_toml(path)


@pytest.mark.parametrize("name", NAMES)
def test_run_config_carries_the_preset_name(name: str) -> None:
    """The simulation engine passes configs through a Flower run config: the name survives,
    and every option the run config gives wins over the preset's."""
    cfg = ExperimentConfig.from_preset(name, rounds=4)
    run_config = cfg.to_run_config()
    assert run_config["preset"] == name
    assert ExperimentConfig.from_run_config(run_config, clients=cfg.clients) == cfg
    assert ExperimentConfig().to_run_config()["preset"] == ""
    assert ExperimentConfig.from_run_config({"preset": ""}, clients=5).preset is None
    partial = ExperimentConfig.from_run_config({"preset": name, "rounds": 4}, clients=7)
    assert (partial.rounds, partial.clients, partial.model) == (4, 7, PRESETS[name].setup["model"])


# --- docs/PRESETS.md ------------------------------------------------------------------------
def _section(text: str, name: str) -> str:
    match = re.search(rf"^## `{re.escape(name)}`\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/PRESETS.md has no section '## `{name}`'"
    return match[1]


@pytest.mark.parametrize("name", NAMES)
def test_docs_give_every_option_and_the_figures(name: str) -> None:
    section = _section(DOC.read_text(), name)
    preset = PRESETS[name]
    for key, value in {**preset.setup, **preset.local_sgd}.items():
        row = f"| `{key}` | `{value}` |"
        assert row in section, row
    assert "not measured yet" in section  # accuracy on the real data: no network here
    assert re.search(r"CPU[^\n]*\d+(\.\d+)? s", section), "a measured CPU s/round figure"
    assert "not measured (no GPU lent)" in section
    assert f"flwr-byz run --preset {name}" in section


def test_readme_links_the_presets_doc() -> None:
    assert "(docs/PRESETS.md)" in (ROOT / "README.md").read_text()


# --- one round of each preset on a tiny copy of its data set --------------------------------
def _tiny(name: str, root: Path) -> str:
    """A tiny data set in the hub format of ``name``'s data set (``hf:<dir>``)."""
    hub = str(PRESETS[name].setup["dataset"]).removeprefix("hf:")
    builders: dict[str, Callable[[Path], Any]] = {
        "uoft-cs/cifar10": lambda p: hubdata.cifar_like(p, n_train=30, n_test=10),
        "ylecun/mnist": lambda p: hubdata.mnist_like(p, n_train=30, n_test=10),
        "flwrlabs/femnist": lambda p: hubdata.femnist_like(p, writers=4, per_writer=6),
        "flwrlabs/shakespeare": lambda p: hubdata.shakespeare_like(p, roles=4, per_role=5),
    }
    builders[hub](root / name)
    return f"hf:{root / name}"


SHAPES = {r.dataset: r.shape for r in REFERENCE_INPUTS}


@pytest.mark.parametrize("name", NAMES)
def test_preset_runs_a_round_on_a_tiny_copy_of_its_data(name: str, tmp_path: Path) -> None:
    from flwr_byz.simulations.engines import run_experiment

    preset = PRESETS[name]
    spec = _tiny(name, tmp_path)
    data = load_dataset(spec)
    assert data.input_shape == SHAPES[str(preset.setup["dataset"])]  # the real shape
    cfg = ExperimentConfig.from_preset(
        name, dataset=spec, clients=3, clients_per_round=3, rounds=1, threads=1
    )
    result = run_experiment(cfg, engine="local")
    (record,) = result.rounds
    assert math.isfinite(record.loss) and 0.0 <= record.accuracy <= 1.0
    assert record.bytes_up > 0
    config = result.config
    assert config["preset"] == name
    expected = {k: v for k, v in {**preset.setup, **preset.local_sgd}.items()
                if k not in ("dataset", "clients", "clients_per_round", "rounds")}  # fmt: skip
    assert {k: config[k] for k in expected} == expected
    model = build_model(config["model"], data.input_shape, data.num_classes, data.vocab_size)
    params = count_parameters(model)
    assert record.bytes_up >= 3 * 4 * params  # three clients sent a float32 model each
