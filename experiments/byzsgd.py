"""Issue 10 experiments: ByzSGD with Byzantine servers and workers on MNIST-1D (ALGORITHMS.md
4.4, claims C4.1 and C4.2), on the ``local`` engine.

    .venv/bin/python experiments/byzsgd.py [--jobs 2] [--rounds 200] [--seeds 0 1] \
        [--out results/issue10]

5 parameter-server replicas (1 Byzantine) and 20 workers (4 Byzantine), IID split, MLP, MDA at
the servers, server attack x worker attack, against a single trusted server with the same
aggregator (``n_servers=1``). Seed 0 goes to ``--out``, seed s to ``<out>-seed<s>``; runs whose
JSON exists are not run again. Writes ``table.md`` and the replica-diameter plot
``diameter.png`` per seed (copied to docs/img by hand) and, for several seeds,
``table-seeds.md`` (the accuracy table, mean and each seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import pct, run_all, tail_acc  # type: ignore[import-not-found]

from flwr_byz.files import atomic_write, write_text
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result

SERVER_ATTACKS = ("none", "negate", "random", "perturb", "stale")
WORKER_ATTACKS = ("none", "sign-flip", "alie")
FILTER_RUNS = (("random", "sign-flip"), ("perturb", "sign-flip"), ("none", "none"))
COMMON = {
    "method": "byzsgd", "aggregator": "mda", "byzantine": 4, "clients": 20,
    "dataset": "mnist1d", "model": "mlp", "partition": "iid", "lr": 0.5, "batch_size": 32,
}  # fmt: skip
PERIOD = 5  # T; the paper's floor(1 / (3 l lr)) is 0 for lr = 0.5, l = 1 (gather every step)


def config(
    out: Path, rounds: int, seed: int, server: str, worker: str, servers: int = 5, rule: str = ""
) -> ExperimentConfig:
    """One run: ``servers`` replicas (1 Byzantine unless a single server) under the attacks."""
    params: dict[str, object] = {"n_servers": servers, "f_servers": int(servers > 1)}
    params |= {"server_attack": server, "gather_period": PERIOD}
    if rule:
        params["worker_rule"] = rule
    name = f"s{servers}-{server}-{worker}{'-' + rule if rule else ''}"
    return ExperimentConfig(
        **COMMON,  # type: ignore[arg-type]
        attack=worker,
        rounds=rounds,
        seed=seed,
        params=params,
        out=str(out / f"{name}.json"),
    )


def runs(out: Path, rounds: int, seed: int) -> dict[str, ExperimentConfig]:
    """name -> config: the ByzSGD grid, the filter variant and the trusted single server."""
    cfgs = {}
    for worker in WORKER_ATTACKS:
        cfgs[f"single/{worker}"] = config(out, rounds, seed, "none", worker, servers=1)
        for server in SERVER_ATTACKS:
            cfgs[f"{server}/{worker}"] = config(out, rounds, seed, server, worker)
    for server, worker in FILTER_RUNS:
        cfgs[f"filter/{server}/{worker}"] = config(out, rounds, seed, server, worker, rule="filter")
    return cfgs


def first_round(r: Result, target: float) -> int | None:
    """The first round whose trailing mean accuracy reaches ``target``."""
    for i in range(len(r.rounds)):
        if tail_acc(r, i) >= target:
            return r.rounds[i].round
    return None


def table(cfgs: dict[str, ExperimentConfig]) -> str:
    res = {k: Result.load(c.out) for k, c in cfgs.items() if c.out}
    lines = ["## Accuracy (%), mean of the last 10 rounds: server attack x worker attack", ""]
    lines.append("| server attack | " + " | ".join(WORKER_ATTACKS) + " |")
    lines.append("|---|" + "---|" * len(WORKER_ATTACKS))
    rows = [("single trusted server", "single")] + [(s, s) for s in SERVER_ATTACKS]
    for label, key in rows:
        cells = [pct(tail_acc(res[f"{key}/{w}"])) for w in WORKER_ATTACKS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Synchronous variant (worker filters)", ""]
    lines.append(
        "| server / worker attack | median rule | filter rule | rejected | fallbacks "
        "| MB down per round (median / filter) |"
    )
    lines.append("|---|---|---|---|---|---|")
    for server, worker in FILTER_RUNS:
        r = res[f"filter/{server}/{worker}"]
        m = res[f"{server}/{worker}"]
        rej = sum(rec.metrics.get("filter-rejected", 0) for rec in r.rounds)
        fb = sum(rec.metrics.get("filter-fallback", 0) for rec in r.rounds)
        down = [sum(x.bytes_down for x in z.rounds) / len(z.rounds) / 1e6 for z in (m, r)]
        lines.append(
            f"| {server} / {worker} | {pct(tail_acc(m))} | {pct(tail_acc(r))} | {rej:.0f} "
            f"| {fb:.0f} | {down[0]:.2f} / {down[1]:.2f} |"
        )
    lines += ["", "## Steps and bytes (C4.1)", ""]
    lines.append(
        "| run | rounds to 90% of the single server's accuracy | single server | "
        "MB down per round | MB up per round |"
    )
    lines.append("|---|---|---|---|---|")
    for worker in WORKER_ATTACKS:
        single = res[f"single/{worker}"]
        target = 0.9 * tail_acc(single)
        for key in (f"single/{worker}", f"none/{worker}", f"negate/{worker}"):
            r = res[key]
            n = len(r.rounds)
            lines.append(
                f"| {key} | {first_round(r, target) or 'never'} | {first_round(single, target)} "
                f"| {sum(x.bytes_down for x in r.rounds) / n / 1e6:.2f} "
                f"| {sum(x.bytes_up for x in r.rounds) / n / 1e6:.2f} |"
            )
    lines += ["", "## DMC (C4.2): honest diameter before / after each gather", ""]
    lines.append("| run | gathers | shrank at | mean before | mean after |")
    lines.append("|---|---|---|---|---|")
    for key in ("none/none", "negate/sign-flip", "random/alie", "stale/sign-flip"):
        gathers = [x.metrics for x in res[key].rounds if x.metrics.get("gather")]
        before = [m["diameter-before-gather"] for m in gathers]
        after = [m["diameter"] for m in gathers]
        shrank = sum(a < b for a, b in zip(after, before, strict=True))
        lines.append(
            f"| {key} | {len(gathers)} | {shrank} | {sum(before) / len(before):.4f} "
            f"| {sum(after) / len(after):.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot(cfgs: dict[str, ExperimentConfig], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("none/none", "negate/sign-flip", "random/alie", "stale/sign-flip"):
        r = Result.load(str(cfgs[key].out))
        ax.plot([x.round for x in r.rounds], [x.metrics["diameter"] for x in r.rounds], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("max distance between honest replicas")
    ax.set_title(f"ByzSGD replica diameter (DMC every T = {PERIOD} steps)")
    ax.legend(fontsize=8)
    for key in ("single/sign-flip", "none/sign-flip", "negate/sign-flip", "random/sign-flip"):
        r = Result.load(str(cfgs[key].out))
        bx.plot([x.round for x in r.rounds], [x.accuracy for x in r.rounds], label=key)
    bx.set_xlabel("step")
    bx.set_ylabel("test accuracy")
    bx.set_title("server attack / SignFlip workers (4 of 20)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt.close(fig)


def seeds_table(results: list[dict[str, Result]]) -> str:
    """The accuracy table over seeds: ``mean (seed 0 / seed 1 / ...)``."""
    lines = ["## Accuracy (%), mean over seeds (each seed): server x worker attack", ""]
    lines.append("| server attack | " + " | ".join(WORKER_ATTACKS) + " |")
    lines.append("|---|" + "---|" * len(WORKER_ATTACKS))
    keys = [("single trusted server", "single")] + [(s, s) for s in SERVER_ATTACKS]
    keys += [(f"filter rule, {s}", f"filter/{s}") for s, w in FILTER_RUNS if w == "none"]
    for label, key in keys:
        cells = []
        for w in WORKER_ATTACKS:
            accs = [tail_acc(r[f"{key}/{w}"]) for r in results if f"{key}/{w}" in r]
            if not accs:
                cells.append("")
                continue
            each = " / ".join(pct(a) for a in accs)
            cells.append(f"{pct(sum(accs) / len(accs))} ({each})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--seed", type=int, help="one seed, written to --out itself")
    parser.add_argument("--out", default="results/issue10")
    args = parser.parse_args()
    results = []
    for seed in [args.seed] if args.seed is not None else args.seeds:
        plain = seed == 0 or args.seed is not None  # no "-seed<s>" suffix
        out = Path(args.out if plain else f"{args.out}-seed{seed}")
        cfgs = runs(out, args.rounds, seed)
        run_all(list(cfgs.values()), args.jobs)
        text = table(cfgs)
        write_text(out / "table.md", text)
        plot(cfgs, out / "diameter.png")
        print(f"# seed {seed}\n\n{text}")
        results.append({k: Result.load(str(c.out)) for k, c in cfgs.items()})
    if len(results) > 1:
        text = seeds_table(results)
        write_text(Path(args.out) / "table-seeds.md", text)
        print(text)


if __name__ == "__main__":
    main()
