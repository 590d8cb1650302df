"""Seconds per round of flwr-byz's engines against a plain torch loop of the same math.

For every model (MNIST-1D ``mlp`` and ``cnn1d``), client count (20, 100, 1,000) and method
(FedAvg; RobustFedAvg with NNM+Krum; Byz-EF21-SGDM with TopK 10 % and NNM+CWTM; mu2-SGD with
CTMA+Median; ByzSGD), a few rounds run on each engine, all in one process and one run:

* ``plain``: a hand-written torch loop of the same math (this file): per-client minibatch
  gradients with autograd one client after the other, the method's client and server steps
  and the robust rule written out; the same seeds, so it reaches the same model as the
  ``local`` engine (``tests/benchmarks/test_engine_benchmark.py`` checks it). The floor.
* ``batched`` (``batched-cuda`` with ``--device cpu,cuda``), ``local`` and ``simulation``:
  ``flwr_byz.simulations.engines.run_experiment(s)``.

Seconds per round are the engines' own ``RoundRecord.seconds`` (sampling, messaging, client
work, aggregation; not the central evaluation), averaged over the rounds after the first (it
carries one-time costs: the nodes' data loading, caches); the plain loop is timed the same way.
Every cell runs with ``--threads`` torch threads (default 1; the simulation engine's ClientApp
actors have one each, ``cores`` of them side by side). A cell whose estimated time (from the
same engine, method and model at fewer clients) exceeds ``--cell-budget-s`` is skipped with the
reason. Then the goal figure: ``--goal-clients`` x ``--goal-rounds`` of Byz-EF21-SGDM on the
batched engine. Results: JSON (``--out``, rewritten after every cell) and a text table
(``--txt``), printed too. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from flwr_byz.files import write_text
from flwr_byz.simulations import engines
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.datasets import client_data, load_dataset
from flwr_byz.simulations.models import build_model
from flwr_byz.simulations.result import Result
from flwr_byz.simulations.runner import _flower_logging, prepare
from flwr_byz.simulations.threads import available_cores
from flwr_byz.simulations.training import derive_seed, evaluate

DATASET = "mnist1d"
MODELS = ("mlp", "cnn1d")
CLIENTS = (20, 100, 1000)
QUICK_CLIENTS = (20,)
QUICK_MODELS = ("mlp",)
ENGINES = ("plain", "batched", "local", "simulation")

#: method key -> (label, ExperimentConfig fields). FedAvg-like methods train one local epoch
#: of batch 32; the one-step methods take one minibatch gradient of batch 8 per client and
#: round. The robust rules tolerate f = max(1, clients // 10) (no Byzantine client: the rules
#: still do all their work). ByzSGD's servers use CWTM: its paper's MDA enumerates C(n, f)
#: subsets, infeasible beyond 20 clients.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "fedavg": ("FedAvg", {"method": "fedavg", "local_epochs": 1, "batch_size": 32}),
    "robust-fedavg": (
        "RobustFedAvg NNM+Krum",
        {"method": "robust-fedavg", "aggregator": "nnm+krum", "local_epochs": 1, "batch_size": 32},
    ),
    "byz-ef21-sgdm": (
        "Byz-EF21-SGDM TopK NNM+CWTM",
        {
            "method": "byz-ef21-sgdm",
            "aggregator": "nnm+cwtm",
            "compressor": "topk:0.1",
            "batch_size": 8,
        },
    ),
    "mu2sgd": (
        "mu2-SGD CTMA+Median",
        {"method": "mu2sgd", "aggregator": "ctma+median", "batch_size": 8},
    ),
    "byzsgd": ("ByzSGD CWTM", {"method": "byzsgd", "aggregator": "cwtm", "batch_size": 8}),
}

#: Rounds per cell by engine and client count (``--rounds`` overrides them all).
ROUNDS: dict[str, dict[int, int]] = {
    "plain": {20: 6, 100: 4, 1000: 3},
    "batched": {20: 11, 100: 6, 1000: 4},
    "local": {20: 6, 100: 3, 1000: 2},
    "simulation": {20: 4, 100: 3, 1000: 2},
}
QUICK_ROUNDS = 3


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rounds_for(engine: str, clients: int, args: argparse.Namespace) -> int:
    """Rounds of a cell: ``--rounds``, else ``QUICK_ROUNDS`` with ``--quick``, else
    :data:`ROUNDS` (the entry of the nearest client count at or above ``clients``)."""
    if args.rounds:
        return int(args.rounds)
    if args.quick:
        return QUICK_ROUNDS
    table = ROUNDS[engine.split("-")[0]]
    for n in sorted(table):
        if clients <= n:
            return table[n]
    return table[max(table)]


def experiment(
    method: str, model: str, clients: int, rounds: int, threads: int, seed: int = 0
) -> ExperimentConfig:
    """The benchmark's experiment of ``method`` (no Byzantine client; f = clients // 10)."""
    return ExperimentConfig(
        dataset=DATASET,
        model=model,
        clients=clients,
        rounds=rounds,
        f=max(1, clients // 10),
        seed=seed,
        threads=threads,
        **METHODS[method][1],
    )


def steady(seconds: Sequence[float]) -> float:
    """Seconds per round: the mean over the rounds after the first (the only one if one)."""
    if not seconds:
        return math.nan
    return statistics.fmean(seconds[1:]) if len(seconds) > 1 else float(seconds[0])


# ============================================================================ the plain loop
# Robust rules, written out (Allouah et al. 2023 NNM; Yin et al. 2018 CWTM and Median;
# Blanchard et al. 2017 Krum; Dahan & Levy 2024 CTMA). Ties by the smaller index.


def sq_distances(x: torch.Tensor) -> torch.Tensor:
    """``||x_i - x_j||^2`` ``[n, n]`` from the Gram matrix."""
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    return d2.fill_diagonal_(0.0)


def nnm(x: torch.Tensor, f: int) -> torch.Tensor:
    """Each row replaced by the mean of its n - f nearest rows (itself included)."""
    n = x.shape[0]
    nearest = torch.sort(sq_distances(x), dim=1, stable=True).indices[:, : n - f]
    mix = torch.zeros(n, n, dtype=x.dtype).scatter_(1, nearest, 1.0 / (n - f))
    return mix @ x


def cwtm(x: torch.Tensor, f: int) -> torch.Tensor:
    """Coordinate-wise mean without the f smallest and f largest values."""
    return torch.sort(x, dim=0).values[f : x.shape[0] - f].mean(dim=0)


def median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (even n: the mean of the two middle values)."""
    s, n = torch.sort(x, dim=0).values, x.shape[0]
    return s[n // 2].clone() if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def krum(x: torch.Tensor, f: int) -> torch.Tensor:
    """The row whose n - f - 2 nearest other rows are closest (sum of squared distances)."""
    n = x.shape[0]
    d2 = sq_distances(x).fill_diagonal_(math.inf)
    m = min(max(n - f - 2, 1), n - 1)
    scores = torch.sort(d2, dim=1).values[:, :m].sum(dim=1)
    return x[int(scores.argmin())].clone()


def ctma(x: torch.Tensor, f: int) -> torch.Tensor:
    """The mean of the n - f rows closest to the coordinate-wise median."""
    d2 = ((x - median(x)) ** 2).sum(dim=1)
    return x[torch.sort(d2, stable=True).indices[: x.shape[0] - f]].mean(dim=0)


RULES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "nnm+krum": lambda x, f: krum(nnm(x, f), f),
    "nnm+cwtm": lambda x, f: cwtm(nnm(x, f), f),
    "ctma+median": ctma,
    "cwtm": cwtm,
}


def top_k(u: torch.Tensor, k: int) -> torch.Tensor:
    """TopK: ``u`` on its k largest magnitudes, 0 elsewhere."""
    idx = torch.topk(u.abs(), k, sorted=False).indices
    out = torch.zeros_like(u)
    out[idx] = u[idx]
    return out


class Plain:
    """The plain loop of one experiment: the data, model and seeds of the engines, the
    method's math in ``step``. ``x`` is the global model as one vector (the parameters in
    state-dict order)."""

    def __init__(self, config: ExperimentConfig) -> None:
        cfg = prepare(config)
        self.cfg = cfg
        self.n, self.k = cfg.clients, cfg.per_round
        self.f = int(cfg.f or 0)
        self.lr = float(cfg.lr)
        self.dataset = load_dataset(cfg.dataset)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.model = build_model(cfg.model, self.dataset.input_shape, self.dataset.num_classes)
        self.params = list(self.model.parameters())
        self.x = parameters_to_vector(self.params).detach().clone()
        self.d = self.x.numel()
        self.data = [
            client_data(cfg.dataset, cfg.partition, i, self.n, cfg.seed) for i in range(self.n)
        ]
        self.rng = random.Random(cfg.seed)  # the method strategies' sampler and seeds
        self.rule = RULES.get(cfg.aggregator)

    def aggregate(self, rows: torch.Tensor) -> torch.Tensor:
        assert self.rule is not None
        return self.rule(rows, self.f)

    def batch(self, i: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client i's minibatch: ``batch_size`` samples without replacement from ``seed``."""
        x, y = self.data[i]
        size = self.cfg.batch_size
        if size >= len(y):
            return x, y
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:size]
        return x[idx], y[idx]

    def grad(self, point: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The gradient of the mean cross-entropy at ``point`` on the batch (a vector)."""
        vector_to_parameters(point, self.params)
        for p in self.params:
            p.grad = None
        F.cross_entropy(self.model(xb), yb).backward()
        return torch.cat([p.grad.reshape(-1) for p in self.params])  # type: ignore[union-attr]

    def sample(self) -> list[int]:
        """The round's clients (all of them, in the order the strategy draws them)."""
        return self.rng.sample(range(self.n), self.k)

    def step(self, server_round: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self) -> tuple[float, float]:
        vector_to_parameters(self.x.clone(), self.params)
        return evaluate(self.model, self.dataset.x_test, self.dataset.y_test)


class PlainFedAvg(Plain):
    """FedAvg: every client runs ``local_epochs`` of momentum SGD from x (a fresh optimizer
    per round, its own shuffling seed); the server takes the sample-count weighted mean
    (RobustFedAvg: x + RAgg(x_i - x))."""

    def local(self, i: int, server_round: int) -> torch.Tensor:
        cfg = self.cfg
        vector_to_parameters(self.x.clone(), self.params)
        opt = torch.optim.SGD(self.params, lr=self.lr, momentum=cfg.momentum)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, server_round, i))
        x, y = self.data[i]
        for _ in range(cfg.local_epochs):
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(y), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = F.cross_entropy(self.model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return parameters_to_vector(self.params).detach().clone()

    def step(self, server_round: int) -> None:
        models = torch.stack([self.local(i, server_round) for i in range(self.n)])
        if self.rule is None:  # FedAvg
            counts = torch.tensor([float(len(y)) for _, y in self.data])
            self.x = (counts / counts.sum()) @ models
        else:
            self.x = self.x + self.aggregate(models - self.x)


class PlainEF21(Plain):
    """Byz-EF21-SGDM (Liu et al. 2024, Alg. 1): s_i minibatch gradient; v_i = (1 - eta) v_i +
    eta s_i; c_i = TopK(v_i - g_i), g_i += c_i (first round: g_i = v_i = s_i, sent dense);
    x -= lr RAgg(g). The server's copy of g_i equals the client's: one array here."""

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        eta = 1.0 - self.cfg.momentum
        self.beta = 1.0 - eta
        self.v = torch.zeros(self.n, self.d)
        self.g = torch.zeros(self.n, self.d)
        self.started = torch.zeros(self.n, dtype=torch.bool)
        self.top = min(max(round(0.1 * self.d), 1), self.d)

    def step(self, server_round: int) -> None:
        nodes = self.sample()
        seeds = [self.rng.getrandbits(31) for _ in nodes]
        for _ in nodes:
            self.rng.getrandbits(31)  # the compressor seeds (TopK needs none)
        for i, seed in zip(nodes, seeds, strict=True):
            s = self.grad(self.x, *self.batch(i, seed))
            if self.started[i]:
                self.v[i] = self.beta * self.v[i] + (1.0 - self.beta) * s
                self.g[i] = self.g[i] + top_k(self.v[i] - self.g[i], self.top)
            else:
                self.v[i] = s
                self.g[i] = s
                self.started[i] = True
        self.x = self.x - self.lr * self.aggregate(self.g[self.started])


class PlainMu2(Plain):
    """mu2-SGD (Dahan & Levy 2024): d_i = grad f(x_t; z) + (1 - beta_t)(d_i - grad f(x_prev;
    z)), beta_t = 1/t (first call: the gradient); w -= lr Agg(d); x = (1 - gamma) x + gamma w,
    gamma = 2/(t + 2)."""

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.w = self.x.clone()
        self.t = 0
        self.dv = torch.zeros(self.n, self.d)
        self.xp = torch.zeros(self.n, self.d)
        self.started = torch.zeros(self.n, dtype=torch.bool)

    def step(self, server_round: int) -> None:
        self.t += 1
        beta = 1.0 / self.t
        nodes = self.sample()
        seeds = [self.rng.getrandbits(31) for _ in nodes]
        for i, seed in zip(nodes, seeds, strict=True):
            xb, yb = self.batch(i, seed)
            d = self.grad(self.x, xb, yb)
            if self.started[i]:
                d = d + (1.0 - beta) * (self.dv[i] - self.grad(self.xp[i].clone(), xb, yb))
            self.dv[i], self.xp[i], self.started[i] = d, self.x, True
        d_hat = self.aggregate(self.dv[sorted(nodes)])
        gamma = 2.0 / (self.t + 2)
        self.w = self.w - self.lr * d_hat
        self.x = (1.0 - gamma) * self.x + gamma * self.w


class PlainByzSGD(Plain):
    """ByzSGD (El-Mhamdi et al. 2020), 5 server replicas of which the last is Byzantine (it
    behaves honestly here), median rule: each worker takes the median of the first 4 models to
    reach it (the Byzantine one first, the honest ones in a random order) and sends its
    gradient there; each replica steps with RAgg over a random quorum of n - f gradients;
    every T steps the honest replicas take the median of 4 models (gather); the global model
    is the median of all 5."""

    servers, byzantine_servers = 5, 1

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.replicas = self.x.unsqueeze(0).repeat(self.servers, 1)
        self.t = 0
        given = self.cfg.params.get("gather_period")
        self.period = int(given) if given else max(1, math.floor(1.0 / (3.0 * self.lr)))  # l = 1

    def arrivals(self, exclude: int | None = None) -> list[int]:
        honest = [s for s in range(self.servers - self.byzantine_servers) if s != exclude]
        self.rng.shuffle(honest)
        return [s for s in range(self.servers - self.byzantine_servers, self.servers)] + honest

    def step(self, server_round: int) -> None:
        self.t += 1
        q = self.servers - self.byzantine_servers
        nodes = self.sample()
        grads = torch.zeros(self.n, self.d)
        for i in nodes:
            pulled = self.arrivals()[:q]
            seed = self.rng.getrandbits(31)
            grads[i] = self.grad(median(self.replicas[pulled]), *self.batch(i, seed))
        grads = grads[sorted(nodes)]
        m = grads.shape[0]
        quorum = min(m, max(m - self.f, 1))
        for s in range(self.servers):
            rows = sorted(self.rng.sample(range(m), quorum)) if quorum < m else list(range(m))
            self.replicas[s] = self.replicas[s] - self.lr * self.aggregate(grads[rows])
        if self.t % self.period == 0:  # gather
            new = self.replicas.clone()
            for s in range(q):
                others = [o for o in self.arrivals(exclude=s)][: q - 1]
                new[s] = median(self.replicas[[s, *others]])
            new[q:] = median(new[:q])
            self.replicas = new
        self.x = median(self.replicas[self.arrivals()])


PLAIN: dict[str, type[Plain]] = {
    "fedavg": PlainFedAvg,
    "robust-fedavg": PlainFedAvg,
    "byz-ef21-sgdm": PlainEF21,
    "mu2sgd": PlainMu2,
    "byzsgd": PlainByzSGD,
}


def run_plain(cfg: ExperimentConfig) -> tuple[list[float], Plain]:
    """Run ``cfg`` on the plain loop: (seconds of each round, the loop)."""
    loop = PLAIN[cfg.method](cfg)
    seconds = []
    for server_round in range(1, cfg.rounds + 1):
        clock = time.perf_counter()
        loop.step(server_round)
        seconds.append(time.perf_counter() - clock)
    return seconds, loop


# ================================================================================= the runs
def machine_info(devices: Sequence[str]) -> dict[str, Any]:
    """CPUs, memory, versions and load of this machine."""

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cores_available": available_cores(),
        "mem_mib": mem,
        "torch": torch.__version__,
        "flwr": version("flwr"),
        "ray": version("ray"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "devices": list(devices),
    }
    return info


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


class Bench:
    """Runs the cells, keeps the JSON document and the measured rates for the estimates."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.doc: dict[str, Any] = {
            "machine": machine_info(args.devices),
            "config": {
                "dataset": DATASET,
                "threads": args.threads,
                "cell_budget_s": args.cell_budget_s,
                "seed": args.seed,
                "methods": {k: {"label": METHODS[k][0], **METHODS[k][1]} for k in args.methods},
                "f": "max(1, clients // 10), no Byzantine client",
                "seconds_per_round": "mean of RoundRecord.seconds over the rounds after the "
                "first (plain loop: the same span, timed here)",
            },
            "cells": [],
            "ratios": [],
            "goal": None,
        }
        self.rates: dict[tuple[str, str, str], tuple[int, float]] = {}
        self.started = time.perf_counter()

    # --- bookkeeping ----------------------------------------------------------------------
    def save(self) -> None:
        self.doc["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.doc["machine"]["loadavg_end"] = (
            list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        )
        write_text(Path(self.args.out), json.dumps(self.doc, indent=1) + "\n")  # atomic

    def estimate(
        self, engine: str, method: str, model: str, clients: int, rounds: int
    ) -> str | None:
        """Why the cell is skipped (its estimated time exceeds the budget), or None."""
        known = self.rates.get((engine, method, model))
        if known is None:
            return None
        n0, per_round = known
        est = per_round * clients / n0 * rounds
        if est <= self.args.cell_budget_s:
            return None
        return (
            f"skipped: estimated {est:.0f} s > cell budget {self.args.cell_budget_s:.0f} s "
            f"({per_round:.3g} s/round at {n0} clients, x {clients / n0:g} clients, "
            f"{rounds} rounds)"
        )

    def cell(
        self, engine: str, method: str, model: str, clients: int, rounds: int
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "engine": engine,
            "method": method,
            "label": METHODS[method][0],
            "model": model,
            "clients": clients,
            "rounds": rounds,
            "s_per_round": None,
            "round_seconds": [],
            "wall_s": None,
            "final_loss": None,
            "final_accuracy": None,
            "threads": None,
            "skipped": None,
        }
        self.doc["cells"].append(entry)
        return entry

    def record(
        self,
        entry: dict[str, Any],
        seconds: Sequence[float],
        wall: float,
        loss: float,
        acc: float,
        threads: Any,
    ) -> None:
        entry.update(
            s_per_round=steady(seconds),
            round_seconds=[round(s, 5) for s in seconds],
            wall_s=round(wall, 2),
            final_loss=loss if math.isfinite(loss) else None,
            final_accuracy=acc if math.isfinite(acc) else None,
            threads=threads,
        )
        key = (entry["engine"], entry["method"], entry["model"])
        self.rates[key] = (entry["clients"], entry["s_per_round"])
        _log(
            f"  {entry['engine']:<12} {entry['label']:<28} {entry['s_per_round']:.4f} s/round "
            f"({len(seconds)} rounds, {wall:.1f} s)"
        )
        self.save()

    def skip(self, entry: dict[str, Any], reason: str) -> None:
        entry["skipped"] = reason
        _log(f"  {entry['engine']:<12} {entry['label']:<28} {reason}")
        self.save()

    # --- engines --------------------------------------------------------------------------
    def run_plain(self, method: str, model: str, clients: int) -> None:
        rounds = rounds_for("plain", clients, self.args)
        entry = self.cell("plain", method, model, clients, rounds)
        reason = self.estimate("plain", method, model, clients, rounds)
        if reason:
            return self.skip(entry, reason)
        cfg = experiment(method, model, clients, rounds, self.args.threads, self.args.seed)
        try:
            start = time.perf_counter()
            seconds, loop = run_plain(cfg)
            wall = time.perf_counter() - start
            loss, acc = loop.evaluate()
        except Exception as exc:  # a failing cell is recorded, the others still run
            return self.skip(entry, f"error: {describe_error(exc)}")
        self.record(entry, seconds, wall, loss, acc, torch.get_num_threads())

    def run_engine(self, engine: str, method: str, model: str, clients: int) -> None:
        """``batched`` / ``batched-cuda`` / ``local``: one ``run_experiment`` per cell."""
        base, _, device = engine.partition("-")
        rounds = rounds_for(engine, clients, self.args)
        entry = self.cell(engine, method, model, clients, rounds)
        if base not in engines.ENGINES:
            return self.skip(
                entry, f"skipped: engine {base!r} is not available ({engines.ENGINES})"
            )
        cfg = experiment(method, model, clients, rounds, self.args.threads, self.args.seed)
        if device:
            if "device" not in {f.name for f in dataclasses.fields(ExperimentConfig)}:
                return self.skip(entry, "skipped: ExperimentConfig has no 'device' option")
            if device.startswith("cuda") and not torch.cuda.is_available():
                return self.skip(entry, "skipped: CUDA is not available")
            cfg = dataclasses.replace(cfg, device=device)
        reason = self.estimate(engine, method, model, clients, rounds)
        if reason:
            return self.skip(entry, reason)
        try:
            start = time.perf_counter()
            with _flower_logging(False, logging.ERROR):
                result = engines.run_experiment(cfg, engine=base)
            wall = time.perf_counter() - start
        except Exception as exc:
            return self.skip(entry, f"error: {describe_error(exc)}")
        self._record_result(entry, result, wall)

    def _record_result(self, entry: dict[str, Any], result: Result, wall: float) -> None:
        seconds = [r.seconds for r in result.rounds]
        self.record(
            entry,
            seconds,
            wall,
            result.final.get("loss", math.nan),
            result.accuracy,
            result.config.get("threads"),
        )

    def run_simulation(self, methods: Sequence[str], model: str, clients: int) -> None:
        """The ``simulation`` cells of one model and client count: one Flower simulation (Ray
        starts once) for every method that fits the budget."""
        rounds = rounds_for("simulation", clients, self.args)
        todo: list[tuple[dict[str, Any], ExperimentConfig]] = []
        for method in methods:
            entry = self.cell("simulation", method, model, clients, rounds)
            reason = self.estimate("simulation", method, model, clients, rounds)
            if reason:
                self.skip(entry, reason)
                continue
            cfg = experiment(method, model, clients, rounds, self.args.threads, self.args.seed)
            todo.append((entry, cfg))
        if not todo:
            return
        try:
            start = time.perf_counter()
            with _flower_logging(False, logging.ERROR):
                results = engines.run_experiments([c for _, c in todo], engine="simulation")
            wall = time.perf_counter() - start
        except Exception as exc:
            for entry, _ in todo:
                self.skip(entry, f"error: {describe_error(exc)}")
            return
        for (entry, _), result in zip(todo, results, strict=True):
            entry["simulation_wall_s"] = round(wall, 2)  # Ray's start and every method
            entry["client_threads"] = result.config.get("client_threads")
            self._record_result(entry, result, wall / len(todo))

    # --- the grid and the goal ------------------------------------------------------------
    def grid(self) -> None:
        args = self.args
        for model in args.models:
            for clients in args.clients:
                _log(f"[{DATASET} {model}, {clients} clients]")
                for engine in args.engine_list:
                    if engine == "simulation":
                        self.run_simulation(args.methods, model, clients)
                        continue
                    for method in args.methods:
                        if engine == "plain":
                            self.run_plain(method, model, clients)
                        else:
                            self.run_engine(engine, method, model, clients)
                        gc.collect()
                self.doc["ratios"] = ratios(self.doc["cells"])
                self.save()

    def goal(self) -> None:
        """``goal_clients`` x ``goal_rounds`` of Byz-EF21-SGDM on the batched engine."""
        args = self.args
        goals: list[dict[str, Any]] = []
        self.doc["goal"] = goals
        for model in args.goal_models:
            cfg = experiment(
                "byz-ef21-sgdm",
                model,
                args.goal_clients,
                args.goal_rounds,
                args.goal_threads,
                args.seed,
            )
            device = args.devices[-1]
            entry: dict[str, Any] = {
                "method": "byz-ef21-sgdm",
                "model": model,
                "clients": args.goal_clients,
                "rounds": args.goal_rounds,
                "engine": "batched",
                "device": device,
                "target_s": 60.0,
                "skipped": None,
            }
            goals.append(entry)
            _log(
                f"[goal: {args.goal_clients} clients x {args.goal_rounds} rounds, "
                f"{model}, {device}]"
            )
            if "batched" not in engines.ENGINES:
                entry["skipped"] = f"skipped: engine 'batched' is not available ({engines.ENGINES})"
                continue
            if device != "cpu":
                if device.startswith("cuda") and not torch.cuda.is_available():
                    entry["skipped"] = "skipped: CUDA is not available"
                    continue
                cfg = dataclasses.replace(cfg, device=device)
            try:
                start = time.perf_counter()
                with _flower_logging(False, logging.ERROR):
                    result = engines.run_experiment(cfg, engine="batched")
                wall = time.perf_counter() - start
            except Exception as exc:
                entry["skipped"] = f"error: {describe_error(exc)}"
                _log(f"  {entry['skipped']}")
                continue
            train = sum(r.seconds for r in result.rounds)
            entry.update(
                wall_s=round(wall, 2),
                train_s=round(train, 2),
                s_per_round=steady([r.seconds for r in result.rounds]),
                final_accuracy=result.accuracy,
                threads=result.config.get("threads"),
                met=wall < 60.0,
            )
            _log(f"  wall {wall:.1f} s (rounds {train:.1f} s), accuracy {result.accuracy:.3f}")
            self.save()


def ratios(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, clients, method): each engine's s/round, ``x_local`` = local / engine
    (speed-up over the local engine) and ``x_plain`` = engine / plain (times the floor)."""
    by_key: dict[tuple[str, int, str], dict[str, float]] = {}
    for c in cells:
        if c["s_per_round"] is None:
            continue
        by_key.setdefault((c["model"], c["clients"], c["method"]), {})[c["engine"]] = c[
            "s_per_round"
        ]
    out = []
    for (model, clients, method), secs in by_key.items():
        local, plain = secs.get("local"), secs.get("plain")
        row: dict[str, Any] = {
            "model": model,
            "clients": clients,
            "method": method,
            "s_per_round": dict(secs),
            "x_local": {e: local / s for e, s in secs.items() if local and s > 0},
            "x_plain": {e: s / plain for e, s in secs.items() if plain},
        }
        out.append(row)
    return out


# ================================================================================= the table
def _num(v: float | None, width: int = 8) -> str:
    if v is None or not math.isfinite(v):
        return "-".rjust(width)
    if v >= 100:
        return f"{v:.0f}".rjust(width)
    if v >= 1:
        return f"{v:.2f}".rjust(width)
    return f"{v:.3g}".rjust(width)


def table(doc: dict[str, Any]) -> str:
    """The text table of ``doc``: s/round per engine, then x local and x plain."""
    engine_cols = [e for e in ("plain", *doc["config"].get("engines", ENGINES))]
    engine_cols = list(dict.fromkeys(engine_cols))
    present = {c["engine"] for c in doc["cells"]}
    engine_cols = [e for e in engine_cols if e in present]
    faster = [e for e in engine_cols if e not in ("local", "plain")]
    head = ["model", "n", "method"] + [f"{e} s" for e in engine_cols]
    head += [f"local/{e}" for e in faster] + [f"{e}/plain" for e in engine_cols if e != "plain"]
    lines = [
        "Seconds per round (mean of the rounds after the first; "
        f"{doc['config']['threads']} torch thread(s) per process); local/X: X's speed-up over "
        "the local engine; X/plain: X's time over the plain torch loop's.",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in doc["ratios"]:
        secs = r["s_per_round"]
        row = [r["model"], str(r["clients"]), METHODS.get(r["method"], (r["method"],))[0]]
        row += [_num(secs.get(e)).strip() for e in engine_cols]
        row += [_num(r["x_local"].get(e)).strip() for e in faster]
        row += [_num(r["x_plain"].get(e)).strip() for e in engine_cols if e != "plain"]
        lines.append("| " + " | ".join(row) + " |")
    skipped = [c for c in doc["cells"] if c["skipped"]]
    if skipped:
        lines.append("")
        lines.append("Skipped cells:")
        for c in skipped:
            lines.append(
                f"- {c['model']} {c['clients']} {c['method']} {c['engine']}: {c['skipped']}"
            )
    for g in doc.get("goal") or []:
        lines.append("")
        what = (
            f"Goal: {g['clients']} clients x {g['rounds']} rounds of Byz-EF21-SGDM, MNIST-1D "
            f"{g['model']}, batched engine on {g['device']}"
        )
        if g.get("skipped"):
            lines.append(f"{what}: {g['skipped']}")
        else:
            lines.append(
                f"{what}: {g['wall_s']:.1f} s wall ({g['train_s']:.1f} s in rounds, "
                f"{g['threads']} thread(s)), target < {g['target_s']:.0f} s: "
                f"{'met' if g['met'] else 'not met'}; final accuracy {g['final_accuracy']:.3f}"
            )
    m = doc["machine"]
    lines.append("")
    lines.append(
        f"Machine: {m['cores_available']} cores, torch {m['torch']}, flwr {m['flwr']}, load "
        f"{m['loadavg_start']} -> {m.get('loadavg_end')}; elapsed {doc.get('elapsed_s')} s."
    )
    return "\n".join(lines) + "\n"


# ================================================================================== main
def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="MLP, 20 clients, 3 rounds; goal 10 rounds")
    p.add_argument("--out", default="benchmarks/results/engines.json", help="JSON output")
    p.add_argument("--txt", help="text table output (default: --out with .txt)")
    p.add_argument("--models", help=f"comma list of {','.join(MODELS)}")
    p.add_argument("--clients", help="comma list of client counts (default 20,100,1000)")
    p.add_argument("--methods", help=f"comma list of {','.join(METHODS)} (default all)")
    p.add_argument(
        "--engines", default=",".join(ENGINES), help="comma list of plain,batched,local,simulation"
    )
    p.add_argument(
        "--device", default="cpu", help="batched engine device(s): cpu, cuda or cpu,cuda"
    )
    p.add_argument("--rounds", type=int, help="rounds of every cell (default: per engine and size)")
    p.add_argument(
        "--cell-budget-s", type=float, default=180.0, help="skip a cell estimated longer"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of every cell (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-goal", dest="goal", action="store_false", help="skip the goal figure")
    p.add_argument("--goal-clients", type=int, default=1000)
    p.add_argument("--goal-rounds", type=int, help="default 100 (10 with --quick)")
    p.add_argument("--goal-models", default="mlp", help="comma list (default mlp)")
    p.add_argument("--goal-threads", type=int, default=0, help="0: auto (the cores)")
    args = p.parse_args(argv)
    args.models = _csv(args.models) if args.models else list(QUICK_MODELS if args.quick else MODELS)
    args.clients = (
        [int(c) for c in _csv(args.clients)]
        if args.clients
        else list(QUICK_CLIENTS if args.quick else CLIENTS)
    )
    args.methods = _csv(args.methods) if args.methods else list(METHODS)
    args.goal_models = _csv(args.goal_models)
    args.devices = _csv(args.device)
    args.goal_rounds = args.goal_rounds or (10 if args.quick else 100)
    unknown = sorted(set(args.methods) - set(METHODS)) + sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown method(s)/model(s) {unknown}")
    engine_list = []
    for e in _csv(args.engines):
        if e not in ENGINES:
            p.error(f"unknown engine {e!r}; known: {list(ENGINES)}")
        if e == "batched":
            engine_list += ["batched" if d == "cpu" else f"batched-{d}" for d in args.devices]
        else:
            engine_list.append(e)
    args.engine_list = engine_list
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; write the JSON and the table, print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # the plain loop's; the engines set their own
    bench = Bench(args)
    bench.doc["config"]["engines"] = args.engine_list
    bench.grid()
    bench.doc["ratios"] = ratios(bench.doc["cells"])
    if args.goal:
        bench.goal()
    bench.save()
    text = table(bench.doc)
    txt = Path(args.txt) if args.txt else Path(args.out).with_suffix(".txt")
    write_text(txt, text)
    print(text)
    print(f"wrote {args.out} and {txt} in {bench.doc['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
