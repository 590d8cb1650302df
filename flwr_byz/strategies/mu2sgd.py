"""mu2-SGD (Dahan & Levy 2024, "Fault Tolerant ML: Efficient Meta-Aggregation and Synchronous
Training", arXiv 2405.14759; ALGORITHMS.md 4.3): double momentum, i.e. STORM-style corrected
momentum on the clients and AnyTime averaging on the server, with a robust aggregator.

Per round t = 1, 2, ... (alpha_t = t, beta_t = 1/t, gamma_t = alpha_t / alpha_{1:t} = 2/(t+1)):

    server:   sends the query point x_t (the AnyTime average of the w's; x_1 = w_1 = x^0)
    client i: one fresh minibatch z:  d_i = grad f(x_t; z) + (1 - beta_t)(d_i - grad f(x_prev; z))
              (op ``double``; d_i and x_prev, its previous point, in ``context.state``;
              d_i = grad f(x_t; z) on its first call)
    server:   d_hat = Agg(d_1..d_m);  w_{t+1} = w_t - eta d_hat   (eta alpha_t with ``alpha_lr``)
              x_{t+1} = (1 - gamma_{t+1}) x_t + gamma_{t+1} w_{t+1}

So x_t = sum_{s<=t} alpha_s w_s / alpha_{1:t} at every t. The reference code
(dahan198/synchronous-fault-tolerant-ml, read, not copied) differs in two details: it floors
beta_t and gamma_t at 0.01 (``floor=0.01`` here) and, counting its steps from 1 after the
first update, gives w_1 weight 0 (gamma = 1 at its first step); this module follows the paper's
weights. A client that misses rounds corrects from its own previous point, so the recursion
stays consistent under partial participation.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from ..aggregators import Aggregator
from .method import POINT_KEY, VECTOR_KEY, MethodStrategy

__all__ = ["Mu2SGD", "anytime_weight"]


def anytime_weight(t: int, floor: float = 0.0) -> float:
    """gamma_t = alpha_t / alpha_{1:t} = 2 / (t + 1) for alpha_t = t (at least ``floor``)."""
    return max(2.0 / (t + 1), floor)


class Mu2SGD(MethodStrategy):
    """mu2-SGD (module doc) as a Flower strategy.

    Parameters
    ----------
    aggregator : Aggregator | str (default: "ctma+median")
        Agg of the clients' corrected momenta (the paper: CTMA over Median / TrimmedMean /
        GeoMed).
    f : int | None (default: None)
        Byzantine inputs per round the rule tolerates.
    lr : float (default: 0.1)
        eta, the step of the w sequence.
    batch_size : int (default: 4)
        One minibatch per round and client (the reference code: 4).
    clients_per_round : int | None (default: None)
        Clients sampled per round (None: all).
    alpha_lr : bool (default: False)
        The paper's convex version: step ``eta alpha_t`` instead of eta.
    floor : float (default: 0.0)
        Lower bound of beta_t and gamma_t (the reference code uses 0.01).
    min_available_nodes : int (default: 1)
        Wait until this many nodes are connected.
    seed : int (default: 0)
        Seeds sampling and minibatches.
    """

    def __init__(
        self,
        aggregator: Aggregator | str = "ctma+median",
        f: int | None = None,
        lr: float = 0.1,
        batch_size: int = 4,
        clients_per_round: int | None = None,
        alpha_lr: bool = False,
        floor: float = 0.0,
        min_available_nodes: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0 <= floor < 1:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        self.alpha_lr = bool(alpha_lr)
        self.floor = float(floor)
        super().__init__(
            aggregator=aggregator,
            f=f,
            lr=lr,
            batch_size=batch_size,
            clients_per_round=clients_per_round,
            min_available_nodes=min_available_nodes,
            seed=seed,
        )

    def _reset_method(self) -> None:
        self.w: torch.Tensor | None = None  # w_t
        self.t = 0  # the step being taken (rounds sent)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the query point x_t with op ``double`` and beta_t = 1/t."""
        self._start(server_round, arrays)
        if self.w is None:
            assert self.x is not None
            self.w = self.x.clone()  # w_1 = x_1 = x^0
        self.t += 1
        context = f"{type(self).__name__} round {server_round}"
        nodes = self.sample(grid, self.clients_per_round, context)
        seeds = {n: self.draw_seed() for n in nodes}
        return self.messages(
            nodes,
            {POINT_KEY: self.model_record()},
            config,
            {"op": "double", "beta": max(1.0 / self.t, self.floor), "batch-size": self.batch_size},
            lambda n: {"batch-seed": seeds[n]},
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``w -= eta Agg(d)``, then the AnyTime average ``x``."""
        context = f"{type(self).__name__} round {server_round}"
        if self.x is None or self.w is None or self.server_round != server_round:
            log(WARNING, "%s: nothing was sent this round; nothing to aggregate", context)
            return None, None
        checked = self.validate(replies, {VECTOR_KEY: self.layout}, context)
        d_hat = self.robust(self.aggregator, checked.vectors, context)
        gamma = anytime_weight(self.t + 1, self.floor)
        if d_hat is not None:
            step = self.lr * (self.t if self.alpha_lr else 1.0)
            self.w = self.w - step * d_hat.to(self.w.dtype)
            self.x = (1.0 - gamma) * self.x + gamma * self.w
        metrics = self.metrics(
            checked,
            **{
                "beta": max(1.0 / self.t, self.floor),
                "gamma": gamma,
                "sampled": len(self._sent_nodes),
                "skipped": int(d_hat is None),
            },
        )
        return self.model_record(), metrics

    def shift_back_vector(self, mult: float | None) -> torch.Tensor:
        """ShiftBack's reply: the d_hat whose step lands the query point x_{t+1} on
        ``x_t - mult (x_t - x^0)`` (``mult=None``: exactly x^0), through w and the average."""
        if self.x is None or self.x0 is None or self.w is None:
            raise ValueError("Mu2SGD has no model yet")
        m = 1.0 if mult is None else float(mult)
        target = self.x - m * (self.x - self.x0)
        gamma = anytime_weight(self.t + 1, self.floor)
        w_target = (target - (1.0 - gamma) * self.x) / gamma
        step = self.lr * (self.t if self.alpha_lr else 1.0)
        return (self.w - w_target) / step

    def options(self) -> dict[str, Any]:
        return super().options() | {"alpha_t step": self.alpha_lr, "floor": self.floor}
