"""Flower's aggregation, as the comparison for ours, in three forms per rule:

* ``flower_msg``: the Message-API strategy (``flwr.serverapp.strategy.<Strategy>``)'s
  ``aggregate_train`` on reply Messages (ArrayRecord with the client's layers + MetricRecord
  with "num-examples"), rebuilt before every run (outside the timing); this includes Flower's
  deserialisation and stacking;
* ``flower_numpy``: the numpy functions those strategies call, on the already-stacked array;
* ``flower_legacy``: ``flwr.server.strategy.aggregate`` functions on
  ``list[tuple[NDArrays, int]]``.

Flower has Mean (FedAvg), Median, TrimmedMean, Krum, MultiKrum and Bulyan (:data:`FLOWER_KIND`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from flwr_byz.simulations.local import ensure_task_identity

__all__ = [
    "FLOWER_KIND",
    "FLOWER_NOTES",
    "LEGACY_BULYAN_MAX_WORK",
    "FlowerReplies",
    "flower_legacy_call",
    "flower_numpy_call",
    "flower_strategy",
    "legacy_skip",
    "trimmed_beta",
]

# Flower counterparts (Message-API strategy / numpy core / legacy function) by rule name.
FLOWER_KIND: dict[str, str] = {
    "Mean": "mean",  # FedAvg / weighted sum / aggregate
    "Median": "median",  # FedMedian / np.median / aggregate_median
    "TrimmedMean": "trimmedmean",  # FedTrimmedAvg / trim_mean / aggregate_trimmed_avg
    "Krum": "krum",  # Krum / select_multikrum / aggregate_krum(to_keep=0)
    "MultiKrum": "multikrum",  # MultiKrum(n - f) / select_multikrum / aggregate_krum(n - f)
    "Bulyan": "bulyan",  # Bulyan / select_multikrum + aggregate_n_closest_weights / ...
}

LEGACY_BULYAN_MAX_WORK = 1e11  # legacy Bulyan: Python-loop pairwise norms, sum m^2 * d

#: Notes on how a rule's Flower counterparts are run, recorded with the rule's results.
FLOWER_NOTES: dict[str, tuple[str, ...]] = {
    "Mean": ("Flower: FedAvg (equal num-examples) / its weighted-sum loop / aggregate()",),
    "Bulyan": (
        "Flower Message-API Bulyan picks theta inputs by one MultiKrum scoring (not iterated "
        "Krum) and runs gc.collect() per selected reply (to_numpy_ndarrays(keep_input=False))",
    ),
}


class FlowerReplies:
    """Reply Messages built from pre-serialised Arrays: cheap to rebuild before every run."""

    def __init__(self, xn: np.ndarray, bounds: list[tuple[int, int]]) -> None:
        from flwr.app import Array, ConfigRecord, Message, RecordDict

        ensure_task_identity()
        self.payload: list[list[tuple[str, Array]]] = [
            [
                (f"layer{j}", Array(np.ascontiguousarray(row[a:b])))
                for j, (a, b) in enumerate(bounds)
            ]
            for row in xn
        ]
        self.instructions = [
            Message(
                RecordDict({"config": ConfigRecord({})}), dst_node_id=i + 1, message_type="train"
            )
            for i in range(xn.shape[0])
        ]

    def build(self) -> list[Any]:
        """Fresh reply Messages (new records around the shared immutable bytes)."""
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

        replies = []
        for ins, layers in zip(self.instructions, self.payload, strict=True):
            arrays = ArrayRecord(
                {
                    k: Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=a.data)
                    for k, a in layers
                }
            )
            content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10})})
            replies.append(Message(content, reply_to=ins))
        return replies


def trimmed_beta(n: int, f: int) -> float:
    """FedTrimmedAvg's cut fraction with ``int(beta * n) == f``."""
    beta = f / n
    return beta if int(beta * n) == f else (f + 0.5) / n


def flower_strategy(kind: str, n: int, f: int, fb: int) -> Any:
    """The ``flwr.serverapp.strategy`` strategy doing rule ``kind``."""
    from flwr.serverapp import strategy as s

    if kind == "mean":
        return s.FedAvg()
    if kind == "median":
        return s.FedMedian()
    if kind == "trimmedmean":
        return s.FedTrimmedAvg(beta=trimmed_beta(n, f))
    if kind == "krum":
        return s.Krum(num_malicious_nodes=f)
    if kind == "multikrum":
        return s.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f)
    if kind == "bulyan":
        return s.Bulyan(num_malicious_nodes=fb)
    raise KeyError(kind)


class _StackedRow:
    """Duck-types what ``select_multikrum`` reads of a RecordDict/ArrayRecord, over one row of
    the already-stacked array (so Flower's own function runs without deserialisation)."""

    def __init__(self, row: np.ndarray) -> None:
        self.row = row
        self.array_records = {"arrays": self}

    def __getitem__(self, key: str) -> _StackedRow:
        return self

    def to_numpy_ndarrays(self) -> list[np.ndarray]:
        return [self.row]


def _weighted_sum(rows: Sequence[np.ndarray]) -> np.ndarray:
    """FedAvg's ``aggregate_arrayrecords`` core with equal weights."""
    w = 1.0 / len(rows)
    acc = rows[0] * w
    for row in rows[1:]:
        acc += row * w
    return acc


def flower_numpy_call(kind: str, xn: np.ndarray, f: int, fb: int) -> Callable[[], object]:
    """The numpy functions of Flower's Message-API strategy ``kind`` on the stacked array."""
    from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
    from flwr.serverapp.strategy.multikrum import select_multikrum

    n = xn.shape[0]

    def run() -> object:
        if kind == "mean":
            return _weighted_sum(list(xn))
        if kind == "median":
            return np.median(xn, axis=0)
        if kind == "trimmedmean":
            return trim_mean(xn, trimmed_beta(n, f))
        contents: list[Any] = [_StackedRow(row) for row in xn]

        def select(faulty: int, k: int) -> list[_StackedRow]:  # Flower's, on the stacked rows
            return cast("list[_StackedRow]", select_multikrum(contents, faulty, k))

        if kind == "krum":
            return select(f, 1)[0].row * 1.0
        if kind == "multikrum":
            return _weighted_sum([c.row for c in select(f, n - f)])
        if kind == "bulyan":
            theta = n - 2 * fb
            selected = [[c.row] for c in select(fb, theta)]
            medians = [np.median(arr, axis=0) for arr in zip(*selected, strict=True)]
            return aggregate_n_closest_weights(medians, selected, theta - 2 * fb)
        raise KeyError(kind)

    return run


def flower_legacy_call(
    kind: str, xn: np.ndarray, f: int, fb: int, bounds: list[tuple[int, int]]
) -> Callable[[], object]:
    """``flwr.server.strategy.aggregate`` on a fresh ``list[tuple[NDArrays, int]]`` (views)."""
    from flwr.server.strategy import aggregate as agg

    n = xn.shape[0]
    results = [([row[a:b] for a, b in bounds], 10) for row in xn]
    if kind == "mean":
        return lambda: agg.aggregate(results)
    if kind == "median":
        return lambda: agg.aggregate_median(results)
    if kind == "trimmedmean":
        return lambda: agg.aggregate_trimmed_avg(results, trimmed_beta(n, f))
    if kind == "krum":
        return lambda: agg.aggregate_krum(results, num_malicious=f, to_keep=0)
    if kind == "multikrum":
        return lambda: agg.aggregate_krum(results, num_malicious=f, to_keep=n - f)
    if kind == "bulyan":  # pops from ``results``: hence the fresh list per run
        return lambda: agg.aggregate_bulyan(
            results, num_malicious=fb, aggregation_rule=agg.aggregate_krum, to_keep=0
        )
    raise KeyError(kind)


def legacy_skip(kind: str, n: int, d: int, fb: int) -> str | None:
    """Reason to skip a legacy function up front, or None."""
    if kind == "bulyan":
        work = sum(m * m for m in range(2 * fb + 1, n + 1)) * d
        if work > LEGACY_BULYAN_MAX_WORK:
            return (
                f"skipped: legacy aggregate_bulyan re-runs aggregate_krum (pairwise norms in a "
                f"Python double loop) theta={n - 2 * fb} times: sum m^2 * d = {work:.1e} "
                f"> {LEGACY_BULYAN_MAX_WORK:.0e} element ops (minutes)"
            )
    return None
