"""The engine benchmark's floor: a hand-written torch loop of each method's math.

The same data partitions, model init, node sampling and minibatch seeds as the engines, and
each method's math written out in torch: per-client autograd gradients one client after the
other, momentum, TopK error feedback, the two-point mu2-SGD correction, ByzSGD's replicas and
gathers, and the robust rules NNM, Krum, CWTM, CTMA and Median by hand (:data:`RULES`). From
the same seed it reaches the local engine's global model
(``tests/bench/test_engine_benchmark.py`` checks all five methods).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.datasets import client_data, load_dataset
from flwr_byz.simulations.models import build_model_for
from flwr_byz.simulations.runner import prepare
from flwr_byz.simulations.training import derive_seed, evaluate

__all__ = [
    "PLAIN",
    "RULES",
    "Plain",
    "PlainByzSGD",
    "PlainEF21",
    "PlainFedAvg",
    "PlainMu2",
    "ctma",
    "cwtm",
    "krum",
    "median",
    "nnm",
    "run_plain",
    "sq_distances",
    "top_k",
]

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
        self.model = build_model_for(cfg.model, self.dataset)
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
