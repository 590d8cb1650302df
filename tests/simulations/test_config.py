"""ExperimentConfig: defaults, key spellings, TOML and Flower run-config input, resolution,
validation, help texts and ``parse_params``."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from flwr_byz.simulations.config import ExperimentConfig, parse_params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

#: The documented defaults, written out independently of the dataclass (None for the
#: method-dependent options: the method's default, filled in by ``resolved()``).
DEFAULTS: dict[str, Any] = {
    "preset": None,
    "method": "robust-fedavg",
    "aggregator": None,
    "attack": "none",
    "byzantine": 0,
    "clients": 20,
    "clients_per_round": None,
    "rounds": None,
    "dataset": "mnist1d",
    "partition": "iid",
    "model": "auto",
    "lr": None,
    "batch_size": None,
    "local_epochs": None,
    "momentum": None,
    "weight_decay": 0.0,
    "compressor": None,
    "f": None,
    "seed": 0,
    "eval_samples": None,
    "params": {},
    "ray_address": None,
    "out": None,
    "injection": "server",
    "round_timeout": None,
    "checkpoint": None,
    "resume": False,
    "device": "cpu",
    "threads": None,
}

#: The options whose default is the method's.
METHOD_OPTIONS = (
    "aggregator",
    "lr",
    "batch_size",
    "local_epochs",
    "momentum",
    "compressor",
    "rounds",
)

#: Run-config keys whose field name is not the key with dashes made underscores.
RUN_CONFIG_NAMES = {"num-byzantine": "byzantine"}


def _app_config() -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of the project's pyproject.toml."""
    with open(PYPROJECT, "rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def _field_name(run_config_key: str) -> str:
    """The ExperimentConfig field a run-config key sets."""
    return RUN_CONFIG_NAMES.get(run_config_key, run_config_key.replace("-", "_"))


# --- defaults and to_dict ------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    cfg = ExperimentConfig()
    assert cfg.to_dict() == DEFAULTS
    assert [f.name for f in dataclasses.fields(ExperimentConfig)] == list(DEFAULTS)


def test_params_default_is_not_shared() -> None:
    a, b = ExperimentConfig(), ExperimentConfig()
    a.params["clip"] = 1.0
    assert b.params == {} and ExperimentConfig().params == {}


def test_defaults_round_trip_through_to_dict() -> None:
    cfg = ExperimentConfig()
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-ready
    assert ExperimentConfig.from_mapping(data) == cfg


def test_custom_config_round_trips_and_to_dict_is_a_copy() -> None:
    cfg = ExperimentConfig(
        method="flower-krum",
        byzantine=3,
        clients=10,
        clients_per_round=5,
        lr=0.1,
        f=2,
        params={"clip": 1.5, "name": "x"},
        out="results/x.json",
    )
    data = cfg.to_dict()
    back = ExperimentConfig.from_mapping(json.loads(json.dumps(data)))
    assert back == cfg
    data["params"]["clip"] = 99.0
    assert cfg.params == {"clip": 1.5, "name": "x"}


# --- from_mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"clients_per_round": 5, "batch_size": 16, "local_epochs": 3, "ray_address": "auto"},
        {"clients-per-round": 5, "batch-size": 16, "local-epochs": 3, "ray-address": "auto"},
    ],
    ids=["snake", "kebab"],
)
def test_from_mapping_snake_and_kebab_keys(values: dict[str, Any]) -> None:
    cfg = ExperimentConfig.from_mapping(values)
    expected = {**DEFAULTS, "clients_per_round": 5, "batch_size": 16, "local_epochs": 3}
    expected["ray_address"] = "auto"
    assert cfg.to_dict() == expected


@pytest.mark.parametrize("key", ["byzantine", "num-byzantine"])
def test_from_mapping_byzantine_alias(key: str) -> None:
    assert ExperimentConfig.from_mapping({key: 4}).byzantine == 4


def test_from_mapping_parses_params_string() -> None:
    cfg = ExperimentConfig.from_mapping({"params": "clip=1.5,name=x,k=none"})
    assert cfg.params == {"clip": 1.5, "name": "x", "k": None}


@pytest.mark.parametrize("key", ["num_rounds", "learning-rate", "Rounds"])
def test_from_mapping_unknown_key_is_named(key: str) -> None:
    with pytest.raises(ValueError, match=f"unknown experiment option {key!r}"):
        ExperimentConfig.from_mapping({"rounds": 3, key: 1})


# --- from_toml -----------------------------------------------------------------------------


def test_from_toml_top_level(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(
        'method = "flower-median"\nnum-byzantine = 2\nclients-per-round = 8\n'
        'lr = 0.01\nparams = "clip=2.0"\n'
    )
    cfg = ExperimentConfig.from_toml(path)
    expected = {**DEFAULTS, "method": "flower-median", "byzantine": 2, "clients_per_round": 8}
    expected.update(lr=0.01, params={"clip": 2.0})
    assert cfg.to_dict() == expected


def test_from_toml_experiment_table(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(
        "[experiment]\n"
        'attack = "alie"\nbyzantine = 3\nrounds = 5\ndataset = "digits"\n'
        '[experiment.params]\nclip = 1.5\nname = "x"\n'
        "[other]\nrounds = 99\n"
    )
    cfg = ExperimentConfig.from_toml(str(path))
    expected = {**DEFAULTS, "attack": "alie", "byzantine": 3, "rounds": 5, "dataset": "digits"}
    expected["params"] = {"clip": 1.5, "name": "x"}
    assert cfg.to_dict() == expected


def test_from_toml_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("[experiment]\nrounds = 5\nepochs = 3\n")
    with pytest.raises(ValueError, match="'epochs'"):
        ExperimentConfig.from_toml(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (  # the newcomer's mistake: a spec without quotes
            "[experiment]\nrounds = 5\naggregator = nnm+krum\n",
            r"exp\.toml, line 3, column 14: Invalid value: aggregator = nnm\+krum "
            r'\(text values need quotes: aggregator = "nnm\+krum"\)$',
        ),
        (
            "rounds = 5\nlr = 0.05x\n",
            r"exp\.toml, line 2, column 10: Expected newline .*: lr = 0\.05x$",  # a number: no hint
        ),
        ("rounds = [5\n", r"exp\.toml, at the end: Unclosed array$"),
        ('rounds = "ten"\n', r"exp\.toml, line 1: rounds = 'ten': expected an integer$"),
        ("resume = 1\n", r"exp\.toml, line 1: resume = 1: expected true or false$"),
        ("lr = true\n", r"exp\.toml, line 1: lr = True: expected a number$"),
        (  # the key's line in [experiment], not the same key in another table
            "[other]\nepochs = 1\n[experiment]\nrounds = 5\n\nepochs = 3\n",
            r"exp\.toml, line 6: unknown experiment option 'epochs'; known: aggregator, .*rounds",
        ),
    ],
    ids=["unquoted", "syntax", "end", "int", "bool", "float", "unknown-key"],
)
def test_from_toml_errors_name_the_file_line_and_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        ExperimentConfig.from_toml(path)
    assert re.search(message, str(info.value).replace(str(path), "exp.toml")), str(info.value)


def test_from_toml_accepts_ints_for_floats_and_params_as_text(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('lr = 1\nround-timeout = 30\nparams = "clip=2"\nnum-byzantine = 2\n')
    cfg = ExperimentConfig.from_toml(path)
    assert (cfg.lr, cfg.round_timeout, cfg.params, cfg.byzantine) == (1, 30, {"clip": 2}, 2)


# --- from_run_config -----------------------------------------------------------------------


def test_app_config_covers_the_options() -> None:
    """Every option but ``clients`` (the connected nodes) and ``ray_address`` (no Ray in a
    deployment) is a run-config key of the Flower App."""
    names = {_field_name(k) for k in _app_config()}
    assert names == set(DEFAULTS) - {"clients", "ray_address"}


def test_from_run_config_pyproject_defaults() -> None:
    run_config = _app_config()
    before = dict(run_config)
    cfg = ExperimentConfig.from_run_config(run_config, clients=20)
    assert run_config == before  # input left alone
    cfg.validate()
    assert cfg.clients_per_round is None and cfg.f is None
    assert cfg.out is None and cfg.params == {} and cfg.ray_address is None
    assert cfg.round_timeout is None and cfg.checkpoint is None  # 0.0 and "" are "none"
    assert cfg.injection == "server" and cfg.resume is False
    assert cfg.clients == 20
    for key in run_config:
        name = _field_name(key)
        if name not in ("clients_per_round", "f", "out", "params", "round_timeout", "checkpoint"):
            assert getattr(cfg, name) == DEFAULTS[name], key
    assert cfg == ExperimentConfig()


def test_from_run_config_overrides() -> None:
    run_config = {
        **_app_config(),
        "num-byzantine": 4,
        "clients-per-round": 5,
        "f": 2,
        "rounds": 3,
        "params": "clip=1.5, name=x",
        "out": "results/x.json",
        "ray-address": "auto",
    }
    cfg = ExperimentConfig.from_run_config(run_config, clients=12)
    assert (cfg.byzantine, cfg.clients, cfg.clients_per_round, cfg.f) == (4, 12, 5, 2)
    assert cfg.rounds == 3 and cfg.params == {"clip": 1.5, "name": "x"}
    assert cfg.out == "results/x.json" and cfg.ray_address == "auto"


def test_new_options_validation_messages() -> None:
    with pytest.raises(ValueError, match=r"injection must be one of \('server', 'nodes'\)"):
        ExperimentConfig(injection="client").validate()
    with pytest.raises(ValueError, match=r"round_timeout must be > 0 or None"):
        ExperimentConfig(round_timeout=0).validate()
    with pytest.raises(ValueError, match="resume needs a checkpoint file"):
        ExperimentConfig(resume=True).validate()
    with pytest.raises(ValueError, match="resume needs a checkpoint file"):
        ExperimentConfig(resume=True).resolved()  # resolved() validates too


def test_from_run_config_new_options() -> None:
    run_config = {
        **_app_config(),
        "injection": "nodes",
        "round-timeout": 7.5,
        "checkpoint": "results/ckpt.pt",
        "resume": True,
    }
    cfg = ExperimentConfig.from_run_config(run_config, clients=6)
    assert (cfg.injection, cfg.round_timeout, cfg.checkpoint, cfg.resume) == (
        "nodes",
        7.5,
        "results/ckpt.pt",
        True,
    )
    cfg.validate()


@pytest.mark.parametrize("timeout", [0, 0.0, -1.0])
def test_from_run_config_round_timeout_and_checkpoint_sentinels(timeout: float) -> None:
    """A round timeout of 0 (or less) is None (Flower's 3600 s); an empty checkpoint is None."""
    cfg = ExperimentConfig.from_run_config({"round-timeout": timeout, "checkpoint": ""}, 5)
    assert cfg.round_timeout is None and cfg.checkpoint is None
    cfg.validate()


def test_to_run_config_inverts_from_run_config() -> None:
    for cfg in (
        ExperimentConfig(clients=6),
        ExperimentConfig(
            clients=6, injection="nodes", round_timeout=7.5, checkpoint="c.pt", resume=True
        ),
    ):
        run_config = cfg.to_run_config()
        assert set(run_config) == set(_app_config())
        assert ExperimentConfig.from_run_config(run_config, clients=6) == cfg
    defaults = ExperimentConfig().to_run_config()
    assert defaults["round-timeout"] == 0.0 and defaults["checkpoint"] == ""
    assert defaults["injection"] == "server" and defaults["resume"] is False


def test_from_run_config_sentinels() -> None:
    """0 (or less) clients-per-round is all clients, any negative f is auto, 0 f stays 0;
    ``clients`` always comes from the argument."""
    cfg = ExperimentConfig.from_run_config({"clients-per-round": -3, "f": -5, "clients": 3}, 7)
    assert cfg.clients_per_round is None and cfg.f is None and cfg.clients == 7
    cfg = ExperimentConfig.from_run_config({"f": 0, "clients-per-round": 1}, 7)
    assert cfg.f == 0 and cfg.clients_per_round == 1


def test_from_run_config_resolves() -> None:
    cfg = ExperimentConfig.from_run_config({**_app_config(), "num-byzantine": 3}, 20).resolved()
    assert (cfg.model, cfg.f, cfg.clients_per_round) == ("cnn1d", 3, 20)


# --- resolved ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("byzantine", "clients", "per_round", "expected"),
    [
        (4, 20, 5, 1),
        (4, 20, None, 4),
        (3, 20, 10, 2),  # 1.5 -> 2
        (1, 20, 1, 1),  # 0.05 -> 1
        (0, 20, 5, 0),
        (5, 10, 3, 2),  # 1.5 -> 2
        (6, 9, 9, 6),
        (20, 20, 7, 7),
    ],
)
def test_resolved_f_formula(
    byzantine: int, clients: int, per_round: int | None, expected: int
) -> None:
    cfg = ExperimentConfig(byzantine=byzantine, clients=clients, clients_per_round=per_round)
    out = cfg.resolved()
    assert out.f == expected
    assert out.f == math.ceil(byzantine * (per_round or clients) / clients)
    assert out.clients_per_round == (clients if per_round is None else per_round)
    assert cfg.f is None and cfg.clients_per_round == per_round  # original untouched


@pytest.mark.parametrize("f", [0, 3])
def test_resolved_keeps_explicit_f(f: int) -> None:
    assert ExperimentConfig(byzantine=4, clients=20, clients_per_round=10, f=f).resolved().f == f


@pytest.mark.parametrize(("dataset", "model"), [("mnist1d", "cnn1d"), ("digits", "mlp")])
def test_resolved_model_auto(dataset: str, model: str) -> None:
    cfg = ExperimentConfig(dataset=dataset)
    assert cfg.resolved().model == model
    assert cfg.model == "auto"
    assert ExperimentConfig(dataset=dataset, model="logreg").resolved().model == "logreg"


def test_resolved_is_idempotent_and_validates() -> None:
    out = ExperimentConfig(byzantine=2, clients=10, clients_per_round=4).resolved()
    assert out.resolved() == out
    with pytest.raises(ValueError, match=r"^byzantine"):
        ExperimentConfig(byzantine=11, clients=10).resolved()


# --- validate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"byzantine": 21}, "byzantine"),
        ({"byzantine": -1}, "byzantine"),
        ({"clients_per_round": 0}, "clients_per_round"),
        ({"clients_per_round": 21}, "clients_per_round"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": True}, "rounds"),
        ({"clients": 0}, "clients"),
        ({"batch_size": 0}, "batch_size"),
        ({"local_epochs": 0}, "local_epochs"),
        ({"f": -1}, "f"),
        ({"injection": "client"}, "injection"),
        ({"injection": ""}, "injection"),
        ({"round_timeout": 0.0}, "round_timeout"),
        ({"round_timeout": -1.0}, "round_timeout"),
        ({"round_timeout": math.nan}, "round_timeout"),
        ({"resume": True}, "resume"),
        ({"resume": True, "checkpoint": ""}, "resume"),
    ],
)
def test_validate_errors_name_the_option(changes: dict[str, Any], name: str) -> None:
    cfg = dataclasses.replace(ExperimentConfig(), **changes)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        cfg.validate()


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"byzantine": 20},
        {"clients_per_round": 20},
        {"clients_per_round": 1},
        {"momentum": 0.0},
        {"f": 0},
        {"rounds": 1, "clients": 1},
        {"injection": "nodes"},
        {"round_timeout": 1e-3},
        {"checkpoint": "ckpt.pt"},
        {"checkpoint": "ckpt.pt", "resume": True},
    ],
)
def test_validate_accepts_boundaries(changes: dict[str, Any]) -> None:
    dataclasses.replace(ExperimentConfig(), **changes).validate()


# --- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_help_text_and_default(name: str) -> None:
    text = ExperimentConfig.help(name)
    default = "the method's (docs/DEFAULTS.md)"
    suffix = f" [default: {default if name in METHOD_OPTIONS else DEFAULTS[name]}]"
    assert text.endswith(suffix)
    assert text[: -len(suffix)].strip()


def test_help_unknown_option() -> None:
    with pytest.raises(KeyError):
        ExperimentConfig.help("epochs")


# --- parse_params --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("", {}),
        ("a=1,b=x", {"a": 1, "b": "x"}),
        (" a = 1 , b = x ,", {"a": 1, "b": "x"}),
        (["a=1", "b=x"], {"a": 1, "b": "x"}),
        (("t=[1, 2]", "u=(3, 'y')"), {"t": [1, 2], "u": (3, "y")}),
        ("x=none,y=NULL,z=None", {"x": None, "y": None, "z": None}),
        ("lr=1e-3,flag=True,n=-2,s='7'", {"lr": 0.001, "flag": True, "n": -2, "s": "7"}),
        ("num-clusters=2,tau_clip=0.5", {"num_clusters": 2, "tau_clip": 0.5}),
        ("a=b=c", {"a": "b=c"}),
        ("a=1,a=2", {"a": 2}),
        ({"clip": 1.5, "name": "x"}, {"clip": 1.5, "name": "x"}),
        # a comma inside quotes or brackets belongs to the value
        ("sa='random:scale=2,seed=3',n=5", {"sa": "random:scale=2,seed=3", "n": 5}),
        (
            'sa="a,b",t=(1, 2),u=[3, 4],v={"k": 1, "j": 2}',
            {"sa": "a,b", "t": (1, 2), "u": [3, 4], "v": {"k": 1, "j": 2}},
        ),
    ],
)
def test_parse_params(params: Any, expected: dict[str, Any]) -> None:
    out = parse_params(params)
    assert out == expected
    assert {k: type(v) for k, v in out.items()} == {k: type(v) for k, v in expected.items()}


def test_parse_params_dict_is_copied() -> None:
    given = {"clip": 1.5}
    out = parse_params(given)
    out["clip"] = 2.0
    assert given == {"clip": 1.5}


def test_parse_params_dict_keys_like_strings() -> None:
    assert parse_params({"num-clusters": 2}) == parse_params("num-clusters=2")


@pytest.mark.parametrize("params", ["a=1,b", "=1", "a=1, =2", ["a"], "clip"])
def test_parse_params_errors(params: Any) -> None:
    with pytest.raises(ValueError, match="expected name=value"):
        parse_params(params)
