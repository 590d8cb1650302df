"""Robust aggregators: pure torch, ``[n, d]`` tensor in, ``[d]`` tensor out.

See docs/ALGORITHMS.md, Aggregators for the definitions; ``get_aggregator`` parses spec strings.
"""

from .base import Aggregator, PreAggregator, pairwise_sq_distances
from .caf import CAF
from .centered_clipping import CenteredClipping
from .coordinate import Meamed, Mean, Median, TrimmedMean
from .ctma import CTMA
from .dnc import DnC
from .flame import FLAME
from .foolsgold import FoolsGold, set_client_ids
from .geomed import GeometricMedian
from .krum import Bulyan, Krum, MultiKrum
from .nearest import NNM, MoNNA
from .normclip import NormClip
from .preaggregators import ARC, Bucketing, Clipping
from .registry import AGGREGATORS, WRAPPERS, get_aggregator
from .signguard import SignGuard
from .subsets import MDA, SMEA

__all__ = [
    "AGGREGATORS",
    "ARC",
    "CAF",
    "CTMA",
    "FLAME",
    "MDA",
    "NNM",
    "SMEA",
    "WRAPPERS",
    "Aggregator",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "Clipping",
    "DnC",
    "FoolsGold",
    "GeometricMedian",
    "Krum",
    "Meamed",
    "Mean",
    "Median",
    "MoNNA",
    "MultiKrum",
    "NormClip",
    "PreAggregator",
    "SignGuard",
    "TrimmedMean",
    "get_aggregator",
    "pairwise_sq_distances",
    "set_client_ids",
]
