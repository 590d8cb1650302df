"""RobustFedAvg: Flower's FedAvg with the weighted mean replaced by a robust aggregator."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from ..aggregators import Aggregator, set_client_ids
from ..aggregators.base import min_inputs
from ..methods import fedavg
from ..methods.fedavg import FedAvgState
from ..methods.surface import AttackSurface
from ..protocol.keys import SKIPPED_KEY
from ..protocol.records import Layout, flatten, layout_of, unflatten
from .method import aggregate_on, build_aggregator
from .sample_check import FArg, RunSummary, auto_f, fraction_for, parse_f, require
from .validation import CheckedReplies, sample_count, validate_replies

__all__ = ["RobustFedAvg"]


@dataclass(frozen=True)
class _Sent:
    """What ``configure_train`` sent in a round: the model (flat) and to whom."""

    server_round: int
    layout: Layout
    vector: torch.Tensor
    node_ids: frozenset[int]


class RobustFedAvg(RunSummary, FedAvg):
    """FedAvg whose aggregation step is a Byzantine-robust rule over the clients' updates.

    Each round the clients' replies are validated (``strategies.validation``), their updates
    ``reply - global model sent`` are aggregated with ``aggregator`` and the result is added
    to the global model. Everything else (sampling, configuration, evaluation, metric
    aggregation) is Flower's ``FedAvg``, so any ClientApp written for FedAvg works unchanged.

    Parameters
    ----------
    aggregator : Aggregator | str (default: "median")
        The robust rule, as an object of ``flwr_byz.aggregators`` (or any callable
        ``[n, d] -> [d]`` with an ``f``) or a spec string for ``get_aggregator``
        (e.g. ``"nnm+krum"``, ``"trimmedmean"``, ``"bucketing:2+median"``).
    f : int | "auto" | None (default: None)
        Number of Byzantine clients per round the rule is set to tolerate. With a spec string
        ``None`` means 0; with an aggregator object ``None`` keeps the object's own ``f``.
        ``"auto"``: the largest f the rule tolerates with the nodes sampled per round, chosen
        (and logged) before round 1.
    weighted : bool (default: False)
        Weight each update by the client's sample count (``weighted_by_key``) as FedAvg does.
        Only rules with a weighted form accept it (Mean, Median, GeometricMedian). The counts
        come from the clients, so a Byzantine client can inflate its own: keep it off unless
        the counts are trusted.
    clip_alpha : float | None (default: None)
        The partial-participation heuristic of Malinovsky et al. 2024 (Eq. (10)): from the
        second round on, aggregate ``clip_lambda(u_i - u^{k-1})`` around the last applied
        update ``u^{k-1}`` and add ``u^{k-1}`` back, ``lambda = clip_alpha ||u^{k-1}||``
        (= ``clip_alpha ||x^k - x^{k-1}||``). A Byzantine majority in a round can then move
        the model at most ``clip_alpha`` times the last step away from where it was heading.
    **kwargs
        Every keyword argument of ``flwr.serverapp.strategy.FedAvg`` (``fraction_train``,
        ``min_train_nodes``, ``weighted_by_key``, ``arrayrecord_key``, ...).

    Before round 1 the number of nodes sampled per round (``fraction_train`` of the
    connected nodes, at least ``min_train_nodes``) is checked against what the rule needs for
    ``f`` (e.g. Krum: n >= 2f + 3): too few raise ``SampleTooSmallError`` naming the numbers
    and the settings that fix it, instead of skipping every round.

    ``device`` (attribute, default None: the CPU, where the replies arrive): where the robust
    rule runs (``method.aggregate_on``: the updates move there, the aggregate comes back),
    e.g. ``strategy.device = torch.device("cuda")``; the runner sets it from ``--device``.

    Each round's train MetricRecord carries ``accepted``, ``rejected``, ``rejected-<reason>``
    and ``skipped`` (1 when too few valid replies remained for the rule, and the previous
    global model was kept); ``start`` ends with one line counting the skipped rounds.
    """

    #: Where the robust rule runs (None: where the replies are, the CPU); see the class doc.
    device: torch.device | None = None

    def __init__(
        self,
        aggregator: Aggregator | str = "median",
        f: FArg = None,
        weighted: bool = False,
        clip_alpha: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if clip_alpha is not None and not clip_alpha > 0:
            raise ValueError(f"clip_alpha must be > 0 or None (no clipping), got {clip_alpha}")
        self.clip_alpha = clip_alpha
        self._last_update: torch.Tensor | None = None  # u^{k-1}, the last applied update
        self._x0: torch.Tensor | None = None
        f_count, self.auto_f = parse_f(f)
        self.aggregator: Aggregator = build_aggregator(aggregator, f_count)
        self._sample_checked = False
        if weighted and not callable(getattr(self.aggregator, "weighted", None)):
            raise ValueError(
                f"{type(self.aggregator).__name__} has no weighted form; weighted=True works "
                "with Mean, Median and GeometricMedian"
            )
        self.weighted = weighted
        self._sent: _Sent | None = None

    def summary(self) -> None:
        """Log the aggregator, then FedAvg's summary."""
        log(INFO, "\t├──> Robust aggregation:")
        log(INFO, "\t│\t├── Aggregator: %s", self.aggregator)
        if self.auto_f:
            log(INFO, '\t│\t├── f: "auto" (the largest the sample allows, set at round 1)')
        log(INFO, "\t│\t├── Weighted by sample count: %s", self.weighted)
        log(INFO, "\t│\t└── clip_alpha (Eq. 10): %s", self.clip_alpha or "off")
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's configuration; remembers the model sent and the nodes sampled. In the
        first round of a run, checks the sample size first (:meth:`check_sample`)."""
        if server_round == 1 or not self._sample_checked:
            self.check_sample(grid)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        layout = layout_of(arrays)
        self._sent = _Sent(
            server_round=server_round,
            layout=layout,
            vector=flatten(arrays, layout),
            node_ids=frozenset(m.metadata.dst_node_id for m in messages),
        )
        if server_round == 1 or self._x0 is None:
            self._x0 = flatten(arrays, layout.floating())
            self._last_update = None
        return messages

    def sample_size(self, connected: int) -> int:
        """The nodes FedAvg samples per round out of ``connected``: ``fraction_train`` of
        them, at least ``min_train_nodes`` (0 when ``fraction_train`` is 0: no training)."""
        if self.fraction_train == 0.0:
            return 0
        return max(int(connected * self.fraction_train), self.min_train_nodes)

    def check_sample(self, grid: Grid) -> None:
        """Before round 1: wait for ``min_available_nodes`` (as FedAvg's sampling does, so
        that ``fraction_train`` applies to all of them), resolve ``f="auto"``, and raise
        ``SampleTooSmallError`` if the round's sample is too small (or too large) for the
        rule's ``f``."""
        connected = len(list(grid.get_node_ids()))
        while connected < self.min_available_nodes:
            log(
                INFO,
                "Waiting for nodes to connect: %d connected (minimum required: %d).",
                connected,
                self.min_available_nodes,
            )
            time.sleep(1)
            connected = len(list(grid.get_node_ids()))
        n = self.sample_size(connected)
        if n == 0:
            self._sample_checked = True
            return
        if self.auto_f:
            refuse = partial(self._require, n=n, connected=connected)
            self.aggregator = auto_f(self.aggregator, n, type(self).__name__, refuse=refuse)
        self._require(self.aggregator, n, connected)
        self._sample_checked = True

    def _require(self, rule: Aggregator, n: int, connected: int) -> None:
        """``sample_check.require`` for ``n`` of ``connected`` nodes, with FedAvg's knobs."""
        need = min_inputs(rule)
        if need <= connected:
            fixes = [
                f"fraction-train (fraction_train) >= {fraction_for(need, connected)}",
                f"min-train-nodes (min_train_nodes) >= {need}",
            ]
        else:
            fixes = [
                f"connect at least {need} nodes (only {connected} are), with "
                f"fraction-train (fraction_train) or min-train-nodes (min_train_nodes) "
                f"sampling {need} of them"
            ]
        require(
            rule,
            n,
            who=type(self).__name__,
            sample=(
                f"each round samples {n} nodes (fraction-train={self.fraction_train} of the "
                f"{connected} connected nodes, min-train-nodes={self.min_train_nodes})"
            ),
            fixes=fixes,
        )

    def _sent_floating(self) -> torch.Tensor:
        """The floating-point coordinates of the model sent this round."""
        if self._sent is None or self._x0 is None:
            raise ValueError("RobustFedAvg has sent no model yet")
        return self._sent.vector[self._sent.layout.floating_mask()]

    def _start_point(self) -> torch.Tensor:
        if self._x0 is None:
            raise ValueError("RobustFedAvg has sent no model yet")
        return self._x0

    def attack_surface(self) -> AttackSurface:
        """``methods.fedavg.attack_surface``: the updates ``reply - x^k`` are aggregated;
        ShiftBack's update is ``-mult (x^k - x^0)`` over the floating arrays (``mult=None``: 1,
        the model goes back to x^0 exactly)."""
        return fedavg.attack_surface(self._sent_floating, self._start_point)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate the replies, aggregate the updates robustly, apply them."""
        context = f"{type(self).__name__} round {server_round}"
        sent = self._sent
        if sent is None or sent.server_round != server_round:
            log(WARNING, "%s: no model was sent this round; nothing to aggregate", context)
            return None, None
        checked = validate_replies(
            replies,
            {self.arrayrecord_key: sent.layout},
            expected_nodes=sent.node_ids,
            weighted_by_key=self.weighted_by_key if self.weighted else None,
            context=context,
        )
        log(
            INFO,
            "aggregate_train: %d valid replies, %d rejected",
            len(checked.node_ids),
            len(checked.rejected),
        )
        metrics = self._train_metrics(checked)
        step = self._robust_step(checked, sent, context)
        metrics[SKIPPED_KEY] = int(step is None)
        if step is None:
            return None, metrics
        return unflatten(sent.vector + step, sent.layout), metrics

    def _robust_step(
        self, checked: CheckedReplies, sent: _Sent, context: str
    ) -> torch.Tensor | None:
        """The aggregated update (``methods.fedavg.server_step``), or None (previous model
        kept) if the rule cannot run."""

        def aggregate(updates: torch.Tensor) -> torch.Tensor | None:
            set_client_ids(self.aggregator, checked.node_ids)  # row i: node_ids[i] (FoolsGold)
            try:
                if self.weighted:
                    assert checked.weights is not None
                    weighted = self.aggregator.weighted  # type: ignore[attr-defined]
                    return aggregate_on(self.device, weighted, updates, checked.weights)
                return aggregate_on(self.device, self.aggregator, updates)
            except ValueError as exc:
                log(WARNING, "%s: keeping the previous global model: %s", context, exc)
                return None

        state, stats = fedavg.server_step(
            FedAvgState(sent.vector, self._last_update),
            checked.vectors,
            aggregate,
            clip_alpha=self.clip_alpha,
            norm_mask=sent.layout.floating_mask(),  # integer arrays (counters) do not count
        )
        if stats["clip_level"] is not None:
            level, clipped = stats["clip_level"], stats["clipped"]
            log(INFO, "%s: clip level %.4g, %d updates clipped", context, level, clipped)
        if stats["non_finite"]:
            log(WARNING, "%s: keeping the previous global model: non-finite aggregate", context)
        if stats["skipped"]:
            return None
        self._last_update = state.last_update
        return state.last_update

    def _train_metrics(self, checked: CheckedReplies) -> MetricRecord:
        """FedAvg's metric aggregation over the accepted replies, plus the validation counts."""
        metrics = MetricRecord()
        usable = [c for c in checked.contents if _has_weight(c, self.weighted_by_key)]
        if usable:
            try:
                metrics = self.train_metrics_aggr_fn(usable, self.weighted_by_key)
            except Exception as exc:  # inconsistent client metrics must not stop the round
                log(WARNING, "aggregate_train: client metrics not aggregated: %r", exc)
                metrics = MetricRecord()
        for key, value in checked.metrics().items():
            metrics[key] = value
        return metrics


def _has_weight(content: RecordDict, key: str) -> bool:
    """One MetricRecord with a usable sample count ``key`` (what FedAvg's metric aggregation
    reads)."""
    if len(content.metric_records) != 1:
        return False
    try:
        sample_count(content, key)
    except ValueError:
        return False
    return True
