"""``--device``: the torch device an experiment computes on, in every engine.

- ``local`` and ``simulation`` (the round loop ``train_on_grid`` and the ClientApp of
  ``flwr_byz.simulations.app``): each node trains on the device named in the train message's
  ConfigRecord (``DEVICE_KEY``; a SuperNode's node config ``device`` wins, for a deployment
  whose machines differ), its model and partition moved there once per message; the server
  runs the robust rule of the flwr-byz strategies there (``strategy.device``: the replies'
  ``[n, d]`` stack moves there, the aggregate comes back to the CPU) and evaluates the global
  model there. On Flower's simulation runtime the ClientApp actors hold a share of the GPUs
  (``client_gpus``).
- ``batched``: everything (``flwr_byz.simulations.batched``).

:func:`resolve_device` checks a name before anything starts; :func:`device_name` is what a
result records (``device_name``, beside the config's ``device``).
"""

from __future__ import annotations

import os

import torch

__all__ = ["client_gpus", "device_name", "resolve_device", "visible_gpus"]


def resolve_device(name: str) -> torch.device:
    """The torch device of ``--device`` (``cpu``, ``cuda``, ``cuda:N``); ``ValueError`` with
    one line when the name is not one of those or names a CUDA device this machine lacks."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {name!r}") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: no CUDA device is available (torch.cuda.is_available() is False)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: only {count} CUDA device(s) here (cuda:0..)")
    return device


def device_name(device: str | torch.device) -> str:
    """What a result records of ``device``: ``"cpu"``, or the GPU's name
    (``torch.cuda.get_device_name``, e.g. ``"NVIDIA H200"``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device)


def visible_gpus(device: str | torch.device) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` that leaves the processes of a run ``device`` only:
    ``cuda:N`` is the N-th GPU this process sees (of its own ``CUDA_VISIBLE_DEVICES`` when set),
    which is then ``cuda`` there; None for ``cpu`` and ``cuda`` (every GPU stays visible)."""
    device = torch.device(device)
    if device.type != "cuda" or device.index is None:
        return None
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if seen:
        ids = [s.strip() for s in seen.split(",") if s.strip()]
        if device.index < len(ids):
            return ids[device.index]
    return str(device.index)


def client_gpus(device: str | torch.device, actors: int, gpus: int) -> float:
    """Flower's ``client-resources-num-gpus`` of a ClientApp actor: 0 on ``cpu``, else the
    ``gpus`` (1 for ``cuda:N``) shared by the ``actors`` that run side by side (at most 1)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0.0
    return min(1.0, max(gpus, 1) / max(actors, 1))
