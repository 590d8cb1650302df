"""``without_flower_gc``: skip the ``gc.collect()`` Flower runs on every ArrayRecord conversion.

Flower's ``ArrayRecord`` conversions with ``keep_input=False`` call ``gc.collect()`` each time;
Flower's Bulyan does one per selected reply, about 0.1 s each in a process that imported torch,
so a 40-round ``flwr-byz run --method flower-bulyan`` spends minutes collecting. Only the time
changes, never a number.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["without_flower_gc"]


class _NoCollect:
    """Stands in for the ``gc`` module inside ``flwr.app.message.arrayrecord``."""

    @staticmethod
    def collect(generation: int = 2) -> int:
        return 0


@contextmanager
def without_flower_gc() -> Iterator[None]:
    """Within the block, Flower's ArrayRecord conversions skip their ``gc.collect()``."""
    from flwr.app.message import arrayrecord

    saved = arrayrecord.gc
    arrayrecord.gc = _NoCollect  # type: ignore[assignment]
    try:
        yield
    finally:
        arrayrecord.gc = saved
