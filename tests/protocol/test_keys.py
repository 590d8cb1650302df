"""The wire contract's names are pinned: their values are the bytes deployed nodes exchange."""

from __future__ import annotations

import flwr_byz.protocol as protocol
from flwr_byz.protocol import keys

WIRE = {
    "ACCEPTED_KEY": "accepted",
    "ATTACK_KEY": "byzantine-attack",
    "ATTACK_NUM_NODES_KEY": "byzantine-num-nodes",
    "ATTACK_PARTITIONS_KEY": "byzantine-partitions",
    "ATTACK_SCALE_KEY": "byzantine-scale",
    "ATTACK_SEED_KEY": "byzantine-seed",
    "BATCH_SEED_KEY": "batch-seed",
    "BATCH_SIZE_KEY": "batch-size",
    "BETA_KEY": "beta",
    "BYZANTINE_PREFIX": "byzantine-",
    "BYZANTINE_REPLIES_KEY": "byzantine-replies",
    "BYZSGD_DROPPED_KEY": "byzsgd-dropped",
    "BYZSGD_FALLBACK_KEY": "byzsgd-fallback",
    "BYZSGD_FILTER": "filter",
    "BYZSGD_MEDIAN": "median",
    "BYZSGD_REJECTED_KEY": "byzsgd-rejected",
    "BYZSGD_RULES": ("median", "filter"),
    "BYZSGD_RULE_KEY": "byzsgd-rule",
    "COMPRESSOR_KEY": "compressor",
    "COMPRESSOR_SEED_KEY": "compressor-seed",
    "CLIENT_STATE_DIR_KEY": "client-state-dir",
    "CONFIG_KEY": "config",
    "DEVICE_KEY": "device",
    "COPIES_KEY": "copies",
    "DATASET_KEY": "dataset",
    "EF21_VERSION_KEY": "ef21-version",
    "F_SERVERS_KEY": "f-servers",
    "F_WORKERS_KEY": "f-workers",
    "GATHER_PERIOD_KEY": "gather-period",
    "LABEL_FLIP": "label-flip",
    "LOCAL_EPOCHS_KEY": "local-epochs",
    "LR_KEY": "lr",
    "METRICS_KEY": "metrics",
    "MODEL_KEY": "model",
    "MOMENTUM_KEY": "momentum",
    "NUM_EXAMPLES_KEY": "num-examples",
    "NUM_PARTITIONS_KEY": "num-partitions",
    "N_SERVERS_KEY": "n-servers",
    "N_WORKERS_KEY": "n-workers",
    "OPS": ("grad", "grad_diff", "momentum", "double", "byzsgd"),
    "OP_BYZSGD": "byzsgd",
    "OP_DOUBLE": "double",
    "OP_GRAD": "grad",
    "OP_GRAD_DIFF": "grad_diff",
    "OP_KEY": "op",
    "OP_MOMENTUM": "momentum",
    "PARTITION_ID_KEY": "partition-id",
    "PARTITION_KEY": "partition",
    "PARTITION_QUERY": "partition-id",
    "PARTITION_RECORD_KEY": "partition",
    "PAYLOAD_KEY": "payload",
    "POINT_KEY": "arrays",
    "PREV_KEY": "prev",
    "REJECTED_KEY": "rejected",
    "REPLICA_KEY": "model-{}",
    "RESUME_ROUND_KEY": "resume-round",
    "RESETS_KEY": "resets",
    "SAMPLED_KEY": "sampled",
    "SEED_KEY": "seed",
    "SERVER_ROUND_KEY": "server-round",
    "SKIPPED_KEY": "skipped",
    "STATE_KEY": "state-key",
    "STEP_KEY": "step",
    "TRAIN_LOSS_KEY": "train-loss",
    "UNMETERED_KEYS": ("client-state-dir", "resume-round", "device"),
    "VECTOR_KEY": "grad",
    "WEIGHT_DECAY_KEY": "weight-decay",
}


def test_values_are_the_wire_format() -> None:
    assert {name: getattr(keys, name) for name in keys.__all__} == WIRE
    public = {n for n in vars(keys) if n.isupper() and not n.startswith("_")}
    assert public == set(keys.__all__)  # nothing defined but not exported


def test_package_reexports_every_name() -> None:
    for name in keys.__all__:
        assert getattr(protocol, name) is getattr(keys, name), name
        assert name in protocol.__all__


def test_names_that_share_a_record_do_not_collide() -> None:
    """Keys that can sit side by side in one RecordDict / ConfigRecord are distinct."""
    records = [keys.POINT_KEY, keys.PREV_KEY, keys.VECTOR_KEY, keys.PAYLOAD_KEY]
    records += [keys.CONFIG_KEY, keys.METRICS_KEY] + [keys.REPLICA_KEY.format(j) for j in range(9)]
    assert len(set(records)) == len(records)
    config = [
        keys.OP_KEY,
        keys.BATCH_SIZE_KEY,
        keys.BATCH_SEED_KEY,
        keys.COMPRESSOR_KEY,
        keys.COMPRESSOR_SEED_KEY,
        keys.EF21_VERSION_KEY,
        keys.BETA_KEY,
        keys.STATE_KEY,
        keys.SERVER_ROUND_KEY,
        keys.LR_KEY,
        keys.STEP_KEY,
        keys.GATHER_PERIOD_KEY,
        keys.N_SERVERS_KEY,
        keys.F_SERVERS_KEY,
        keys.N_WORKERS_KEY,
        keys.F_WORKERS_KEY,
        keys.BYZSGD_RULE_KEY,
        keys.ATTACK_KEY,
        keys.DATASET_KEY,
        keys.PARTITION_KEY,
        keys.MODEL_KEY,
        keys.LOCAL_EPOCHS_KEY,
        keys.MOMENTUM_KEY,
        keys.WEIGHT_DECAY_KEY,
        keys.SEED_KEY,
        keys.DEVICE_KEY,
        keys.CLIENT_STATE_DIR_KEY,
        keys.RESUME_ROUND_KEY,
    ]
    assert len(set(config)) == len(config)
    assert len(set(keys.OPS)) == len(keys.OPS)
    attack = [keys.ATTACK_KEY, keys.ATTACK_SCALE_KEY, keys.ATTACK_SEED_KEY]
    attack += [keys.ATTACK_PARTITIONS_KEY, keys.ATTACK_NUM_NODES_KEY]
    assert all(k.startswith(keys.BYZANTINE_PREFIX) for k in attack)
    assert not any(k.startswith(keys.BYZANTINE_PREFIX) for k in config if k not in attack)
