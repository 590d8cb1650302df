"""Metric aggregation that keeps ``byzantine-replies`` a count.

Flower's strategies average every client metric, weighted by ``num-examples``; the 0/1 that
``byzantine_mod`` reports per reply (``BYZANTINE_REPLIES_KEY``) would become the Byzantine
share of the examples. Pass :func:`sum_byzantine_replies` as a Flower strategy's
``train_metrics_aggr_fn`` to get the number of Byzantine replies of the round instead (our
strategies count it themselves, over every reply received).
"""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict

from .keys import BYZANTINE_REPLIES_KEY

__all__ = ["count_byzantine", "sum_byzantine_replies"]


def count_byzantine(content: RecordDict) -> int | None:
    """1 when ``content`` reports itself Byzantine, 0 when it reports itself honest, None when
    it does not report (no MetricRecord holds ``BYZANTINE_REPLIES_KEY`` as a number)."""
    for record in content.metric_records.values():
        value = record.get(BYZANTINE_REPLIES_KEY)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value > 0)
    return None


def sum_byzantine_replies(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """Flower's weighted average of the replies' metrics (``aggregate_metricrecords``), except
    ``byzantine-replies``: the number of replies that report themselves Byzantine (present
    when any reply reports it)."""
    # imported here: the ClientApp side imports this package and needs no strategy code
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    metrics = aggregate_metricrecords(records, weighting_metric_name)
    counts = [count_byzantine(content) for content in records]
    if any(c is not None for c in counts):
        metrics[BYZANTINE_REPLIES_KEY] = sum(c or 0 for c in counts)
    return metrics
