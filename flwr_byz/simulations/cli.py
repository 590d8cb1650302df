"""The ``flwr-byz`` command line (typer). ``run``/``grid``/``plot`` arrive with the simulation
runner; ``aggregators``, ``attacks`` and ``bench`` work now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from flwr_byz.aggregators import AGGREGATORS, WRAPPERS
from flwr_byz.attacks import ATTACKS

app = typer.Typer(help="Byzantine-robust federated learning for Flower.", no_args_is_help=True)


@app.command()
def aggregators() -> None:
    """List the aggregator names usable in spec strings (e.g. 'bucketing:2+median')."""
    typer.echo("base rules: " + ", ".join(sorted(AGGREGATORS)))
    typer.echo("wrappers:   " + ", ".join(sorted(WRAPPERS)) + "  (e.g. nnm+krum, ctma+geomed)")


@app.command()
def attacks() -> None:
    """List the attack names usable in specs (e.g. 'alie:z=1.5', 'sign-flip:scale=10')."""
    for name, cls in ATTACKS.items():
        kind = "omniscient" if getattr(cls, "omniscient", False) else "per-node"
        kind = "data" if getattr(cls, "data_attack", False) else kind
        typer.echo(f"{name:<12} {kind}")


@app.command()
def bench(
    quick: bool = typer.Option(False, help="Only the smallest size (n=20, d=100k)."),
    out: Path = typer.Option(
        Path("benchmarks/results/aggregators.json"), help="Where to write the JSON results."
    ),
) -> None:
    """Run the aggregator benchmark (benchmarks/aggregators.py of a source checkout)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "aggregators.py"
    if not script.exists():
        typer.echo(f"benchmark script not found at {script} (needs a source checkout)", err=True)
        raise typer.Exit(2)
    args = [sys.executable, str(script), "--out", str(out)] + (["--quick"] if quick else [])
    raise typer.Exit(subprocess.call(args))


if __name__ == "__main__":
    app()
