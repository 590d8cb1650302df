"""Byz-EF21-SGDM's dense resets as an attack path, before and after their limits (a check of
our implementation, not a paper's claim).

A Byzantine node may answer with a dense reset (``{"grad": v}``: its copy g_i = v in one round)
instead of a compressed ``c_i`` (TopK moves K of the d coordinates of g_i per round, so ``d/K``
rounds for a whole copy). The Byzantine nodes answer honestly until ``START``, then forge one
omniscient attack vector per round (over the honest nodes' aggregated copies, as
``ByzantineGrid`` does) and send it along one path:

- ``compressed``: ``C(forged - g_i)``, what ``ByzantineGrid`` does;
- ``dense``: a dense reset carrying ``forged`` every round;
- ``adaptive``: a dense reset when the limits let it through (it knows them and the server's
  state), ``C(forged - g_i)`` otherwise: the strongest use of the limits;
- ``silent`` (for scale): replies the server rejects (NaN), so the copy goes stale: what a
  refused reset leaves, and what any node can do by not answering.

each with the limits off (``reset_interval=0, reset_norm_bound=0``: before) and at their
defaults (after), on the batched engine's EF21 driver (the production ``methods.ef21``
functions and the driver's validation; the paths are the only change). Early damage over the
``WINDOW`` rounds from ``START``: the distance of the global model from the attack-free run's
at the same round (same seed: the same samples and minibatches), the mean distance of the
aggregate from the honest copies' mean, and the test accuracy. A last part measures the honest
dense resets' norm ratios (``ef21.reset_norm_ratios``, first contact under partial
participation) against the default bound.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..files import write_json
from ..methods import ef21
from ..simulations.batched.methods import EF21Driver
from ..simulations.batched.setup import Setup
from ..simulations.config import ExperimentConfig
from ..simulations.datasets import eval_split
from ..simulations.local import ensure_task_identity
from ..simulations.runner import prepare
from ..simulations.training import derive_seed, evaluate
from .section import Budget, Section, table
from .workspace import Workspace, pinned

__all__ = ["ATTACKS", "PATHS", "ef21_resets", "measure"]

COMPRESSOR = "topk:0.01"
AGGREGATORS = ("mean", "nnm+cwtm")
ATTACKS = ("gaussian:sigma=1", "ipm:eps=20", "alie", "min-max")
#: (path, limits) of every attacked run; ``adaptive`` with the limits off is ``dense``
PATHS = (
    ("compressed", "after"),
    ("dense", "before"),
    ("dense", "after"),
    ("adaptive", "after"),
    ("silent", "after"),
)
OFF = {"reset_interval": 0, "reset_norm_bound": 0.0}
START = 6  # the first attacked round
WINDOW = 10  # rounds of early damage, from START
TOLERANCE = 1.05  # "no more early damage than a node without resets can do", up to 5%


def base(seed: int, rounds: int, aggregator: str, **kw: Any) -> ExperimentConfig:
    """MNIST-1D MLP, 20 clients, Dirichlet(1), batch 8, lr 1.0, eta 0.1, TopK 1%, float32,
    one thread (pinned)."""
    cfg = dataclasses.replace(
        ExperimentConfig(
            dataset="mnist1d", model="mlp", partition="dirichlet:1.0", clients=20,
            rounds=rounds, lr=1.0, batch_size=8, aggregator=aggregator, momentum=0.9,
            method="byz-ef21-sgdm", compressor=COMPRESSOR, seed=seed, threads=1,
        ),
        **kw,
    )  # fmt: skip
    return pinned(cfg)


class PathDriver(EF21Driver):
    """The EF21 driver whose Byzantine nodes send the forged vector along ``path``."""

    def __init__(self, setup: Setup, path: str, start: int = 1) -> None:
        super().__init__(setup)
        self.path = path
        self.start = start  # the first round the Byzantine nodes attack (honest before)
        self.now = 0
        self.ratios: list[float] = []  # honest resets' norm ratios (ef21.reset_norm_ratios)
        self.deviation: list[float] = []  # per round: |RAgg(copies) - mean(honest copies)|
        honest = ~setup.byzantine_mask(list(range(setup.cfg.clients))).to(setup.device)
        inner = self.aggregate

        def aggregate(rows: torch.Tensor) -> torch.Tensor | None:
            out = inner(rows)
            dev = math.nan
            if out is not None and rows.shape[0] == len(honest):
                dev = float((out - rows[honest].mean(dim=0)).norm())
            self.deviation.append(dev)
            return out

        self.aggregate = aggregate

    def round(self, server_round: int) -> Any:
        self.now = server_round
        return super().round(server_round)

    def _admit(
        self,
        server_round: int,
        parts: list[int],
        vectors: torch.Tensor,
        dense: torch.Tensor,
        accepted: torch.Tensor,
        reasons: Any,
    ) -> torch.Tensor:
        honest = accepted & dense & ~self.setup.byzantine_mask(parts).to(dense.device)
        if bool(honest.any()):
            idx = (accepted & dense).nonzero().reshape(-1)
            ratios = ef21.reset_norm_ratios(
                self.state,
                [parts[i] + 1 for i in idx.tolist()],
                vectors[idx],
                torch.ones(len(idx), dtype=torch.bool, device=vectors.device),
            )
            self.ratios += ratios[honest[idx]].tolist()
        return super()._admit(server_round, parts, vectors, dense, accepted, reasons)

    def _attack(
        self,
        parts: list[int],
        cseeds: list[int],
        vectors: torch.Tensor,
        dense: torch.Tensor,
        ok: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        byz = self.setup.byzantine_mask(parts).to(vectors.device) & ok
        if self.setup.vector_attack is None or not bool(byz.any()) or self.now < self.start:
            return vectors, dense
        nodes = [p + 1 for p in parts]
        offsets = self._offsets(parts)
        aggregated = torch.where(dense[:, None], vectors, offsets + vectors)
        forged, _ = self.forge(aggregated, parts, ok)
        rows = self.state.rows_of(nodes)
        known = self.state.known
        has_copy = torch.tensor(
            [bool(r >= 0 and known is not None and known[r]) for r in rows.tolist()],
            dtype=torch.bool,
            device=vectors.device,
        )
        if self.path == "dense":
            send_dense = byz
        elif self.path == "adaptive":  # dense whenever the limits let it through
            idx = byz.nonzero().reshape(-1)
            too_soon, too_large = ef21.refuse_resets(
                self.state,
                [nodes[i] for i in idx.tolist()],
                forged[idx],
                server_round=self.now,
                interval=self.strategy.reset_interval,
                norm_bound=self.strategy.reset_norm_bound,
            )
            send_dense = byz & ~has_copy
            send_dense[idx[~(too_soon | too_large)]] = True
        else:  # compressed, silent
            send_dense = byz & ~has_copy
        out = vectors.clone()
        out[send_dense] = forged[send_dense]
        if self.path == "silent":
            out[byz & has_copy] = float("nan")  # rejected: the copy stays as it is
            return out, torch.where(byz, ~has_copy, dense)
        compressed = byz & ~send_dense
        if bool(compressed.any()):
            seeds = [s for s, c in zip(cseeds, compressed.tolist(), strict=True) if c]
            diff = forged[compressed] - offsets[compressed]
            out[compressed] = self.compress(diff, seeds).to(out.dtype)
        return out, torch.where(byz, send_dense, dense)


def run_path(cfg: ExperimentConfig, path: str, start: int = 1) -> dict[str, Any]:
    """One run: per round the global model, test accuracy and round metrics; the aggregate's
    deviation, and the honest resets' norm ratios."""
    ensure_task_identity()
    cfg = prepare(cfg)
    setup = Setup.build(cfg)
    driver = PathDriver(setup, path, start)
    x_test, y_test = eval_split(setup.dataset, cfg.eval_samples)
    models, accs, metrics = [], [], []
    for server_round in range(1, cfg.rounds + 1):
        random.seed(derive_seed(cfg.seed, "sample", server_round))
        outcome = driver.round(server_round)
        _, acc = evaluate(setup.fm.load(outcome.vector), x_test, y_test)
        models.append(outcome.vector.detach().clone())
        accs.append(float(acc))
        metrics.append(dict(outcome.metrics))
    return {
        "models": models,
        "acc": accs,
        "metrics": metrics,
        "ratios": driver.ratios,
        "deviation": driver.deviation,
    }


def damage(
    res: dict[str, Any], clean: dict[str, Any], start: int, window: int = WINDOW
) -> dict[str, float]:
    """Early damage in rounds ``start .. start + window - 1``: the model's distance from the
    attack-free run's at the 5th and the last of them, the mean deviation of the aggregate,
    the accuracy at the end; the dense resets taken and refused in them."""
    mid, end = start + 4, start + window - 1

    def dist(r: int) -> float:
        return float((res["models"][r - 1] - clean["models"][r - 1]).norm())

    metrics = res["metrics"][start - 1 : end]
    return {
        "dist_mid": dist(mid),
        "dist_end": dist(end),
        "deviation": statistics.fmean(res["deviation"][start - 1 : end]),
        "acc_end": res["acc"][end - 1],
        "resets": float(sum(int(m.get("resets", 0)) for m in metrics)),
        "refused_limit": float(sum(int(m.get(f"rejected-{ef21.RESET_LIMIT}", 0)) for m in metrics)),
        "refused_norm": float(sum(int(m.get(f"rejected-{ef21.RESET_NORM}", 0)) for m in metrics)),
    }


def honest_ratios(seeds: Sequence[int], rounds: int) -> dict[str, float]:
    """The largest norm ratio (``ef21.reset_norm_ratios``) of an honest dense reset, 5 of 20
    clients per round (late first contacts), no attack, NNM + CWTM, eta 0.1 and 0.01."""
    out = {}
    for eta in (0.1, 0.01):
        seen: list[float] = []
        for seed in seeds:
            cfg = base(seed, rounds, "nnm+cwtm", clients_per_round=5, momentum=1 - eta)
            seen += run_path(cfg, "compressed")["ratios"]
        out[f"eta={eta}"] = max(seen)
    return out


def _setting(b: Budget) -> dict[str, Any]:
    """What the measurement depends on (its file is named by a hash of it)."""
    return {
        "seeds": list(b.seeds),
        "aggregators": list(AGGREGATORS[:1] if b.quick else AGGREGATORS),
        "attacks": list(ATTACKS),
        "start": START,
        "window": WINDOW,
        "ratio_rounds": b.rounds(40, 20),
        "config": base(0, START + WINDOW - 1, "mean", byzantine=4).to_dict(),
        "defaults": [ef21.DEFAULT_RESET_INTERVAL, ef21.DEFAULT_RESET_NORM_BOUND],
    }


def measure(setting: dict[str, Any]) -> dict[str, Any]:
    """Every path's early damage (seed means per aggregator|attack|path|limits), whether the
    compressed path gives the same numbers with the limits off, and the honest ratios."""
    clock = time.perf_counter()
    start, window = setting["start"], setting["window"]
    rounds = start + window - 1
    runs: dict[str, list[dict[str, float]]] = {}
    same = True
    for seed in setting["seeds"]:
        for agg in setting["aggregators"]:
            clean = run_path(base(seed, rounds, agg), "compressed")
            for attack in setting["attacks"]:
                for path, limits in PATHS:
                    params = OFF if limits == "before" else {}
                    cfg = base(seed, rounds, agg, attack=attack, byzantine=4, params=params)
                    got = damage(run_path(cfg, path, start), clean, start, window)
                    runs.setdefault(f"{agg}|{attack}|{path}|{limits}", []).append(got)
                    if path == "compressed":
                        off = dataclasses.replace(cfg, params=OFF)
                        again = damage(run_path(off, path, start), clean, start, window)
                        same &= again == got
    summary = {
        key: {k: statistics.fmean(r[k] for r in rs) for k in rs[0]} for key, rs in runs.items()
    }
    return {
        "setting": setting,
        "summary": summary,
        "compressed_path_same_with_limits_off": same,
        "honest_reset_ratios": honest_ratios(setting["seeds"], setting["ratio_rounds"]),
        "seconds": time.perf_counter() - clock,
    }


def ef21_resets(ws: Workspace) -> Section:
    """The section: measured once per setting (stored under the workspace), then tabulated."""
    setting = _setting(ws.budget)
    digest = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:12]
    out = ws.root / "studies" / f"ef21_resets-{digest}.json"
    if not ws.stored(out):
        write_json(out, measure(setting))
    data = json.loads(out.read_text())
    summary: dict[str, dict[str, float]] = data["summary"]
    aggs, attacks = setting["aggregators"], setting["attacks"]

    def ratio(agg: str, attack: str, path: str, limits: str) -> float:
        ref = summary[f"{agg}|{attack}|compressed|after"]["dist_mid"]
        return summary[f"{agg}|{attack}|{path}|{limits}"]["dist_mid"] / ref

    rows = []
    for agg in aggs:
        for path, limits in PATHS[1:]:
            cells = []
            for attack in attacks:
                cell = f"{ratio(agg, attack, path, limits):.2f}x"
                if (path, limits) == ("dense", "after"):
                    v = summary[f"{agg}|{attack}|{path}|{limits}"]
                    cell += f" ({v['refused_limit']:.0f} / {v['refused_norm']:.0f})"
                cells.append(cell)
            shown = "either" if path == "silent" else limits
            rows.append([agg, path, shown, *cells])
    # with the limits, a resetting attacker against the worse of what any node can do
    # without resets: attack compressed, or stop answering (silent)
    after = [
        ratio(agg, attack, path, "after") / max(1.0, ratio(agg, attack, "silent", "after"))
        for agg in aggs
        for attack in attacks
        for path in ("dense", "adaptive")
    ]
    before = max(ratio(agg, attack, "dense", "before") for agg in aggs for attack in attacks)
    honest = max(data["honest_reset_ratios"].values())
    same = bool(data["compressed_path_same_with_limits_off"])
    holds = max(after) <= TOLERANCE and same and honest < ef21.DEFAULT_RESET_NORM_BOUND
    seeds = setting["seeds"]
    start = setting["start"]
    mid, end = start + 4, start + setting["window"] - 1
    body = [
        f"Setup: Byz-EF21-SGDM, MNIST-1D MLP, 20 clients of which 4 Byzantine (honest until "
        f"round {start}, then attacking every round), Dirichlet(1), batch 8, lr 1.0, eta 0.1, "
        f"TopK 1% (a whole copy takes d/K = 100 compressed rounds, one dense reset), batched "
        f"engine, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} (seed "
        "means). The Byzantine nodes send the forged vector compressed (`C(forged - g_i)`), "
        "as a dense reset every round (dense), as a dense reset whenever the limits let it "
        "through and compressed otherwise (adaptive), or not at all (silent: rejected "
        "replies, a stale copy). Before: `reset_interval=0, reset_norm_bound=0` (no limit); "
        f"after: the defaults (one reset per node per {ef21.DEFAULT_RESET_INTERVAL} rounds, "
        f"norm at most {ef21.DEFAULT_RESET_NORM_BOUND:g}x the copies' median).",
        "",
        f"Early damage: the distance of the model from the attack-free run's (same seed) at "
        f"round {mid}, as a multiple of the compressed path's; for dense after, the resets "
        f"refused in rounds {start}-{end} (rate / norm).",
        "",
        table(["aggregator", "path", "limits", *attacks], rows),
        "",
        f"The compressed path gives the same numbers with the limits off: {same}. Largest norm "
        "ratio of an honest dense reset (a node's first contact, 5 of 20 clients per round, no "
        f"attack, {setting['ratio_rounds']} rounds, NNM + CWTM, eta 0.1 and 0.01): "
        f"{honest:.2f} (the bound: {ef21.DEFAULT_RESET_NORM_BOUND:g}).",
        "",
        "Check: with the limits on, neither the dense nor the adaptive path does more early "
        "damage than the worse of the two paths any node has without resets (compressed, "
        f"silent), up to {TOLERANCE:g}x, under any aggregator and attack; the limits leave the "
        "compressed path's numbers unchanged; and every honest reset is within the norm "
        f"bound: **{'holds' if holds else 'fails'}**.",
    ]
    return Section(
        key="ef21-resets",
        title="Byz-EF21-SGDM: dense resets as an attack path, before and after their limits",
        markdown="\n".join(body),
        summary=f"dense path up to {before:.2f}x the compressed path's damage before; after, "
        f"resets at most {max(after):.2f}x the worse of compressed and silent; check "
        f"{'holds' if holds else 'fails'}",
    )
