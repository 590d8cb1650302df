"""Backdoor attacks: a Byzantine client trains on data carrying a trigger relabelled to a
target class, so that the global model classifies triggered inputs as the target while its
clean accuracy stays (docs/ALGORITHMS.md, Backdoor attacks).

Pure torch (no Flower import). Every backdoor attack is a :class:`Backdoor`: ``stamp`` puts
the full (global) trigger on inputs, ``poison`` corrupts a node's local data (a seeded
``fraction`` of rows, chosen per node and round, stamped with the node's local trigger and
relabelled). :func:`backdoor_test_set` builds the set whose accuracy is the attack success
rate (ASR). The trigger's value comes from ``reference`` (the data set's ``x_train``: its
99th percentile), so a client and the server stamp the same trigger.

* :class:`BadNets` (Gu et al. 2017): a square in the bottom-right corner of image inputs, the
  last ``size`` features of flat inputs.
* :class:`DBA` (Xie et al., ICLR 2020): the global trigger split into ``parts`` local
  triggers; a node poisons with its ``part`` (else ``node mod parts``).
* :class:`ModelReplacement` (Bagdasaryan et al., AISTATS 2020): BadNets data, then the update
  scaled by ``boost = n / eta`` (``n / (eta k)`` for ``k`` colluders) and
  (constrain-and-scale) clipped to norm ``norm``.
* :class:`Neurotoxin` (Zhang et al., ICML 2022): BadNets data, local training projected off
  the top-``ratio`` coordinates of the benign gradient.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .base import check_attack_input

__all__ = [
    "DBA",
    "Backdoor",
    "BadNets",
    "ModelReplacement",
    "Neurotoxin",
    "backdoor_test_set",
    "bright_value",
    "check_attack_method",
    "is_backdoor",
    "neurotoxin_mask",
    "trigger_mask",
]


@runtime_checkable
class Backdoor(Protocol):
    """A backdoor attack: ``stamp`` puts the full trigger on every row of ``x`` ``[m, ...]``
    (its value read from ``reference``, the data set's ``x_train``); ``target`` is the label
    the attacker wants triggered inputs classified as."""

    target: int
    backdoor: ClassVar[bool]

    def stamp(self, x: Tensor, reference: Tensor) -> Tensor: ...


def is_backdoor(attack: object) -> bool:
    """Whether ``attack`` is a backdoor attack (its class sets ``backdoor = True``)."""
    return bool(getattr(attack, "backdoor", False)) and isinstance(attack, Backdoor)


def backdoor_test_set(
    attack: Backdoor, x: Tensor, y: Tensor, reference: Tensor
) -> tuple[Tensor, Tensor]:
    """The rows of ``(x, y)`` whose label is not ``attack.target``, stamped with the full
    trigger, with every label set to the target: the ASR is the model's accuracy on it."""
    if len(x) != len(y):
        raise ValueError(f"backdoor_test_set: x has {len(x)} rows but y has {len(y)}")
    keep = y != attack.target
    xs = attack.stamp(x[keep], reference)
    return xs, torch.full_like(y[keep], attack.target)


def trigger_mask(shape: tuple[int, ...], size: int | None = None) -> Tensor:
    """The BadNets trigger's positions (a bool tensor of one input's ``shape``): for images
    ``[C, H, W]`` (3 or more axes) a ``size`` x ``size`` square in the bottom-right corner of
    the last two axes, every channel (default size ``max(2, min(H, W) // 8)``); for flat
    inputs ``[d]`` and signals ``[C, L]`` the last ``size`` positions of the last axis, every
    channel (default ``max(1, L // 8)``: 8 of digits' 64 pixels, its bottom row; 5 of
    MNIST-1D's 40 samples)."""
    if len(shape) == 0:
        raise ValueError("trigger_mask: inputs must have at least one axis, got a scalar shape")
    mask = torch.zeros(shape, dtype=torch.bool)
    if len(shape) <= 2:
        length = shape[-1]
        s = max(1, length // 8) if size is None else int(size)
        if not 1 <= s <= length:
            raise ValueError(f"backdoor trigger size must be in [1, {length}], got {s}")
        mask[..., length - s :] = True
    else:
        h, w = shape[-2], shape[-1]
        s = max(2, min(h, w) // 8) if size is None else int(size)
        if not 1 <= s <= min(h, w):
            raise ValueError(f"backdoor trigger size must be in [1, {min(h, w)}], got {s}")
        mask[..., h - s :, w - s :] = True
    return mask


#: The most values :func:`bright_value` reads (an even stride through the data beyond it).
BRIGHT_SAMPLE = 1 << 20


def bright_value(reference: Tensor, q: float = 0.99) -> Tensor:
    """The trigger's default value: the ``q`` quantile (0.99) of every value in ``reference``
    (the data set's ``x_train``; read at an even stride when it holds more than
    :data:`BRIGHT_SAMPLE` values), as a 0-d float tensor: a bright value that ordinary
    inputs reach. (A per-feature maximum would put 37 standard deviations into digits'
    rarely-lit corner pixels, and the poisoned updates would be 80 times the honest ones.)"""
    cached = _BRIGHT.get(id(reference))
    if (
        cached is not None
        and cached[0]() is reference
        and cached[1] == (reference._version, float(q))
    ):
        return cached[2].clone()
    flat = reference.detach().reshape(-1).float()
    if flat.numel() == 0:
        raise ValueError("bright_value: the reference data is empty")
    step = max(1, -(-flat.numel() // BRIGHT_SAMPLE))
    value = torch.quantile(flat[::step].cpu(), q)
    if len(_BRIGHT) >= _BRIGHT_KEEP:
        _BRIGHT.clear()
    _BRIGHT[id(reference)] = (weakref.ref(reference), (reference._version, float(q)), value)
    return value.clone()


#: :func:`bright_value` per reference tensor (by identity, checked through a weak reference,
#: with the version counter and ``q`` it was computed for): a quantile of a whole training set
#: costs ~13 ms and a poisoning node reads it every round.
_BRIGHT: dict[int, tuple[weakref.ref[Tensor], tuple[int, float], Tensor]] = {}
_BRIGHT_KEEP = 8


def _generator(seed: int, node: int, server_round: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(node), int(server_round)]).generate_state(1)
    return torch.Generator().manual_seed(int(state[0]))


@dataclass
class BadNets:
    """BadNets (Gu et al. 2017, "BadNets: Identifying Vulnerabilities in the Machine Learning
    Model Supply Chain"): a ``fraction`` of the node's data gets the trigger
    (:func:`trigger_mask`, ``size``) set to ``value`` (default: :func:`bright_value` of
    ``reference``, its 99th percentile) and label ``target``; the rows are drawn by a
    generator seeded by ``(seed, node, round)``. Every backdoor attacks from round
    ``start`` on (before it, the node is honest: the papers attack a model that has
    converged; default 0: every round).
    Spec ``badnets:target=0,fraction=0.5,size=3,start=0``."""

    target: int = 0
    fraction: float = 0.5
    size: int | None = None
    value: float | None = None
    seed: int = 0
    start: int = 0
    omniscient: ClassVar[bool] = False
    data_attack: ClassVar[bool] = True
    backdoor: ClassVar[bool] = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise ValueError(f"{name}: target must be a class index >= 0, got {self.target!r}")
        if not 0.0 <= float(self.fraction) <= 1.0:
            raise ValueError(f"{name}: fraction must be in [0, 1], got {self.fraction!r}")
        if self.size is not None and (isinstance(self.size, bool) or int(self.size) < 1):
            raise ValueError(f"{name}: size must be a positive integer, got {self.size!r}")
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"{name}: start must be a round number >= 0, got {self.start!r}")

    def check_data(self, shape: tuple[int, ...], num_classes: int) -> None:
        """``ValueError`` naming the fix, before any round, when the attack cannot run on
        inputs of ``shape`` with ``num_classes`` classes: a target that is no class, a trigger
        that does not fit, or (DBA) more parts than the trigger has positions."""
        if self.target >= num_classes:
            raise ValueError(
                f"{type(self).__name__}: target must be a class below {num_classes} (the data "
                f"set's number of classes), got {self.target}"
            )
        self.local_mask(tuple(shape), 0)

    def active(self, server_round: int) -> bool:
        """Whether the node attacks in ``server_round`` (``server_round >= start``)."""
        return int(server_round) >= self.start

    # ------------------------------------------------------------------ the trigger
    def mask(self, shape: tuple[int, ...]) -> Tensor:
        """The full (global) trigger's positions for one input of ``shape``."""
        return trigger_mask(tuple(shape), self.size)

    def local_mask(self, shape: tuple[int, ...], node: int) -> Tensor:
        """The trigger node ``node`` poisons with (BadNets: the full trigger)."""
        return self.mask(shape)

    def _values(self, x: Tensor, reference: Tensor) -> Tensor:
        if self.value is not None:
            return torch.full(x.shape[1:], float(self.value), dtype=x.dtype, device=x.device)
        if tuple(reference.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"{type(self).__name__}: reference rows {tuple(reference.shape[1:])} and inputs "
                f"{tuple(x.shape[1:])} differ in shape; pass the data set's x_train"
            )
        return bright_value(reference).to(dtype=x.dtype, device=x.device).expand(x.shape[1:])

    def _apply(self, x: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(
                f"{type(self).__name__}: x must be a batch [m, ...], got shape {tuple(x.shape)}"
            )
        return torch.where(mask.to(x.device), self._values(x, reference), x)

    def stamp(self, x: Tensor, reference: Tensor) -> Tensor:
        """``x`` ``[m, ...]`` with the full trigger on every row (a new tensor)."""
        return self._apply(x, reference, self.mask(tuple(x.shape[1:])))

    # ------------------------------------------------------------------ the client side
    def poisoned_rows(self, m: int, node: int = 0, server_round: int = 0) -> Tensor:
        """The sorted indices of the ``round(fraction * m)`` rows node ``node`` poisons in
        round ``server_round`` (seeded by ``(seed, node, server_round)``)."""
        k = round(float(self.fraction) * m)
        perm = torch.randperm(m, generator=_generator(self.seed, node, server_round))
        return perm[:k].sort().values

    def poison(
        self, x: Tensor, y: Tensor, reference: Tensor, node: int = 0, server_round: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Node ``node``'s local data in round ``server_round``: the
        :meth:`poisoned_rows` stamped with the node's local trigger and relabelled
        ``target``, the other rows unchanged (new tensors; all unchanged before ``start``)."""
        if len(x) != len(y):
            raise ValueError(f"{type(self).__name__}: x has {len(x)} rows but y has {len(y)}")
        rows = self.poisoned_rows(len(x), node, server_round).to(x.device)
        x, y = x.clone(), y.clone()
        if len(rows) and self.active(server_round):
            mask = self.local_mask(tuple(x.shape[1:]), node)
            x[rows] = self._apply(x[rows], reference, mask)
            y[rows.to(y.device)] = self.target
        return x, y


@dataclass
class DBA(BadNets):
    """Distributed backdoor attack (Xie et al., ICLR 2020, "DBA: Distributed Backdoor Attacks
    against Federated Learning", Sec. 3): the global trigger's positions (row-major order)
    split into ``parts`` near-equal local triggers; a node poisons with local trigger ``part``
    (ByzantineGrid gives the i-th Byzantine node part ``i mod parts``, as the paper gives
    each attacker its own), or, ``part`` None, ``node mod parts``; the test-time trigger
    (``stamp``) is the global one. Spec ``dba:parts=4,target=0``."""

    parts: int = 4
    part: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.parts, bool) or not isinstance(self.parts, int) or self.parts < 1:
            raise ValueError(f"DBA: parts must be a positive integer, got {self.parts!r}")
        if self.part is not None and (
            isinstance(self.part, bool) or not isinstance(self.part, int) or self.part < 0
        ):
            raise ValueError(f"DBA: part must be an integer >= 0 or None, got {self.part!r}")

    def local_mask(self, shape: tuple[int, ...], node: int) -> Tensor:
        full = self.mask(shape)
        positions = full.flatten().nonzero().squeeze(1)
        if len(positions) < self.parts:
            raise ValueError(
                f"DBA: the trigger has {len(positions)} positions, fewer than parts="
                f"{self.parts}; raise size or lower parts"
            )
        index = int(node) if self.part is None else int(self.part)
        part = torch.tensor_split(positions, self.parts)[index % self.parts]
        local = torch.zeros(full.numel(), dtype=torch.bool)
        local[part] = True
        return local.reshape(shape)


@dataclass
class ModelReplacement(BadNets):
    """Model replacement (Bagdasaryan et al., AISTATS 2020, "How To Backdoor Federated
    Learning", Sec. 3.2 and Eq. 3): BadNets data, then the node's update ``X - G`` is scaled
    by ``boost = n / eta`` (``n`` clients in the round, ``eta`` the server learning rate; set
    by ``boost=`` or else by the caller) so that it replaces the global model; ``k``
    colluding attackers in a round (ByzantineGrid) each take ``n / (eta k)``, so that together
    they replace it once rather than ``k`` times over. Constrain and scale (Sec. 3.3): the
    scaled update clipped to norm ``norm`` (the bound of a norm-clipping server). Spec
    ``model-replacement:boost=10,norm=5``."""

    boost: float | None = None
    norm: float | None = None
    eta: float = 1.0
    forges_update: ClassVar[bool] = True
    fedavg_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.boost is not None and not float(self.boost) > 0:
            raise ValueError(f"ModelReplacement: boost must be > 0, got {self.boost!r}")
        if self.norm is not None and not float(self.norm) > 0:
            raise ValueError(f"ModelReplacement: norm must be > 0, got {self.norm!r}")
        if not float(self.eta) > 0:
            raise ValueError(f"ModelReplacement: eta must be > 0, got {self.eta!r}")

    def scale_for(self, clients: int | None, attackers: int = 1) -> float:
        """The boost for a round of ``clients`` nodes, ``attackers`` of them colluding:
        ``boost`` if set, else ``clients / (eta * attackers)``."""
        if self.boost is not None:
            return float(self.boost)
        if clients is None or clients < 1:
            raise ValueError(
                "ModelReplacement: the number of clients in the round is unknown; set boost="
            )
        return float(clients) / (float(self.eta) * max(1, int(attackers)))

    def for_round(self, clients: int | None, attackers: int = 1) -> ModelReplacement:
        """A copy with ``boost`` fixed for the round (:meth:`scale_for`)."""
        return dataclasses.replace(self, boost=self.scale_for(clients, attackers))

    def scale_update(self, own: Tensor, clients: int | None = None) -> Tensor:
        """``own`` ``[b, d]`` (updates) times the boost, each row then clipped to ``norm``."""
        out = own * self.scale_for(clients)
        if self.norm is not None:
            norms = torch.linalg.vector_norm(out, dim=1, keepdim=True)
            out = out * torch.clamp(float(self.norm) / norms.clamp_min(1e-30), max=1.0)
        return out

    def __call__(self, honest: Tensor, own: Tensor) -> Tensor:
        """The per-node vector side: :meth:`scale_update` of the nodes' updates ``own``
        (``boost`` must be set: :meth:`for_round`)."""
        check_attack_input(honest, own, "ModelReplacement", self.omniscient)
        return self.scale_update(own)


@dataclass
class Neurotoxin(BadNets):
    """Neurotoxin (Zhang et al., ICML 2022, "Neurotoxin: Durable Backdoors in Federated
    Learning", Alg. 1): BadNets data; the benign gradient on the node's clean data at the
    received model marks its top-``ratio`` coordinates by magnitude (the ones benign clients
    update most); every local step's gradient is projected onto the other coordinates
    (:func:`neurotoxin_mask`). Spec ``neurotoxin:ratio=0.1``."""

    ratio: float = 0.1
    fedavg_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.ratio) < 1.0:
            raise ValueError(f"Neurotoxin: ratio must be in [0, 1), got {self.ratio!r}")


def neurotoxin_mask(gradient: Tensor, ratio: float) -> Tensor:
    """The coordinates Neurotoxin may update: a bool tensor of ``gradient``'s shape, False on
    the ``ceil(ratio * numel)`` coordinates of largest ``|gradient|`` (Zhang et al. 2022,
    Alg. 1), True elsewhere."""
    flat = gradient.detach().flatten().abs()
    k = min(flat.numel(), math.ceil(float(ratio) * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=gradient.device)
    if k > 0:
        keep[torch.topk(flat, k, sorted=False).indices] = False
    return keep.reshape(gradient.shape)


def check_attack_method(attack: object, method: str, fedavg_like: bool) -> None:
    """Raise ``ValueError`` when ``attack`` needs FedAvg-like local training (model
    replacement scales the model update, Neurotoxin masks the local SGD steps) and ``method``
    is not FedAvg-like (``fedavg_like`` False: a method strategy whose clients answer ops)."""
    if getattr(attack, "fedavg_only", False) and not fedavg_like:
        raise ValueError(
            f"attack {type(attack).__name__} needs FedAvg-like local training (methods fedavg, "
            f"robust-fedavg, fltrust, flower-*), not method {method!r}: use badnets or dba "
            "with it, or one of those methods"
        )
