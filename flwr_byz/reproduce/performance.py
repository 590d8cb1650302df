"""The performance section: aggregator speed and memory against Flower's built-ins, seconds per
round of every strategy against FedAvg in one Flower simulation, wire bytes per round of each
compressor, and a 1,000-client scale run. Every figure is a ratio to a baseline measured in
the same run, on the same machine."""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ..files import write_text
from ..interrupt import descendants
from ..simulations.config import ExperimentConfig
from ..simulations.engines import run_experiments
from ..simulations.runner import _flower_logging
from .section import Section, table
from .workspace import Workspace, pinned

__all__ = ["performance_report"]

BENCH_MODULE = "flwr_byz.bench.aggregators"  # run as a child process, not imported
BENCH_RULES = "mean,median,trimmedmean,krum,multikrum,bulyan,geomed,nnm+krum,ctma+median"
FULL_SIZES = "20x100000,100x100000,20x1000000,100x1000000"
QUICK_SIZES = "10x1000,20x2000"

#: (label, config fields) of the per-round timing: every strategy of the package vs FedAvg.
STRATEGIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("FedAvg (Flower)", {"method": "fedavg"}),
    ("Flower Krum", {"method": "flower-krum"}),
    ("Flower Bulyan", {"method": "flower-bulyan"}),
    ("RobustFedAvg CWMed", {"method": "robust-fedavg", "aggregator": "cwmed"}),
    ("RobustFedAvg NNM+Krum", {"method": "robust-fedavg", "aggregator": "nnm+krum"}),
    ("RobustFedAvg CTMA+CWMed", {"method": "robust-fedavg", "aggregator": "ctma+cwmed"}),
    ("RobustMomentum CWMed", {"method": "robust-momentum", "aggregator": "cwmed"}),
    ("ByzVRMarinaPP RandK 10%",
     {"method": "byz-vr-marina-pp", "aggregator": "bucketing:2+median", "compressor": "randk:0.1"}),
    ("ByzEF21SGDM TopK 10%",
     {"method": "byz-ef21-sgdm", "aggregator": "nnm+cwtm", "compressor": "topk:0.1"}),
    ("Mu2SGD CTMA+Median", {"method": "mu2sgd", "aggregator": "ctma+median"}),
    ("ByzSGD (5 servers) MDA",
     {"method": "byzsgd", "aggregator": "mda", "params": {"n_servers": 5, "f_servers": 1}}),
)  # fmt: skip

COMPRESSORS = ("none", "randk:0.1", "topk:0.1", "natural", "qsgd:4")


@contextmanager
def _peak_tree_rss() -> Iterator[dict[str, float]]:
    """Peak summed RSS (MiB) of this process and its descendants (Ray's workers), sampled
    every 0.2 s from /proc."""
    out = {"peak_mib": 0.0}
    stop = threading.Event()
    page = os.sysconf("SC_PAGE_SIZE")

    def rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                return int(fh.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            return 0

    def sample() -> None:
        me = os.getpid()
        while not stop.is_set():
            total = rss(me) + sum(rss(p) for p in descendants(me))
            out["peak_mib"] = max(out["peak_mib"], total / 2**20)
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["peak_mib"] = max(out["peak_mib"], own)


def _aggregators(ws: Workspace) -> list[str]:
    out = ws.root / "bench" / "aggregators.json"
    sizes = QUICK_SIZES if ws.budget.quick else FULL_SIZES
    repeats = 1 if ws.budget.quick else 2
    if not ws.stored(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        # a process of its own: one torch thread, and peak memory measured on the benchmark alone
        args = [sys.executable, "-m", BENCH_MODULE, "--sizes", sizes, "--only", BENCH_RULES,
                "--repeats", str(repeats), "--threads", "1",
                "--baselines", "flower_msg,flower_numpy", "--cap-s", "30",
                "--out", str(out)]  # fmt: skip
        with open(out.with_suffix(".log"), "w") as log:  # the benchmark's progress lines
            subprocess.run(args, check=True, stdout=log, stderr=subprocess.STDOUT)
    data = json.loads(out.read_text())
    rows = []
    for size in data["sizes"]:
        for name, r in size["rules"].items():
            msg, numpy, ours = r.get("flower_msg_ms"), r.get("flower_numpy_ms"), r.get("ours_ms")
            rows.append([
                f"{size['n']} x {size['d']:,}", name, _ms(ours), _ms(msg), _ms(numpy),
                _ratio(msg, ours), _ratio(numpy, ours), _mb(r.get("ours_peak_mb")),
                _mb(r.get("flower_msg_peak_mb")),
            ])  # fmt: skip
    return [
        f"**Aggregators against Flower's built-in strategies** (`python -m {BENCH_MODULE} "
        f"--sizes {sizes} --threads 1 --baselines flower_msg,flower_numpy`): float32 [n, d] "
        "inputs, f = n/4 (Bulyan (n-3)/4); 'Flower' is the Message-API strategy's "
        "`aggregate_train` on reply Messages (deserialisation included), 'Flower numpy' the "
        "numpy core it runs on the stacked array; peak = extra RSS during the call (MiB). "
        f"Median of {repeats} timed run(s) after one warm-up (one run when the warm-up exceeds "
        "30 s).",
        "",
        table(
            [
                "n x d",
                "rule",
                "ours (ms)",
                "Flower (ms)",
                "Flower numpy (ms)",
                "Flower / ours",
                "Flower numpy / ours",
                "ours peak",
                "Flower peak",
            ],
            rows,
        ),
    ]


def _ratio(base: float | None, ours: float | None) -> str:
    return f"{base / ours:.1f}x" if base and ours else "-"


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.3g}" if v < 1000 else f"{v:,.0f}")


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _base(rounds: int) -> ExperimentConfig:
    """The performance runs' shared setup: MNIST-1D MLP, 20 clients, no attack (pinned)."""
    return pinned(ExperimentConfig(
        clients=20, byzantine=4, attack="none", rounds=rounds, dataset="mnist1d", model="mlp",
        local_epochs=1, lr=0.1,
    ))  # fmt: skip


def _strategies(ws: Workspace) -> list[str]:
    out = ws.root / "bench" / "strategies.json"
    rounds = 2 if ws.budget.quick else 5
    if not ws.stored(out):
        base = _base(rounds)
        configs = [replace(base, **fields) for _, fields in STRATEGIES]
        with _flower_logging(False, logging.ERROR):
            results = run_experiments(configs, engine="simulation")
        data = {
            label: {
                "seconds": [rec.seconds for rec in r.rounds],
                "bytes_up": r.final["bytes_up"] / rounds,
                "bytes_down": r.final["bytes_down"] / rounds,
            }
            for (label, _), r in zip(STRATEGIES, results, strict=True)
        }
        write_text(out, json.dumps(data, indent=1))  # atomic: a kill leaves no half file
    data = json.loads(out.read_text())

    def per_round(label: str) -> float:  # round 1 includes the nodes' data loading
        secs = data[label]["seconds"]
        return statistics.fmean(secs[1:] if len(secs) > 1 else secs)

    ref = per_round("FedAvg (Flower)")
    rows = [
        [label, f"{per_round(label):.3f}", f"{per_round(label) / ref:.2f}",
         f"{data[label]['bytes_up'] / 1e6:.2f}", f"{data[label]['bytes_down'] / 1e6:.2f}"]
        for label, _ in STRATEGIES
    ]  # fmt: skip
    return [
        f"**Seconds per round of every strategy against FedAvg**, all in one Flower simulation "
        f"(`flwr run` on a local SuperLink with Flower's simulation runtime, Ray: one run for "
        f"all strategies): MNIST-1D MLP, 20 clients, all sampled, no attack, "
        f"{rounds} rounds (the first, which loads the nodes' data, left out). FedAvg-like "
        "strategies train one local epoch per round; the method strategies take one gradient "
        "(or one compressed difference) per client and round. Flower's Bulyan as shipped "
        "(its per-reply `gc.collect()` included).",
        "",
        table(["strategy", "s/round", "x FedAvg", "MB up/round", "MB down/round"], rows),
    ]


def _compressors(ws: Workspace) -> list[str]:
    out = ws.root / "bench" / "compressors.json"
    if not ws.stored(out):
        base = replace(_base(3), method="br-csgd", aggregator="cwmed")
        configs = [replace(base, compressor=c) for c in COMPRESSORS]
        with _flower_logging(False, logging.ERROR):
            results = run_experiments(configs, engine="local")
        data = {
            c: [rec.bytes_up for rec in r.rounds] for c, r in zip(COMPRESSORS, results, strict=True)
        }
        write_text(out, json.dumps(data, indent=1))  # atomic: a kill leaves no half file
    data = json.loads(out.read_text())
    dense = statistics.fmean(data["none"])
    rows = [[c, f"{statistics.fmean(v) / 1e3:.1f}", f"{statistics.fmean(v) / dense:.3f}"]
            for c, v in data.items()]  # fmt: skip
    return [
        "**Wire bytes per round with each compressor** (BR-CSGD, which compresses every reply; "
        "MNIST-1D MLP, 20 clients; the bytes of the reply Messages as serialised, metadata "
        "included; mean of 3 rounds):",
        "",
        table(["compressor", "kB up per round (20 clients)", "x uncompressed"], rows),
    ]


def _scale(ws: Workspace) -> list[str]:
    out = ws.root / "bench" / "scale.json"
    clients, per_round = (200, 10) if ws.budget.quick else (1000, 50)
    rounds = 2 if ws.budget.quick else 5
    if not ws.stored(out):
        cfg = replace(_base(rounds), clients=clients, clients_per_round=per_round,
                      byzantine=clients // 10, attack="sign-flip", method="robust-fedavg",
                      aggregator="cwmed")  # fmt: skip
        start = time.perf_counter()
        with _peak_tree_rss() as peak, _flower_logging(False, logging.ERROR):
            (result,) = run_experiments([cfg], engine="simulation")
        data = {
            "wall_s": time.perf_counter() - start,
            "seconds": [rec.seconds for rec in result.rounds],
            "peak_mib": peak["peak_mib"],
            "accuracy": result.accuracy,
        }
        write_text(out, json.dumps(data, indent=1))  # atomic: a kill leaves no half file
    data = json.loads(out.read_text())
    secs = data["seconds"]
    return [
        f"**Scale run**: {clients:,} virtual clients (MNIST-1D split {clients:,} ways), "
        f"{per_round} sampled per round, 10% Byzantine (SignFlip), RobustFedAvg CWMed, "
        f"Flower's simulation engine, {rounds} rounds: "
        f"{statistics.fmean(secs[1:] or secs):.2f} s per round after the first "
        f"({secs[0]:.1f} s), {data['wall_s']:.0f} s wall with Ray's start, peak memory "
        f"{data['peak_mib']:,.0f} MiB (summed RSS of the process and Ray's workers).",
    ]


def performance_report(ws: Workspace) -> Section:
    body = []
    for part in (_aggregators, _strategies, _compressors, _scale):
        body += [*part(ws), ""]
    return Section(key="performance", title="Performance", markdown="\n".join(body).strip())
