"""The wire contract's names: record keys, config keys, metric keys and op names that the
strategies (server side) and the clients both use. Every literal of the protocol lives here;
the values are the bytes on the wire, so changing one breaks compatibility with deployed nodes.
"""

from __future__ import annotations

__all__ = [
    "ACCEPTED_KEY",
    "ATTACK_KEY",
    "ATTACK_NUM_NODES_KEY",
    "ATTACK_PARTITIONS_KEY",
    "ATTACK_SCALE_KEY",
    "ATTACK_SEED_KEY",
    "BATCH_SEED_KEY",
    "BATCH_SIZE_KEY",
    "BETA_KEY",
    "BYZANTINE_PREFIX",
    "BYZANTINE_REPLIES_KEY",
    "BYZSGD_DROPPED_KEY",
    "BYZSGD_FALLBACK_KEY",
    "BYZSGD_FILTER",
    "BYZSGD_MEDIAN",
    "BYZSGD_REJECTED_KEY",
    "BYZSGD_RULES",
    "BYZSGD_RULE_KEY",
    "CLIENT_STATE_DIR_KEY",
    "COMPRESSOR_KEY",
    "COMPRESSOR_SEED_KEY",
    "CONFIG_KEY",
    "COPIES_KEY",
    "DATASET_KEY",
    "DEVICE_KEY",
    "EF21_VERSION_KEY",
    "F_SERVERS_KEY",
    "F_WORKERS_KEY",
    "GATHER_PERIOD_KEY",
    "LABEL_FLIP",
    "LOCAL_EPOCHS_KEY",
    "LR_KEY",
    "METRICS_KEY",
    "MODEL_KEY",
    "MOMENTUM_KEY",
    "NUM_EXAMPLES_KEY",
    "NUM_PARTITIONS_KEY",
    "N_SERVERS_KEY",
    "N_WORKERS_KEY",
    "OPS",
    "OP_BYZSGD",
    "OP_DOUBLE",
    "OP_GRAD",
    "OP_GRAD_DIFF",
    "OP_KEY",
    "OP_MOMENTUM",
    "PARTITION_ID_KEY",
    "PARTITION_KEY",
    "PARTITION_QUERY",
    "PARTITION_RECORD_KEY",
    "PAYLOAD_KEY",
    "POINT_KEY",
    "PREV_KEY",
    "REJECTED_KEY",
    "REPLICA_KEY",
    "RESETS_KEY",
    "RESUME_ROUND_KEY",
    "SAMPLED_KEY",
    "SEED_KEY",
    "SERVER_ROUND_KEY",
    "SKIPPED_KEY",
    "STATE_KEY",
    "STEP_KEY",
    "TRAIN_LOSS_KEY",
    "UNMETERED_KEYS",
    "VECTOR_KEY",
    "WEIGHT_DECAY_KEY",
]

# --- RecordDict keys (the records of a Message) ---------------------------------------------------
#: ArrayRecord of the point the client evaluates at (x^{k+1}); a FedAvg reply's model too.
POINT_KEY = "arrays"
#: ArrayRecord of the previous point x^k (op ``grad_diff``).
PREV_KEY = "prev"
#: ArrayRecord of a reply's dense vector (a gradient, a momentum, an EF21 reset).
VECTOR_KEY = "grad"
#: ArrayRecord of a reply's compressed vector: the compressor's wire payload.
PAYLOAD_KEY = "payload"
#: ArrayRecord of server replica j's model in a ByzSGD message (``REPLICA_KEY.format(j)``).
REPLICA_KEY = "model-{}"
#: ConfigRecord of a train (or query) message's configuration.
CONFIG_KEY = "config"
#: MetricRecord of a client's reply.
METRICS_KEY = "metrics"

# --- op names (ConfigRecord ``OP_KEY``; GradientClient answers them) ------------------------------
#: ConfigRecord key naming the op; its absence marks a FedAvg-like message (a model comes back).
OP_KEY = "op"
#: Minibatch gradient at ``POINT_KEY`` -> ``VECTOR_KEY`` (or ``PAYLOAD_KEY`` with a compressor).
OP_GRAD = "grad"
#: Compressed gradient difference between ``POINT_KEY`` and ``PREV_KEY`` -> ``PAYLOAD_KEY``.
OP_GRAD_DIFF = "grad_diff"
#: Worker momentum (EF21 error feedback of it with ``EF21_VERSION_KEY``) -> vector or payload.
OP_MOMENTUM = "momentum"
#: mu2-SGD's corrected (double) momentum -> ``VECTOR_KEY``.
OP_DOUBLE = "double"
#: ByzSGD worker step on the replicas' models (``REPLICA_KEY``) -> ``VECTOR_KEY``.
OP_BYZSGD = "byzsgd"
#: Every op GradientClient answers.
OPS = (OP_GRAD, OP_GRAD_DIFF, OP_MOMENTUM, OP_DOUBLE, OP_BYZSGD)
#: Query op asking a node for its partition (answered by the simulation's ClientApp).
PARTITION_QUERY = "partition-id"

# --- ConfigRecord keys of the method ops ----------------------------------------------------------
#: Minibatch size b (0: the whole local data).
BATCH_SIZE_KEY = "batch-size"
#: Seed of the node's minibatch draw.
BATCH_SEED_KEY = "batch-seed"
#: Compressor spec (``flwr_byz.compressors``) the reply is compressed with.
COMPRESSOR_KEY = "compressor"
#: Seed of the node's compressor randomness (RandK indices, QSGD dithering).
COMPRESSOR_SEED_KEY = "compressor-seed"
#: The server's EF21 version of this node's copy g_i (-1: none; Byz-EF21-SGDM's handshake).
EF21_VERSION_KEY = "ef21-version"
#: Momentum weight beta of the op (``OP_MOMENTUM``, ``OP_DOUBLE``).
BETA_KEY = "beta"
#: The run's key that namespaces the clients' ``context.state``.
STATE_KEY = "state-key"
#: The server round (Flower's FedAvg sets it too); seeds per-node attacks.
SERVER_ROUND_KEY = "server-round"
#: The folder where a node keeps its per-run state after each round it trains in, for a
#: resumed run (``<checkpoint>.clients``; the runner sends it when the run checkpoints).
CLIENT_STATE_DIR_KEY = "client-state-dir"
#: The round of the checkpoint a resumed run continues from: a node with no state for the run
#: loads its saved state of the latest round <= this one from ``CLIENT_STATE_DIR_KEY``.
RESUME_ROUND_KEY = "resume-round"
#: The torch device the node computes on (``cpu``, ``cuda``, ``cuda:N``; the run's
#: ``--device``; a SuperNode's node config ``device`` wins).
DEVICE_KEY = "device"
#: The runner's bookkeeping keys above, not the methods' protocol: left out of the bytes a run
#: meters, so that checkpointing, resuming or the device does not change a run's numbers.
UNMETERED_KEYS = (CLIENT_STATE_DIR_KEY, RESUME_ROUND_KEY, DEVICE_KEY)
#: Step size (ByzSGD worker's filters; the simulation app's local SGD).
LR_KEY = "lr"
#: ByzSGD step t.
STEP_KEY = "step"
#: ByzSGD gather period T.
GATHER_PERIOD_KEY = "gather-period"
#: ByzSGD number of server replicas n_ps.
N_SERVERS_KEY = "n-servers"
#: ByzSGD number of Byzantine server replicas f_ps.
F_SERVERS_KEY = "f-servers"
#: ByzSGD number of workers n_w of the step.
N_WORKERS_KEY = "n-workers"
#: ByzSGD number of Byzantine workers f_w.
F_WORKERS_KEY = "f-workers"
#: ByzSGD worker rule of this step (``BYZSGD_RULES``).
BYZSGD_RULE_KEY = "byzsgd-rule"
#: ByzSGD rule: the coordinate-wise median of the pulled models.
BYZSGD_MEDIAN = "median"
#: ByzSGD rule: the first pulled model that passes the Lipschitz and Outliers filters.
BYZSGD_FILTER = "filter"
#: Every ByzSGD worker rule.
BYZSGD_RULES = (BYZSGD_MEDIAN, BYZSGD_FILTER)

# --- Byzantine configuration (node config, run config, ConfigRecord) -----------------------------
#: Prefix of every Byzantine setting below.
BYZANTINE_PREFIX = "byzantine-"
#: A node's attack spec (e.g. ``"sign-flip"``); in a ConfigRecord: ``LABEL_FLIP`` requested.
ATTACK_KEY = "byzantine-attack"
#: ``ATTACK_KEY``'s value that asks the ClientApp to train on flipped labels (LabelFlip).
LABEL_FLIP = "label-flip"
#: The attack's magnitude (SignFlip's scale, Scale's s, Gaussian's sigma).
ATTACK_SCALE_KEY = "byzantine-scale"
#: Seed of a node's random attack.
ATTACK_SEED_KEY = "byzantine-seed"
#: Run config: the Byzantine partition IDs (``"0,3,7"``).
ATTACK_PARTITIONS_KEY = "byzantine-partitions"
#: Run config: partitions 0..k-1 are Byzantine.
ATTACK_NUM_NODES_KEY = "byzantine-num-nodes"

# --- the simulation app (runner -> ClientApp config, node config, query reply) -------------------
#: Dataset spec the ClientApp loads.
DATASET_KEY = "dataset"
#: Partitioning spec of the dataset.
PARTITION_KEY = "partition"
#: Model name the ClientApp builds.
MODEL_KEY = "model"
#: Local epochs of FedAvg-like training.
LOCAL_EPOCHS_KEY = "local-epochs"
#: Local SGD momentum of FedAvg-like training.
MOMENTUM_KEY = "momentum"
#: The experiment's seed (the nodes derive their data split and minibatch seeds from it).
SEED_KEY = "seed"
#: Weight decay of the local objective.
WEIGHT_DECAY_KEY = "weight-decay"
#: Node config (and query reply): this node's partition ID.
PARTITION_ID_KEY = "partition-id"
#: Node config (and query reply): the number of partitions.
NUM_PARTITIONS_KEY = "num-partitions"
#: Query reply's MetricRecord holding the partition.
PARTITION_RECORD_KEY = "partition"

# --- MetricRecord keys ----------------------------------------------------------------------------
#: A client's mean training loss of the step (the round's metric: the accepted replies' median).
TRAIN_LOSS_KEY = "train-loss"
#: A client's local data size.
NUM_EXAMPLES_KEY = "num-examples"
#: A train reply's self-report from ``byzantine_mod`` (1: this reply was forged by a node
#: configured Byzantine, 0: honest); the round metric (our strategies, or Flower's FedAvg with
#: ``flwr_byz.protocol.sum_byzantine_replies``) is the number of Byzantine replies received.
#: Experiment bookkeeping, not detection: only nodes running the mod report it.
BYZANTINE_REPLIES_KEY = "byzantine-replies"
#: ByzSGD worker: pulled models dropped (wrong shape/dtype, NaN/Inf).
BYZSGD_DROPPED_KEY = "byzsgd-dropped"
#: ByzSGD worker: pulled models its filters rejected.
BYZSGD_REJECTED_KEY = "byzsgd-rejected"
#: ByzSGD worker: 1 when no model passed both filters.
BYZSGD_FALLBACK_KEY = "byzsgd-fallback"
#: Round metric: replies accepted by validation.
ACCEPTED_KEY = "accepted"
#: Round metric: replies rejected by validation (``rejected-<reason>`` per reason).
REJECTED_KEY = "rejected"
#: Round metric: nodes sampled.
SAMPLED_KEY = "sampled"
#: Round metric: 1 (or the replicas count) when the robust step could not run.
SKIPPED_KEY = "skipped"
#: Round metric (Byz-EF21-SGDM): dense resets accepted (a node's copy g_i set from a dense
#: reply); the refused ones count as ``rejected-reset-limit`` / ``rejected-reset-norm``.
RESETS_KEY = "resets"
#: Round metric (Byz-EF21-SGDM): copies g_i the server holds (all aggregated, stale ones too).
COPIES_KEY = "copies"
