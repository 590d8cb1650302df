"""The ``batched`` engine: every client of a round at once through ``flwr_byz.methods``
(``engine``: the round loop; ``grads``: per-client gradients with ``torch.func``; ``data``:
stacked partitions; ``fedavg``, ``methods``, ``byzsgd``: the drivers of each method family;
``attack``: attacks on the stacked rows; ``bytes``: the wire sizes; ``setup``: shared types)."""

from .engine import check_batched, run_batched
from .setup import resolve_device

__all__ = ["check_batched", "resolve_device", "run_batched"]
