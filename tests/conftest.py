"""The suite runs with one torch thread: its models are tiny, and on 2 busy cores intra-op
threads make each forward/backward pass many times slower. ``$OMP_NUM_THREADS`` is what an
experiment's ``threads`` resolves to when unset (``flwr_byz.simulations.threads``), and what
torch and the processes the tests start (Ray actors, SuperNodes) read when they start."""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"
