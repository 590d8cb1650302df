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

from ..specs import build, listing, split_part, unknown
from .base import Aggregator
from .caf import CAF
from .centered_clipping import CenteredClipping
from .coordinate import Meamed, Mean, Median, TrimmedMean
from .ctma import CTMA
from .dnc import DnC
from .flame import FLAME
from .foolsgold import FoolsGold
from .geomed import GeometricMedian
from .krum import Bulyan, Krum, MultiKrum
from .nearest import NNM, MoNNA
from .normclip import NormClip
from .preaggregators import ARC, Bucketing, Clipping
from .signguard import SignGuard
from .subsets import MDA, SMEA

__all__ = ["AGGREGATORS", "ALIASES", "WRAPPERS", "aggregator_names", "get_aggregator"]

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
    "normclip": NormClip,
    "flame": FLAME,
    "foolsgold": FoolsGold,
    "dnc": DnC,
    "signguard": SignGuard,
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
    "norm-clip": "normclip", "norm-bounding": "normclip", "normbound": "normclip",
    "fools-gold": "foolsgold", "divide-and-conquer": "dnc", "sign-guard": "signguard",
}  # fmt: skip
"""Other spellings of the rules' and wrappers' names."""


def aggregator_names() -> dict[str, list[str]]:
    """Every name a spec part may take, by group (what the errors and ``--help`` list)."""
    return {
        "rules": sorted(AGGREGATORS),
        "wrappers (before a rule, e.g. 'nnm+krum')": sorted(WRAPPERS),
        "other spellings": sorted(ALIASES),
    }


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
            if key in WRAPPERS:
                raise ValueError(
                    f"aggregator spec {spec!r}: {name!r} is a wrapper and cannot wrap nothing: "
                    f"put a rule after it (e.g. 'nnm+krum'); rules: {listing(sorted(AGGREGATORS))}"
                )
            if key not in AGGREGATORS:
                raise unknown("aggregator", name, aggregator_names(), spec)
            agg = build(AGGREGATORS[key], args, part, "aggregator", defaults={"f": f})
        else:
            if key in AGGREGATORS:
                raise ValueError(
                    f"aggregator spec {spec!r}: {name!r} is a rule and cannot wrap another rule "
                    f"(only the last part is a rule); wrappers: {listing(sorted(WRAPPERS))}"
                )
            if key not in WRAPPERS:
                raise unknown("aggregator", name, aggregator_names(), spec)
            agg = build(
                WRAPPERS[key], args, part, "aggregator", defaults={"f": f}, fixed={"base": agg}
            )
    assert agg is not None
    return agg
