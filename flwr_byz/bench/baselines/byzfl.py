"""ByzFL's aggregators (``byzfl.aggregators``, version 0.0.11), as the comparison for ours: an
optional baseline. Without ByzFL installed the benchmark runs, and every ByzFL key of every rule
records :data:`NOT_INSTALLED` as its skip reason (``make bench`` installs it with
``pip install --no-deps byzfl==0.0.11``).

Each rule runs on a torch tensor (``byzfl_torch``) and on a numpy array (``byzfl_numpy``).
Baselines whose cost explodes are skipped up front by a documented rule (:func:`byzfl_skip`).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "BYZFL_MAX_SUBSETS",
    "BYZFL_MISSING",
    "BYZFL_MUTATES",
    "BYZFL_NNM_MAX_BYTES",
    "BYZFL_NOTES",
    "BYZFL_SMEA_MAX_WORK",
    "BYZFL_VERSION",
    "NOT_INSTALLED",
    "byzfl_factory",
    "byzfl_skip",
    "fresh",
    "import_byzfl",
]

BYZFL_VERSION = "0.0.11"
NOT_INSTALLED = (
    f"ByzFL is not installed (an optional baseline: pip install --no-deps byzfl=={BYZFL_VERSION},"
    " as make bench does)"
)

# Up-front skip limits for baselines whose cost explodes (documented in benchmarks/README.md).
BYZFL_MAX_SUBSETS = 100_000  # ByzFL MDA loops over all C(n, f) subsets in Python
BYZFL_SMEA_MAX_WORK = 1e9  # ByzFL SMEA touches (n - f) * d floats per subset: C(n,f)*(n-f)*d
BYZFL_NNM_MAX_BYTES = 8e9  # ByzFL NNM gathers an [n, n - f, d] float32 tensor

BYZFL_STUBS = (
    "byzfl.benchmark",
    "byzfl.benchmark.benchmark",
    "byzfl.benchmark.managers",
    "byzfl.benchmark.train",
    "byzfl.benchmark.evaluate_results",
)


def import_byzfl() -> tuple[types.ModuleType | None, str | None]:
    """``byzfl.aggregators`` with ``byzfl.benchmark`` (which needs torchvision) stubbed out,
    or None and why not (:data:`NOT_INSTALLED` when ByzFL is absent)."""
    if importlib.util.find_spec("byzfl") is None:
        return None, NOT_INSTALLED
    for name in BYZFL_STUBS:
        sys.modules.setdefault(name, types.ModuleType(name))
    try:
        # Not ``import byzfl.aggregators as m``: byzfl/__init__ star-imports the package, which
        # rebinds the attribute ``byzfl.aggregators`` to the submodule of the same name (no
        # pre-aggregators there); import_module returns the package from sys.modules.
        return importlib.import_module("byzfl.aggregators"), None
    except Exception as exc:
        return None, f"ByzFL not importable: {type(exc).__name__}: {exc}"


def fresh(data: Any) -> Any:
    """A copy of a torch tensor or numpy array (for the rules that clip in place)."""
    return data.clone() if isinstance(data, torch.Tensor) else data.copy()


def _chain(*stages: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(v: Any) -> Any:
        for stage in stages:
            v = stage(v)
        return v

    return run


def byzfl_factory(
    name: str, bz: types.ModuleType, f: int
) -> Callable[[], Callable[[Any], Any]] | None:
    """A factory of fresh ByzFL callables for rule ``name`` (CenteredClipping is stateful);
    None where ByzFL has no such rule."""
    table: dict[str, Callable[[], Callable[[Any], Any]]] = {
        "Mean": lambda: bz.Average(),
        "Median": lambda: bz.Median(),
        "TrimmedMean": lambda: bz.TrMean(f=f),
        "GeometricMedian": lambda: bz.GeometricMedian(),  # ByzFL defaults nu=0.1, T=3
        "Krum": lambda: bz.Krum(f=f),
        "MultiKrum": lambda: bz.MultiKrum(f=f),
        "CenteredClipping": lambda: bz.CenteredClipping(),  # tau=100, L=1 = ours
        "MDA": lambda: bz.MDA(f=f),
        "Meamed": lambda: bz.Meamed(f=f),
        "MoNNA": lambda: bz.MoNNA(f=f),
        "CAF": lambda: bz.CAF(f=f),
        "SMEA": lambda: bz.SMEA(f=f),
        "NNM+Mean": lambda: _chain(bz.NNM(f=f), bz.Average()),
        "NNM+Krum": lambda: _chain(bz.NNM(f=f), bz.Krum(f=f)),
        "Bucketing(2)+Median": lambda: _chain(bz.Bucketing(s=2), bz.Median()),
        "Clipping+Mean": lambda: _chain(bz.Clipping(c=1.0), bz.Average()),
        "ARC+Mean": lambda: _chain(bz.ARC(f=f), bz.Average()),
    }
    return table.get(name)


BYZFL_MISSING = {
    "Bulyan": f"ByzFL {BYZFL_VERSION} has no Bulyan",
    "CTMA+Median": f"ByzFL {BYZFL_VERSION} has no CTMA",
    "CTMA+GeometricMedian": f"ByzFL {BYZFL_VERSION} has no CTMA",
}
BYZFL_MUTATES = {"Clipping+Mean", "ARC+Mean"}  # ByzFL Clipping/ARC clip their input in place

#: Notes on how a rule's ByzFL counterpart is run, recorded with the rule's results.
BYZFL_NOTES: dict[str, tuple[str, ...]] = {
    "GeometricMedian": ("ByzFL GeometricMedian at its defaults nu=0.1, T=3 (ours: eps=1e-6)",),
    "Clipping+Mean": ("ByzFL Clipping(c=1.0) clips in place: it gets a fresh copy per run",),
    "ARC+Mean": ("ByzFL ARC clips in place: it gets a fresh copy per run",),
}


def byzfl_skip(name: str, n: int, d: int, f: int) -> str | None:
    """Reason to skip ByzFL up front (no counterpart, or infeasible by a documented rule)."""
    if name in BYZFL_MISSING:
        return f"skipped: {BYZFL_MISSING[name]}"
    subsets = math.comb(n, f)
    if name == "MDA" and subsets > BYZFL_MAX_SUBSETS:
        return (
            f"skipped: ByzFL MDA enumerates C({n},{f}) = {subsets:.2e} "
            f"> {BYZFL_MAX_SUBSETS:.0e} subsets in Python"
        )
    if name == "SMEA":
        work = subsets * (n - f) * d
        if work > BYZFL_SMEA_MAX_WORK:
            return (
                f"skipped: ByzFL SMEA touches C({n},{f})*(n-f)*d = {work:.1e} "
                f"> {BYZFL_SMEA_MAX_WORK:.0e} floats (one (n-f) x d slice per subset)"
            )
    if name.startswith("NNM"):
        need = n * (n - f) * d * 4
        if need > BYZFL_NNM_MAX_BYTES:
            return (
                f"skipped: ByzFL NNM gathers n*(n-f)*d*4 = {need / 1e9:.1f} GB "
                f"> {BYZFL_NNM_MAX_BYTES / 1e9:.0f} GB"
            )
    return None
