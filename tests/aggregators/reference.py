"""Brute-force reference implementations of the robust aggregators
(docs/ALGORITHMS.md, Aggregators).

Written straight from the definitions, deliberately naive: explicit Python loops over clients
and coordinates, ``itertools.combinations`` for the subset rules, direct d-space Weiszfeld for
the geometric median, explicit ``d x d`` covariances with ``numpy.linalg.eigh`` for CAF/SMEA.
Everything is float64 NumPy. This module never imports ``flwr_byz`` (only Bucketing's
permutation comes from ``torch``, since the reference must reproduce the seeded shuffle).

Every rule takes an ``[n, d]`` array (anything ``np.asarray`` accepts) and returns a ``[d]``
float64 array. Base rules passed to wrappers are callables ``base(x, f)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

Base = Callable[[np.ndarray, int], np.ndarray]


def rows(x: object) -> np.ndarray:
    """``x`` as a float64 ``[n, d]`` array (torch tensors included)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[attr-defined]
    a = np.array(x, dtype=np.float64)
    assert a.ndim == 2
    return a


# ----------------------------------------------------------------------------- primitives


def sq_dist(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b||^2`` by an explicit loop over coordinates."""
    s = 0.0
    for k in range(len(a)):
        t = float(a[k]) - float(b[k])
        s += t * t
    return s


def dist(a: np.ndarray, b: np.ndarray) -> float:
    return math.sqrt(sq_dist(a, b))


def norm(a: np.ndarray) -> float:
    return math.sqrt(sum(float(v) * float(v) for v in a))


def pairwise_sq(x: np.ndarray) -> list[list[float]]:
    n = len(x)
    d2 = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            d2[i][j] = d2[j][i] = sq_dist(x[i], x[j])
    return d2


def mean_of(x: np.ndarray, idx: list[int] | tuple[int, ...]) -> np.ndarray:
    d = x.shape[1]
    out = np.zeros(d)
    for i in idx:
        for k in range(d):
            out[k] += x[i][k]
    return out / len(idx)


def median_of(values: list[float]) -> float:
    """Median with NumPy semantics (mean of the two middle values for an even count)."""
    s = sorted(values)
    m = len(s)
    if m % 2:
        return s[m // 2]
    return (s[m // 2 - 1] + s[m // 2]) / 2


def closest_to_median_mean(values: list[float], k: int) -> float:
    """Mean of the ``k`` values closest to the median (ties: the smaller value first)."""
    med = median_of(values)
    chosen = sorted(values, key=lambda v: (abs(v - med), v))[:k]
    return sum(chosen) / k


# ----------------------------------------------------------------------------- rules


def mean(x: object, f: int = 0) -> np.ndarray:
    x = rows(x)
    return mean_of(x, list(range(len(x))))


def median(x: object, f: int = 0) -> np.ndarray:
    x = rows(x)
    n, d = x.shape
    return np.array([median_of([x[i][k] for i in range(n)]) for k in range(d)])


def trimmed_mean(x: object, f: int) -> np.ndarray:
    x = rows(x)
    n, d = x.shape
    out = np.zeros(d)
    for k in range(d):
        col = sorted(x[i][k] for i in range(n))
        kept = col[f : n - f]
        out[k] = sum(kept) / len(kept)
    return out


def meamed(x: object, f: int) -> np.ndarray:
    x = rows(x)
    n, d = x.shape
    return np.array([closest_to_median_mean([x[i][k] for i in range(n)], n - f) for k in range(d)])


def geometric_median(
    x: object, f: int = 0, nu: float = 1e-6, eps: float = 1e-6, max_iter: int = 100
) -> np.ndarray:
    """Smoothed Weiszfeld in d-space, started at the mean; stops once every distance
    ||z - x_i|| changed by at most eps relative to itself (floored at nu)."""
    x = rows(x)
    n = len(x)
    z = mean(x)
    old = [dist(z, x[i]) for i in range(n)]
    for _ in range(max_iter):
        w = [1.0 / max(nu, old[i]) for i in range(n)]
        num = np.zeros(x.shape[1])
        for i in range(n):
            num += w[i] * x[i]
        z = num / sum(w)
        new = [dist(z, x[i]) for i in range(n)]
        done = all(abs(new[i] - old[i]) <= eps * max(new[i], nu) for i in range(n))
        old = new
        if done:
            break
    return z


def krum_scores(x: np.ndarray, f: int, members: list[int]) -> dict[int, float]:
    """Score of each member: squared distances to its ``max(1, m - f - 2)`` nearest other
    members summed (``m`` = number of members)."""
    m = len(members)
    k = max(1, m - f - 2)
    scores = {}
    for i in members:
        others = sorted(sq_dist(x[i], x[j]) for j in members if j != i)
        scores[i] = sum(others[:k])
    return scores


def krum_index(x: object, f: int) -> int:
    x = rows(x)
    scores = krum_scores(x, f, list(range(len(x))))
    return min(scores, key=lambda i: (scores[i], i))


def krum(x: object, f: int) -> np.ndarray:
    x = rows(x)
    return x[krum_index(x, f)].copy()


def multikrum(x: object, f: int, m: int | None = None) -> np.ndarray:
    x = rows(x)
    n = len(x)
    m = n - f if m is None else min(m, n)
    scores = krum_scores(x, f, list(range(n)))
    order = sorted(range(n), key=lambda i: (scores[i], i))
    return mean_of(x, order[:m])


def bulyan_selection(x: object, f: int) -> list[int]:
    x = rows(x)
    n = len(x)
    remaining = list(range(n))
    selected: list[int] = []
    for _ in range(n - 2 * f):
        scores = krum_scores(x, f, remaining)
        best = min(remaining, key=lambda i: (scores[i], i))
        selected.append(best)
        remaining.remove(best)
    return selected


def bulyan(x: object, f: int) -> np.ndarray:
    x = rows(x)
    selected = bulyan_selection(x, f)
    beta = len(selected) - 2 * f
    d = x.shape[1]
    return np.array([closest_to_median_mean([x[i][k] for i in selected], beta) for k in range(d)])


class CenteredClipping:
    """Stateful reference: ``v`` persists across calls, ``reset()`` forgets it."""

    def __init__(self, tau: float, iters: int = 1) -> None:
        self.tau, self.iters = tau, iters
        self.v: np.ndarray | None = None

    def reset(self) -> None:
        self.v = None

    def __call__(self, x: object) -> np.ndarray:
        x = rows(x)
        n, d = x.shape
        v = np.zeros(d) if self.v is None else self.v.copy()
        for _ in range(self.iters):
            step = np.zeros(d)
            for i in range(n):
                y = x[i] - v
                ny = norm(y)
                scale = 1.0 if ny == 0 else min(1.0, self.tau / ny)
                step += y * scale
            v = v + step / n
        self.v = v
        return v.copy()


def diameter_sq(d2: list[list[float]], subset: tuple[int, ...]) -> float:
    return max((d2[i][j] for i, j in itertools.combinations(subset, 2)), default=0.0)


def mda_subset(x: object, f: int) -> tuple[int, ...]:
    """First (lexicographically smallest) subset of size n - f with the smallest diameter."""
    x = rows(x)
    d2 = pairwise_sq(x)
    return first_best_subset(len(x), f, lambda subset: diameter_sq(d2, subset))


def first_best_subset(n: int, f: int, score: Callable[[tuple[int, ...]], float]) -> tuple[int, ...]:
    """The first subset of size n - f in itertools.combinations order with the smallest score."""
    best, best_val = None, math.inf
    for subset in itertools.combinations(range(n), n - f):
        val = score(subset)
        if val < best_val:
            best, best_val = subset, val
    assert best is not None
    return best


def mda(x: object, f: int) -> np.ndarray:
    x = rows(x)
    return mean_of(x, mda_subset(x, f))


def nearest(x: np.ndarray, i: int, k: int) -> list[int]:
    """Indices of the ``k`` inputs nearest to ``x_i`` (``x_i`` included; ties by index)."""
    n = len(x)
    return sorted(range(n), key=lambda j: (0.0 if j == i else sq_dist(x[i], x[j]), j))[:k]


def nnm_pre(x: object, f: int) -> np.ndarray:
    x = rows(x)
    n = len(x)
    return np.array([mean_of(x, nearest(x, i, n - f)) for i in range(n)])


def nnm(x: object, f: int, base: Base) -> np.ndarray:
    return base(nnm_pre(x, f), f)


def monna(x: object, f: int, idx: int) -> np.ndarray:
    x = rows(x)
    n = len(x)
    return mean_of(x, nearest(x, idx % n, n - f))


class Bucketing:
    """Reference Bucketing: the same seeded permutation stream as the implementation
    (``torch.Generator().manual_seed(seed)``, one ``torch.randperm(n)`` per call);
    element ``perm[j]`` goes to bucket ``j // s``; base run with ``min(f, #buckets)``."""

    def __init__(self, s: int, base: Base, f: int, seed: int = 0) -> None:
        self.s, self.base, self.f, self.seed = s, base, f, seed
        self.reset()

    def reset(self) -> None:
        import torch

        self.gen = torch.Generator().manual_seed(self.seed)

    def pre(self, x: object) -> np.ndarray:
        import torch

        x = rows(x)
        n = len(x)
        perm = torch.randperm(n, generator=self.gen).tolist()
        nb = math.ceil(n / self.s)
        buckets: list[list[int]] = [[] for _ in range(nb)]
        for j in range(n):
            buckets[j // self.s].append(perm[j])
        return np.array([mean_of(x, b) for b in buckets])

    def __call__(self, x: object) -> np.ndarray:
        means = self.pre(x)
        return self.base(means, min(self.f, len(means)))


def clipping_pre(x: object, c: float) -> np.ndarray:
    x = rows(x)
    out = x.copy()
    for i in range(len(x)):
        nx = norm(x[i])
        if nx > c:
            out[i] = x[i] * (c / nx)
    return out


def arc_pre(x: object, f: int) -> np.ndarray:
    x = rows(x)
    n = len(x)
    k = math.floor(2 * (f / n) * (n - f))
    norms = sorted((norm(x[i]) for i in range(n)), reverse=True)
    return clipping_pre(x, norms[k])  # the (k+1)-th largest norm


def ctma(x: object, f: int, base: Base) -> np.ndarray:
    x = rows(x)
    n = len(x)
    a = base(x, f)
    order = sorted(range(n), key=lambda i: (sq_dist(x[i], a), i))
    return mean_of(x, order[: n - f])


def weighted_cov(x: np.ndarray, w: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and explicit ``d x d`` weighted covariance (weights sum to 1)."""
    n, d = x.shape
    mu = np.zeros(d)
    for i in range(n):
        mu += w[i] * x[i]
    cov = np.zeros((d, d))
    for i in range(n):
        y = x[i] - mu
        cov += w[i] * np.outer(y, y)
    return mu, cov


def caf(x: object, f: int) -> np.ndarray:
    x = rows(x)
    n = len(x)
    c = [1.0] * n
    best_mu, best_lam = mean(x), math.inf
    while sum(c) > n - 2 * f:
        total = sum(c)
        mu, cov = weighted_cov(x, [ci / total for ci in c])
        evals, evecs = np.linalg.eigh(cov)
        lam, v = evals[-1], evecs[:, -1]
        if lam < best_lam:
            best_mu, best_lam = mu, lam
        tau = [float(np.dot(x[i] - mu, v)) ** 2 for i in range(n)]
        # max over the inputs still weighted (see CAF's docstring: over all j, an input already
        # removed can keep the maximum and the loop then never ends)
        tmax = max(t for t, ci in zip(tau, c, strict=True) if ci > 0)
        if not tmax > 0:
            break
        c = [max(0.0, c[i] * (1.0 - tau[i] / tmax)) for i in range(n)]
    return best_mu


def top_eig_of_subset(x: np.ndarray, subset: tuple[int, ...]) -> float:
    k = len(subset)
    _, cov = weighted_cov(x[list(subset)], [1.0 / k] * k)
    return float(np.linalg.eigh(cov)[0][-1])


def smea_subset(x: object, f: int) -> tuple[int, ...]:
    x = rows(x)
    return first_best_subset(len(x), f, lambda subset: top_eig_of_subset(x, subset))


def smea(x: object, f: int) -> np.ndarray:
    x = rows(x)
    return mean_of(x, smea_subset(x, f))


# ----------------------------------------------------------------------------- backdoor defences
#
# The clustering steps (HDBSCAN, MeanShift) are scikit-learn's, called here on features
# computed by explicit loops; the random draws are the implementation's seeded torch streams,
# reproduced call by call.


def dot(a: np.ndarray, b: np.ndarray) -> float:
    return sum(float(a[k]) * float(b[k]) for k in range(len(a)))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = norm(a), norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return max(-1.0, min(1.0, dot(a, b) / (na * nb)))


def clipped_mean_of(x: np.ndarray, idx: list[int], bound: float) -> np.ndarray:
    """``(1/|idx|) sum_{i in idx} x_i min(1, bound / ||x_i||)`` (zero for an empty ``idx``)."""
    out = np.zeros(x.shape[1])
    for i in idx:
        ni = norm(x[i])
        scale = 1.0 if ni <= bound else (bound / ni if ni > 0 else 0.0)
        for k in range(x.shape[1]):
            out[k] += scale * x[i][k]
    return out / max(len(idx), 1)


def normclip(x: object, bound: float | None = None) -> np.ndarray:
    x = rows(x)
    m = median_of([norm(r) for r in x]) if bound is None else bound
    return clipped_mean_of(x, list(range(len(x))), m)


def largest_label(labels: list[int]) -> list[int] | None:
    """Indices of the most frequent label >= 0 (ties: the smaller label); None if none."""
    counts: dict[int, int] = {}
    for lab in labels:
        if lab >= 0:
            counts[lab] = counts.get(lab, 0) + 1
    if not counts:
        return None
    best = min(counts, key=lambda lab: (-counts[lab], lab))
    return [i for i, lab in enumerate(labels) if lab == best]


def flame_cluster(x: object, min_cluster_size: int | None = None) -> list[int]:
    from sklearn.cluster import HDBSCAN

    x = rows(x)
    n = len(x)
    if n < 2:
        return list(range(n))
    dist = np.array([[0.0 if i == j else 1.0 - cosine(x[i], x[j]) for j in range(n)]
                     for i in range(n)])  # fmt: skip
    size = n // 2 + 1 if min_cluster_size is None else min_cluster_size
    labels = HDBSCAN(min_cluster_size=min(size, n), min_samples=1, metric="precomputed",
                     allow_single_cluster=True, copy=True).fit(dist).labels_  # fmt: skip
    kept = largest_label([int(v) for v in labels])
    return list(range(n)) if kept is None else kept


class FLAME:
    """Reference FLAME: cluster, clip the kept to the median of all norms, average, plus
    ``lam S`` times the seeded ``torch.randn(d)`` draw of the call."""

    def __init__(self, lam: float = 0.001, seed: int = 0) -> None:
        self.lam, self.seed = lam, seed
        self.reset()

    def reset(self) -> None:
        import torch

        self.gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, x: object, dtype: object = None) -> np.ndarray:
        import torch

        x = rows(x)
        s = median_of([norm(r) for r in x])
        out = clipped_mean_of(x, flame_cluster(x), s)
        if self.lam > 0:
            noise = torch.randn(x.shape[1], generator=self.gen, dtype=dtype or torch.float64)
            out = out + self.lam * s * noise.double().numpy()
        return out


def foolsgold_weights(h: np.ndarray, kappa: float = 1.0) -> list[float]:
    """FoolsGold's weights from the histories ``h``, as the authors' code (loops)."""
    n = len(h)
    cs = [[0.0 if i == j else cosine(h[i], h[j]) for j in range(n)] for i in range(n)]
    v = [max(cs[i]) for i in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j and v[i] < v[j]:
                cs[i][j] = cs[i][j] * v[i] / v[j]
    wv = [min(1.0, max(0.0, 1.0 - max(cs[i]))) for i in range(n)]
    top = max(wv)
    if top == 0:
        return [0.0] * n
    out = []
    for w in wv:
        w = w / top
        w = 0.99 if w == 1.0 else w
        a = -math.inf if w == 0 else kappa * (math.log(w / (1.0 - w)) + 0.5)
        out.append(min(1.0, max(0.0, a)))
    return out


class FoolsGold:
    """Reference FoolsGold: a dict of per-client summed updates."""

    def __init__(self, kappa: float = 1.0) -> None:
        self.kappa = kappa
        self.history: dict[int, np.ndarray] = {}

    def __call__(self, x: object, ids: list[int] | None = None) -> np.ndarray:
        x = rows(x)
        n, d = x.shape
        ids = list(range(n)) if ids is None else ids
        for i, key in enumerate(ids):
            self.history[key] = self.history.get(key, np.zeros(d)) + x[i]
        w = foolsgold_weights(np.array([self.history[k] for k in ids]), self.kappa)
        total = sum(w)
        out = np.zeros(d)
        for i in range(n):
            for k in range(d):
                out[k] += (w[i] / total if total > 0 else 0.0) * x[i][k]
        return out


class DnC:
    """Reference DnC (Alg. 2): the same seeded ``torch.randperm(d)[:b]`` draws, the top
    right singular vector from ``numpy.linalg.svd`` of the centred subset."""

    def __init__(self, f: int, c: float = 1.0, iters: int = 1, b: int = 10000, seed: int = 0):
        self.f, self.c, self.iters, self.b, self.seed = f, c, iters, b, seed
        self.reset()

    def reset(self) -> None:
        import torch

        self.gen = torch.Generator().manual_seed(self.seed)

    def good(self, x: object) -> list[int]:
        import torch

        x = rows(x)
        n, d = x.shape
        b = min(self.b, d)
        keep_count = n - math.floor(self.c * self.f)
        good = set(range(n))
        last: set[int] = good
        for _ in range(self.iters):
            cols = sorted(torch.randperm(d, generator=self.gen)[:b].tolist())
            sub = np.array([[x[i][k] for k in cols] for i in range(n)])
            mu = [sum(sub[i][j] for i in range(n)) / n for j in range(b)]
            cen = np.array([[sub[i][j] - mu[j] for j in range(b)] for i in range(n)])
            v = np.linalg.svd(cen)[2][0]
            scores = [dot(cen[i], v) ** 2 for i in range(n)]
            last = set(sorted(range(n), key=lambda i: (scores[i], i))[:keep_count])
            good &= last
        return sorted(good if good else last)

    def __call__(self, x: object) -> np.ndarray:
        x = rows(x)
        return mean_of(x, self.good(x))


class SignGuard:
    """Reference SignGuard: the same seeded ``torch.randint`` block start; sign shares by
    loops; scikit-learn's MeanShift as the implementation."""

    def __init__(
        self, lower: float = 0.1, upper: float = 3.0, fraction: float = 0.1, seed: int = 0
    ) -> None:
        self.lower, self.upper, self.fraction, self.seed = lower, upper, fraction, seed
        self.reset()

    def reset(self) -> None:
        import torch

        self.gen = torch.Generator().manual_seed(self.seed)

    def kept(self, x: object) -> list[int]:
        import torch
        from sklearn.cluster import MeanShift, estimate_bandwidth

        x = rows(x)
        n, d = x.shape
        norms = [norm(r) for r in x]
        m = median_of(norms)
        s1 = {i for i in range(n) if self.lower * m < norms[i] < self.upper * m}
        k = max(1, int(self.fraction * d))
        start = int(torch.randint(0, d - k + 1, (1,), generator=self.gen))
        shares = []
        for i in range(n):
            block = [x[i][j] for j in range(start, start + k)]
            shares.append([sum(v > 0 for v in block) / k, sum(v == 0 for v in block) / k,
                           sum(v < 0 for v in block) / k])  # fmt: skip
        tops = [max(shares[i][c] for i in range(n)) for c in range(3)]
        feats = np.array([[shares[i][c] / (tops[c] + 1e-8) for c in range(3)] for i in range(n)])
        s2 = set(range(n))
        if n >= 2:
            bw = float(estimate_bandwidth(feats, quantile=0.5))
            if bw > 0:
                labels = MeanShift(bandwidth=bw, bin_seeding=True, cluster_all=False).fit(feats)
                found = largest_label([int(v) for v in labels.labels_])
                s2 = s2 if found is None else set(found)
        both = s1 & s2
        return sorted(both if both else s1)

    def __call__(self, x: object) -> np.ndarray:
        x = rows(x)
        m = median_of([norm(r) for r in x])
        return clipped_mean_of(x, self.kept(x), m)
