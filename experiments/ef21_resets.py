"""Issue 23: Byz-EF21-SGDM's dense resets as an attack path, before and after their limits.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/ef21_resets.py [--seeds 0 1 2]
        [--out results/ef21-resets]

A Byzantine node may answer with a dense reset (``{"grad": v}``: its copy g_i = v in one
round) instead of a compressed ``c_i`` (TopK moves K of the d coordinates of g_i per round, so
``d/K`` rounds for a whole copy). The Byzantine nodes answer honestly until ``--start``, then
forge one omniscient attack vector per round (over the honest nodes' aggregated copies, as
``ByzantineGrid`` does) and send it along one path:

- ``compressed``: ``C(forged - g_i)``, what ``ByzantineGrid`` does;
- ``dense``: a dense reset carrying ``forged`` every round;
- ``adaptive``: a dense reset when the limits let it through (it knows them and the server's
  state), ``C(forged - g_i)`` otherwise: the strongest use of the limits;
- ``silent`` (for scale): replies the server rejects (NaN), so the copy goes stale: what a
  refused reset leaves, and what any node can do by not answering.

each with the limits off (``reset_interval=0, reset_norm_bound=0``: before) and at their
defaults (after), on the batched engine (the production ``methods.ef21`` functions and the EF21
driver's validation; the paths are the only change). Early damage, over the 10 rounds from
``--start``: the distance of the global model from the attack-free run's at the same round
(same seed: the same samples and minibatches), the mean distance of the aggregate from the
honest copies' mean, and the test accuracy. A last part measures the honest dense resets'
norm ratios (``ef21.reset_norm_ratios``, first contact under partial participation) against
the default bound. Writes ``results.json`` and ``table.md`` to ``--out``; about 3 minutes on
one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flwr_byz.files import write_json, write_text
from flwr_byz.methods import ef21
from flwr_byz.simulations.batched.methods import EF21Driver
from flwr_byz.simulations.batched.setup import Setup
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.local import ensure_task_identity
from flwr_byz.simulations.runner import prepare
from flwr_byz.simulations.training import derive_seed, evaluate

AGGREGATORS = ("mean", "nnm+cwtm")
ATTACKS = ("gaussian:sigma=1", "ipm:eps=20", "alie", "min-max")
#: (path, limits) of every attacked run; ``adaptive`` with the limits off is ``dense``
RUNS = (
    ("compressed", "after"),
    ("dense", "before"),
    ("dense", "after"),
    ("adaptive", "after"),
    ("silent", "after"),
)
OFF = {"reset_interval": 0, "reset_norm_bound": 0.0}
WINDOW = 10  # rounds of early damage, from --start


def base(seed: int, rounds: int, compressor: str, aggregator: str, **kw: Any) -> ExperimentConfig:
    """MNIST-1D MLP, 20 clients, Dirichlet(1), batch 8, lr 1.0, eta 0.1 (the issue-8 setting of
    docs/EXPERIMENTS.md), float32, one thread."""
    return dataclasses.replace(
        ExperimentConfig(
            dataset="mnist1d", model="mlp", partition="dirichlet:1.0", clients=20,
            rounds=rounds, lr=1.0, batch_size=8, aggregator=aggregator, momentum=0.9,
            method="byz-ef21-sgdm", compressor=compressor, seed=seed, threads=1,
        ),
        **kw,
    )  # fmt: skip


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


def run(cfg: ExperimentConfig, path: str, start: int = 1) -> dict[str, Any]:
    """One run: per round the global model, test loss and accuracy, the round metrics, the
    aggregate's deviation, and the honest resets' norm ratios."""
    ensure_task_identity()
    cfg = prepare(cfg)
    setup = Setup.build(cfg)
    driver = PathDriver(setup, path, start)
    x_test, y_test = setup.dataset.x_test, setup.dataset.y_test
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


def damage(res: dict[str, Any], clean: dict[str, Any], start: int) -> dict[str, float]:
    """Early damage in rounds ``start .. start + WINDOW - 1``: the model's distance from the
    attack-free run's at the 5th and the last of them, the mean deviation of the aggregate,
    the accuracy at the end; the dense resets taken and refused after ``start``."""
    mid, end = start + 4, start + WINDOW - 1

    def dist(r: int) -> float:
        return float((res["models"][r - 1] - clean["models"][r - 1]).norm())

    window = res["metrics"][start - 1 : end]
    return {
        "dist_mid": dist(mid),
        "dist_end": dist(end),
        "deviation": statistics.fmean(res["deviation"][start - 1 : end]),
        "acc_end": res["acc"][end - 1],
        "resets": float(sum(int(m.get("resets", 0)) for m in window)),
        "refused_limit": float(sum(int(m.get(f"rejected-{ef21.RESET_LIMIT}", 0)) for m in window)),
        "refused_norm": float(sum(int(m.get(f"rejected-{ef21.RESET_NORM}", 0)) for m in window)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--start", type=int, default=6, help="first attacked round")
    parser.add_argument("--compressor", default="topk:0.01")
    parser.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    parser.add_argument("--out", default="results/ef21-resets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    clock = time.perf_counter()
    rounds = args.start + WINDOW - 1
    runs: dict[str, list[dict[str, float]]] = {}
    same = True  # the compressed path with the limits off gives the same numbers
    for seed in args.seeds:
        for agg in args.aggregators:
            clean = run(base(seed, rounds, args.compressor, agg), "compressed")
            for attack in args.attacks:
                for path, limits in RUNS:
                    params = OFF if limits == "before" else {}
                    cfg = base(
                        seed, rounds, args.compressor, agg, attack=attack, byzantine=4,
                        params=params,
                    )  # fmt: skip
                    got = damage(run(cfg, path, args.start), clean, args.start)
                    runs.setdefault(f"{agg}|{attack}|{path}|{limits}", []).append(got)
                    if path == "compressed":
                        off = dataclasses.replace(cfg, params=OFF)
                        same &= damage(run(off, path, args.start), clean, args.start) == got
                    print(f"seed {seed} {agg} {attack} {path} {limits}: {got}", flush=True)
    summary = {
        key: {k: statistics.fmean(r[k] for r in rs) for k in rs[0]} for key, rs in runs.items()
    }
    ratios = honest_ratios(args.seeds, args.compressor)
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python experiments/ef21_resets.py --seeds "
        + " ".join(map(str, args.seeds))
        + f" --start {args.start} --compressor {args.compressor}",
        "setting": base(0, rounds, args.compressor, "/".join(args.aggregators)).to_dict()
        | {"byzantine": 4, "start": args.start},
        "defaults": {
            "reset_interval": ef21.DEFAULT_RESET_INTERVAL,
            "reset_norm_bound": ef21.DEFAULT_RESET_NORM_BOUND,
        },
        "runs": runs,
        "summary": summary,
        "compressed_path_same_with_limits_off": same,
        "honest_reset_ratios": ratios,
        "seconds": time.perf_counter() - clock,
    }
    text = table(summary, args, ratios, same)
    write_json(out / "results.json", result)
    write_text(out / "table.md", text)
    print(text)


def honest_ratios(seeds: Sequence[int], compressor: str, rounds: int = 40) -> dict[str, float]:
    """The largest norm ratio (``ef21.reset_norm_ratios``) of an honest dense reset, 5 of 20
    clients per round (late first contacts), no attack, NNM + CWTM, eta 0.1 and 0.01."""
    out = {}
    for eta in (0.1, 0.01):
        seen: list[float] = []
        for seed in seeds:
            cfg = base(seed, rounds, compressor, "nnm+cwtm", clients_per_round=5, momentum=1 - eta)
            seen += run(cfg, "compressed")["ratios"]
        out[f"eta={eta}"] = max(seen)
    return out


def table(
    summary: dict[str, dict[str, float]],
    args: argparse.Namespace,
    ratios: dict[str, float],
    same: bool,
) -> str:
    """The markdown table: per aggregator, attack and path, before and after."""
    s, mid, end = args.start, args.start + 4, args.start + WINDOW - 1
    lines = [
        f"Byz-EF21-SGDM, MNIST-1D MLP, 20 clients (4 Byzantine, honest until round {s}), "
        f"{args.compressor}, eta 0.1, seeds {' '.join(map(str, args.seeds))} (means). "
        f"dist@r: distance of the model from the attack-free run's at round r; dev: mean "
        f"distance of the aggregate from the honest copies' mean, rounds {s}-{end}; acc: test "
        f"accuracy (%) at round {end}; resets: dense resets taken in rounds {s}-{end}; refused: "
        f"refused for the rate / for the norm. Before: reset_interval=0, reset_norm_bound=0; "
        f"after: the defaults "
        f"({ef21.DEFAULT_RESET_INTERVAL}, {ef21.DEFAULT_RESET_NORM_BOUND:g}); the compressed "
        f"and silent paths send no reset after the first (the same numbers either way).",
        "",
        f"| aggregator | attack | path | limits | dist@{mid} | dist@{end} | dev | acc "
        "| resets | refused | x compressed (dist@" + str(mid) + ") |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, v in summary.items():
        agg, attack, path, limits = key.split("|")
        ref = summary[f"{agg}|{attack}|compressed|after"]["dist_mid"]
        shown = "both" if path in ("compressed", "silent") else limits
        lines.append(
            f"| {agg} | {attack} | {path} | {shown} | {v['dist_mid']:.3f} | {v['dist_end']:.3f} "
            f"| {v['deviation']:.4f} | {100 * v['acc_end']:.1f} | {v['resets']:.1f} "
            f"| {v['refused_limit']:.1f} / {v['refused_norm']:.1f} | {v['dist_mid'] / ref:.2f} |"
        )
    lines += [
        "",
        f"The compressed path gives the same numbers with the limits off: {same}.",
        "Largest norm ratio of an honest dense reset (first contact, 5 of 20 clients per round, "
        "no attack, 40 rounds, NNM + CWTM): "
        + ", ".join(f"{k}: {v:.2f}" for k, v in ratios.items())
        + f" (the default bound: {ef21.DEFAULT_RESET_NORM_BOUND:g}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
