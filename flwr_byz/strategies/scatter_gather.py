"""ByzSGD's numeric rules as pure torch functions (El-Mhamdi et al., "Genuinely Distributed
Byzantine Machine Learning", PODC 2020 / Distributed Computing 2022; ALGORITHMS.md 4.4).

Used by the :class:`~flwr_byz.strategies.ByzSGD` strategy (servers: MDA, DMC, diameters) and by
``GradientClient``'s op ``byzsgd`` (workers: the median of the models and the synchronous
variant's Lipschitz and Outliers filters). The filters' constants follow the authors' code
(LPD-EPFL/Garfield, ``Garfield_legacy/byzWorker.py``, read, not copied): T = 1 / (3 l eta),
the Lipschitz quantile (n_ps - f_ps) / n_ps, and the Outliers bound below.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_quorums",
    "diameter",
    "gather_period",
    "lipschitz_accepts",
    "lipschitz_coefficient",
    "outlier_bound",
]


def check_quorums(
    n_servers: int, f_servers: int, n_workers: int | None = None, f_workers: int | None = None
) -> None:
    """Raise ``ValueError`` unless n_ps >= 3 f_ps + 2 and n_w >= 3 f_w + 1 (the paper's
    resilience conditions; a single trusted server, f_ps = 0, may stand alone)."""
    if n_servers < 1 or f_servers < 0:
        raise ValueError(f"need n_servers >= 1 and f_servers >= 0, got {n_servers}, {f_servers}")
    if f_servers > 0 and n_servers < 3 * f_servers + 2:
        raise ValueError(
            f"ByzSGD needs n_servers >= 3 f_servers + 2 = {3 * f_servers + 2} to tolerate "
            f"f_servers={f_servers} Byzantine servers, got n_servers={n_servers}"
        )
    if n_workers is not None and f_workers is not None and n_workers < 3 * f_workers + 1:
        raise ValueError(
            f"ByzSGD needs n_workers >= 3 f_workers + 1 = {3 * f_workers + 1} workers per step to "
            f"tolerate f_workers={f_workers} Byzantine workers, got {n_workers}"
        )


def gather_period(lipschitz: float, lr: float) -> int:
    """The paper's gather period T = floor(1 / (3 l eta)) (at least 1)."""
    if not (lipschitz > 0 and lr > 0):
        raise ValueError(f"need lipschitz > 0 and lr > 0, got {lipschitz}, {lr}")
    return max(1, math.floor(1.0 / (3.0 * lipschitz * lr)))


def diameter(models: torch.Tensor) -> float:
    """max_{i,j} ||x_i - x_j|| of ``[m, d]`` models (0 for m < 2), from the differences
    themselves: the Gram form of ``aggregators.base.pairwise_sq_distances`` (and cdist's
    default above 25 rows) cancels for nearly equal models, the honest replicas' usual state."""
    if models.shape[0] < 2:
        return 0.0
    x = models.to(torch.float64)
    return float(torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").max())


def lipschitz_coefficient(
    grad: torch.Tensor, grad_prev: torch.Tensor, model: torch.Tensor, model_prev: torch.Tensor
) -> float:
    """The empirical Lipschitz coefficient ||g_t - g_{t-1}|| / ||theta_t - theta_{t-1}|| (0 when
    the model did not move)."""
    step = float((model - model_prev).norm())
    return 0.0 if step == 0.0 else float((grad - grad_prev).norm()) / step


def lipschitz_accepts(k: float, history: torch.Tensor, n_servers: int, f_servers: int) -> bool:
    """Lipschitz filter: accept when ``k`` is at most the (n_ps - f_ps)/n_ps quantile of the
    past coefficients and ``k`` itself (no history: accept)."""
    if not math.isfinite(k):
        return False
    if history.numel() == 0:
        return True
    past = history.to(torch.float64).reshape(-1)
    values = torch.cat([past, torch.tensor([k], dtype=torch.float64)])
    q = (n_servers - f_servers) / n_servers
    return k <= float(torch.quantile(values, q))


def outlier_bound(
    lr: float, grad_norm: float, period: int, n_workers: int, f_workers: int, since_gather: int
) -> float:
    """Outliers filter: the largest distance a model may have from the worker's own estimate
    theta_prev - eta g_prev, ``eta ||g|| ((3T + 2)(n_w - f_w) / (4 f_w) + 2 s)`` with s the
    steps since the last gather (inf when f_w = 0: no Byzantine worker, no bound needed)."""
    if f_workers <= 0:
        return math.inf
    spread = (3 * period + 2) * (n_workers - f_workers) / (4 * f_workers)
    return lr * grad_norm * (spread + 2 * since_gather)
