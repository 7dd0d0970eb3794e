"""The generalized normal (GenNorm) model of gradients used by CO3's coder (Chen et al. 2022,
Sec. III-B), with numpy and the standard library only.

Density beta / (2 alpha Gamma(1/beta)) exp(-(|x|/alpha)^beta); beta = 2 is a Gaussian, beta = 1
a Laplacian. Moments: E|X| = alpha Gamma(2/beta)/Gamma(1/beta), E X^2 = alpha^2 Gamma(3/beta)/
Gamma(1/beta); CDF 1/2 + sign(x) P(1/beta, (|x|/alpha)^beta) / 2 with P the regularized lower
incomplete gamma function.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from torch import Tensor

_BETA_RANGE = (0.05, 20.0)


def gammainc(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x): a series for x < a + 1, else 1 - Q(a, x) by
    Lentz's continued fraction (Numerical Recipes, Sec. 6.2)."""
    if x <= 0:
        return 0.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-15:
            n += 1
            term *= x / n
            total += term
        return min(1.0, total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return max(0.0, 1.0 - math.exp(log_front) * h)


def _moment_ratio(beta: float) -> float:
    """(E|X|)^2 / E X^2, increasing in beta."""
    return math.exp(2 * math.lgamma(2 / beta) - math.lgamma(1 / beta) - math.lgamma(3 / beta))


def fit(v: Tensor | np.ndarray) -> tuple[float, float]:
    """(beta, alpha) of the GenNorm with v's first two absolute moments (moment matching)."""
    x = np.asarray(v.detach().reshape(-1).double().cpu() if isinstance(v, Tensor) else v, np.float64).ravel()
    if x.size == 0:
        return 2.0, 0.0
    return fit_moments(float(np.abs(x).mean()), float(np.square(x).mean()))


def fit_moments(m1: float, m2: float) -> tuple[float, float]:
    """(beta, alpha) of the GenNorm with E|X| = m1 and E X^2 = m2: beta solves
    Gamma(2/beta)^2 / (Gamma(1/beta) Gamma(3/beta)) = m1^2 / m2 (bisection on log beta), then
    alpha = m1 Gamma(1/beta) / Gamma(2/beta). (2, 0) when m2 = 0."""
    if m2 == 0.0:
        return 2.0, 0.0
    target = m1 * m1 / m2
    lo, hi = (math.log(b) for b in _BETA_RANGE)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _moment_ratio(math.exp(mid)) < target else (lo, mid)
    beta = math.exp((lo + hi) / 2)
    return beta, m1 * math.exp(math.lgamma(1 / beta) - math.lgamma(2 / beta))


def cdf(x: np.ndarray, beta: float, alpha: float) -> np.ndarray:
    """P(X <= x) elementwise; P(1/beta, .) once per distinct |x| (a code grid's bin edges come in
    +- pairs)."""
    x = np.asarray(x, np.float64)
    magnitudes, which = np.unique(np.abs(x.ravel()), return_inverse=True)
    tail = np.array([gammainc(1 / beta, (t / alpha) ** beta) if math.isfinite(t) else 1.0 for t in magnitudes])
    return (0.5 + 0.5 * np.sign(x).ravel() * tail[which.reshape(-1)]).reshape(x.shape)


def abs_quantile(p: float, beta: float, alpha: float) -> float:
    """The t with P(|X| <= t) = p."""
    lo, hi = 0.0, 1.0
    while gammainc(1 / beta, hi) < p:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if mid in (lo, hi):  # converged: further halvings change nothing
            break
        lo, hi = (mid, hi) if gammainc(1 / beta, mid) < p else (lo, mid)
    return alpha * ((lo + hi) / 2) ** (1 / beta)


def bin_probabilities(values: np.ndarray, beta: float, alpha: float) -> np.ndarray:
    """P(round-to-nearest of X lands on each value) for a grid ``values`` (indexed by code, may
    repeat: a repeated value gets its probability once, on its first code; saturation folds the
    tails into the extreme values)."""
    order = np.unique(values, return_index=True)[1]
    grid = values[order]
    edges = np.concatenate([[-np.inf], (grid[1:] + grid[:-1]) / 2, [np.inf]])
    mass = np.diff(cdf(edges, beta, alpha))
    out = np.zeros(len(values))
    out[order] = np.maximum(mass, 0.0)
    return out


def density(x: np.ndarray, beta: float, alpha: float) -> np.ndarray:
    return beta / (2 * alpha * math.gamma(1 / beta)) * np.exp(-(np.abs(x) / alpha) ** beta)


@functools.lru_cache(maxsize=1024)
def clip_ratio(grid: tuple[float, ...], beta: float) -> float:
    """The clip point c (in units of alpha) that minimises E(X - Q(X))^2 for X ~ GenNorm(beta, 1)
    when Q rounds to the nearest of ``grid`` (non-negative magnitudes) scaled so that max(grid)
    lands on c; searched over 64 log-spaced candidates by numerical integration on 20,001 points.
    Each candidate's error is sum over bins k of S2_k - 2 q_k S1_k + q_k^2 S0_k, with S_j the sum
    of t^j w(t) over the bin's points, differences of prefix sums: O(bins) per candidate."""
    magnitudes = np.array(sorted(set(grid)))
    top = abs_quantile(1 - 1e-9, beta, 1.0)
    t = np.linspace(0.0, top, 20_001)
    weight = 2 * density(t, beta, 1.0) * (t[1] - t[0])
    edges = (magnitudes[1:] + magnitudes[:-1]) / 2
    prefix = [np.concatenate([[0.0], np.cumsum(weight * t ** j)]) for j in range(3)]
    clips = np.geomspace(abs_quantile(0.5, beta, 1.0), top, 64)
    units = clips / magnitudes[-1]
    # Bin k (k >= 1) starts after the points with t / unit <= edges[k-1] (round to nearest, ties
    # down): the count is found near edges * unit, then corrected to that predicate.
    cuts = np.searchsorted(t, np.outer(units, edges), side="right")
    for _ in range(2):
        cuts -= (cuts > 0) & (t[np.maximum(cuts - 1, 0)] / units[:, None] > edges)
        cuts += (cuts < t.size) & (t[np.minimum(cuts, t.size - 1)] / units[:, None] <= edges)
    bounds = np.concatenate([np.zeros((len(clips), 1), np.int64), cuts, np.full((len(clips), 1), t.size)], axis=1)
    s0, s1, s2 = (np.diff(p[bounds], axis=1) for p in prefix)
    q = magnitudes * units[:, None]
    errors = np.sum(s2 - 2 * q * s1 + q * q * s0, axis=1)
    return float(clips[int(np.argmin(errors))])
