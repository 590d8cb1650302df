"""Method name -> Flower strategy, built from a resolved ExperimentConfig.

Every strategy samples ``clients_per_round`` of the ``clients`` nodes per round and does no
federated evaluation (the runner evaluates the global model centrally on the test split).
FedAvg-like methods (fedavg, robust-fedavg, fltrust, flower-*) train locally for ``local_epochs``;
the method strategies (robust-momentum, byz-vr-marina-pp, byz-ef21-sgdm, byz-ef21, br-csgd,
mu2sgd, byzsgd) take server steps of size ``lr`` from the clients' ops (``GradientClient``). For
byz-ef21-sgdm, ``momentum`` is beta = 1 - eta (``--param eta=...`` sets eta directly).
fltrust (``strategies.FLTrust``) trains locally too, and the server trains the model it sends
on a root data set of ``root_size`` training examples (``--param root_size=100``, the paper's
default; ``simulations.root``) with the same options. ``config.params`` are passed to the
strategy's constructor by name, after the defaults below, so any of its arguments can be
overridden (``--param weighted=true``); the method's own ones (``RUN_PARAMS``: root_size) are
read by the runner instead. Each method's run
defaults (aggregator, lr, batch size, ...: ``METHOD_DEFAULTS``) live next to its algorithm in
``flwr_byz.methods`` and are filled in by ``ExperimentConfig.resolved()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from ..specs import unknown
from ..strategies import (
    BRCSGD,
    ByzEF21,
    ByzEF21SGDM,
    ByzSGD,
    ByzVRMarinaPP,
    FLTrust,
    MethodStrategy,
    Mu2SGD,
    RobustFedAvg,
    RobustMomentum,
)
from .config import METHOD_OPTIONS, ExperimentConfig
from .defaults import METHOD_DEFAULTS
from .root import ROOT_SIZE, root_trainer

__all__ = [
    "COMPRESSED_METHODS",
    "METHODS",
    "METHOD_DEFAULTS",
    "RUN_PARAMS",
    "build_strategy",
    "uses_aggregator",
]


def _fedavg_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    return {
        "fraction_train": cfg.per_round / cfg.clients,
        "min_train_nodes": cfg.per_round,
        "min_available_nodes": cfg.clients,
        "fraction_evaluate": 0.0,
        "min_evaluate_nodes": 0,
    }


def _robust_fedavg(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"aggregator": cfg.aggregator, "f": cfg.f}


def _malicious(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"num_malicious_nodes": cfg.f}


def _multikrum(cfg: ExperimentConfig) -> dict[str, Any]:
    return {"num_malicious_nodes": cfg.f, "num_nodes_to_select": cfg.per_round - (cfg.f or 0)}


def _trimmed(cfg: ExperimentConfig) -> dict[str, Any]:
    # Flower trims a fraction beta from each end: trim the expected Byzantine share.
    return {"beta": min(0.49, (cfg.f or 0) / cfg.per_round)}


def _method(cfg: ExperimentConfig) -> dict[str, Any]:
    """The arguments every method strategy (``MethodStrategy``) takes."""
    return {
        "aggregator": cfg.aggregator,
        "f": cfg.f,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "clients_per_round": cfg.per_round,
        "min_available_nodes": cfg.clients,
        "seed": cfg.seed,
    }


def _marina(cfg: ExperimentConfig) -> dict[str, Any]:
    # Full rounds sample every client: the rule there faces all the Byzantine clients.
    return _method(cfg) | {"compressor": cfg.compressor, "f_full": cfg.byzantine}


def _momentum(cfg: ExperimentConfig) -> dict[str, Any]:
    return _method(cfg) | {"momentum": cfg.momentum}


def _compressed(cfg: ExperimentConfig) -> dict[str, Any]:
    return _method(cfg) | {"compressor": cfg.compressor}


def _byzsgd(cfg: ExperimentConfig) -> dict[str, Any]:
    # ``--aggregator`` is the servers' rule over the workers' gradients (the paper: mda).
    kwargs = _method(cfg)
    return kwargs | {"worker_aggregator": kwargs.pop("aggregator")}


def _ef21_sgdm(cfg: ExperimentConfig) -> dict[str, Any]:
    # --momentum is the weight of the old momentum (beta); the paper's eta is 1 - beta.
    return _compressed(cfg) | {"eta": 1.0 - cfg.momentum}


def _fltrust(cfg: ExperimentConfig) -> dict[str, Any]:
    # the root data set: --param root_size (RUN_PARAMS), drawn and trained on in simulations.root
    return {"root_train_fn": root_trainer(cfg, cfg.params.get("root_size", ROOT_SIZE))}


#: name -> (strategy class, extra constructor defaults from the config)
METHODS: dict[str, tuple[type[Strategy], Callable[[ExperimentConfig], dict[str, Any]]]] = {
    "fedavg": (FedAvg, lambda cfg: {}),
    "robust-fedavg": (RobustFedAvg, _robust_fedavg),
    "fltrust": (FLTrust, _fltrust),
    "robust-momentum": (RobustMomentum, _momentum),
    "byz-vr-marina-pp": (ByzVRMarinaPP, _marina),
    "byz-ef21-sgdm": (ByzEF21SGDM, _ef21_sgdm),
    "byz-ef21": (ByzEF21, _compressed),
    "br-csgd": (BRCSGD, _compressed),
    "mu2sgd": (Mu2SGD, _method),
    "byzsgd": (ByzSGD, _byzsgd),
    "flower-krum": (Krum, _malicious),
    "flower-multikrum": (MultiKrum, _multikrum),
    "flower-bulyan": (Bulyan, _malicious),
    "flower-median": (FedMedian, lambda cfg: {}),
    "flower-trimmedavg": (FedTrimmedAvg, _trimmed),
}

#: The ``config.params`` a method's builder reads itself (not its strategy's arguments).
RUN_PARAMS: dict[str, tuple[str, ...]] = {"fltrust": ("root_size",)}

#: Methods whose strategy takes a ``compressor``.
COMPRESSED_METHODS = ("byz-vr-marina-pp", "byz-ef21-sgdm", "byz-ef21", "br-csgd")


def uses_aggregator(method: str) -> bool:
    """Whether the method takes the ``aggregator`` option (Flower's built-ins and FLTrust fix
    their own)."""
    return method not in ("fedavg", "fltrust") and not method.startswith("flower-")


def check_method(method: str) -> None:
    """Raise ``ValueError`` for an unknown method."""
    if method in METHODS:
        return
    raise unknown("method", method, list(METHODS))


def build_strategy(cfg: ExperimentConfig) -> Strategy:
    """The strategy of ``cfg.method`` (``cfg`` resolved: ``f`` and ``clients_per_round`` set;
    method-dependent options left unset are resolved here)."""
    check_method(cfg.method)
    if any(getattr(cfg, name) is None for name in METHOD_OPTIONS):
        cfg = cfg.resolved()
    cls, extra = METHODS[cfg.method]
    base = {} if issubclass(cls, MethodStrategy) else _fedavg_kwargs(cfg)
    own = RUN_PARAMS.get(cfg.method, ())
    params = {k: v for k, v in cfg.params.items() if k not in own}
    kwargs = {**base, **extra(cfg), **params}
    accepted = set(inspect.signature(cls.__init__).parameters)
    if "kwargs" in accepted:  # RobustFedAvg, FLTrust: the other arguments are Flower FedAvg's
        accepted = (accepted - {"kwargs"}) | set(inspect.signature(FedAvg.__init__).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"{cfg.method} ({cls.__name__}) has no parameter(s) {unknown}; it takes "
            f"{sorted((accepted - {'self', 'args'}) | set(own))}"
        )
    factory: Callable[..., Strategy] = cls
    return factory(**kwargs)
