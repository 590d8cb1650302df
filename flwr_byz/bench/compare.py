"""One size of the aggregator benchmark: every selected rule, ours against its baselines.

For an ``[n, d]`` float32 input (f = n // 4, Bulyan f = (n - 3) // 4), :class:`SizeBench` times
and measures (:mod:`.measure`) our rule (``get_aggregator(spec, f)``), its Flower counterparts
(:mod:`.baselines.flower`) and its ByzFL counterpart (:mod:`.baselines.byzfl`), and fills the
size's JSON entry: ``<key>_ms`` / ``_peak_mb`` / ``_peak_ratio`` per implementation, the skip
reasons, the speed-ups and the multiple of the ``torch.mean`` floor.
"""

from __future__ import annotations

import argparse
import itertools
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from flwr_byz.aggregators import get_aggregator

from .baselines import NOT_REQUESTED
from .baselines.byzfl import BYZFL_MUTATES, BYZFL_NOTES, byzfl_factory, byzfl_skip, fresh
from .baselines.flower import (
    FLOWER_KIND,
    FLOWER_NOTES,
    FlowerReplies,
    flower_legacy_call,
    flower_numpy_call,
    flower_strategy,
    legacy_skip,
)
from .measure import MIB, PEAK_METHOD, Measurement, Prepare, measure
from .report import describe_error, log

__all__ = ["SizeBench", "layer_bounds", "make_inputs", "mean_call"]


def make_inputs(n: int, d: int, f: int, seed: int) -> torch.Tensor:
    """``[n, d]`` float32: n - f honest rows ``mu + 0.1 N(0, I)``, f Byzantine rows x (-3)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g).mul_(0.1).add_(mu)
    if f:
        x[n - f :].mul_(-3.0)
    return x


def layer_bounds(d: int, layers: int) -> list[tuple[int, int]]:
    """Split ``range(d)`` into ``layers`` contiguous chunks (the fake model's layers)."""
    cuts = np.linspace(0, d, max(1, min(layers, d)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts)]


def mean_call(x: torch.Tensor) -> Prepare:
    """The memory-bandwidth floor: ``torch.mean(x, dim=0)``."""
    return lambda: lambda: torch.mean(x, dim=0)


class SizeBench:
    """Runs every selected rule at one size and fills the JSON entry."""

    def __init__(
        self,
        n: int,
        d: int,
        args: argparse.Namespace,
        bz: types.ModuleType | None,
        bz_error: str | None,
    ) -> None:
        self.n, self.d, self.args, self.bz, self.bz_error = n, d, args, bz, bz_error
        self.f = self.n // 4
        self.fb = (self.n - 3) // 4
        self.device = torch.device(self.args.device)
        self.cuda = self.device.type == "cuda"
        self.input_bytes = self.n * self.d * 4
        self.bounds = layer_bounds(self.d, self.args.layers)
        self.x = make_inputs(self.n, self.d, self.f, self.args.seed)
        self.xn = self.x.numpy()
        self.xd = self.x.to(self.device) if self.cuda else self.x
        self._replies: FlowerReplies | None = None

    def run(self, prepare: Prepare, cuda: bool = False) -> Measurement:
        return measure(prepare, self.args.repeats, self.args.cap_s, cuda=cuda)

    def replies(self) -> FlowerReplies:
        if self._replies is None:
            self._replies = FlowerReplies(self.xn, self.bounds)
        return self._replies

    def record(
        self, entry: dict[str, Any], key: str, m: Measurement, refused: bool = False
    ) -> None:
        """Store ``m`` under ``<key>_ms``/``_peak_mb``/``_peak_ratio`` (or the skip reason)."""
        entry[f"{key}_ms"] = None if m.ms is None else round(m.ms, 3)
        entry[f"{key}_peak_mb"] = None if m.peak_bytes is None else round(m.peak_bytes / MIB, 2)
        entry[f"{key}_peak_ratio"] = (
            None if m.peak_bytes is None else round(m.peak_bytes / self.input_bytes, 3)
        )
        entry["runs"][key] = m.runs
        entry["wall_s"][key] = round(m.wall_s, 2)
        if m.error is not None:
            entry["skipped"][key] = describe_error(m.error, refused=refused)
        elif m.runs == 1 and m.ms is not None:
            if m.ms > self.args.cap_s * 1e3:
                entry["notes"].append(f"{key}: single run (warm-up > {self.args.cap_s:g} s)")

    def measure_baseline(self, entry: dict[str, Any], key: str, prepare: Prepare) -> None:
        """Time baseline ``key`` unless ``--baselines`` leaves it out."""
        if key in self.args.baselines:
            self.record(entry, key, self.run(prepare))
        else:
            self.skip(entry, key, NOT_REQUESTED)

    def skip(self, entry: dict[str, Any], key: str, reason: str) -> None:
        for suffix in ("ms", "peak_mb", "peak_ratio"):
            entry[f"{key}_{suffix}"] = None
        entry["runs"][key] = 0
        entry["skipped"][key] = reason

    def size_entry(self, rules: list[tuple[str, str]], floor: Measurement) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": self.n,
            "d": self.d,
            "f": self.f,
            "f_bulyan": self.fb,
            "input_mb": round(self.input_bytes / MIB, 2),
            "peak_memory": "cuda_allocated" if self.cuda else PEAK_METHOD,
            "layers": len(self.bounds),
            "mean_floor_ms": None if floor.ms is None else round(floor.ms, 3),
            "rules": {},
        }
        for name, spec in rules:
            out["rules"][name] = self.bench_rule(name, spec, floor)
        return out

    def bench_rule(self, name: str, spec: str, floor: Measurement) -> dict[str, Any]:
        n, d = self.n, self.d
        f = self.fb if name == "Bulyan" else self.f
        e: dict[str, Any] = {"spec": spec, "f": f, "runs": {}, "wall_s": {}, "skipped": {}}
        e["notes"] = []
        log(f"[{n}x{d}] {name}: ours")

        def ours() -> Callable[[], object]:
            agg = get_aggregator(spec, f)
            return lambda: agg(self.xd)

        self.record(e, "ours", self.run(ours, cuda=self.cuda), refused=True)
        e["ours_peak_kind"] = "cuda_allocated" if self.cuda else PEAK_METHOD

        kind = FLOWER_KIND.get(name)
        wanted = set(self.args.baselines)
        if kind is None:
            for key in ("flower_msg", "flower_numpy", "flower_legacy"):
                self.skip(e, key, "skipped: no Flower counterpart")
        else:
            log(f"[{n}x{d}] {name}: Flower message API / numpy core / legacy")
            strategy = flower_strategy(kind, n, f, self.fb)
            e["flower_strategy"] = type(strategy).__name__

            def msg() -> Callable[[], object]:
                replies = self.replies().build()
                return lambda: strategy.aggregate_train(1, replies)

            self.measure_baseline(e, "flower_msg", msg)
            self.measure_baseline(
                e, "flower_numpy", lambda: flower_numpy_call(kind, self.xn, f, self.fb)
            )
            reason = legacy_skip(kind, n, d, self.fb)
            if "flower_legacy" not in wanted:
                self.skip(e, "flower_legacy", NOT_REQUESTED)
            elif reason:
                self.skip(e, "flower_legacy", reason)
            else:
                self.record(
                    e,
                    "flower_legacy",
                    self.run(lambda: flower_legacy_call(kind, self.xn, f, self.fb, self.bounds)),
                )

        reason = f"skipped: {self.bz_error}" if self.bz_error else byzfl_skip(name, n, d, f)
        if "byzfl" not in wanted:
            reason = NOT_REQUESTED
        if not reason and self.bz is not None and byzfl_factory(name, self.bz, f) is None:
            reason = "skipped: no ByzFL counterpart"
        if reason or self.bz is None:
            for key in ("byzfl_torch", "byzfl_numpy"):
                self.skip(e, key, reason or "skipped: ByzFL not importable")
        else:
            factory = byzfl_factory(name, self.bz, f)
            assert factory is not None  # checked above
            copy = name in BYZFL_MUTATES
            for key, data in (("byzfl_torch", self.x), ("byzfl_numpy", self.xn)):
                log(f"[{n}x{d}] {name}: {key}")

                def prep(data: Any = data) -> Callable[[], object]:
                    fn, v = factory(), (fresh(data) if copy else data)
                    return lambda: fn(v)

                self.record(e, key, self.run(prep))
        e["notes"].extend(FLOWER_NOTES.get(name, ()))
        e["notes"].extend(BYZFL_NOTES.get(name, ()))

        self.summarise(e, floor)
        return e

    def summarise(self, e: dict[str, Any], floor: Measurement) -> None:
        """Best ByzFL input type, speedups, and the multiple of the mean floor."""
        bz = {k: e[f"byzfl_{k}_ms"] for k in ("torch", "numpy") if e[f"byzfl_{k}_ms"] is not None}
        best = min(bz, key=lambda k: bz[k]) if bz else None
        e["byzfl_impl"] = best
        e["byzfl_ms"] = bz[best] if best else None
        e["byzfl_peak_mb"] = e[f"byzfl_{best}_peak_mb"] if best else None
        e["mean_floor_ms"] = None if floor.ms is None else round(floor.ms, 3)
        ours = e["ours_ms"]

        def ratio(base: float | None) -> float | None:
            return None if base is None or not ours else round(base / ours, 2)

        candidates = [v for v in (e["flower_msg_ms"], e["byzfl_ms"]) if v is not None]
        e["speedup_vs_best_baseline"] = ratio(min(candidates) if candidates else None)
        e["speedup_vs_flower_msg"] = ratio(e["flower_msg_ms"])
        e["speedup_vs_flower_numpy"] = ratio(e["flower_numpy_ms"])
        e["speedup_vs_flower_legacy"] = ratio(e["flower_legacy_ms"])
        e["speedup_vs_byzfl"] = ratio(e["byzfl_ms"])
        e["x_of_mean"] = None if ours is None or not floor.ms else round(ours / floor.ms, 2)
