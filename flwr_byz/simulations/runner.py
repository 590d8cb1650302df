"""train_on_grid: the round loop of one experiment on a Grid, and ``prepare``, which checks a
config once per run before any engine starts.

``train_on_grid`` is the body of the ServerApp: the simulation engine runs it in Flower's
simulation runtime through ``flwr run`` (``flwr_byz.simulations.simulation``), the local engine
on its in-process ``LocalGrid`` and the Flower App (``flwr run .``) on a deployment's nodes; the
engines themselves (which one, Ray, the grids) live in those modules and ``engines``.
Everything a client needs to train (dataset, partition, model, lr, ...) travels in the train
message's ConfigRecord, so the ClientApp holds no experiment state and several experiments can
share one simulation.

Reproducibility: the model init is seeded; Flower samples nodes with the global ``random``,
which is reseeded from (seed, round) before each round; nodes and replies are put in partition
order (``RunGrid``); clients shuffle with a generator seeded from (seed, round, partition);
the Byzantine partitions and the attack's randomness come from the seed too. Same config,
same numbers.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from logging import INFO, WARNING
from typing import Any, NewType

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore import log

from .. import statetree
from ..attacks import DBA, BadNets, check_attack_method, get_attack
from ..clients import ByzantineGrid
from ..compressors import get_compressor
from ..protocol.keys import (
    BATCH_SIZE_KEY,
    CLIENT_STATE_DIR_KEY,
    DATASET_KEY,
    DEVICE_KEY,
    LOCAL_EPOCHS_KEY,
    LR_KEY,
    MODEL_KEY,
    MOMENTUM_KEY,
    PARTITION_KEY,
    REJECTED_KEY,
    RESUME_ROUND_KEY,
    SEED_KEY,
    SKIPPED_KEY,
    WEIGHT_DECAY_KEY,
)
from ..strategies import MethodStrategy, RobustFedAvg
from ..strategies.sample_check import log_skipped
from .asr import attack_success_rate, backdoor_eval_set
from .checkpoint import Checkpoint, client_state_dir
from .config import ExperimentConfig
from .datasets import check_partition, eval_split, load_dataset
from .devices import device_name, resolve_device
from .metering import RunGrid, discover_partitions
from .methods import COMPRESSED_METHODS, build_strategy
from .models import build_model_for
from .result import Result, RoundRecord
from .threads import torch_threads
from .training import TrainingObjective, derive_seed, evaluate

__all__ = [
    "OnRound",
    "Prepared",
    "byzantine_partitions",
    "is_prepared",
    "prepare",
    "train_config",
    "train_on_grid",
]

#: Called after every round with the experiment's config and the round's record.
OnRound = Callable[[ExperimentConfig, RoundRecord], None]


#: A config ``prepare`` returned: every option checked, the ``auto`` ones resolved.
Prepared = NewType("Prepared", ExperimentConfig)

#: The attribute ``prepare`` marks its result with: the config's values it checked.
_MARK = "_flwr_byz_prepared"


def prepare(config: ExperimentConfig) -> Prepared:
    """Validate every option (before any process starts) and resolve the ``auto`` ones.

    Once per run: a config ``prepare`` returned, unchanged since, comes back as it is, so the
    CLI, the engine and the round loop a run goes through each take a raw or a prepared
    config and the work is done by the first. A copy with other values
    (``dataclasses.replace``) or a config changed in place is prepared again."""
    if is_prepared(config):
        return Prepared(config)
    cfg = _check(config)
    vars(cfg)[_MARK] = cfg.to_dict()
    return Prepared(cfg)


def is_prepared(config: ExperimentConfig) -> bool:
    """Whether ``config`` is what ``prepare`` returned, with the values it checked."""
    return vars(config).get(_MARK) == config.to_dict()


def _check(config: ExperimentConfig) -> ExperimentConfig:
    """``prepare``'s work: the resolved config once every option is checked (the dataset
    loads, the model, compressor, attack and strategy build, the rule takes ``per_round``
    clients)."""
    cfg = config.resolved()
    attack = get_attack(cfg.attack, seed=cfg.seed)
    dataset = load_dataset(cfg.dataset)
    check_partition(cfg.partition, dataset, cfg.clients)  # natural:<col>: the column, its ids
    build_model_for(cfg.model, dataset)
    if cfg.method in COMPRESSED_METHODS:
        get_compressor(cfg.compressor)
    elif cfg.compressor not in ("none", "", None):
        raise ValueError(f"method {cfg.method!r} takes no compressor, got {cfg.compressor!r}")
    with _flower_logging(verbose=False, level=logging.ERROR):  # no fraction_evaluate warning
        strategy = build_strategy(cfg)  # constructor errors (bad spec, unknown param) surface now
    check_attack_method(attack, cfg.method, not isinstance(strategy, MethodStrategy))
    if isinstance(attack, BadNets):  # the backdoors: target and trigger fit the data set
        attack.check_data(dataset.input_shape, dataset.num_classes)
        if isinstance(attack, DBA) and 0 < cfg.byzantine < attack.parts:
            log(
                WARNING,
                "dba: %d Byzantine client(s) for %d trigger parts: the full trigger is never "
                "trained whole (set dba:parts=%d or fewer)",
                cfg.byzantine,
                attack.parts,
                cfg.byzantine,
            )
    rule = getattr(strategy, "aggregator", None)
    # n = clients per round must satisfy the rule's f (e.g. Krum n >= 2f+3); FLTrust's rule
    # (needs_reference) runs on any n >= 1
    if callable(rule) and not getattr(rule, "needs_reference", False):
        rule(torch.randn(cfg.per_round, 4, generator=torch.Generator().manual_seed(0)))
        getattr(rule, "reset", lambda: None)()
    return cfg


def byzantine_partitions(cfg: ExperimentConfig) -> list[int]:
    """The Byzantine clients' partition IDs: ``byzantine`` of them, chosen by the seed."""
    rng = random.Random(derive_seed(cfg.seed, "byzantine"))
    return sorted(rng.sample(range(cfg.clients), cfg.byzantine))


def train_config(cfg: ExperimentConfig, resumed: int | None = None) -> ConfigRecord:
    """What every train message carries for the ClientApp (Flower adds ``server-round``): off
    the CPU, the device it trains on; with a checkpoint, where the nodes keep their state
    (``client_state_dir``), and in a run resumed from round ``resumed``, that round (the bytes
    a run meters leave the device and these two out)."""
    record = ConfigRecord(
        {
            DATASET_KEY: cfg.dataset,
            PARTITION_KEY: cfg.partition,
            MODEL_KEY: cfg.model,
            LR_KEY: float(cfg.lr),
            BATCH_SIZE_KEY: int(cfg.batch_size),
            LOCAL_EPOCHS_KEY: int(cfg.local_epochs),
            MOMENTUM_KEY: float(cfg.momentum),
            WEIGHT_DECAY_KEY: float(cfg.weight_decay),
            SEED_KEY: int(cfg.seed),
        }
    )
    if cfg.device != "cpu":  # the nodes' default: a CPU run's messages are as they were
        record[DEVICE_KEY] = str(cfg.device)  # not metered: the device changes no number
    if cfg.checkpoint:
        record[CLIENT_STATE_DIR_KEY] = str(client_state_dir(cfg.checkpoint))
        if resumed is not None:
            record[RESUME_ROUND_KEY] = int(resumed)
    return record


def train_on_grid(
    grid: Grid,
    config: ExperimentConfig,
    on_round: OnRound | None = None,
    partitions: dict[int, int] | None = None,
) -> Result:
    """Run one experiment on the nodes behind ``grid`` (the body of the ServerApp).

    ``partitions`` (node ID -> partition ID) is asked from the nodes when not given. With
    ``config.checkpoint`` the state is saved after every round; with ``config.resume`` a run
    continues from that checkpoint when it exists (``flwr_byz.simulations.checkpoint``). The
    run has ``config.threads`` torch threads (resolved; restored afterwards), and its result
    config says how many.
    """
    cfg = prepare(config)  # as it is when prepared already (the engines do)
    assert cfg.threads is not None  # resolved
    with torch_threads(cfg.threads):
        return _train(grid, cfg, on_round, partitions)


def _train(
    grid: Grid, cfg: Prepared, on_round: OnRound | None, partitions: dict[int, int] | None
) -> Result:
    """The body of ``train_on_grid`` (``cfg`` prepared)."""
    if partitions is None:
        partitions = discover_partitions(grid)
    byz = byzantine_partitions(cfg)
    attacked = cfg.byzantine > 0 and cfg.attack.strip().lower() not in ("none", "")
    run_grid = RunGrid(grid, partitions)  # innermost: the wire bytes, replies in order
    strategy_grid: Grid = run_grid
    if attacked and cfg.injection == "server":
        node_of = {p: n for n, p in partitions.items()}
        missing = [p for p in byz if p not in node_of]
        if missing:
            raise RuntimeError(f"no node reported Byzantine partition(s) {missing}")
        nodes = [node_of[p] for p in byz]
        strategy_grid = ByzantineGrid(run_grid, cfg.attack, node_ids=nodes, seed=cfg.seed)
    device = resolve_device(cfg.device)
    meta = cfg.to_dict() | {
        "byzantine_partitions": byz if attacked else [],
        "threads": torch.get_num_threads(),  # what this run has (``train_on_grid`` set it)
        "device_name": device_name(device),
    }

    dataset = load_dataset(cfg.dataset)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model_for(cfg.model, dataset)
    saved = _resume_from(cfg)
    strategy = build_strategy(cfg)  # a resumed run loads its saved state into a fresh one
    arrays = ArrayRecord(model.state_dict())
    records: list[RoundRecord] = []
    if saved is not None:
        arrays, records = saved.arrays, list(saved.records)
        _restore(cfg, strategy, saved.strategy, "strategy")
        if saved.torch_rng is not None:
            torch.set_rng_state(saved.torch_rng)
    elif cfg.checkpoint:
        _forget_client_state(cfg.checkpoint)  # a new run: no node resumes an older one's state
    if isinstance(strategy, (MethodStrategy, RobustFedAvg)):  # after a restore: this run's
        strategy.device = None if device.type == "cpu" else device  # the robust rule there
    model = model.to(device)  # the central evaluation (x^0 was taken on the CPU: arrays)
    x_eval, y_eval = eval_split(dataset, cfg.eval_samples)
    triggered = backdoor_eval_set(cfg, dataset, x_eval, y_eval, device)  # None: no backdoor
    x_test, y_test = x_eval.to(device), y_eval.to(device)
    if isinstance(strategy_grid, ByzantineGrid):
        strategy_grid.bind(strategy)  # ShiftBack reads x^0, x^k, lr; EF21 the copies g_i
        if saved is not None and saved.attack is not None:  # after bind: the surface is set
            _restore(cfg, strategy_grid.attack, saved.attack, "attack")
            strategy_grid.attacked_replies = saved.attacked_replies
    resumed = None if saved is None else saved.round
    objective = TrainingObjective(
        dataset.x_train, dataset.y_train, cfg.weight_decay, convex=cfg.model == "logreg"
    )
    first = len(records) + 1
    timeout = 3600.0 if cfg.round_timeout is None else float(cfg.round_timeout)
    strategy.summary()
    for server_round in range(first, cfg.rounds + 1):
        random.seed(derive_seed(cfg.seed, "sample", server_round))  # Flower samples with it
        clock = time.perf_counter()
        messages = list(
            strategy.configure_train(
                server_round, arrays, train_config(cfg, resumed), strategy_grid
            )
        )
        replies = list(strategy_grid.send_and_receive(messages, timeout=timeout))
        replies, lost = _missing(messages, replies, server_round)
        new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        seconds = time.perf_counter() - clock
        up, down = run_grid.take_bytes()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, x_test, y_test)
        record = RoundRecord(server_round, loss, accuracy, 0, up, down, seconds, missing=lost)
        record.asr = attack_success_rate(model, triggered)  # NaN without a backdoor attack
        record.train_loss, record.gap = _objective(objective, model)
        if metrics is not None:
            if REJECTED_KEY in metrics:
                record.rejected = int(metrics[REJECTED_KEY])  # type: ignore[arg-type]
            record.metrics = {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        records.append(record)
        if cfg.checkpoint:
            _checkpoint(cfg, server_round, arrays, strategy, strategy_grid, records)
        if on_round is not None:
            on_round(cfg, record)
    skipped = [r.round for r in records if r.metrics.get(SKIPPED_KEY, 0.0) > 0]
    log_skipped(cfg.method, skipped, cfg.rounds, getattr(strategy, "aggregator", None))
    return Result(config=meta, rounds=records).finish()


def _objective(objective: TrainingObjective, model: torch.nn.Module) -> tuple[float, float]:
    """``objective(model)``; off the CPU (a convex model only: the others are not measured),
    on a CPU copy, where the objective's training set is."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return objective(model if on_cpu or not objective.convex else copy.deepcopy(model).cpu())


#: Error codes the SuperLink itself puts in a reply when the node or its reply is gone
#: (Flower's ``ErrorCode``: MESSAGE_, REPLY_MESSAGE_, NODE_UNAVAILABLE): a lost node, counted
#: as missing rather than as a bad reply.
UNAVAILABLE_CODES = frozenset(
    {
        ErrorCode.MESSAGE_UNAVAILABLE,
        ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
        ErrorCode.NODE_UNAVAILABLE,
    }
)


def _missing(
    messages: Sequence[Message], replies: Sequence[Message], server_round: int
) -> tuple[list[Message], int]:
    """The replies to aggregate and the number of sampled nodes without one (no reply
    before the timeout, or the SuperLink's "unavailable" error in its place; logged)."""
    sent = {int(m.metadata.dst_node_id) for m in messages}
    kept = [r for r in replies if not (r.has_error() and int(r.error.code) in UNAVAILABLE_CODES)]
    lost = sorted(sent - {int(r.metadata.src_node_id) for r in kept})
    if lost:
        log(
            WARNING,
            "round %d: %d of %d sampled nodes did not reply in time: %s",
            server_round,
            len(lost),
            len(sent),
            ", ".join(str(n) for n in lost[:10]),
        )
    return kept, len(lost)


def _resume_from(cfg: ExperimentConfig) -> Checkpoint | None:
    """The checkpoint to continue from (``cfg.resume`` and the file exists), checked."""
    if not (cfg.resume and cfg.checkpoint):
        return None
    if not os.path.exists(cfg.checkpoint):
        log(WARNING, "resume: no checkpoint at %s yet; starting at round 1", cfg.checkpoint)
        return None
    saved = Checkpoint.load(cfg.checkpoint)
    saved.check(cfg.to_dict())
    log(INFO, "resume: continuing from round %d of %s", saved.round, cfg.checkpoint)
    return saved


def _restore(cfg: ExperimentConfig, obj: object, tree: dict[str, Any], what: str) -> None:
    """``statetree.restore`` with the checkpoint named in its error (one line)."""
    try:
        statetree.restore(obj, tree)
    except ValueError as exc:
        raise ValueError(f"{cfg.checkpoint}: the saved {what} does not fit: {exc}") from None


def _forget_client_state(checkpoint: str) -> None:
    """Delete the nodes' saved state of an earlier run at this checkpoint path (local nodes;
    the nodes also ignore files of another run)."""
    shutil.rmtree(client_state_dir(checkpoint), ignore_errors=True)


def _checkpoint(
    cfg: ExperimentConfig,
    server_round: int,
    arrays: ArrayRecord,
    strategy: Any,
    grid: Grid,
    records: list[RoundRecord],
) -> None:
    assert cfg.checkpoint is not None
    attack = grid.attack if isinstance(grid, ByzantineGrid) else None
    Checkpoint(
        config=cfg.to_dict(),
        round=server_round,
        arrays=arrays,
        strategy=statetree.capture(strategy),
        records=records,
        attack=None if attack is None else statetree.capture(attack),
        attacked_replies=grid.attacked_replies if isinstance(grid, ByzantineGrid) else 0,
        torch_rng=torch.get_rng_state(),
    ).save(cfg.checkpoint)


#: Flower log lines that say nothing to a flwr-byz user (we evaluate centrally on purpose).
_NOISE = ("fraction_evaluate is set to 0.0",)


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in _NOISE)


@contextmanager
def _flower_logging(verbose: bool, level: int = logging.WARNING) -> Iterator[None]:
    """Flower logs every round at INFO; keep ``level`` and above only unless ``verbose``."""
    logger = logging.getLogger("flwr")
    saved = logger.level
    added = not verbose and _not_noise not in logger.filters  # nested use keeps the outer one
    if not verbose:
        logger.setLevel(level)
    if added:
        logger.addFilter(_not_noise)
    try:
        yield
    finally:
        logger.setLevel(saved)
        if added:
            logger.removeFilter(_not_noise)
