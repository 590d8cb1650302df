"""Did a change move any number? Run every method x attack on the ``local`` engine at two
commits and compare the rounds (loss, accuracy, bytes, rejected, every round metric) exactly.

    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 python tests/same_numbers.py run before.json
    # ... check out the other commit, then
    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 python tests/same_numbers.py run after.json
    python tests/same_numbers.py compare before.json after.json

(the package of the current directory's checkout is the one measured, e.g. with
``PYTHONPATH=<checkout>``). 11 methods x 7 attacks x {all clients, 10 of 12 per round}, 4 rounds
each (about 3 minutes on one core). A run that raises is recorded with its error message.
Every run option is written out (``LEGACY``: the values all methods shared before each had its
own defaults), so the runs are the same configs at any commit.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

METHODS = (
    "fedavg",
    "robust-fedavg",
    "robust-momentum",
    "byz-vr-marina-pp",
    "byz-ef21-sgdm",
    "byz-ef21",
    "br-csgd",
    "mu2sgd",
    "byzsgd",
    "flower-krum",
    "flower-median",
)
ATTACKS = ("none", "alie", "sign-flip", "shift-back", "label-flip", "gaussian", "ipm")
AGGREGATORS = {"robust-fedavg": "nnm+krum", "byzsgd": "mda", "robust-momentum": "cwmed"}
#: The method-dependent options at the values every method had before per-method defaults.
LEGACY = {
    "aggregator": "median",
    "lr": 0.05,
    "batch_size": 32,
    "momentum": 0.9,
    "compressor": "none",
}
COMPRESSORS = {
    "byz-vr-marina-pp": "randk:0.1",
    "byz-ef21-sgdm": "topk:0.1",
    "byz-ef21": "topk:0.1",
    "br-csgd": "topk:0.1",
}


def run(out: str) -> None:
    """Run every case on the local engine and write the rounds to ``out``."""
    import torch

    from flwr_byz.simulations import ExperimentConfig, run_experiment  # at every commit

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for method in METHODS:
        for attack in ATTACKS:
            for per_round in (None, 10):
                if method.startswith("flower") and per_round:
                    continue
                options: dict[str, Any] = {
                    **LEGACY,
                    "method": method,
                    "attack": attack,
                    "byzantine": 0 if attack == "none" else 3,
                    "clients": 12,
                    "clients_per_round": per_round,
                    "rounds": 4,
                    "partition": "dirichlet:0.5",
                    "seed": 3,
                    "local_epochs": 1,
                }
                if method != "fedavg" and not method.startswith("flower"):
                    options["aggregator"] = AGGREGATORS.get(method, "cwtm")
                if method in COMPRESSORS:
                    options["compressor"] = COMPRESSORS[method]
                key = f"{method}|{attack}|{per_round}"
                try:
                    result = run_experiment(ExperimentConfig(**options), engine="local")
                    results[key] = [
                        {
                            "loss": r.loss,
                            "acc": r.accuracy,
                            "up": r.bytes_up,
                            "down": r.bytes_down,
                            "rej": r.rejected,
                            "metrics": r.metrics,
                        }
                        for r in result.rounds
                    ]
                except Exception as exc:  # recorded: a change may also move an error
                    results[key] = f"ERROR {type(exc).__name__}: {exc}"
                print(key, flush=True)
    # temp + rename, not flwr_byz.files: this script also runs at commits from before it
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "w") as file:
        json.dump(results, file, indent=1, default=str)
    os.replace(tmp, out)


def compare(before: str, after: str) -> int:
    """Print every case that differs; the number of differing cases."""
    with open(before) as a, open(after) as b:
        old, new = json.load(a), json.load(b)
    differ = 0
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            differ += 1
            print(f"DIFF {key}")
            print(f"  before: {str(old.get(key))[:300]}")
            print(f"  after:  {str(new.get(key))[:300]}")
    print(f"{len(old)} cases compared, {differ} differ")
    return differ


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(1 if compare(sys.argv[2], sys.argv[3]) else 0)
    else:
        sys.exit(__doc__)
