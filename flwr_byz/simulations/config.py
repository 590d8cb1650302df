"""ExperimentConfig: every option of one experiment, with its default and its help text.

The same dataclass feeds ``run_experiment``, every flag of ``flwr-byz run``, ``--config
file.toml`` and the Flower App's run-config keys (``pyproject.toml``), so the three stay in
step. Names are snake_case here, ``--kebab-case`` as flags and ``kebab-case`` as run-config
keys (``byzantine`` is ``num-byzantine`` there, as Flower users spell it).

The method-dependent options (``METHOD_OPTIONS``: aggregator, lr, batch_size, local_epochs,
momentum, compressor, rounds) default to None, "the method's default": ``resolved()`` takes
them from the method's ``RunDefaults`` (``flwr_byz.simulations.defaults``; docs/DEFAULTS.md),
so a value given (flag, file, run config) always wins, and a resolved config records the
values used.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..methods.defaults import RunDefaults
from ..specs import parse_value, unknown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "INJECTIONS",
    "METHOD_OPTIONS",
    "RUN_CONFIG_ALIASES",
    "ExperimentConfig",
    "parse_params",
]

#: Where the Byzantine replies are made (``ExperimentConfig.injection``).
INJECTIONS = ("server", "nodes")

#: run-config key -> field name, where they differ beyond dashes/underscores.
RUN_CONFIG_ALIASES = {"num-byzantine": "byzantine"}

#: The options whose default is the method's (None until ``resolved()``).
METHOD_OPTIONS: tuple[str, ...] = RunDefaults.names()

#: A method-dependent option's stand-in for None in a Flower run config, which cannot hold
#: None: "" for the specs, 0 for the counts and lr, -1 for momentum (0 is a momentum).
_RUN_CONFIG_UNSET: dict[str, Any] = {
    "aggregator": "",
    "compressor": "",
    "lr": 0.0,
    "batch_size": 0,
    "local_epochs": 0,
    "rounds": 0,
    "momentum": -1.0,
}


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class ExperimentConfig:
    """One experiment. ``resolved()`` fills the ``auto``/``None`` choices.

    The method-dependent options (``METHOD_OPTIONS``) are annotated with their resolved type:
    they hold None ("the method's default") until ``resolved()``, which every run path calls
    first (``runner.prepare``), so the code that reads them sees values."""

    preset: str | None = _opt(
        None,
        "Standard setup whose options are the starting point (docs/PRESETS.md), e.g. "
        "'cifar10-resnet20'; the options given as well override it.",
    )
    method: str = _opt(
        "robust-fedavg",
        "Training method (the strategy on the server and what the clients compute).",
    )
    aggregator: str = _opt(
        None, "Robust aggregator spec of robust methods, e.g. 'cwmed', 'nnm+krum'."
    )
    attack: str = _opt(
        "none", "Attack of the Byzantine clients, e.g. 'alie', 'sign-flip:10', 'label-flip'."
    )
    byzantine: int = _opt(0, "Number of Byzantine clients (chosen among the partitions by seed).")
    clients: int = _opt(20, "Number of (virtual) clients; each holds one data partition.")
    clients_per_round: int | None = _opt(None, "Clients sampled per round (None: all).")
    rounds: int = _opt(None, "Number of federated rounds.")
    dataset: str = _opt(
        "mnist1d",
        "Dataset spec: a name, with options as 'synthetic-logreg:heterogeneity=2'; "
        "'hf:<hub name>' (through flwr-datasets, e.g. 'hf:uoft-cs/cifar10') or 'local:<dir>' "
        "(saved with datasets' save_to_disk), columns given as 'local:<dir>,image=img,label=y'.",
    )
    partition: str = _opt(
        "iid",
        "Partition of the training data: 'iid', 'dirichlet:<alpha>' (label skew, smaller is "
        "more skewed), 'full' (every client holds the whole training set) or "
        "'natural:<column>' (one id per client, e.g. 'natural:writer_id' for FEMNIST).",
    )
    model: str = _opt(
        "auto", "Model ('auto': the dataset's default; parameter counts: flwr-byz models)."
    )
    lr: float = _opt(
        None, "Learning rate: the clients' (local SGD methods) or the server's (gradient methods)."
    )
    batch_size: int = _opt(None, "Client minibatch size.")
    local_epochs: int = _opt(None, "Local epochs per round on each client (FedAvg-like methods).")
    momentum: float = _opt(
        None,
        "Client momentum: local SGD momentum restarted every round (FedAvg-like methods), "
        "the worker momentum beta kept across rounds (robust-momentum; byz-ef21-sgdm: "
        "eta = 1 - momentum).",
    )
    weight_decay: float = _opt(
        0.0, "L2 regularisation lambda: the training loss gets (lambda/2)||w||^2."
    )
    compressor: str = _opt(
        None,
        "Compressor spec of compressed methods, e.g. 'randk:0.1' (a fraction), 'topk:0.01', "
        "'qsgd:4' (levels), 'none'.",
    )
    f: int | None = _opt(
        None,
        "Byzantine inputs per round the aggregator tolerates (None: the Byzantine clients "
        "expected among those sampled, ceil(byzantine * clients_per_round / clients)).",
    )
    seed: int = _opt(0, "Seed of everything random: model init, sampling, attacks, shuffling.")
    eval_samples: int | None = _opt(
        None,
        "Test samples the server evaluates the global model on every round: a fixed subset of "
        "that many, drawn once with a seed of its own (not the experiment's seed), so every run "
        "and round of a setup is scored on the same samples (None or 0: the whole test set).",
    )
    params: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Method hyperparameters: the strategy's constructor arguments."},
    )
    ray_address: str | None = _opt(
        None, "Address of an existing Ray cluster (e.g. 'auto', '10.0.0.1:6379'); None: local."
    )
    out: str | None = _opt(None, "Write the result JSON here.")
    injection: str = _opt(
        "server",
        "Where Byzantine replies are made: 'server' (ByzantineGrid rewrites the replies of the "
        "Byzantine partitions; any attack, omniscient ones included) or 'nodes' (the SuperNodes "
        "started with a byzantine-attack node config corrupt their own replies: a deployment).",
    )
    round_timeout: float | None = _opt(
        None,
        "Seconds a round waits for replies (None: Flower's 3600); a sampled node that has not "
        "answered by then is counted as missing and the round goes on without it.",
    )
    checkpoint: str | None = _opt(
        None,
        "Checkpoint file, rewritten after every round (global model, strategy and attack "
        "state, rounds so far; tensors and JSON only); the nodes keep their own state in "
        "<checkpoint>.clients/. None: no checkpoint.",
    )
    resume: bool = _opt(
        False,
        "Continue from ``checkpoint`` when it exists (same experiment; more rounds allowed).",
    )
    device: str = _opt(
        "cpu",
        "Torch device, 'cpu' or 'cuda[:N]', in every engine: the clients train on it (the "
        "simulation engine's ClientApp actors share the GPUs as Flower client resources) and "
        "the server aggregates and evaluates on it; a SuperNode's node config 'device' wins "
        "for that node.",
    )
    threads: int | None = _opt(
        None,
        "Torch threads of the process that runs the experiment (None or 0: auto: "
        "$OMP_NUM_THREADS when set, else the CPU cores this process may use). 'flwr-byz "
        "reproduce' gives each parallel job 1; the simulation engine's ClientApp actors use 1 "
        "each.",
    )

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ExperimentConfig:
        """From a dict with snake_case, kebab-case or run-config keys; unknown keys raise.

        With a ``preset`` (``flwr_byz.simulations.presets``), the preset's options for the
        ``method`` come first and every key given overrides them."""
        names = {fd.name for fd in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = RUN_CONFIG_ALIASES.get(key, key).replace("-", "_")
            if name not in names:
                raise unknown("experiment option", key, sorted(names))
            kwargs[name] = value
        if kwargs.get("preset") is not None:  # the preset's options, under those given
            from .presets import preset_options

            method = kwargs.get("method", cls.__dataclass_fields__["method"].default)
            kwargs = preset_options(kwargs["preset"], method) | kwargs
        if "params" in kwargs:
            kwargs["params"] = parse_params(kwargs["params"])
        return cls(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **options: Any) -> ExperimentConfig:
        """The preset ``name`` (docs/PRESETS.md) with ``options`` overriding its own
        (``ValueError`` ``unknown preset 'x'; known: ...`` for an unknown name)."""
        return cls.from_mapping({"preset": name, **options})

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        """From a TOML file of options (top level, or under an ``[experiment]`` table).

        ``ValueError`` naming the file, the line and the problem (``exp.toml, line 3: ...``)
        for a TOML syntax error, an unknown option or a value of the wrong type."""
        return cls.from_mapping(cls.toml_options(path))

    @classmethod
    def toml_options(cls, path: str | Path) -> dict[str, Any]:
        """The options a TOML file sets, by field name (checked as ``from_toml`` checks
        them): what the file gives, without the defaults of the options it leaves out."""
        with open(path, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8", errors="replace")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(_toml_syntax_error(path, text, exc)) from None
        table = "experiment" if isinstance(data.get("experiment"), dict) else None
        values = data["experiment"] if table else data
        options: dict[str, Any] = {}
        for key, value in values.items():
            where = f"{path}, line {_line_of(text, key, table)}"
            name = RUN_CONFIG_ALIASES.get(key, key).replace("-", "_")
            options[name] = value
            try:
                _check_type(name, value)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            except KeyError:
                names = sorted(fd.name for fd in dataclasses.fields(cls))
                raise ValueError(f"{where}: {unknown('experiment option', key, names)}") from None
        return options

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], clients: int) -> ExperimentConfig:
        """From a Flower run config (``[tool.flwr.app.config]`` plus overrides).

        Flower config values cannot be None, so ``0``/``-1``/``""`` stand for it where
        ``help()`` says so (a method-dependent option: ``""`` for aggregator and compressor,
        ``0`` for lr, batch-size, local-epochs and rounds, ``-1`` for momentum, each "the
        method's default"); ``clients`` is the number of connected nodes. ``preset = ""`` is
        none; a preset named there fills only the keys the run config lacks (the project's
        ``[tool.flwr.app.config]`` table has them all: write the preset's options into it).
        """
        values = dict(run_config)
        for name, unset in _RUN_CONFIG_UNSET.items():
            key = name.replace("_", "-")
            if key in values and values[key] == unset:
                values[key] = None  # the method's default
        if "clients-per-round" in values and int(values["clients-per-round"]) <= 0:
            values["clients-per-round"] = None  # 0: all clients
        if "f" in values and int(values["f"]) < 0:
            values["f"] = None  # -1: auto
        for key in ("ray-address", "out", "checkpoint", "preset"):
            if values.get(key) == "":
                values[key] = None
        if "round-timeout" in values and float(values["round-timeout"]) <= 0:
            values["round-timeout"] = None  # 0: Flower's default
        if "threads" in values and int(values["threads"]) <= 0:
            values["threads"] = None  # 0: auto
        if "eval-samples" in values and int(values["eval-samples"]) <= 0:
            values["eval-samples"] = None  # 0: the whole test set
        values["clients"] = clients
        return cls.from_mapping(values)

    def to_run_config(self) -> dict[str, Any]:
        """The Flower run config of this experiment (``flwr run --run-config``): the inverse
        of ``from_run_config`` (kebab-case keys; None as ``0``/``-1``/``""``; ``clients`` is
        left out, it is the number of connected nodes)."""
        aliases = {name: key for key, name in RUN_CONFIG_ALIASES.items()}
        values = self.to_dict()
        values.pop("clients")
        values.pop("ray_address")
        values["clients_per_round"] = values["clients_per_round"] or 0
        values["f"] = -1 if values["f"] is None else values["f"]
        values["round_timeout"] = values["round_timeout"] or 0.0
        values["threads"] = values["threads"] or 0
        values["eval_samples"] = values["eval_samples"] or 0
        values["params"] = ",".join(f"{k}={v!r}" for k, v in values["params"].items())
        for name, unset in _RUN_CONFIG_UNSET.items():
            values[name] = unset if values[name] is None else values[name]
        for key in ("out", "checkpoint", "preset"):
            values[key] = values[key] or ""
        return {aliases.get(k, k.replace("_", "-")): v for k, v in values.items()}

    # --- derived values -------------------------------------------------------------------
    @property
    def per_round(self) -> int:
        """Clients sampled per round."""
        return self.clients if self.clients_per_round is None else self.clients_per_round

    def method_defaults(self) -> RunDefaults:
        """The run defaults of ``method`` (``ValueError`` for an unknown method)."""
        from .defaults import method_defaults

        return method_defaults(self.method)

    def resolved(self) -> ExperimentConfig:
        """A copy with the method-dependent options (``METHOD_OPTIONS``) left unset taken from
        the method's defaults, and ``model``, ``f``, ``clients_per_round`` and ``threads``
        made explicit; validated."""
        from .models import default_model
        from .threads import resolve_threads

        defaults = self.method_defaults()
        filled = dataclasses.replace(
            self,
            **{
                name: getattr(defaults, name)
                for name in METHOD_OPTIONS
                if getattr(self, name) is None
            },
        )
        filled.validate()
        from .datasets import canonical_spec

        dataset = canonical_spec(self.dataset)  # a local directory made absolute
        model = default_model(dataset) if self.model == "auto" else self.model
        f = self.f
        if f is None:
            f = math.ceil(self.byzantine * self.per_round / self.clients)
        return dataclasses.replace(
            filled,
            dataset=dataset,
            model=model,
            f=f,
            clients_per_round=self.per_round,
            threads=resolve_threads(self.threads),
            eval_samples=self.eval_samples or None,
        )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent option (a method-dependent
        option left None is the method's default: ``resolved()`` checks it)."""
        for name in ("clients", "rounds", "batch_size"):
            value = getattr(self, name)
            if value is None and name in METHOD_OPTIONS:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.byzantine <= self.clients:
            raise ValueError(f"byzantine={self.byzantine} must be in [0, clients={self.clients}]")
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= self.clients:
            raise ValueError(
                f"clients_per_round={self.clients_per_round} must be in [1, clients={self.clients}]"
            )
        if self.local_epochs is not None and self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.f is not None and self.f < 0:
            raise ValueError(f"f must be >= 0, got {self.f}")
        if self.injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, got {self.injection!r}")
        if self.round_timeout is not None and not self.round_timeout > 0:
            raise ValueError(f"round_timeout must be > 0 or None, got {self.round_timeout}")
        if self.eval_samples is not None and (
            isinstance(self.eval_samples, bool)
            or not isinstance(self.eval_samples, int)
            or self.eval_samples < 0
        ):
            raise ValueError(
                f"eval_samples must be an int >= 0 (0: the whole test set) or None, "
                f"got {self.eval_samples!r}"
            )
        if self.resume and not self.checkpoint:
            raise ValueError("resume needs a checkpoint file (checkpoint=...)")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0
        ):
            raise ValueError(f"threads must be an int >= 0 (0: auto) or None, got {self.threads!r}")
        if self.preset is not None:
            from .presets import get_preset

            get_preset(self.preset)  # unknown preset 'x'; known: ...
        if not isinstance(self.device, str) or self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (snake_case keys)."""
        return dataclasses.asdict(self)

    @staticmethod
    def help(name: str, method: str | None = None) -> str:
        """The help text of option ``name`` with its default: for a method-dependent option,
        ``method``'s default (``ValueError`` for an unknown method), or without a method
        "the method's"."""
        fd = {f.name: f for f in dataclasses.fields(ExperimentConfig)}[name]
        default = {} if fd.default is dataclasses.MISSING else fd.default
        if name in METHOD_OPTIONS:
            if method is None:
                default = "the method's (docs/DEFAULTS.md)"
            else:
                from .defaults import method_defaults

                default = f"{getattr(method_defaults(method), name)}, {method}'s"
        return f"{fd.metadata['help']} [default: {default}]"


_TOML_POSITION = re.compile(
    r"^(?P<problem>.*) \((?:at line (?P<line>\d+), column (?P<column>\d+)|"
    r"at end of document)\)$"
)
_TOML_ASSIGNMENT = re.compile(r"^\s*(?P<key>[A-Za-z0-9_.\"'-]+)\s*=\s*(?P<value>.*?)\s*$")


def _toml_syntax_error(path: str | Path, text: str, exc: Exception) -> str:
    """``exp.toml, line 3, column 15: Invalid value: aggregator = nnm+krum (text values need
    quotes: aggregator = "nnm+krum")``: tomllib's message with the file and the line's text."""
    match = _TOML_POSITION.match(str(exc))
    if match is None:
        return f"{path}: {exc}"
    problem = match["problem"]
    if match["line"] is None:
        return f"{path}, at the end: {problem}"
    number, column = int(match["line"]), match["column"]
    lines = text.splitlines()
    line = lines[number - 1].strip() if number <= len(lines) else ""
    message = f"{path}, line {number}, column {column}: {problem}"
    if line:
        message += f": {line}"
    assignment = _TOML_ASSIGNMENT.match(line)
    if assignment and re.match(r"[A-Za-z]", assignment["value"]):
        value = assignment["value"].split("#")[0].strip()
        if value.lower() not in ("true", "false", "inf", "nan"):
            message += f' (text values need quotes: {assignment["key"]} = "{value}")'
    return message


def _line_of(text: str, key: str, table: str | None) -> int | str:
    """The line number of ``key = ...`` in the TOML ``text`` (under ``[table]``, or before the
    first table when None), or ``?``."""
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[] ").split(".")[0].strip("\"'")
            continue
        match = _TOML_ASSIGNMENT.match(stripped)
        if match and current == table and match["key"].strip("\"'") == key:
            return number
    return "?"


#: The TOML types an option's value may have, by the option's annotated type.
_TOML_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "str": ((str,), 'a quoted text, e.g. "x"'),
    "bool": ((bool,), "true or false"),
    "dict[str, Any]": ((dict, str, list), 'a table or "name=value,..."'),
}


def _check_type(name: str, value: Any) -> None:
    """``KeyError`` for an unknown option, ``ValueError`` (``rounds = 'ten': expected an
    integer``) for a value whose TOML type the option cannot take."""
    annotation = {fd.name: str(fd.type) for fd in dataclasses.fields(ExperimentConfig)}[name]
    kind = annotation.split("|")[0].strip()
    if kind not in _TOML_TYPES:  # pragma: no cover - a new option's type: accept any
        return
    types, what = _TOML_TYPES[kind]
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ValueError(f"{name} = {value!r}: expected {what}")


def _split_items(text: str) -> list[str]:
    """Split ``text`` at the commas outside quotes and brackets (``a=1,b='x,y',c=(1, 2)``)."""
    items: list[str] = []
    current: list[str] = []
    quote, depth = "", 0
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return items


def parse_params(params: Any) -> dict[str, Any]:
    """Method hyperparameters from a dict, ``["a=1", "b=x"]`` or ``"a=1,b=x"`` (a comma inside
    quotes or brackets belongs to the value: ``server_attack='random:scale=2,seed=3'``).

    Values are read like spec values: Python literals, ``none`` for None, else strings.
    """
    if isinstance(params, Mapping):
        return {str(k).replace("-", "_"): v for k, v in params.items()}
    items = _split_items(params) if isinstance(params, str) else list(params)
    out: dict[str, Any] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected name=value")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out
