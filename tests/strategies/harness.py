"""Run several (strategy, attack) trainings of the standard app on one in-process grid.

The accuracy tests run every configuration as a separate training (fresh model, same seed)
one after the other from a single ServerApp: each is a complete ``strategy.start`` on the
same nodes, which hold no state between runs (the standard ClientApp is stateless). The
nodes are a ``LocalGrid``: the unchanged ClientApp object answers each message in this
process (``app(message, context)``, its mods included), each node with its own ``Context``
(``partition-id`` / ``num-partitions`` in its node config), as Flower's simulation runtime
gives it — without Ray's start-up (~10 s on 2 cores), its actors and its message polling.
Flower's own runtime is exercised with the standard app by ``test_byzantine_recipe.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from flwr_byz.simulations.local import LocalGrid

from .standard_app.client_app import app as standard_client_app
from .standard_app.task import Net, _digits
from .standard_app.task import test as test_fn

#: The run config the standard app reads (``context.run_config``): ``flwr new``'s
#: ``[tool.flwr.app.config]`` value, also the app's default (what it read before, when the
#: simulation ran it with an empty run config).
RUN_CONFIG: Mapping[str, Any] = {"local-epochs": 1}


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


def nodes(num_supernodes: int, client_app: ClientApp) -> LocalGrid:
    """``num_supernodes`` nodes answered by ``client_app``, each with the app's run config."""
    grid = LocalGrid(num_supernodes, client_app)
    for context in grid.contexts.values():
        context.run_config = dict(RUN_CONFIG)
    return grid


def simulate(
    runs: Sequence[Run],
    num_supernodes: int = 20,
    num_rounds: int = 20,
    lr: float = 0.1,
    last: int = 3,
    client_app: ClientApp = standard_client_app,
) -> dict[str, dict]:
    """Run every ``Run`` from one ServerApp on ``num_supernodes`` nodes of ``client_app``.

    Returns name -> {"accuracy": mean held-out accuracy of the last ``last`` rounds (one
    round's accuracy jitters by a few points), "curve": accuracy per round (round 0 = initial
    model), "metrics": train metrics per round, "client_eval": client-side evaluation metrics
    per round, "attacked": replies the ByzantineGrid rewrote}.
    """
    out: dict[str, dict] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
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
            out[run.name] = {
                "accuracy": sum(curve[-last:]) / last,
                "curve": curve,
                "metrics": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
                "client_eval": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
                "attacked": getattr(run_grid, "attacked_replies", 0),
            }

    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(RUN_CONFIG)
    )
    server(nodes(num_supernodes, client_app), context)
    return out
