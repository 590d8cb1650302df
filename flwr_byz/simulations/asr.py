"""The attack success rate (ASR) of a backdoor attack, measured by the server each round.

ASR = the share of the test inputs of the non-target classes that, carrying the attack's full
(global) trigger, the model classifies as the target class (Gu et al. 2017; Bagdasaryan et
al., AISTATS 2020, Sec. 4: "backdoor accuracy"). The triggered set is built once per run from
the evaluation split (``attacks.backdoor_test_set``, the trigger's value read from the data
set's ``x_train`` as the clients read it); each round the ASR is the model's accuracy on it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..attacks import Backdoor, backdoor_test_set, get_attack, is_backdoor
from .config import ExperimentConfig
from .datasets import Dataset
from .training import evaluate

__all__ = ["BackdoorSet", "attack_success_rate", "backdoor_eval_set"]

#: The triggered test inputs of the non-target classes and their labels (all the target).
BackdoorSet = tuple[torch.Tensor, torch.Tensor]


def backdoor_eval_set(
    cfg: ExperimentConfig,
    dataset: Dataset,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device | None = None,
) -> BackdoorSet | None:
    """The set the ASR of ``cfg``'s run is measured on: the rows of the evaluation split
    ``(x, y)`` whose label is not the target, stamped with the full trigger, labelled with
    the target (on ``device`` when given). None when the run has no backdoor attack (no
    Byzantine client, or an attack that is not a backdoor): its ASR is NaN."""
    if cfg.byzantine <= 0:
        return None
    attack = get_attack(cfg.attack, seed=cfg.seed)
    if not is_backdoor(attack):
        return None
    assert isinstance(attack, Backdoor)  # what is_backdoor checks
    xs, ys = backdoor_test_set(attack, x, y, dataset.x_train)
    return (xs, ys) if device is None else (xs.to(device), ys.to(device))


def attack_success_rate(model: nn.Module, triggered: BackdoorSet | None) -> float:
    """The share of ``triggered`` (``backdoor_eval_set``) the model classifies as the target;
    NaN without a set (no backdoor attack) or for an empty one (every test label is the
    target)."""
    if triggered is None:
        return math.nan
    return evaluate(model, *triggered)[1]
