"""The machine a benchmark ran on: CPUs, memory, library versions and load, recorded in its
JSON under ``machine`` (one description per suite; the keys are the suites' documented ones)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from flwr_byz.simulations.threads import available_cores

__all__ = ["aggregator_machine", "engine_machine", "loadavg", "package_version"]


def package_version(pkg: str) -> str | None:
    """The installed version of distribution ``pkg``, or None."""
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where unavailable."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def aggregator_machine(device: str) -> dict[str, Any]:
    """CPU, memory and library versions of an aggregator benchmark run on ``device``."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "flwr": package_version("flwr"),
        "byzfl": package_version("byzfl"),
        "device": device,
        "loadavg_start": loadavg(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None
            )
        with open("/proc/meminfo") as fh:
            info["mem_total_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if device.startswith("cuda"):
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info


def engine_machine(devices: Sequence[str]) -> dict[str, Any]:
    """CPUs, memory, versions and load of an engine benchmark run on ``devices``."""
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cores_available": available_cores(),
        "mem_mib": mem,
        "torch": torch.__version__,
        "flwr": package_version("flwr"),
        "ray": package_version("ray"),
        "loadavg_start": loadavg(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "devices": list(devices),
    }
