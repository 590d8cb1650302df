"""Speed and peak-memory benchmark: flwr_byz aggregators vs Flower and ByzFL.

For every size ``(n, d)`` (float32, f = n // 4, Bulyan f = (n - 3) // 4) and every rule, it
times (median of ``--repeats`` runs after one warm-up) and measures the peak extra memory of

* ours: ``flwr_byz.aggregators.get_aggregator(spec, f)`` on an ``[n, d]`` torch tensor;
* Flower's Message-API strategy, its numpy core and its legacy functions
  (:mod:`flwr_byz.bench.baselines.flower`);
* ByzFL 0.0.11 on a torch tensor and on a numpy array, when installed
  (:mod:`flwr_byz.bench.baselines.byzfl`);
* ``torch.mean(x, dim=0)``, the memory-bandwidth floor.

Timing and peak memory: :mod:`flwr_byz.bench.measure`; one size: :mod:`flwr_byz.bench.compare`;
the table: :mod:`flwr_byz.bench.report`. Results go to JSON (``--out``, relative to the current
directory) and a table is printed. Run ``python -m flwr_byz.bench.aggregators`` or ``flwr-byz
bench aggregators``; see benchmarks/README.md in the source repository.
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flwr_byz.aggregators import get_aggregator

from .baselines import BASELINES
from .baselines.byzfl import (
    BYZFL_MAX_SUBSETS,
    BYZFL_NNM_MAX_BYTES,
    BYZFL_SMEA_MAX_WORK,
    import_byzfl,
)
from .baselines.flower import LEGACY_BULYAN_MAX_WORK
from .compare import SizeBench, mean_call
from .machine import aggregator_machine, loadavg
from .measure import PEAK_METHOD
from .report import log, print_aggregator_table, save_json

__all__ = ["QUICK_SIZES", "RULES", "SIZES", "main", "parse_args", "parse_sizes", "select_rules"]

SIZES: tuple[tuple[int, int], ...] = ((20, 100_000), (50, 1_000_000), (100, 1_000_000))
QUICK_SIZES: tuple[tuple[int, int], ...] = ((20, 100_000),)

# (display name, get_aggregator spec)
RULES: tuple[tuple[str, str], ...] = (
    ("Mean", "mean"),
    ("Median", "median"),
    ("TrimmedMean", "trimmedmean"),
    ("GeometricMedian", "geomed"),
    ("Krum", "krum"),
    ("MultiKrum", "multikrum"),
    ("Bulyan", "bulyan"),
    ("CenteredClipping", "cc"),
    ("MDA", "mda"),
    ("Meamed", "meamed"),
    ("MoNNA", "monna"),
    ("CAF", "caf"),
    ("SMEA", "smea"),
    ("NNM+Mean", "nnm+mean"),
    ("NNM+Krum", "nnm+krum"),
    ("Bucketing(2)+Median", "bucketing:2+median"),
    ("Clipping+Mean", "clipping:1+mean"),
    ("ARC+Mean", "arc+mean"),
    ("CTMA+Median", "ctma+median"),
    ("CTMA+GeometricMedian", "ctma+geomed"),
    ("NormClip", "normclip"),
    ("FLAME", "flame"),
    ("FoolsGold", "foolsgold"),
    ("DnC", "dnc"),
    ("SignGuard", "signguard"),
)


def norm_name(name: str) -> str:
    """Case/punctuation-insensitive key: "NNM+Krum" and "nnm+krum" -> "nnmkrum"."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def select_rules(only: str | None) -> list[tuple[str, str]]:
    """The rules named in ``--only`` (display names or specs), or all of them."""
    if not only:
        return list(RULES)
    lookup = {}
    for name, spec in RULES:
        lookup[norm_name(name)] = (name, spec)
        lookup[norm_name(spec)] = (name, spec)
    chosen = []
    for item in only.split(","):
        if not item.strip():
            continue
        key = norm_name(item)
        if key not in lookup:
            try:  # any other spec of ours (no baseline has it)
                get_aggregator(item.strip(), f=1)
            except ValueError:
                known = ", ".join(n for n, _ in RULES)
                raise SystemExit(f"unknown rule {item!r}; known: {known}, or any spec") from None
            lookup[key] = (item.strip(), item.strip())
        if lookup[key] not in chosen:
            chosen.append(lookup[key])
    return chosen


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"50x1000000,100x1000000"`` -> ``[(50, 1000000), (100, 1000000)]``."""
    sizes = []
    for part in text.split(","):
        n, _, d = part.strip().lower().partition("x")
        sizes.append((int(n), int(d.replace("_", ""))))
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="only n=20, d=100000")
    p.add_argument("--sizes", help="comma list of NxD, e.g. 50x1000000,100x1000000")
    p.add_argument("--only", help="comma list of rule names or specs, e.g. krum,median,nnm+krum")
    p.add_argument("--out", default="benchmarks/results/aggregators.json", help="JSON output")
    p.add_argument("--device", default="cpu", help="device of our rules (baselines: CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    p.add_argument("--cap-s", type=float, default=60.0, help="single run if warm-up > cap")
    p.add_argument("--layers", type=int, default=4, help="layers of the fake Flower model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma list of baselines to time (default: all of {','.join(BASELINES)})",
    )
    args = p.parse_args(argv)
    args.baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = sorted(set(args.baselines) - set(BASELINES))
    if unknown:
        p.error(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; write JSON to ``--out`` and print the tables."""
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.WARNING)  # aggregate_train logs every call at INFO
    sizes = parse_sizes(args.sizes) if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    rules = select_rules(args.only)
    for _, spec in rules:  # one tiny call each: lazy imports (scikit-learn's) are not timed
        try:
            get_aggregator(spec, f=0)(torch.ones(4, 2))
        except ValueError:
            pass
    bz, bz_error = import_byzfl()
    if bz_error and "byzfl" in args.baselines:
        log(f"ByzFL baseline skipped: {bz_error}")
    result: dict[str, Any] = {
        "machine": aggregator_machine(args.device),
        "config": {
            "repeats": args.repeats,
            "cap_s": args.cap_s,
            "layers": args.layers,
            "seed": args.seed,
            "dtype": "float32",
            "peak_memory_cpu": PEAK_METHOD,
            "f": "n // 4 (Bulyan: (n - 3) // 4)",
            "byzfl_import": bz_error or "ok (byzfl.benchmark stubbed)",
            "limits": {
                "byzfl_mda_max_subsets": BYZFL_MAX_SUBSETS,
                "byzfl_smea_max_work": BYZFL_SMEA_MAX_WORK,
                "byzfl_nnm_max_bytes": BYZFL_NNM_MAX_BYTES,
                "legacy_bulyan_max_work": LEGACY_BULYAN_MAX_WORK,
            },
        },
        "sizes": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for n, d in sizes:
        bench = SizeBench(n, d, args, bz, bz_error)
        log(f"[{n}x{d}] torch.mean floor")
        floor = bench.run(mean_call(bench.xd), cuda=bench.cuda)
        entry = bench.size_entry(rules, floor)
        if bench.cuda:
            entry["mean_floor_cpu_ms"] = bench.run(mean_call(bench.x)).ms
        result["sizes"].append(entry)
        del bench
        gc.collect()
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        result["machine"]["loadavg_end"] = loadavg()
        save_json(out, result, indent=2)  # partial results survive (atomic)
    for size in result["sizes"]:
        print_aggregator_table(size)
    print(f"\nwrote {out} in {result['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
