"""Kill a process while it saves a result, N times, and count what is left.

Each time: a whole result file is there; a child process saves the same ``Result`` over it in
a loop; it is killed (SIGKILL) at a random instant. Counted: result files left 0-byte, corrupt
(not JSON, or not the whole 30 rounds) or whole, the temporary files beside them, and those
still there after the next save of the same path by another process (which sweeps them).

The figures of issue 23, item 2, before and after (``PYTHONPATH=<a checkout of the older
tree>`` for before; each kill starts a Python process, about 7 minutes for 100 on 2 cores)::

    OMP_NUM_THREADS=1 .venv/bin/python tests/kill_save_probe.py 100
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETUP = r"""
import sys
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result, RoundRecord
rounds = [
    RoundRecord(r, 1.0 / r, 0.5, 0, 10**6, 10**6, 0.1, metrics={"m": 1.0}) for r in range(1, 31)
]
result = Result(ExperimentConfig().to_dict(), rounds).finish()
"""
CHILD = SETUP + 'print("ready", flush=True)\nwhile True:\n    result.save(sys.argv[1])\n'


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rng = random.Random(0)
    counts = {"zero-byte": 0, "corrupt": 0, "whole": 0, "missing": 0}
    temps = swept = 0
    scope: dict[str, Any] = {}
    exec(SETUP, scope)  # the same Result in this process
    result = scope["result"]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            out = folder / "r.json"
            result.save(out)
            child = [sys.executable, "-c", CHILD, str(out)]
            proc = subprocess.Popen(child, stdout=subprocess.PIPE)
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            temps += sum(1 for p in folder.iterdir() if p.name != out.name)
            if not out.exists():
                counts["missing"] += 1
            elif out.stat().st_size == 0:
                counts["zero-byte"] += 1
            else:
                try:
                    whole = len(json.loads(out.read_text())["rounds"]) == 30
                except (ValueError, KeyError, TypeError):
                    whole = False
                counts["whole" if whole else "corrupt"] += 1
            result.save(out)  # another process (pid) than the killed one
            swept += sum(1 for p in folder.iterdir() if p.name != out.name)
    import flwr_byz

    print(
        f"{Path(flwr_byz.__file__).parent}: {n} kills during Result.save: {counts}; "
        f"temporary files left: {temps}, after the next save: {swept}"
    )


if __name__ == "__main__":
    main()
