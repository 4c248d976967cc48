r"""Geometric probability: n random points in a disk lying in one sector.

Article: 圆内随机n点在同一个圆心角为θ的扇形的概率, https://kexue.fm/archives/9324 (2022-10-25).
Related: J. G. Wendel, *A Problem in Geometric Probability*, Math. Scand. 11 (1962) 109-111.

Only the polar angles matter, and for points uniform in the disk they are i.i.d. uniform on
the circle. The ``n`` angles cut the circle into ``n`` arcs whose lengths (as fractions of the
circle) are uniform on the simplex. The points fit in one sector of central angle
:math:`\theta` exactly when the largest arc is at least :math:`2\pi - \theta`, i.e. when the
largest spacing exceeds :math:`x = 1 - \theta / 2\pi`. Inclusion-exclusion over which arcs
exceed ``x``, with :math:`P(s_1 > c_1, \dots, s_k > c_k) = (1 - \sum c_i)^{n-1}`, gives

.. math::

    P_n(\theta) = \sum_{k \ge 1,\; kx < 1} (-1)^{k-1} \binom{n}{k} (1 - kx)^{n-1},

which is :math:`n(\theta/2\pi)^{n-1}` for :math:`\theta \le \pi` (only ``k = 1`` survives) and
1 for :math:`\theta \ge 2\pi(1 - 1/n)` (pigeonhole).

The exact value is computed in rational arithmetic (the float ``theta / 2π`` is converted
exactly), so the alternating sum loses no digits to cancellation for any ``n``.
"""
from __future__ import annotations

import math
from fractions import Fraction

import sympy
import torch

from ._validate import check_int, check_real, check_tensor

__all__ = ["sector_probability", "longest_spacing_cdf", "sector_probability_mc", "circle_spacings", "in_one_sector"]

TWO_PI = 2 * math.pi


def _spacing_tail(n: int, x):
    """P(largest of the n spacings > x), exactly, for a rational ``x`` (Fraction or sympy)."""
    if n * x <= 1:
        return x ** 0  # 1 in the same number type: pigeonhole
    total = x * 0
    k = 1
    while k <= n and k * x < 1:
        total += (-1) ** (k - 1) * math.comb(n, k) * (1 - k * x) ** (n - 1)
        k += 1
    return total


def _check_n(n) -> int:
    return check_int("n", n, min_value=1)


def longest_spacing_cdf(n: int, x: float) -> float:
    """P(the largest of the ``n`` arcs cut by ``n`` uniform points on a unit circle is <= ``x``).

    Arc lengths are fractions of the circle, so ``0 <= x <= 1``.

    >>> longest_spacing_cdf(2, 0.5)
    0.0
    >>> round(longest_spacing_cdf(3, 0.5), 4)
    0.25
    """
    n = _check_n(n)
    x = check_real("x", x, low=0.0, high=1.0)
    if n == 1:
        return 1.0 if x >= 1 else 0.0
    return float(1 - _spacing_tail(n, Fraction(x)))


def sector_probability(n: int, theta, exact: bool = False):
    r"""Probability that ``n`` i.i.d. uniform points in a disk lie in one sector of angle ``theta``.

    ``theta`` is in radians, ``0 <= theta <= 2π``. With ``exact=True``, ``theta`` must be a
    sympy rational multiple of :math:`\pi` (e.g. ``sympy.pi * 3 / 2``) and the result is a
    sympy ``Rational``.

    >>> sector_probability(4, math.pi)   # four ducks in a semicircular pond
    0.5
    >>> sector_probability(6, sympy.pi * 3 / 2, exact=True)
    499/512
    """
    n = _check_n(n)
    if exact:
        try:
            ratio = sympy.simplify(sympy.sympify(theta) / (2 * sympy.pi))
        except (sympy.SympifyError, TypeError) as err:
            raise ValueError(f"theta must be a rational multiple of pi for exact=True, got {theta!r}") from err
        if not ratio.is_Rational:
            raise ValueError(f"theta must be a rational multiple of pi for exact=True, got {theta!r}")
        if ratio < 0 or ratio > 1:
            raise ValueError(f"theta must lie in [0, 2*pi], got {theta}")
        if n == 1:
            return sympy.Integer(1)
        return sympy.Rational(_spacing_tail(n, 1 - sympy.Rational(ratio)))
    if isinstance(theta, sympy.Basic):
        theta = float(theta)
    theta = check_real("theta", theta, low=0.0, high=TWO_PI)
    if n == 1:
        return 1.0
    return float(_spacing_tail(n, 1 - Fraction(theta / TWO_PI)))


def _disk_angles(count: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Polar angles of ``count`` points uniform in the unit disk, by rejection from the square.

    x and y are drawn as two contiguous rows (atan2 on strided columns is ~10x slower).
    """
    out = torch.empty(count, dtype=dtype)
    filled = 0
    while filled < count:
        need = count - filled
        x, y = torch.rand(2, int(need * 1.3) + 64, generator=gen, dtype=dtype).mul_(2).sub_(1)
        inside = (x * x + y * y <= 1).nonzero().squeeze(1)[:need]
        taken = inside.shape[0]
        torch.atan2(y.index_select(0, inside), x.index_select(0, inside), out=out[filled : filled + taken])
        filled += taken
    return out


def _in_one_sector(angles: torch.Tensor, theta: float) -> torch.Tensor:
    """(trials, n) angles -> (trials,) bool: do the n points fit in one sector of angle theta?

    They do exactly when the largest of the n circular gaps between sorted angles (the wrap-around
    gap included) is at least 2π - theta.
    """
    if angles.shape[1] == 1:
        return torch.ones(angles.shape[0], dtype=torch.bool, device=angles.device)
    a = angles.sort(dim=1).values
    largest = torch.maximum(a.diff(dim=1).amax(dim=1), TWO_PI - (a[:, -1] - a[:, 0]))
    return largest >= TWO_PI - theta


def in_one_sector(angles: torch.Tensor, theta: float) -> torch.Tensor:
    """For each row of ``angles`` (shape (trials, n), radians in [0, 2π)): do the n points fit in one sector
    of central angle ``theta``? The largest-gap criterion that `sector_probability_mc` uses, with input checks."""
    angles = check_tensor("angles", angles, ndim=2, floating=True)
    if angles.shape[1] < 1:
        raise ValueError(f"angles must have at least one column (one point per trial), got shape {tuple(angles.shape)}")
    theta = check_real("theta", theta, low=0.0, high=TWO_PI)
    if angles.numel() and not bool(((angles >= 0) & (angles < TWO_PI)).all()):
        raise ValueError("angles must lie in [0, 2*pi) (reduce them with torch.remainder(angles, 2 * math.pi))")
    return _in_one_sector(angles, theta)


def sector_probability_mc(
    n: int,
    theta: float,
    trials: int = 400_000,
    seed: int = 0,
    *,
    chunk: int = 65_536,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """Monte Carlo estimate of :func:`sector_probability` and its standard error.

    Points are drawn uniformly in the unit disk (rejection from the square; nothing about the
    angles is assumed), their polar angles computed, and each trial asks whether some sector
    of angle ``theta`` holds all ``n`` points. Vectorised in chunks of ``chunk`` trials with a
    seeded ``torch.Generator``, so the result is reproducible.

    Returns ``(p_hat, sqrt(p_hat (1 - p_hat) / trials))``.
    """
    n = _check_n(n)
    theta = check_real("theta", float(theta) if isinstance(theta, sympy.Basic) else theta, low=0.0, high=TWO_PI)
    trials = check_int("trials", trials, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    chunk = check_int("chunk", chunk, min_value=1)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    gen = torch.Generator().manual_seed(seed)
    hits = 0
    for start in range(0, trials, chunk):
        m = min(chunk, trials - start)
        angles = _disk_angles(m * n, gen, dtype).view(m, n)
        hits += int(_in_one_sector(angles, theta).sum())
    p = hits / trials
    return p, math.sqrt(p * (1 - p) / trials)



def circle_spacings(n: int, trials: int, seed: int = 0, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(trials, n)`` arc lengths (fractions of the circle) cut by ``n`` uniform points.

    Equivalently the ``n`` pieces of [0, 1] cut by ``n - 1`` uniform points; each row is a
    uniform draw from the simplex.
    """
    n = _check_n(n)
    trials = check_int("trials", trials, min_value=1)
    gen = torch.Generator().manual_seed(check_int("seed", seed, min_value=0))
    cuts = torch.rand(trials, n - 1, generator=gen, dtype=dtype).sort(dim=1).values
    edges = torch.cat([cuts.new_zeros(trials, 1), cuts, cuts.new_ones(trials, 1)], dim=1)
    return edges.diff(dim=1)


# The argmax(mu + eps) distributions (article 9085) live in their own module; they are
# probability constructions too, so they are reachable from here as well.
from .discrete import argmax_probs, argmax_probs_mc  # noqa: E402

__all__ += ["argmax_probs", "argmax_probs_mc"]
