"""``get_aggregator(spec, f)``: build an aggregator from a spec string.

Grammar: ``part ("+" part)*``; every part but the last is a wrapper (pre- or meta-aggregator)
around what follows it, the last is the base rule. A part is ``name`` or
``name:arg,arg,...`` where an arg is positional (``bucketing:2``) or ``key=value``
(``geomed:nu=0.1,max_iter=3``). Examples: ``"krum"``, ``"nnm+krum"``,
``"bucketing:2+median"``, ``"ctma+geomed"``, ``"ctma+nnm+median"`` (NNM+CTMA: the anchor is
Median(NNM(x)), the trimming acts on the raw inputs), ``"arc+clipping:5+mean"``.
Every rule that has an ``f`` gets the ``f`` passed here.
"""

from __future__ import annotations

from ..specs import build, split_part
from .base import Aggregator
from .caf import CAF
from .centered_clipping import CenteredClipping
from .coordinate import Meamed, Mean, Median, TrimmedMean
from .ctma import CTMA
from .geomed import GeometricMedian
from .krum import Bulyan, Krum, MultiKrum
from .nearest import NNM, MoNNA
from .preaggregators import ARC, Bucketing, Clipping
from .subsets import MDA, SMEA

__all__ = ["AGGREGATORS", "WRAPPERS", "get_aggregator"]

AGGREGATORS: dict[str, type] = {
    "mean": Mean,
    "median": Median,
    "trimmedmean": TrimmedMean,
    "geomed": GeometricMedian,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "cc": CenteredClipping,
    "mda": MDA,
    "meamed": Meamed,
    "monna": MoNNA,
    "caf": CAF,
    "smea": SMEA,
}
"""Base rules by canonical name."""

WRAPPERS: dict[str, type] = {
    "nnm": NNM,
    "bucketing": Bucketing,
    "clipping": Clipping,
    "arc": ARC,
    "ctma": CTMA,
}
"""Pre-/meta-aggregators by canonical name; each takes the rule after it as ``base``."""

ALIASES = {
    "avg": "mean", "average": "mean", "fedavg": "mean",
    "cwmed": "median", "cw-med": "median", "cwmedian": "median",
    "trmean": "trimmedmean", "cwtm": "trimmedmean", "tm": "trimmedmean",
    "trimmed-mean": "trimmedmean", "trimmed_mean": "trimmedmean",
    "gm": "geomed", "rfa": "geomed", "geometricmedian": "geomed", "geometric-median": "geomed",
    "mkrum": "multikrum", "multi-krum": "multikrum",
    "centeredclipping": "cc", "centered-clipping": "cc",
    "bucket": "bucketing", "clip": "clipping",
}  # fmt: skip


def get_aggregator(spec: str, f: int = 0) -> Aggregator:
    """Build the aggregator described by ``spec`` for ``f`` Byzantine inputs (see module doc)."""
    parts = [p.strip() for p in spec.split("+")]
    if not spec.strip() or any(not p for p in parts):
        raise ValueError(f"empty aggregator spec part in {spec!r}")
    agg: Aggregator | None = None
    for i, part in enumerate(reversed(parts)):
        name, args = split_part(part)
        key = name.lower()
        key = ALIASES.get(key, key)
        if i == 0:
            if key not in AGGREGATORS:
                hint = " (it is a wrapper: put a base rule after it)" if key in WRAPPERS else ""
                raise ValueError(
                    f"unknown aggregator {name!r} in {spec!r}{hint}; known: {sorted(AGGREGATORS)}"
                )
            agg = build(AGGREGATORS[key], args, part, "aggregator", defaults={"f": f})
        else:
            if key not in WRAPPERS:
                raise ValueError(
                    f"{name!r} in {spec!r} cannot wrap another rule; wrappers: {sorted(WRAPPERS)}"
                )
            agg = build(
                WRAPPERS[key], args, part, "aggregator", defaults={"f": f}, fixed={"base": agg}
            )
    assert agg is not None
    return agg
