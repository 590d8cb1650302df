"""Seconds per round of flwr-byz's engines against a plain torch loop of the same math.

For every model (MNIST-1D ``mlp`` and ``cnn1d``), client count (20, 100, 1,000) and method
(FedAvg; RobustFedAvg with NNM+Krum; Byz-EF21-SGDM with TopK 10 % and NNM+CWTM; mu2-SGD with
CTMA+Median; ByzSGD), a few rounds run on each engine, all in one process and one run:

* ``plain``: a hand-written torch loop of the same math (:mod:`flwr_byz.bench.plain`):
  per-client minibatch gradients with autograd one client after the other, the method's client
  and server steps and the robust rule written out; the same seeds, so it reaches the same
  model as the ``local`` engine. The floor.
* ``batched`` (``batched-cuda`` with ``--device cpu,cuda``), ``local`` and ``simulation``:
  ``flwr_byz.simulations.engines.run_experiment(s)``.

Seconds per round are the engines' own ``RoundRecord.seconds`` (sampling, messaging, client
work, aggregation; not the central evaluation), averaged over the rounds after the first (it
carries one-time costs: the nodes' data loading, caches); the plain loop is timed the same way.
Every cell runs with ``--threads`` torch threads (default 1; the simulation engine's ClientApp
actors have one each, ``cores`` of them side by side). A cell whose estimated time (from the
same engine, method and model at fewer clients) exceeds ``--cell-budget-s`` is skipped with the
reason. Then the goal figure: ``--goal-clients`` x ``--goal-rounds`` of Byz-EF21-SGDM on the
batched engine. Results: JSON (``--out``, rewritten after every cell) and a text table
(``--txt``), printed too; both relative to the current directory. Run ``python -m
flwr_byz.bench.engines`` or ``flwr-byz bench engines``; see benchmarks/README.md in the source
repository.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from flwr_byz.files import write_text

from .engine_runs import EngineBench, ratios
from .engine_setup import (
    CLIENTS,
    ENGINES,
    METHODS,
    MODELS,
    QUICK_CLIENTS,
    QUICK_MODELS,
)
from .report import engine_table

__all__ = ["main", "parse_args"]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="MLP, 20 clients, 3 rounds; goal 10 rounds")
    p.add_argument("--out", default="benchmarks/results/engines.json", help="JSON output")
    p.add_argument("--txt", help="text table output (default: --out with .txt)")
    p.add_argument("--models", help=f"comma list of {','.join(MODELS)}")
    p.add_argument("--clients", help="comma list of client counts (default 20,100,1000)")
    p.add_argument("--methods", help=f"comma list of {','.join(METHODS)} (default all)")
    p.add_argument(
        "--engines", default=",".join(ENGINES), help="comma list of plain,batched,local,simulation"
    )
    p.add_argument(
        "--device", default="cpu", help="batched engine device(s): cpu, cuda or cpu,cuda"
    )
    p.add_argument("--rounds", type=int, help="rounds of every cell (default: per engine and size)")
    p.add_argument(
        "--cell-budget-s", type=float, default=180.0, help="skip a cell estimated longer"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of every cell (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-goal", dest="goal", action="store_false", help="skip the goal figure")
    p.add_argument("--goal-clients", type=int, default=1000)
    p.add_argument("--goal-rounds", type=int, help="default 100 (10 with --quick)")
    p.add_argument("--goal-models", default="mlp", help="comma list (default mlp)")
    p.add_argument("--goal-threads", type=int, default=0, help="0: auto (the cores)")
    args = p.parse_args(argv)
    args.models = _csv(args.models) if args.models else list(QUICK_MODELS if args.quick else MODELS)
    args.clients = (
        [int(c) for c in _csv(args.clients)]
        if args.clients
        else list(QUICK_CLIENTS if args.quick else CLIENTS)
    )
    args.methods = _csv(args.methods) if args.methods else list(METHODS)
    args.goal_models = _csv(args.goal_models)
    args.devices = _csv(args.device)
    args.goal_rounds = args.goal_rounds or (10 if args.quick else 100)
    unknown = sorted(set(args.methods) - set(METHODS)) + sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown method(s)/model(s) {unknown}")
    engine_list = []
    for e in _csv(args.engines):
        if e not in ENGINES:
            p.error(f"unknown engine {e!r}; known: {list(ENGINES)}")
        if e == "batched":
            engine_list += ["batched" if d == "cpu" else f"batched-{d}" for d in args.devices]
        else:
            engine_list.append(e)
    args.engine_list = engine_list
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; write the JSON and the table, print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # the plain loop's; the engines set their own
    bench = EngineBench(args)
    bench.doc["config"]["engines"] = args.engine_list
    bench.grid()
    bench.doc["ratios"] = ratios(bench.doc["cells"])
    if args.goal:
        bench.goal()
    bench.save()
    text = engine_table(bench.doc)
    txt = Path(args.txt) if args.txt else Path(args.out).with_suffix(".txt")
    write_text(txt, text)
    print(text)
    print(f"wrote {args.out} and {txt} in {bench.doc['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
