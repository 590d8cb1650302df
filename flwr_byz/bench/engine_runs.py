"""The engine benchmark's cells: one (engine, method, model, clients) run each, timed in
seconds per round, kept in the JSON document with the ratios between engines; then the goal
figure (``goal_clients`` x ``goal_rounds`` of Byz-EF21-SGDM on the batched engine).

Seconds per round are the engines' own ``RoundRecord.seconds`` (sampling, messaging, client
work, aggregation; not the central evaluation), averaged over the rounds after the first (it
carries one-time costs); the plain loop (:mod:`.plain`) is timed the same way. A cell whose
estimated time (the same engine, method and model at fewer clients, scaled linearly) exceeds
the cell budget is skipped with the reason, as is one that raises.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from flwr_byz.simulations import engines
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result
from flwr_byz.simulations.runner import _flower_logging

from .engine_setup import DATASET, METHODS, experiment, rounds_for
from .machine import engine_machine, loadavg
from .plain import run_plain
from .report import describe_error, log, save_json

__all__ = ["EngineBench", "ratios", "steady"]


def steady(seconds: Sequence[float]) -> float:
    """Seconds per round: the mean over the rounds after the first (the only one if one)."""
    if not seconds:
        return math.nan
    return statistics.fmean(seconds[1:]) if len(seconds) > 1 else float(seconds[0])


class EngineBench:
    """Runs the cells, keeps the JSON document and the measured rates for the estimates."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.doc: dict[str, Any] = {
            "machine": engine_machine(args.devices),
            "config": {
                "dataset": DATASET,
                "threads": args.threads,
                "cell_budget_s": args.cell_budget_s,
                "seed": args.seed,
                "methods": {k: {"label": METHODS[k][0], **METHODS[k][1]} for k in args.methods},
                "f": "max(1, clients // 10), no Byzantine client",
                "seconds_per_round": "mean of RoundRecord.seconds over the rounds after the "
                "first (plain loop: the same span, timed here)",
            },
            "cells": [],
            "ratios": [],
            "goal": None,
        }
        self.rates: dict[tuple[str, str, str], tuple[int, float]] = {}
        self.started = time.perf_counter()

    # --- bookkeeping ----------------------------------------------------------------------
    def save(self) -> None:
        self.doc["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.doc["machine"]["loadavg_end"] = loadavg()
        save_json(self.args.out, self.doc, indent=1)  # atomic

    def estimate(
        self, engine: str, method: str, model: str, clients: int, rounds: int
    ) -> str | None:
        """Why the cell is skipped (its estimated time exceeds the budget), or None."""
        known = self.rates.get((engine, method, model))
        if known is None:
            return None
        n0, per_round = known
        est = per_round * clients / n0 * rounds
        if est <= self.args.cell_budget_s:
            return None
        return (
            f"skipped: estimated {est:.0f} s > cell budget {self.args.cell_budget_s:.0f} s "
            f"({per_round:.3g} s/round at {n0} clients, x {clients / n0:g} clients, "
            f"{rounds} rounds)"
        )

    def cell(
        self, engine: str, method: str, model: str, clients: int, rounds: int
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "engine": engine,
            "method": method,
            "label": METHODS[method][0],
            "model": model,
            "clients": clients,
            "rounds": rounds,
            "s_per_round": None,
            "round_seconds": [],
            "wall_s": None,
            "final_loss": None,
            "final_accuracy": None,
            "threads": None,
            "skipped": None,
        }
        self.doc["cells"].append(entry)
        return entry

    def record(
        self,
        entry: dict[str, Any],
        seconds: Sequence[float],
        wall: float,
        loss: float,
        acc: float,
        threads: Any,
    ) -> None:
        entry.update(
            s_per_round=steady(seconds),
            round_seconds=[round(s, 5) for s in seconds],
            wall_s=round(wall, 2),
            final_loss=loss if math.isfinite(loss) else None,
            final_accuracy=acc if math.isfinite(acc) else None,
            threads=threads,
        )
        key = (entry["engine"], entry["method"], entry["model"])
        self.rates[key] = (entry["clients"], entry["s_per_round"])
        log(
            f"  {entry['engine']:<12} {entry['label']:<28} {entry['s_per_round']:.4f} s/round "
            f"({len(seconds)} rounds, {wall:.1f} s)"
        )
        self.save()

    def skip(self, entry: dict[str, Any], reason: str) -> None:
        entry["skipped"] = reason
        log(f"  {entry['engine']:<12} {entry['label']:<28} {reason}")
        self.save()

    # --- engines --------------------------------------------------------------------------
    def run_plain(self, method: str, model: str, clients: int) -> None:
        rounds = rounds_for("plain", clients, self.args)
        entry = self.cell("plain", method, model, clients, rounds)
        reason = self.estimate("plain", method, model, clients, rounds)
        if reason:
            return self.skip(entry, reason)
        cfg = experiment(method, model, clients, rounds, self.args.threads, self.args.seed)
        try:
            start = time.perf_counter()
            seconds, loop = run_plain(cfg)
            wall = time.perf_counter() - start
            loss, acc = loop.evaluate()
        except Exception as exc:  # a failing cell is recorded, the others still run
            return self.skip(entry, describe_error(exc))
        self.record(entry, seconds, wall, loss, acc, torch.get_num_threads())

    def run_engine(self, engine: str, method: str, model: str, clients: int) -> None:
        """``batched`` / ``batched-cuda`` / ``local``: one ``run_experiment`` per cell."""
        base, _, device = engine.partition("-")
        rounds = rounds_for(engine, clients, self.args)
        entry = self.cell(engine, method, model, clients, rounds)
        if base not in engines.ENGINES:
            return self.skip(
                entry, f"skipped: engine {base!r} is not available ({engines.ENGINES})"
            )
        cfg = experiment(method, model, clients, rounds, self.args.threads, self.args.seed)
        if device:
            if "device" not in {f.name for f in dataclasses.fields(ExperimentConfig)}:
                return self.skip(entry, "skipped: ExperimentConfig has no 'device' option")
            if device.startswith("cuda") and not torch.cuda.is_available():
                return self.skip(entry, "skipped: CUDA is not available")
            cfg = dataclasses.replace(cfg, device=device)
        reason = self.estimate(engine, method, model, clients, rounds)
        if reason:
            return self.skip(entry, reason)
        try:
            start = time.perf_counter()
            with _flower_logging(False, logging.ERROR):
                result = engines.run_experiment(cfg, engine=base)
            wall = time.perf_counter() - start
        except Exception as exc:
            return self.skip(entry, describe_error(exc))
        self._record_result(entry, result, wall)

    def _record_result(self, entry: dict[str, Any], result: Result, wall: float) -> None:
        seconds = [r.seconds for r in result.rounds]
        self.record(
            entry,
            seconds,
            wall,
            result.final.get("loss", math.nan),
            result.accuracy,
            result.config.get("threads"),
        )

    def run_simulation(self, methods: Sequence[str], model: str, clients: int) -> None:
        """The ``simulation`` cells of one model and client count: one Flower simulation (Ray
        starts once) for every method that fits the budget."""
        rounds = rounds_for("simulation", clients, self.args)
        todo: list[tuple[dict[str, Any], ExperimentConfig]] = []
        for method in methods:
            entry = self.cell("simulation", method, model, clients, rounds)
            reason = self.estimate("simulation", method, model, clients, rounds)
            if reason:
                self.skip(entry, reason)
                continue
            cfg = experiment(method, model, clients, rounds, self.args.threads, self.args.seed)
            todo.append((entry, cfg))
        if not todo:
            return
        try:
            start = time.perf_counter()
            with _flower_logging(False, logging.ERROR):
                results = engines.run_experiments([c for _, c in todo], engine="simulation")
            wall = time.perf_counter() - start
        except Exception as exc:
            for entry, _ in todo:
                self.skip(entry, describe_error(exc))
            return
        for (entry, _), result in zip(todo, results, strict=True):
            entry["simulation_wall_s"] = round(wall, 2)  # Ray's start and every method
            entry["client_threads"] = result.config.get("client_threads")
            self._record_result(entry, result, wall / len(todo))

    # --- the grid and the goal ------------------------------------------------------------
    def grid(self) -> None:
        args = self.args
        for model in args.models:
            for clients in args.clients:
                log(f"[{DATASET} {model}, {clients} clients]")
                for engine in args.engine_list:
                    if engine == "simulation":
                        self.run_simulation(args.methods, model, clients)
                        continue
                    for method in args.methods:
                        if engine == "plain":
                            self.run_plain(method, model, clients)
                        else:
                            self.run_engine(engine, method, model, clients)
                        gc.collect()
                self.doc["ratios"] = ratios(self.doc["cells"])
                self.save()

    def goal(self) -> None:
        """``goal_clients`` x ``goal_rounds`` of Byz-EF21-SGDM on the batched engine."""
        args = self.args
        goals: list[dict[str, Any]] = []
        self.doc["goal"] = goals
        for model in args.goal_models:
            cfg = experiment(
                "byz-ef21-sgdm",
                model,
                args.goal_clients,
                args.goal_rounds,
                args.goal_threads,
                args.seed,
            )
            device = args.devices[-1]
            entry: dict[str, Any] = {
                "method": "byz-ef21-sgdm",
                "model": model,
                "clients": args.goal_clients,
                "rounds": args.goal_rounds,
                "engine": "batched",
                "device": device,
                "target_s": 60.0,
                "skipped": None,
            }
            goals.append(entry)
            log(
                f"[goal: {args.goal_clients} clients x {args.goal_rounds} rounds, "
                f"{model}, {device}]"
            )
            if "batched" not in engines.ENGINES:
                entry["skipped"] = f"skipped: engine 'batched' is not available ({engines.ENGINES})"
                continue
            if device != "cpu":
                if device.startswith("cuda") and not torch.cuda.is_available():
                    entry["skipped"] = "skipped: CUDA is not available"
                    continue
                cfg = dataclasses.replace(cfg, device=device)
            try:
                start = time.perf_counter()
                with _flower_logging(False, logging.ERROR):
                    result = engines.run_experiment(cfg, engine="batched")
                wall = time.perf_counter() - start
            except Exception as exc:
                entry["skipped"] = describe_error(exc)
                log(f"  {entry['skipped']}")
                continue
            train = sum(r.seconds for r in result.rounds)
            entry.update(
                wall_s=round(wall, 2),
                train_s=round(train, 2),
                s_per_round=steady([r.seconds for r in result.rounds]),
                final_accuracy=result.accuracy,
                threads=result.config.get("threads"),
                met=wall < 60.0,
            )
            log(f"  wall {wall:.1f} s (rounds {train:.1f} s), accuracy {result.accuracy:.3f}")
            self.save()


def ratios(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, clients, method): each engine's s/round, ``x_local`` = local / engine
    (speed-up over the local engine) and ``x_plain`` = engine / plain (times the floor)."""
    by_key: dict[tuple[str, int, str], dict[str, float]] = {}
    for c in cells:
        if c["s_per_round"] is None:
            continue
        by_key.setdefault((c["model"], c["clients"], c["method"]), {})[c["engine"]] = c[
            "s_per_round"
        ]
    out = []
    for (model, clients, method), secs in by_key.items():
        local, plain = secs.get("local"), secs.get("plain")
        row: dict[str, Any] = {
            "model": model,
            "clients": clients,
            "method": method,
            "s_per_round": dict(secs),
            "x_local": {e: local / s for e, s in secs.items() if local and s > 0},
            "x_plain": {e: s / plain for e, s in secs.items() if plain},
        }
        out.append(row)
    return out
