"""The Flower App: ``flwr run .`` in a checkout (see ``[tool.flwr.app]`` in pyproject), or the
app directory ``flwr-byz deploy`` writes for the installed package
(``flwr_byz.deployment.flower_app``).

- ``client_app``: trains the model named in the train message's ConfigRecord on this node's
  partition (``partition-id`` / ``num-partitions`` of the node config), answers the method
  strategies' ops (an ``"op"`` in the ConfigRecord) with ``GradientClient`` on the same data
  and model, and answers the runner's partition query. It computes on the device the message
  names (the run's ``--device``) unless the node config names one (``device='cuda:1'``). Data
  attacks (LabelFlip, the backdoors; ``flwr_byz.clients.data_attack_of``) are honoured;
  ``byzantine_mod`` is installed, so a SuperNode started with
  ``--node-config "byzantine-attack='sign-flip'"`` (or ``'badnets:target=0'``) corrupts its own
  replies in a deployment.
- ``server_app``: reads the run config (``[tool.flwr.app.config]`` plus ``--run-config``
  overrides; keys are ExperimentConfig's options in kebab-case, ``num-byzantine`` for the
  Byzantine count), runs ``train_on_grid`` on the connected nodes, logs every round and writes
  the result JSON to ``out`` (default ``results/app/<method>-<attack>-<seed>.json``). When
  the run config's ``runs-file`` (``flower_app.RUNS_KEY``, declared by the simulation engine's
  app only) names a JSON list of run configs, it runs each of them in turn on the same nodes
  (partitions discovered once), each result written to its ``out`` as soon as it is done.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log
from torch import Tensor

from ..attacks import BadNets, LabelFlip, Neurotoxin
from ..clients import GradientClient, byzantine_mod, data_attack_of
from ..protocol.keys import (
    BATCH_SIZE_KEY,
    CONFIG_KEY,
    DATASET_KEY,
    DEVICE_KEY,
    LOCAL_EPOCHS_KEY,
    LR_KEY,
    METRICS_KEY,
    MODEL_KEY,
    MOMENTUM_KEY,
    NUM_EXAMPLES_KEY,
    NUM_PARTITIONS_KEY,
    OP_KEY,
    PARTITION_ID_KEY,
    PARTITION_KEY,
    PARTITION_QUERY,
    PARTITION_RECORD_KEY,
    POINT_KEY,
    SEED_KEY,
    SERVER_ROUND_KEY,
    TRAIN_LOSS_KEY,
    WEIGHT_DECAY_KEY,
)
from ..protocol.records import to_state_dict
from .datasets import Dataset, client_data, load_dataset
from .devices import resolve_device
from .models import build_model_for
from .training import derive_seed, gradient_masks, objective, train_epochs

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .result import RoundRecord

# The ServerApp's modules (config, runner, strategies, metering) are imported in ``main``:
# a deployment starts a ClientApp process per message, which imports this module and must
# not pay for them (tests/deployment/test_forkserver.py).

__all__ = ["client_app", "server_app"]

client_app = ClientApp(mods=[byzantine_mod])


def _partition(context: Context) -> tuple[int, int]:
    node: dict[str, Any] = dict(context.node_config)
    return int(node[PARTITION_ID_KEY]), int(node[NUM_PARTITIONS_KEY])


def _config(msg: Message) -> dict[str, Any]:
    """The message's ConfigRecord ``config`` as a plain dict (empty when absent)."""
    record = msg.content.config_records.get(CONFIG_KEY)
    return dict(record) if record is not None else {}


def _local_data(cfg: dict[str, Any], context: Context) -> tuple[Dataset, Tensor, Tensor]:
    """The dataset named in ``cfg`` and this node's partition of its training split."""
    partition_id, num_partitions = _partition(context)
    spec = str(cfg[DATASET_KEY])
    partition, seed = str(cfg[PARTITION_KEY]), int(cfg[SEED_KEY])
    x, y = client_data(spec, partition, partition_id, num_partitions, seed)
    return load_dataset(spec), x, y


def _model(cfg: dict[str, Any]) -> torch.nn.Module:
    dataset = load_dataset(str(cfg[DATASET_KEY]))
    return build_model_for(str(cfg[MODEL_KEY]), dataset)


def _data(context: Context, cfg: dict[str, Any]) -> tuple[Tensor, Tensor]:
    _, x, y = _local_data(cfg, context)
    return x, y


def _device(cfg: dict[str, Any], context: Context) -> torch.device:
    """Where this node computes: its node config's ``device`` (a SuperNode started with
    ``--node-config "device='cuda:1'"``), else the message's (the run's ``--device``), else
    the CPU; ``ValueError`` (an error reply) for a CUDA device this node lacks."""
    name = dict(context.node_config).get(DEVICE_KEY) or cfg.get(DEVICE_KEY) or "cpu"
    return resolve_device(str(name))


def _reference(cfg: dict[str, Any]) -> Tensor:
    """The training split's inputs: a backdoor's trigger value comes from them."""
    return load_dataset(str(cfg[DATASET_KEY])).x_train


@functools.lru_cache(maxsize=8)
def _gradient_client(weight_decay: float, device: torch.device) -> GradientClient:
    """The GradientClient of the method strategies' ops (the loss: ``objective``) on
    ``device``."""
    return GradientClient(
        model_fn=_model,
        loss_fn=lambda model, x, y: objective(model, x, y, weight_decay),
        data_fn=_data,
        device=device,
        reference_fn=_reference,
    )


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local SGD epochs on this node's partition, from the global model in the message, on
    the node's device (:func:`_device`); an ``op`` message goes to ``GradientClient``.

    A data attack (:func:`~flwr_byz.clients.data_attack_of`) corrupts the partition first:
    LabelFlip its labels; a backdoor (BadNets, DBA, ...) poisons a fraction of it with its
    trigger (seeded by partition and round); Neurotoxin also projects every step off the
    top coordinates of the gradient on the clean partition at the received model."""
    cfg = _config(msg)
    device = _device(cfg, context)
    weight_decay = float(cfg.get(WEIGHT_DECAY_KEY, 0.0))
    if OP_KEY in cfg:
        return _gradient_client(weight_decay, device).handle(msg, context)
    partition_id, _ = _partition(context)
    seed, server_round = int(cfg[SEED_KEY]), int(cfg.get(SERVER_ROUND_KEY, 0))
    dataset, x, y = _local_data(cfg, context)
    clean = x, y  # the attacks return new tensors
    attack = data_attack_of(msg, context)
    if isinstance(attack, LabelFlip):
        y = LabelFlip(num_classes=dataset.num_classes)(y)
    elif isinstance(attack, BadNets):
        x, y = attack.poison(x, y, dataset.x_train, node=partition_id, server_round=server_round)
    model = build_model_for(str(cfg[MODEL_KEY]), dataset)
    model.load_state_dict(to_state_dict(msg.content.array_records[POINT_KEY]))  # bytes checked
    model = model.to(device)
    mask = None
    if isinstance(attack, Neurotoxin) and attack.active(server_round):  # top coordinates stay
        x_clean, y_clean = (t.to(device) for t in clean)
        mask = gradient_masks(model, x_clean, y_clean, attack.ratio, weight_decay)
    x, y = x.to(device), y.to(device)  # once, not per batch
    loss = train_epochs(
        model,
        x,
        y,
        epochs=int(cfg[LOCAL_EPOCHS_KEY]),
        batch_size=int(cfg[BATCH_SIZE_KEY]),
        lr=float(cfg[LR_KEY]),
        momentum=float(cfg.get(MOMENTUM_KEY, 0.0)),
        weight_decay=weight_decay,
        seed=derive_seed(seed, server_round, partition_id),
        grad_mask=mask,
    )
    metrics = MetricRecord(
        {TRAIN_LOSS_KEY: loss if math.isfinite(loss) else 0.0, NUM_EXAMPLES_KEY: len(y)}
    )
    content = RecordDict({POINT_KEY: ArrayRecord(model.state_dict()), METRICS_KEY: metrics})
    return Message(content=content, reply_to=msg)


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the runner's ``partition-id`` query (used to order nodes reproducibly)."""
    op = _config(msg).get(OP_KEY)
    if op != PARTITION_QUERY:
        raise ValueError(f"unknown query op {op!r}")
    if DATASET_KEY in _config(msg):  # warm up: load the data of the coming rounds now
        _local_data(_config(msg), context)
    partition_id, num_partitions = _partition(context)
    record = MetricRecord({PARTITION_ID_KEY: partition_id, NUM_PARTITIONS_KEY: num_partitions})
    return Message(content=RecordDict({PARTITION_RECORD_KEY: record}), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment the run config describes (or, with ``RUNS_KEY``, each experiment of
    the file it names, in turn) on the connected nodes."""
    from ..clients.wrapping import innermost
    from .config import ExperimentConfig
    from .flower_app import PROGRESS_ENV, RUNS_KEY
    from .metering import discover_partitions, wait_for_nodes
    from .runner import train_on_grid

    inner = innermost(grid)
    if hasattr(inner, "pull_interval"):  # Flower's in-memory grid (the simulation runtime)
        inner.pull_interval = 0.01  # poll the replies every 10 ms, not 100 ms
    base = dict(context.run_config)
    runs_file = str(base.pop(RUNS_KEY, "") or "")
    run_configs: list[dict[str, Any]] = [base]
    if runs_file:  # each over the app's defaults, as Flower merges a --run-config file
        with open(runs_file, encoding="utf-8") as fh:
            run_configs = [base | dict(rc) for rc in json.load(fh)]
    clients = wait_for_nodes(grid)
    configs = [ExperimentConfig.from_run_config(rc, clients=clients) for rc in run_configs]

    def on_round(cfg: ExperimentConfig, r: RoundRecord) -> None:
        log(
            INFO,
            "[flwr-byz] round %d/%d  accuracy %.4f%s  loss %.4f  rejected %d  "
            "up %d B  down %d B  %.2f s",
            r.round,
            cfg.rounds,
            r.accuracy,
            "" if math.isnan(r.asr) else f"  asr {r.asr:.4f}",  # under a backdoor attack
            r.loss,
            r.rejected,
            r.bytes_up,
            r.bytes_down,
            r.seconds,
        )
        if progress:  # the simulation engine tails it (``flwr_byz.simulations.simulation``)
            line = json.dumps({"out": cfg.out, "round": dataclasses.asdict(r)})
            with open(progress, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    progress = os.environ.get(PROGRESS_ENV)
    # the nodes load their data while they answer the partition query, not in round 1
    first = configs[0]
    preload = {DATASET_KEY: first.dataset, PARTITION_KEY: first.partition, SEED_KEY: first.seed}
    partitions = discover_partitions(grid, preload)
    for config in configs:
        result = train_on_grid(grid, config, on_round=on_round, partitions=partitions)
        out = Path(config.out or f"results/app/{config.method}-{config.attack}-{config.seed}.json")
        result.save(out)  # as soon as it is done: a later failure loses nothing
        log(
            INFO,
            "[flwr-byz] final accuracy %.4f; result written to %s",
            result.accuracy,
            out.resolve(),
        )
