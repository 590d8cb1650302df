"""Run several (strategy, attack) trainings inside ONE Flower simulation.

Ray's start-up costs ~10 s on 2 cores while a warm round of 20 clients costs ~0.2 s, so the
accuracy tests run every configuration as a separate training (fresh model, same seed) one
after the other from a single ServerApp: each is a complete ``strategy.start`` on the same
virtual nodes, which hold no state between runs (the standard ClientApp is stateless).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.simulation import run_simulation

from .standard_app.client_app import app as standard_client_app
from .standard_app.task import Net, _digits
from .standard_app.task import test as test_fn


@dataclass(frozen=True)
class Run:
    """One training: a strategy factory and a grid factory (None: the plain grid)."""

    name: str
    strategy: Callable[[], Strategy]
    grid: Callable[[Grid], Grid] | None = None
    lr: float | None = None
    rounds: int | None = None


def central_accuracy(arrays: ArrayRecord) -> tuple[float, float]:
    """(loss, accuracy) of the model on the held-out digits split."""
    net = Net()
    net.load_state_dict(arrays.to_torch_state_dict())
    _, _, x, y = _digits()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=512
    )
    return test_fn(net, loader, torch.device("cpu"))


def _evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    loss, acc = central_accuracy(arrays)
    return MetricRecord({"loss": loss, "accuracy": acc})


def simulate(
    runs: Sequence[Run],
    num_supernodes: int = 20,
    num_rounds: int = 20,
    lr: float = 0.1,
    last: int = 3,
    client_app: ClientApp = standard_client_app,
) -> dict[str, dict]:
    """Run every ``Run`` in one simulation.

    Returns name -> {"accuracy": mean held-out accuracy of the last ``last`` rounds (one
    round's accuracy jitters by a few points: client shuffling is unseeded in the standard
    app), "curve": accuracy per round (round 0 = initial model), "metrics": train metrics per
    round, "client_eval": client-side evaluation metrics per round, "attacked": replies the
    ByzantineGrid rewrote}.
    """
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        out: dict[str, dict] = {}
        for run in runs:
            torch.manual_seed(0)
            initial = ArrayRecord(Net().state_dict())
            strategy = run.strategy()
            run_grid = run.grid(grid) if run.grid else grid
            result = strategy.start(
                grid=run_grid,
                initial_arrays=initial,
                num_rounds=run.rounds or num_rounds,
                train_config=ConfigRecord({"lr": run.lr or lr}),
                evaluate_fn=_evaluate,
            )
            curve = [
                float(result.evaluate_metrics_serverapp[r]["accuracy"])
                for r in sorted(result.evaluate_metrics_serverapp)
            ]
            metrics = {r: dict(m) for r, m in result.train_metrics_clientapp.items()}
            client_eval = {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
            out[run.name] = {
                "accuracy": sum(curve[-last:]) / last,
                "curve": curve,
                "metrics": metrics,
                "client_eval": client_eval,
                "attacked": getattr(run_grid, "attacked_replies", 0),
            }
        with open(path, "w") as fh:
            json.dump(out, fh)

    run_simulation(
        server_app=server,
        client_app=client_app,
        num_supernodes=num_supernodes,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )
    with open(path) as fh:
        text = fh.read()
    os.unlink(path)
    if not text:
        raise RuntimeError("the simulation's ServerApp did not finish (see its log above)")
    results = json.loads(text)
    for value in results.values():  # JSON turned the round numbers into strings
        for key in ("metrics", "client_eval"):
            value[key] = {int(r): m for r, m in value[key].items()}
    return results
