"""Small exact statistics without SciPy: the gamma distribution and Poisson intervals.

``poisson_rate_ci`` is Garwood's exact interval for a count ``k`` over an
exposure: lower = Γ⁻¹(α/2; k)/T, upper = Γ⁻¹(1−α/2; k+1)/T (shape, scale 1),
the same as the chi-square form χ²(α/2, 2k)/2T and χ²(1−α/2, 2k+2)/2T.
"""

from __future__ import annotations

import math


def _gamma_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    n = a
    for _ in range(10_000):
        n += 1.0
        term *= x / n
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_cf(a: float, x: float) -> float:
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < tiny:
            d = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def gamma_cdf(x: float, shape: float) -> float:
    """Regularised lower incomplete gamma P(shape, x)."""
    if x <= 0:
        return 0.0
    if x < shape + 1.0:
        return _gamma_series(shape, x)
    return 1.0 - _gamma_cf(shape, x)


def gamma_ppf(p: float, shape: float) -> float:
    """Inverse of :func:`gamma_cdf` in ``x`` (bisection to 1e-12 relative)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    lo, hi = 0.0, max(1.0, shape)
    while gamma_cdf(hi, shape) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if gamma_cdf(mid, shape) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def poisson_rate_ci(k: int, exposure: float, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval for the rate of a Poisson count ``k`` over ``exposure``."""
    if exposure <= 0:
        raise ValueError("exposure must be positive")
    alpha = 1.0 - confidence
    lower = 0.0 if k == 0 else gamma_ppf(alpha / 2.0, k) / exposure
    upper = gamma_ppf(1.0 - alpha / 2.0, k + 1) / exposure
    return lower, upper
